//! `sync-relay`: run the relay, print its node id, or check a config file.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use sync_relay::config::{Config, LogFormat};
use sync_relay::{Relay, identity};

/// The relay's allocator: jemalloc with background threads, which purge
/// freed pages back to the system (glibc's malloc keeps them in its arenas;
/// BENCHMARKS.md "Soak"). Feature `jemalloc`, on by default.
#[cfg(all(feature = "jemalloc", unix, not(target_env = "msvc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    /// Copy the relay's state into a new directory: the database (SQLite via
    /// `VACUUM INTO`; PostgreSQL via `pg_dump --format=custom`, restored with
    /// `pg_restore`) and this relay's node key; safe while the relay runs.
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
    /// Manage the access tokens that let devices create groups (in the
    /// default access mode); safe while the relay runs.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it alone on stdout, this once (the relay
    /// keeps only its hash). Give it to the device that creates a group:
    /// `sync-cli init --relay ADDR --token TOKEN`.
    Create {
        /// A note for `token list` (e.g. who it is for).
        #[arg(long, value_name = "TEXT")]
        label: Option<String>,
        /// Groups the token may create (that exist at once).
        #[arg(long, value_name = "N", default_value_t = 10)]
        max_groups: u64,
        /// Payload bytes all its groups may store together
        /// [default: limits.max_group_storage, 1 GiB]
        #[arg(long, value_name = "BYTES")]
        max_storage: Option<u64>,
    },
    /// List the tokens: id, label, creation time, limits, what their groups
    /// use, revocation time.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by its id: it creates no more groups, and its groups
    /// take no more pushes (what they store stays readable until it expires).
    Revoke {
        /// The id shown by `token create` and `token list` (8 hex characters).
        id: String,
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

/// `DEST/relay.db` (SQLite: a consistent copy) or `DEST/relay.pgdump`
/// (PostgreSQL: `pg_dump`'s custom format), and `DEST/relay.key`, mode 0600
/// in a 0700 directory.
async fn backup(config: &Config, dest: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let url = config.storage_url()?;
    if let sync_relay::config::StorageUrl::Sqlite(db) = &url {
        anyhow::ensure!(db.exists(), "no database at {}", db.display());
    }
    let key = config.data_dir.join(identity::KEY_FILE);
    anyhow::ensure!(key.exists(), "no node key at {}", key.display());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dest)
        .with_context(|| format!("cannot create {} (it must not exist yet)", dest.display()))?;
    let dest_db = match url {
        sync_relay::config::StorageUrl::Sqlite(db) => {
            let dest_db = dest.join("relay.db");
            sync_relay::storage::backup_database(&db, &dest_db).await?;
            dest_db
        }
        sync_relay::config::StorageUrl::Postgres(url) => {
            let dest_db = dest.join(sync_relay::backup::PG_DUMP_FILE);
            let mut cmd = sync_relay::backup::pg_dump_command(&url, &dest_db)?;
            let status = cmd.status().map_err(|e| {
                anyhow::anyhow!(
                    "cannot run pg_dump ({e}): install the PostgreSQL client tools, of the \
                     server's major version or newer (docs/deploy.md \"Backup\")"
                )
            })?;
            anyhow::ensure!(
                status.success(),
                "pg_dump failed ({status}); its error is above"
            );
            dest_db
        }
    };
    std::fs::set_permissions(&dest_db, std::fs::Permissions::from_mode(0o600))?;
    let dest_key = dest.join(identity::KEY_FILE);
    std::fs::copy(&key, &dest_key).with_context(|| format!("copying {}", key.display()))?;
    std::fs::set_permissions(&dest_key, std::fs::Permissions::from_mode(0o600))?;
    println!(
        "backup written to {} ({}, relay.key)",
        dest.display(),
        dest_db
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
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

/// Most bytes of a token label.
const MAX_LABEL: usize = 200;

/// Where `sync-relay token …` writes: its own connection to the SQLite file
/// (waiting for the running relay's writer), or a PostgreSQL store.
enum TokenStore {
    Sqlite(sqlx::SqliteConnection),
    Postgres(std::sync::Arc<dyn sync_relay::storage::Storage>),
}

impl TokenStore {
    /// The database `storage.url` names (created and migrated if the relay
    /// never ran).
    async fn open(config: &Config) -> anyhow::Result<TokenStore> {
        use sync_relay::config::StorageUrl;
        Ok(match config.storage_url()? {
            StorageUrl::Sqlite(db) => {
                identity::ensure_data_dir(&config.data_dir)?;
                let conn = sync_relay::storage::admin::open_admin(&db)
                    .await
                    .with_context(|| format!("opening {}", db.display()))?;
                TokenStore::Sqlite(conn)
            }
            StorageUrl::Postgres(_) => TokenStore::Postgres(
                sync_relay::storage::open(config)
                    .await
                    .context("opening the PostgreSQL storage")?,
            ),
        })
    }

    async fn create(
        &mut self,
        token: sync_relay::storage::NewToken,
    ) -> Result<sync_relay::storage::TokenInfo, sync_relay::storage::StorageError> {
        match self {
            TokenStore::Sqlite(conn) => {
                sync_relay::storage::admin::create_token(conn, &token).await
            }
            TokenStore::Postgres(s) => s.create_token(token).await,
        }
    }

    async fn list(
        &mut self,
    ) -> Result<Vec<sync_relay::storage::TokenInfo>, sync_relay::storage::StorageError> {
        match self {
            TokenStore::Sqlite(conn) => sync_relay::storage::admin::list_tokens(conn).await,
            TokenStore::Postgres(s) => s.tokens().await,
        }
    }

    async fn revoke(
        &mut self,
        id: &str,
        now_ms: i64,
    ) -> Result<sync_relay::storage::TokenInfo, sync_relay::storage::StorageError> {
        match self {
            TokenStore::Sqlite(conn) => {
                sync_relay::storage::admin::revoke_token(conn, id, now_ms).await
            }
            TokenStore::Postgres(s) => s.revoke_token(id, now_ms).await,
        }
    }

    async fn close(self) {
        match self {
            TokenStore::Sqlite(conn) => {
                let _ = sqlx::Connection::close(conn).await;
            }
            TokenStore::Postgres(s) => s.close().await,
        }
    }
}

/// `sync-relay token …` on the database `storage.url` names (by default
/// the SQLite file in the data dir, created and migrated if the relay never
/// ran).
async fn token_command(config: &Config, command: &TokenCommand) -> anyhow::Result<()> {
    use sync_relay::storage::{NewToken, TokenHash};
    let mut conn = TokenStore::open(config).await?;
    match command {
        TokenCommand::Create {
            label,
            max_groups,
            max_storage,
        } => {
            if let Some(l) = label {
                anyhow::ensure!(
                    l.len() <= MAX_LABEL && !l.chars().any(char::is_control),
                    "--label must be at most {MAX_LABEL} bytes without control characters"
                );
            }
            anyhow::ensure!(*max_groups >= 1, "--max-groups must be at least 1");
            let max_storage = max_storage.unwrap_or(config.limits.max_group_storage);
            anyhow::ensure!(max_storage >= 1, "--max-storage must be at least 1 byte");
            let token = sync_protocol::AccessToken(rand::random());
            let info = conn
                .create(NewToken {
                    hash: TokenHash::of(&token),
                    label: label.clone(),
                    created_at_ms: sync_relay::context::now_ms(),
                    max_groups: *max_groups,
                    max_storage,
                })
                .await?;
            println!("{}", token.to_text());
            eprintln!(
                "Created token {}{}: up to {} groups storing {} bytes together. It is shown only \
                 this once (the relay keeps a hash). The device that creates a group uses it: \
                 sync-cli init --relay ADDR --token TOKEN",
                info.id,
                info.label
                    .as_deref()
                    .map(|l| format!(" ({l})"))
                    .unwrap_or_default(),
                info.max_groups,
                info.max_storage
            );
            let promised: u64 = conn
                .list()
                .await?
                .iter()
                .filter(|t| t.revoked_at_ms.is_none())
                .map(|t| t.max_storage)
                .sum();
            if promised > config.limits.max_storage {
                eprintln!(
                    "warning: the valid tokens may store {promised} bytes together, more than \
                     limits.max_storage ({}): their groups can fill the relay and get OVERLOADED \
                     each other's pushes; give tokens smaller --max-storage or raise max_storage",
                    config.limits.max_storage
                );
            }
        }
        TokenCommand::List { json } => {
            let tokens = conn.list().await?;
            if *json {
                println!("{}", serde_json::to_string(&tokens)?);
            } else {
                print!("{}", token_table(&tokens));
            }
        }
        TokenCommand::Revoke { id } => {
            let info = conn
                .revoke(id.trim(), sync_relay::context::now_ms())
                .await?;
            eprintln!(
                "Revoked token {}: it creates no more groups; its {} groups take no more pushes \
                 (their {} stored bytes stay readable until they expire)",
                info.id, info.groups, info.bytes_used
            );
        }
    }
    conn.close().await;
    Ok(())
}

/// `token list` as a table, times in UTC.
fn token_table(tokens: &[sync_relay::storage::TokenInfo]) -> String {
    let time = |ms: i64| {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
        httpdate::fmt_http_date(t)
    };
    let mut out = format!(
        "{:<8}  {:<20}  {:<29}  {:>11}  {:>27}  {}\n",
        "ID", "LABEL", "CREATED", "GROUPS", "BYTES USED/MAX", "REVOKED"
    );
    for t in tokens {
        out.push_str(&format!(
            "{:<8}  {:<20}  {:<29}  {:>11}  {:>27}  {}\n",
            t.id,
            t.label.as_deref().unwrap_or("-"),
            time(t.created_at_ms),
            format!("{}/{}", t.groups, t.max_groups),
            format!("{}/{}", t.bytes_used, t.max_storage),
            t.revoked_at_ms.map(time).unwrap_or_else(|| "-".into())
        ));
    }
    out
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
        Some(Command::Token { command }) => {
            let config = load_config(&args)?;
            token_command(&config, command).await
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
