//! Harness for end-to-end tests: starts the real `sync-relay` binary on a
//! free loopback port with a temp data dir, and runs the real `sync-cli`
//! with temp device homes. Everything is removed when the values drop.
//!
//! The binaries are looked up next to the test executable
//! (`target/<profile>/`), where `cargo test --workspace` builds them; set
//! `SYNC_RELAY_BIN` / `SYNC_CLI_BIN` to test other builds.

pub mod chaos;
pub mod fake_relay;
pub mod folder;
pub mod member;
pub mod memory;
pub mod proxy;
pub mod tcp_proxy;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_client::{ConnectOptions, GroupSecret, RelayAddr, StateStore, SyncClient};
use tempfile::TempDir;

/// Path of a workspace binary.
pub fn bin(name: &str) -> PathBuf {
    let env = format!("{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not found; build it with `cargo build --workspace --bins` or set {env}",
        path.display()
    );
    path
}

/// The environment [`RelayProcess::start_with`] runs relays in: open access
/// mode, no practical limit on the groups one address creates per hour,
/// 1000 live sessions on one address's groups (so that with the default
/// `max_sessions` ten addresses may own groups), and the default storage
/// budget per address (1 GiB, far above what tests store). Environment variables
/// override the config file, so tests that configure `[access]` themselves
/// start with [`RelayProcess::start_with_access`].
pub const OPEN_ACCESS: &[(&str, &str)] = &[
    ("SYNC_RELAY__ACCESS__MODE", "open"),
    (
        "SYNC_RELAY__ACCESS__NEW_GROUPS_PER_ADDRESS_PER_HOUR",
        "1000000",
    ),
    ("SYNC_RELAY__ACCESS__MAX_SESSIONS_PER_ADDRESS", "1000"),
];

/// A running `sync-relay` process.
pub struct RelayProcess {
    child: Child,
    /// `NODE_ID@127.0.0.1:PORT`.
    pub address: String,
    /// The bound QUIC address.
    pub quic: SocketAddr,
    /// The bound HTTP address.
    pub http: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    log: Arc<Mutex<String>>,
    /// When `/health` or `/metrics` was last asked (see [`FIGURES_MAX_AGE`]).
    figures_asked: Mutex<Option<std::time::Instant>>,
}

/// How old the storage figures (groups, devices, blobs, bytes) in `/health`
/// and `/metrics` may be: the relay queries them at most once per second
/// (`sync_relay::http::STATS_MAX_AGE`), so a read right after a change may
/// show the figures from before it. [`RelayProcess::fresh_health`] and
/// [`RelayProcess::fresh_metrics`] wait this out.
pub const FIGURES_MAX_AGE: Duration = Duration::from_secs(1);

impl RelayProcess {
    /// Start a relay on free loopback ports with `data_dir`.
    pub fn start(data_dir: &Path) -> RelayProcess {
        Self::start_with(data_dir, "127.0.0.1:0", &[])
    }

    /// Start a relay meant to be reached only through a
    /// [`proxy::UdpProxy`]: it listens on IPv6 loopback, which the devices'
    /// IPv4 endpoints cannot reach directly (see the proxy module docs).
    pub fn start_behind_proxy(data_dir: &Path, extra: &[&str]) -> RelayProcess {
        Self::start_with(data_dir, "[::1]:0", extra)
    }

    /// Start a relay with an explicit QUIC bind address and extra arguments,
    /// in open access mode with no practical per-address limit on new
    /// groups or sessions ([`OPEN_ACCESS`]): tests that are not about
    /// admission create groups freely, as devices did before access
    /// control. Tests about access use [`RelayProcess::start_with_access`].
    pub fn start_with(data_dir: &Path, quic_bind: &str, extra: &[&str]) -> RelayProcess {
        Self::start_with_env(data_dir, quic_bind, extra, &[])
    }

    /// Start a relay whose `[access]` comes from `extra` (e.g. `--config`)
    /// or the defaults (token mode): nothing is overridden.
    pub fn start_with_access(data_dir: &Path, quic_bind: &str, extra: &[&str]) -> RelayProcess {
        Self::spawn(data_dir, quic_bind, extra, &[])
    }

