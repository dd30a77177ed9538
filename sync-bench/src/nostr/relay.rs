//! nostr-rs-relay (crates.io) as a peer: where its binary is, how to
//! install it into the target directory (only when asked), and how to run
//! it on loopback with a benchmark config (no rate limits, a temporary
//! database directory).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nostr-rs-relay release installed by [`install`].
pub const VERSION: &str = "0.8.12";
/// Binary name, next to sync-bench's own.
const BINARY: &str = "nostr-rs-relay";
/// Environment variable naming a nostr-rs-relay binary to use instead.
pub const BINARY_ENV: &str = "NOSTR_RS_RELAY";

fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("exe dir")?.to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// The nostr-rs-relay binary: `$NOSTR_RS_RELAY` if set, else
/// `nostr-rs-relay` next to this binary. Errors: absent, saying how to
/// get it.
pub fn binary() -> Result<PathBuf> {
    let path = match std::env::var_os(BINARY_ENV) {
        Some(p) => PathBuf::from(p),
        None => exe_dir()?.join(BINARY),
    };
    if !path.is_file() {
        bail!(
            "{} not found (run `sync-bench peer --install-peer` to build nostr-rs-relay {VERSION} \
             into the target dir, or set {BINARY_ENV})",
            path.display()
        );
    }
    Ok(path)
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Build nostr-rs-relay [`VERSION`] from crates.io into `<target>/peer/`
/// and copy the binary next to this one; return its path. Slow (minutes):
/// run only on request (`--install-peer`), never in CI.
///
/// `cargo install --locked` of it fails on current Rust (its lock pins
/// `time` 0.3.25, which no longer compiles), so: fetch the crate source
/// through a throwaway manifest, copy it, move only `time` to 0.3.36 in
/// its own lock file, and `cargo build --release --locked`. Needs `protoc`
/// (Debian: `apt-get install -y protobuf-compiler`).
pub fn install() -> Result<PathBuf> {
    let bin_dir = exe_dir()?;
    let work = bin_dir.parent().context("target dir")?.join("peer");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if Command::new("protoc")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        bail!(
            "building nostr-rs-relay needs protoc (Debian: apt-get install -y protobuf-compiler)"
        );
    }
    let src = work.join(format!("nostr-rs-relay-{VERSION}"));
    if !src.join("Cargo.lock").is_file() {
        let probe = work.join("probe");
        std::fs::create_dir_all(probe.join("src"))?;
        std::fs::write(
            probe.join("Cargo.toml"),
            format!(
                "[package]\nname = \"peer-probe\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
                 [dependencies]\nnostr-rs-relay = \"={VERSION}\"\n[workspace]\n"
            ),
        )?;
        std::fs::write(probe.join("src/main.rs"), "fn main() {}\n")?;
        eprintln!("peer: fetching nostr-rs-relay {VERSION} from crates.io");
        let out = Command::new(&cargo)
            .args(["metadata", "--format-version", "1", "--manifest-path"])
            .arg(probe.join("Cargo.toml"))
            .stderr(Stdio::inherit())
            .output()
            .context("cargo metadata")?;
        if !out.status.success() {
            bail!("cargo metadata for nostr-rs-relay {VERSION} failed");
        }
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let manifest = meta["packages"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "nostr-rs-relay")
            .and_then(|p| p["manifest_path"].as_str())
            .context("nostr-rs-relay not in cargo metadata")?;
        let from = Path::new(manifest).parent().context("crate dir")?;
        let partial = work.join("src.partial");
        let _ = std::fs::remove_dir_all(&partial);
        copy_dir(from, &partial)?;
        std::fs::rename(&partial, &src)?;
    }
    let lock = std::fs::read_to_string(src.join("Cargo.lock"))?;
    if lock.contains("name = \"time\"\nversion = \"0.3.25\"") {
        run(Command::new(&cargo)
            .args(["update", "-p", "time@0.3.25", "--precise", "0.3.36"])
            .current_dir(&src))?;
    }
    eprintln!(
        "peer: building nostr-rs-relay {VERSION} in {} (minutes)",
        work.display()
    );
    run(Command::new(&cargo)
        .args(["build", "--release", "--locked"])
        .env("CARGO_TARGET_DIR", work.join("build"))
        .current_dir(&src))?;
    let dest = bin_dir.join(BINARY);
    std::fs::copy(work.join("build/release").join(BINARY), &dest)?;
    Ok(dest)
}

/// A nostr-rs-relay process on loopback, its database in a temp dir.
pub struct NostrRelay {
    child: Child,
    /// `ws://127.0.0.1:PORT/`.
    pub url: String,
    _dir: tempfile::TempDir,
}

/// Its config: loopback, SQLite in `data`, no event or subscription rate
/// limits (the defaults; stated), 128 KiB events (the default).
fn config(port: u16, data: &Path) -> String {
    format!(
        "[info]\nrelay_url = \"ws://127.0.0.1:{port}/\"\nname = \"sync-bench peer\"\n\
         [database]\nengine = \"sqlite\"\ndata_directory = {data:?}\n\
         [network]\naddress = \"127.0.0.1\"\nport = {port}\n\
         [options]\nreject_future_seconds = 1800\n\
         [limits]\nmessages_per_sec = 0\nsubscriptions_per_min = 0\n\
         max_event_bytes = 131072\nmax_ws_message_bytes = 131072\n"
    )
}

impl NostrRelay {
    /// Start `bin` and wait (up to 30 s) until it accepts a WebSocket.
    /// Logs at `warn` (as our relay in the bench), to /dev/null.
    pub async fn start(bin: &Path) -> Result<NostrRelay> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("db");
        std::fs::create_dir_all(&data)?;
        // nostr-rs-relay prints no bound port, so it is given a free one;
        // if another process takes it first, the readiness check fails.
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, config(port, &data))?;
        let child = Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir.path())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut relay = NostrRelay {
            child,
            url: format!("ws://127.0.0.1:{port}/"),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = relay.child.try_wait()? {
                bail!("nostr-rs-relay exited at start: {status}");
            }
            if let Ok(c) = super::client::Connection::connect(&relay.url).await {
                c.close().await;
                return Ok(relay);
            }
            if Instant::now() > deadline {
                bail!("nostr-rs-relay did not accept a WebSocket in 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for NostrRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
