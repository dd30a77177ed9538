//! What every scenario needs: where the binaries are, how to start a relay
//! process with a bench config, random payloads, memory readings.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use sync_client::{ConnectOptions, GroupKeys, RelayAddr};

/// Scenario sizes: tiny (CI smoke) or full.
#[derive(Debug, Clone, Copy)]
pub struct Size {
    /// True for the CI smoke size.
    pub tiny: bool,
}

impl Size {
    /// `full` normally, `tiny` when tiny.
    pub fn pick<T>(&self, full: T, tiny: T) -> T {
        if self.tiny { tiny } else { full }
    }
}

/// A binary next to this one (same target directory and profile).
pub fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first (cargo build --release -p sync-relay -p sync-cli)",
            path.display()
        );
    }
    Ok(path)
}

/// A relay process started for a scenario.
pub struct Relay {
    child: Child,
    /// `NODE_ID@127.0.0.1:PORT`.
    pub address: String,
    /// Bound QUIC address.
    pub quic: SocketAddr,
    /// Bound HTTP address (`/health`, `/metrics`).
    pub http: SocketAddr,
    config: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Relay config for a benchmark: `max_blob_size` bytes, quotas, rate
/// limits and access control (open mode, no per-address limits) out of the
/// way, quiet logs.
pub fn bench_config(max_blob_size: u32) -> String {
    bench_config_with(max_blob_size, "")
}

/// [`bench_config`] with more `[limits]` lines (`extra_limits`, each ending
/// in a newline).
fn bench_config_with(max_blob_size: u32, extra_limits: &str) -> String {
    bench_config_full(max_blob_size, 20_000, extra_limits)
}

/// [`bench_config`] admitting `max_sessions` sessions (`limits.max_sessions`;
/// the default bench config admits 20,000), with UDP segmentation offload
/// on or off (`network.segmentation_offload`).
pub fn bench_config_sessions(
    max_blob_size: u32,
    max_sessions: u32,
    segmentation_offload: bool,
) -> String {
    let config = bench_config_full(max_blob_size, max_sessions, "");
    if segmentation_offload {
        // The default: left out, so relays from before the setting run too.
        config
    } else {
        format!("{config}[network]\nsegmentation_offload = false\n")
    }
}

fn bench_config_full(max_blob_size: u32, max_sessions: u32, extra_limits: &str) -> String {
    format!(
        "[limits]\n{extra_limits}max_blob_size = {max_blob_size}\nmax_group_storage = 68719476736\n\
         max_storage = 68719476736\nmax_sessions = {max_sessions}\nmax_group_sessions = 4096\n\
         max_group_blobs = 100000000\n\
         [rate_limits]\nrequests_per_s = 4000000000\nrequests_burst = 4000000000\n\
         push_bytes_per_s = 4000000000\npush_bytes_burst = 4000000000\n\
         connections_per_ip_per_s = 1000000\nconnections_per_ip_burst = 1000000\n\
         [access]\nmode = \"open\"\nnew_groups_per_address_per_hour = 1000000\n\
         max_storage_per_address = 68719476736\nmax_sessions_per_address = 1000000\n\
         [log]\nlevel = \"warn,sync_relay::server=info\"\n"
    )
}

/// The relay's default `limits.max_blob_size` (1 MiB): what devices chunk
/// files to on a relay with the embedded defaults.
pub use sync_protocol::limits::DEFAULT_MAX_BLOB_SIZE;

impl Relay {
    /// Start `sync-relay` with `bench_config(max_blob_size)`
    /// (which also bounds a push frame, so a batch of 64 × 64 KiB needs 4 MiB).
    pub fn start(max_blob_size: u32) -> Result<Relay> {
        Self::start_with(&bench_config(max_blob_size))
    }

    /// Start `sync-relay` as [`Relay::start`] does, on the PostgreSQL
    /// database `storage_url` (`[storage] url`) with the default pool of 16
    /// connections, and 1 GiB of requests in flight relay-wide
    /// (`limits.max_bytes_in_flight`): pushes wait longer for their commit
    /// than on SQLite, so 64 devices with a 4 MiB batch each in flight pass
    /// the default 128 MiB and would be refused as OVERLOADED.
    pub fn start_on_postgres(max_blob_size: u32, storage_url: &str) -> Result<Relay> {
        Self::start_with(&format!(
            "{}[storage]\nurl = {storage_url:?}\n",
            bench_config_with(max_blob_size, "max_bytes_in_flight = 1073741824\n")
        ))
    }