    /// [`RelayProcess::start_with`] (open access, [`OPEN_ACCESS`]) with extra
    /// environment variables (e.g. the debug-build fail point
    /// `SYNC_RELAY_FAILPOINT`); `env` is applied after [`OPEN_ACCESS`], so it
    /// may override it.
    pub fn start_with_env(
        data_dir: &Path,
        quic_bind: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RelayProcess {
        let env: Vec<(&str, &str)> = OPEN_ACCESS.iter().chain(env).copied().collect();
        Self::spawn(data_dir, quic_bind, extra, &env)
    }

    fn spawn(
        data_dir: &Path,
        quic_bind: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RelayProcess {
        let mut child = Command::new(bin("sync-relay"))
            .args(["--data-dir"])
            .arg(data_dir)
            .args(["--quic-bind", quic_bind, "--http-bind", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sync-relay");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("relay address: ").nth(1) {
                    let _ = tx.send(rest.to_string());
                }
                let mut l = log2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("relay did not start:\n{}", log.lock().unwrap());
            }
        };
        // "ID@HOST:PORT (QUIC on A, HTTP on B)"
        let address = line.split_whitespace().next().unwrap().to_string();
        let quic = line
            .split("QUIC on ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let http = line
            .split("HTTP on ")
            .nth(1)
            .unwrap()
            .trim_end_matches(')')
            .parse()
            .unwrap();
        RelayProcess {
            child,
            address,
            quic,
            http,
            data_dir: data_dir.to_path_buf(),
            log,
            figures_asked: Mutex::new(None),
        }
    }

    /// The relay's node id (hex).
    pub fn node_id(&self) -> &str {
        self.address.split('@').next().unwrap()
    }

    /// What the relay logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Wait up to `limit` for the relay to exit on its own; `None` if it is
    /// still running then.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for relay") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for relay")
    }

    /// `GET path` on the relay's HTTP address: (status code, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        if path == "/health" || path == "/metrics" {
            *self.figures_asked.lock().unwrap() = Some(std::time::Instant::now());
        }
        let mut s = std::net::TcpStream::connect(self.http).expect("connect to HTTP");
        write!(s, "GET {path} HTTP/1.0\r\nHost: relay\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        (status, body.to_string())
    }

    /// `GET /health` as JSON.
    pub fn health(&self) -> serde_json::Value {
        let (_, body) = self.http_get("/health");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad /health body {body:?}: {e}"))
    }

    /// [`RelayProcess::health`] with storage figures that include every
    /// change made before the call: first waits until [`FIGURES_MAX_AGE`]
    /// (plus a margin) has passed since the last `/health` or `/metrics`
    /// request, so the relay queries its database afresh.
    pub fn fresh_health(&self) -> serde_json::Value {
        self.wait_for_fresh_figures();
        self.health()
    }

    /// [`RelayProcess::metrics`] with fresh storage figures, as
    /// [`RelayProcess::fresh_health`].
    pub fn fresh_metrics(&self) -> Metrics {
        self.wait_for_fresh_figures();
        self.metrics()
    }

    fn wait_for_fresh_figures(&self) {
        let asked = *self.figures_asked.lock().unwrap();
        if let Some(at) = asked {
            let ready = at + FIGURES_MAX_AGE + Duration::from_millis(100);
            std::thread::sleep(ready.saturating_duration_since(std::time::Instant::now()));
        }
    }

    /// `GET /metrics`, parsed as OpenMetrics (panics when it does not parse).
    pub fn metrics(&self) -> Metrics {
        let (status, body) = self.http_get("/metrics");
        assert_eq!(status, 200, "{body}");
        match openmetrics_parser::openmetrics::parse_openmetrics(&body) {
            Ok(exposition) => Metrics(exposition),
            Err(e) => panic!("/metrics is not valid OpenMetrics ({e:?}):\n{body}"),
        }
    }

