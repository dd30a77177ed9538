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
    /// Copy the relay's state (database via `VACUUM INTO`, and node key) into
    /// a new directory; safe while the relay runs.
    Backup {
        /// Directory to create (must not exist).
        dest: PathBuf,
    },
    /// Probe the running relay's `GET /health` (for Docker's HEALTHCHECK):
    /// exit 0 when it answers 200, 1 otherwise.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3)]
        timeout: u64,
    },
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = Config::load_with_env(args.config.as_deref(), std::env::vars())?;
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

/// `DEST/relay.db` (a consistent copy) and `DEST/relay.key`, mode 0600 in a
/// 0700 directory.
async fn backup(config: &Config, dest: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let db = config.db_path();
    anyhow::ensure!(db.exists(), "no database at {}", db.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .with_context(|| format!("cannot create {} (it must not exist yet)", dest.display()))?;
    let dest_db = dest.join("relay.db");
    sync_relay::storage::backup_database(&db, &dest_db).await?;
    std::fs::set_permissions(&dest_db, std::fs::Permissions::from_mode(0o600))?;
    let key = config.data_dir.join(identity::KEY_FILE);
    let dest_key = dest.join(identity::KEY_FILE);
    std::fs::copy(&key, &dest_key).with_context(|| format!("copying {}", key.display()))?;
    std::fs::set_permissions(&dest_key, std::fs::Permissions::from_mode(0o600))?;
    println!("backup written to {} (relay.db, relay.key)", dest.display());
    Ok(())
}

/// GET /health on the configured HTTP address (an unspecified IP is probed
/// on loopback).
fn healthcheck(config: &Config, timeout: std::time::Duration) -> anyhow::Result<()> {
    let mut addr = config.network.http_bind;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent
        .get(format!("http://{addr}/health"))
        .call()
        .with_context(|| format!("no answer from http://{addr}/health"))?;
    let status = resp.status();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    println!("{body}");
    if status != 200 {
        anyhow::bail!("relay is unhealthy: HTTP {status}");
    }
    Ok(())
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
        Some(Command::Healthcheck { timeout }) => {
            let config = load_config(&args)?;
            healthcheck(&config, std::time::Duration::from_secs(*timeout))
        }
        Some(Command::Backup { dest }) => {
            let config = load_config(&args)?;
            backup(&config, dest).await
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
