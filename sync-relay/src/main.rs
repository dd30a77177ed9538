//! `sync-relay`: run the relay, print its node id, or check a config file.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use sync_relay::config::{Config, LogFormat};
use sync_relay::{Relay, identity};

/// The 0k-sync zero-knowledge sync relay.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML; see relay.toml.example). Without it the embedded defaults apply.
    #[arg(long, global = true, env = "SYNC_RELAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the node key and the database (overrides `data_dir`).
    #[arg(long, global = true, env = "SYNC_RELAY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address of the QUIC endpoint (overrides `network.quic_bind`).
    #[arg(long, global = true, env = "SYNC_RELAY_QUIC_BIND", value_name = "ADDR")]
    quic_bind: Option<SocketAddr>,
    /// TCP address of the HTTP server (overrides `network.http_bind`).
    #[arg(long, global = true, env = "SYNC_RELAY_HTTP_BIND", value_name = "ADDR")]
    http_bind: Option<SocketAddr>,
    /// Log format, `text` or `json` (overrides `log.format`).
    #[arg(
        long,
        global = true,
        env = "SYNC_RELAY_LOG_FORMAT",
        value_name = "FORMAT"
    )]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the relay (the default).
    Run,
    /// Print the relay's node id (creating the key in the data dir if missing).
    Id,
    /// Check a config file and exit: 0 when valid, 1 with the bad key named.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    if let Some(addr) = args.quic_bind {
        config.network.quic_bind = addr;
    }
    if let Some(addr) = args.http_bind {
        config.network.http_bind = addr;
    }
    if let Some(format) = &args.log_format {
        config.log.format = match format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!(
                "invalid value for `log.format`: expected text or json, got {other:?}"
            ),
        };
    }
    config.validate()?;
    Ok(config)
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match &args.command {
        Some(Command::CheckConfig { file }) => {
            let config = Config::load(file)?;
            println!(
                "{}: ok (data_dir {})",
                file.display(),
                config.data_dir.display()
            );
            Ok(())
        }
        Some(Command::Id) => {
            let config = load_config(&args)?;
            let key = identity::load_or_create(&config.data_dir)?;
            println!("{}", key.public());
            Ok(())
        }
        Some(Command::Run) | None => {
            let config = load_config(&args)?;
            init_logging(&config);
            let relay = Relay::start(config).await?;
            shutdown_signal().await?;
            relay.shutdown().await;
            Ok(())
        }
    }
}