    /// A bare iroh connection to the relay (no Hello sent), from a fresh
    /// offline endpoint: for tests that speak the protocol by hand.
    pub async fn raw_connect(&self) -> (iroh::Endpoint, iroh::endpoint::Connection) {
        let ep = iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
            .relay_mode(iroh::RelayMode::Disabled)
            .clear_address_lookup()
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .expect("bind address")
            .bind()
            .await
            .expect("bind endpoint");
        let relay_id: iroh::EndpointId = self.node_id().parse().unwrap();
        let conn = ep
            .connect(
                iroh::EndpointAddr::new(relay_id).with_ip_addr(self.quic),
                sync_protocol::ALPN,
            )
            .await
            .expect("connect to relay");
        (ep, conn)
    }

    /// A raw connection that has completed a valid `Hello` for `keys`'
    /// group (the `Welcome` is returned): for tests that misbehave after the
    /// handshake.
    ///
    /// It speaks protocol version 2, whose notification stream carries
    /// only `Notify` frames (of at most 4 KiB), which these tests read;
    /// [`RelayProcess::raw_session_version`] speaks another.
    pub async fn raw_session(
        &self,
        keys: &sync_client::GroupKeys,
    ) -> (
        iroh::Endpoint,
        iroh::endpoint::Connection,
        sync_protocol::Welcome,
    ) {
        self.raw_session_version(keys, 2).await
    }