    /// Start `sync-relay` with the config file `config` (TOML), in a fresh
    /// temporary data dir, on ephemeral loopback ports. Its log goes to
    /// stderr, read here only for the address line.
    pub fn start_with(config_text: &str) -> Result<Relay> {
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("relay.toml");
        let data = dir.path().join("data");
        std::fs::write(&config, config_text)?;
        let mut child = Command::new(sibling("sync-relay")?)
            .arg("--config")
            .arg(&config)
            .args(["--data-dir"])
            .arg(&data)
            .args(["--quic-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting sync-relay")?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("relay address: ").nth(1) {
                    let _ = tx.send(rest.to_string());
                } else if line.contains("WARN") || line.contains("ERROR") {
                    // The bench config logs at `warn`: show what went wrong.
                    eprintln!("relay: {line}");
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .context("relay did not start")?;
        let address = line
            .split_whitespace()
            .next()
            .context("address")?
            .to_string();
        let quic = line
            .split("QUIC on ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .context("quic addr")?
            .parse()?;
        let http = line
            .split("HTTP on ")
            .nth(1)
            .and_then(|s| s.split([',', ')']).next())
            .context("http addr")?
            .parse()?;
        Ok(Relay {
            child,
            address,
            quic,
            http,
            config,
            data,
            _dir: dir,
        })
    }

    /// The relay's SQLite database (`relay.db` in its data dir).
    pub fn db_path(&self) -> PathBuf {
        self.data.join("relay.db")
    }

    /// `sync-relay token create --max-groups MAX_GROUPS` on this relay's
    /// config and data dir (while it runs, as an operator would): the
    /// access token it prints.
    pub fn create_token(&self, max_groups: u64) -> Result<sync_protocol::AccessToken> {
        let out = Command::new(sibling("sync-relay")?)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(["token", "create", "--label", "bench", "--max-groups"])
            .arg(max_groups.to_string())
            .stdin(Stdio::null())
            .output()
            .context("running sync-relay token create")?;
        if !out.status.success() {
            bail!(
                "sync-relay token create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        sync_protocol::AccessToken::parse(&String::from_utf8_lossy(&out.stdout))
            .context("sync-relay token create printed no token")
    }

    /// Connect options for a device of `keys`' group (a plain `Hello`, no
    /// access token).
    pub fn device(&self, keys: &GroupKeys) -> Result<ConnectOptions> {
        let relay: RelayAddr = self.address.parse()?;
        Ok(ConnectOptions {
            relay,
            keys: keys.clone(),
            device_key: iroh::SecretKey::generate(),
            device_name: None,
            connect_timeout: Duration::from_secs(30),
            access_token: None,
        })
    }

    /// Resident memory now and at its peak, in KiB.
    pub fn memory_kib(&self) -> (u64, u64) {
        proc_memory(self.child.id())
    }

    /// The relay's live heap in bytes (jemalloc `stats.allocated`, metric
    /// `sync_relay_heap_allocated_bytes`); 0 when the relay reports none
    /// (built without jemalloc).
    pub async fn heap_allocated(&self) -> Result<u64> {
        let text = scrape_metrics(self.http).await?;
        Ok(metric(&text, "sync_relay_heap_allocated_bytes").unwrap_or(0))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (VmRSS, VmHWM) of a process in KiB.
pub fn proc_memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `len` random bytes.
pub fn random(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).expect("OS random");
    v
}

/// A unique 16-byte id from two counters.
pub fn blob_id(a: u32, b: u64) -> sync_protocol::BlobId {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&a.to_be_bytes());
    id[4..12].copy_from_slice(&b.to_be_bytes());
    id[12..].copy_from_slice(&random(4));
    sync_protocol::BlobId(id)
}

/// The workspace `migrations/sqlite` directory.
pub fn migrations_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations/sqlite"))
}

/// The machine's 1-minute load average (`/proc/loadavg`), for the record
/// next to a figure; `None` where it cannot be read.
pub fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The value of an unlabelled metric in an OpenMetrics text.
pub fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// `GET /metrics` from the relay's HTTP address (HTTP/1.0, one request per
/// connection): the body, within 10 s.
pub async fn scrape_metrics(http: SocketAddr) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: relay\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.take(4 << 20).read_to_end(&mut response),
    )
    .await
    .context("/metrics did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&response);
    Ok(text
        .split("\r\n\r\n")
        .nth(1)
        .context("/metrics: no body")?
        .to_string())
}