    /// [`RelayProcess::raw_session`] speaking protocol `version`.
    pub async fn raw_session_version(
        &self,
        keys: &sync_client::GroupKeys,
        version: u16,
    ) -> (
        iroh::Endpoint,
        iroh::endpoint::Connection,
        sync_protocol::Welcome,
    ) {
        use sync_protocol::{DeviceId, Hello, Message, read_message, write_message};
        let (ep, conn) = self.raw_connect().await;
        let relay_id = DeviceId(
            *self
                .node_id()
                .parse::<iroh::EndpointId>()
                .unwrap()
                .as_bytes(),
        );
        let hello = Message::Hello(Hello {
            version,
            group_id: keys.group_id(),
            proof: keys.proof(&relay_id, &DeviceId(*ep.id().as_bytes())),
            device_name: None,
        });
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_message(&mut send, &hello, 4096).await.unwrap();
        send.finish().unwrap();
        match read_message(&mut recv, 4096).await.unwrap() {
            Some(Message::Welcome(w)) => (ep, conn, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// The relay process's resident memory (VmRSS) in KiB. Panics when it
    /// cannot be read (see [`RelayProcess::proc_status_kib`]): a memory
    /// check must never pass on a reading of 0.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status_kib("VmRSS")
    }

    /// Path of the relay's SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("relay.db")
    }

    /// Run `sync-relay token ARGS --data-dir DATA_DIR` next to the running
    /// relay (as an operator would) and return its output.
    pub fn token(&self, args: &[&str]) -> Output {
        Command::new(bin("sync-relay"))
            .arg("token")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .output()
            .expect("run sync-relay token")
    }

    /// `sync-relay token create ARGS`, asserting success: the token line.
    pub fn create_token(&self, args: &[&str]) -> String {
        let mut all = vec!["create"];
        all.extend_from_slice(args);
        let out = self.token(&all);
        assert!(
            out.status.success(),
            "token create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count(), 1, "the token alone: {stdout:?}");
        stdout.trim().to_string()
    }
}

/// An offline iroh endpoint bound to `ip` (port chosen by the system): a
/// device connecting from that address, e.g. one of many loopback
/// addresses (127.0.0.0/8) standing for strangers on many hosts. Use it with
/// [`sync_client::RelaySession::connect_on`].
pub async fn endpoint_at(ip: std::net::IpAddr) -> iroh::Endpoint {
    iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(SocketAddr::new(ip, 0))
        .expect("bind address")
        .bind()
        .await
        .expect("bind endpoint")
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Memory of the relay process, for tests that bound what an attack costs
/// (Linux `/proc` and `prlimit`).
impl RelayProcess {
    /// A `Vm*` figure of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`,
    /// `VmSize`, …). Panics when the file cannot be read or lacks the
    /// field (a relay that has exited has no `Vm*` lines), so a broken
    /// reading fails the test instead of passing as 0.
    pub fn proc_status_kib(&self, field: &str) -> u64 {
        let path = format!("/proc/{}/status", self.child.id());
        let status = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {path} for {field}: {e}"));
        let prefix = format!("{field}:");
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| {
                panic!("{path} has no {field} line (has the relay exited?):\n{status}")
            });
        match value.split_whitespace().collect::<Vec<_>>()[..] {
            [n, "kB"] => n
                .parse()
                .unwrap_or_else(|e| panic!("{path}: bad {field} value {value:?}: {e}")),
            _ => panic!("{path}: unexpected {field} value {value:?}"),
        }
    }

    /// The names of the relay process's threads (`/proc/PID/task/*/comm`).
    /// Panics when they cannot be read.
    pub fn thread_names(&self) -> Vec<String> {
        let dir = format!("/proc/{}/task", self.child.id());
        let tasks = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {dir}: {e}"));
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim_end().to_string())
            .collect()
    }

    /// The relay's peak resident memory (VmHWM) in KiB since it started or
    /// since the last [`RelayProcess::reset_peak_rss`]. Unlike VmRSS it
    /// also sees memory that was touched and already freed again.
    pub fn peak_rss_kib(&self) -> u64 {
        self.proc_status_kib("VmHWM")
    }

    /// Reset the relay's peak resident memory (VmHWM) to its current
    /// resident memory (`echo 5 > /proc/PID/clear_refs`, Linux ≥ 4.0).
    pub fn reset_peak_rss(&self) {
        let path = format!("/proc/{}/clear_refs", self.child.id());
        std::fs::write(&path, "5")
            .unwrap_or_else(|e| panic!("cannot reset the peak RSS ({path}): {e}"));
    }

    /// Cap the running relay's address space (`RLIMIT_AS`, via `prlimit(2)`)
    /// at its current size (VmSize) plus `headroom` bytes, and return the
    /// cap in bytes. From then on a mapping beyond the cap fails, so an
    /// allocation of more than `headroom` makes the relay abort ("memory
    /// allocation of N bytes failed") even where RSS would not show it: a
    /// `Vec::with_capacity` of gigabytes is only reserved, never touched.
    /// Measure the relay's normal growth first and keep `headroom` well
    /// above it (tokio threads and glibc arenas reserve address space).
    pub fn limit_address_space(&self, headroom: u64) -> u64 {
        let cap = self.proc_status_kib("VmSize") * 1024 + headroom;
        let limit = libc::rlimit {
            rlim_cur: cap,
            rlim_max: cap,
        };
        // SAFETY: prlimit reads `limit`, a valid rlimit, and is given a null
        // pointer for the old limit, which it then does not write.
        let rc = unsafe {
            libc::prlimit(
                self.child.id() as libc::pid_t,
                libc::RLIMIT_AS,
                &limit,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(
            rc,
            0,
            "prlimit(RLIMIT_AS) on the relay: {}",
            std::io::Error::last_os_error()
        );
        cap
    }

    /// The relay's exit status if it has exited (e.g. aborted on a failed
    /// allocation), `None` while it runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the relay")
    }
}

/// A parsed `/metrics` exposition.
pub struct Metrics(
    openmetrics_parser::MetricsExposition<
        openmetrics_parser::OpenMetricsType,
        openmetrics_parser::OpenMetricsValue,
    >,
);

impl Metrics {
    /// The value of a counter or gauge sample; `labels` are the label
    /// values in the family's label order. Panics if absent.
    pub fn value(&self, family: &str, labels: &[&str]) -> f64 {
        use openmetrics_parser::OpenMetricsValue;
        let fam = self
            .0
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no metric family {family}"));
        let wanted: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        let sample = fam
            .get_sample_by_label_values(&wanted)
            .unwrap_or_else(|| panic!("no sample {family}{labels:?}"));
        match &sample.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) | OpenMetricsValue::Unknown(g) => g.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            other => panic!("{family} is not a number: {other:?}"),
        }
    }
}

/// A device home used through the real `sync-cli`.
pub struct Device {
    /// The home directory.
    pub home: PathBuf,
    _dir: TempDir,
}

impl Device {
    /// A fresh, empty home.
    pub fn new() -> Device {
        let dir = tempfile::tempdir().unwrap();
        Device {
            home: dir.path().join("home"),
            _dir: dir,
        }
    }

    /// A `sync-cli` command with `--home` set.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin("sync-cli"));
        c.arg("--home").arg(&self.home);
        c.stdin(Stdio::null());
        c
    }

    /// Run `sync-cli ARGS`, asserting success; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().expect("run sync-cli");
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Point this device at another relay address (e.g. a fault proxy in
    /// front of the relay) as its only relay, editing `group.toml`.
    pub fn set_relay(&self, address: &str) {
        self.set_relays(&[address]);
    }

    /// Make `addresses` this device's relays (first preferred), editing
    /// `group.toml`.
    pub fn set_relays(&self, addresses: &[&str]) {
        let path = self.home.join("group.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let mut found = false;
        let edited: String = text
            .lines()
            .map(|l| {
                if l.starts_with("relays = ") || l.starts_with("relay = ") {
                    found = true;
                    format!("relays = [{}]\n", list.join(", "))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        assert!(found, "no relays in {}: {text}", path.display());
        std::fs::write(&path, edited).unwrap();
    }

    /// Run `sync-cli ARGS` and return the whole output, success or not.
    pub fn output(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run sync-cli")
    }

    /// Run `sync-cli join INVITE ARGS` on this device while `inviter`
    /// answers: `join` runs in the background and the inviter runs
    /// `answer` (e.g. `["invite", "--answer"]`, or a `pull`) again and
    /// again until `join` ends. Nothing depends on who is first: a request
    /// posted after an answering round is answered by the next one.
    /// Returns join's whole output, success or not.
    pub fn join_answered(
        &self,
        inviter: &Device,
        invite: &str,
        args: &[&str],
        answer: &[&str],
    ) -> Output {
        let child = self
            .cmd()
            .arg("join")
            .arg(invite)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sync-cli join");
        inviter.answer_until_done(child, answer)
    }

    /// Run `sync-cli ANSWER` on this device (the inviter) again and again
    /// until `join` (a running `sync-cli join`) ends; returns its output.
    /// Bounded by join's own --timeout (default 10 min).
    pub fn answer_until_done(&self, mut join: Child, answer: &[&str]) -> Output {
        loop {
            if join.try_wait().expect("join's status").is_some() {
                break;
            }
            let out = self.output(answer);
            assert_success(&out, answer);
            std::thread::sleep(Duration::from_millis(100));
        }
        join.wait_with_output().expect("join's output")
    }

    /// Join with `invite` (one-time: `inviter` answers with `invite
    /// --answer`), asserting success; returns join's stdout.
    pub fn join(&self, inviter: &Device, invite: &str, args: &[&str]) -> String {
        let out = self.join_answered(inviter, invite, args, &["invite", "--answer"]);
        assert_success(&out, &["join"]);
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Default for Device {
    fn default() -> Self {
        Device::new()
    }
}

/// Blobs [`init_pair`] leaves at the relay: A's roster blob in the group
/// (its genesis and B's `Add`) and, in the invite's mailbox, B's request,
/// the roster and A's answer (docs/security.md "Invites as one-time
/// enrolment credentials").
pub const INIT_PAIR_BLOBS: u64 = 4;

/// A creates a group on `relay`, B joins it with A's one-time invite (A
/// answers with `invite --answer`); both through the real CLI. The group's
/// cursor 1 is A's roster blob that added B.
pub fn init_pair(relay: &RelayProcess) -> (Device, Device) {
    let a = Device::new();
    let b = Device::new();
    let invite = a.run(&["init", "--relay", &relay.address, "--name", "test group"]);
    assert!(invite.trim().starts_with("0ksync2-"), "{invite}");
    b.join(&a, invite.trim(), &[]);
    (a, b)
}

/// Parse one JSON document.
pub fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// Parse one JSON object per line.
pub fn ndjson(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(json).collect()
}

/// Poll `check` every 20 ms until it is true; panic after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + limit;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Panic with both output streams when a command failed.
pub fn assert_success(out: &Output, args: &[&str]) {
    assert!(
        out.status.success(),
        "sync-cli {args:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A multi-megabyte binary that ships with the machine (not written by the
/// test): the largest regular file of 2–16 MiB in a few system directories.
pub fn machine_binary() -> PathBuf {
    let mut best: Option<(u64, PathBuf)> = None;
    for dir in [
        "/usr/bin",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib",
        "/usr/sbin",
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            let len = meta.len();
            if meta.is_file()
                && (2 << 20..=16 << 20).contains(&len)
                && best.as_ref().is_none_or(|(l, _)| len > *l)
            {
                best = Some((len, e.path()));
            }
        }
    }
    best.expect("a 2-16 MiB system file").1
}

/// A library-level device for protocol tests: its own key and state files.
pub struct LibDevice {
    /// Connection options (relay, keys, device key).
    pub opts: ConnectOptions,
    /// Sync state.
    pub state: StateStore,
    _dir: TempDir,
}

impl LibDevice {
    /// A device of the group `secret` on `relay`.
    pub fn new(relay: &str, secret: &GroupSecret) -> LibDevice {
        let dir = tempfile::tempdir().unwrap();
        let relay: RelayAddr = relay.parse().unwrap();
        LibDevice {
            opts: ConnectOptions {
                relay,
                keys: secret.keys(),
                device_key: iroh::SecretKey::generate(),
                device_name: None,
                connect_timeout: Duration::from_secs(10),
                access_token: None,
            },
            state: StateStore::open(dir.path().join("state.json")).unwrap(),
            _dir: dir,
        }
    }

    /// Connect.
    pub async fn connect(&self) -> SyncClient {
        SyncClient::connect(&self.opts).await.expect("connect")
    }
}

/// True when `haystack` contains `needle`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `len` incompressible pseudo-random bytes (xorshift64*), deterministic.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Start a relay on free loopback ports with `config` (TOML) written to
/// `dir/relay.toml` and its data in `dir/data`, in open access mode with
/// generous limits unless `config` says otherwise ([`RelayProcess::start_with`]).
pub fn relay_with(dir: &Path, config: &str) -> RelayProcess {
    relay_with_config(dir, config, RelayProcess::start_with)
}

/// As [`relay_with`], with the relay's own access defaults (token mode),
/// for tests of access control ([`RelayProcess::start_with_access`]).
pub fn relay_with_access(dir: &Path, config: &str) -> RelayProcess {
    relay_with_config(dir, config, RelayProcess::start_with_access)
}

fn relay_with_config(
    dir: &Path,
    config: &str,
    start: fn(&Path, &str, &[&str]) -> RelayProcess,
) -> RelayProcess {
    let file = dir.join("relay.toml");
    std::fs::write(&file, config).unwrap();
    start(
        &dir.join("data"),
        "127.0.0.1:0",
        &["--config", file.to_str().unwrap()],
    )
}

/// An honest device of a fresh group pushes a message and pulls it back
/// (panics if either fails); returns how long that took.
pub async fn honest_round_trip(relay: &RelayProcess) -> Duration {
    let started = std::time::Instant::now();
    let secret = GroupSecret::generate();
    let mut dev = LibDevice::new(&relay.address, &secret);
    let client = dev.connect().await;
    client
        .push_messages(
            &mut dev.state,
            &[b"still here".to_vec()],
            &Default::default(),
        )
        .await
        .expect("honest push works");
    let batch = client
        .session()
        .pull(0, 10)
        .await
        .unwrap()
        .next_batch()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(batch.blobs.len(), 1);
    client.close().await;
    started.elapsed()
}
