//! Harness for chaos scenarios: a relay reachable only through one fault
//! proxy per device, a canary of another group talking to the relay
//! directly the whole time, and a checker for the invariants every scenario
//! must keep:
//!
//! 1. no acknowledged blob lost — every cursor a push was acknowledged with
//!    (every message, and every chunk of every file, recorded as the relay
//!    acknowledges it, even by a push that is later killed) holds that blob
//!    at the end;
//! 2. no duplicate and nothing extra — no blob id stored twice, cursors
//!    gapless `1..=head`, and `head` equals the messages plus the chunks of
//!    the files pushed, each chunk of each file acknowledged;
//! 3. no corruption — every device receives exactly the messages and files
//!    the others pushed, byte for byte, each exactly once across all its
//!    pulls, nothing rejected, replayed or missing, and nothing else in its
//!    output directory;
//! 4. all devices converge on the same content;
//! 5. no plaintext at the relay — the marker in every message never appears
//!    in its data directory;
//! 6. the relay keeps serving other clients — the canary's round trips
//!    (one device pushes, another of its group pulls that very message)
//!    all complete, and at least one does in each canary run (the canary is
//!    stopped and checked before every relay kill and at the end).
//!
//! Faults are triggered on observed progress (acknowledged chunks, received
//! bytes), and scenarios check afterwards that the fault landed mid-transfer
//! (see [`PUSH_PIPELINE`] for why "some chunks after" means "more than the
//! pipeline").
//!
//! The relay stores blobs of at most [`CHAOS_BLOB_SIZE`], so files of a few
//! MiB span many chunks. `CHAOS_SCALE` (default 1) multiplies workload
//! sizes; CI runs 1, the full set is
//! `CHAOS_SCALE=10 cargo test -p e2e-tests --test e2e chaos::`.

use crate::proxy::{Link, UdpProxy};
use crate::{LibDevice, RelayProcess, contains};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use sync_client::client::push::PUSH_PIPELINE;
use sync_client::{
    ChunkAck, ConnectOptions, GroupSecret, LinkState, PullEvent, PushOptions, PushedFile,
    RetryPolicy, StateStore, SyncClient,
};
use sync_protocol::{BlobId, DeviceId};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The plaintext marker every chaos message carries.
pub const MARKER: &str = "CHAOS-PLAINTEXT-MARKER-9c4e";

/// The relay's `max_blob_size` in chaos runs (256 KiB): a 4 MiB file is 17
/// chunks, so a fault can land between chunks.
pub const CHAOS_BLOB_SIZE: u32 = 256 * 1024;

/// Longest a canary round trip may take before the canary fails: only there
/// so that a relay that stops answering fails the scenario instead of
/// hanging it.
pub const CANARY_ROUND_TRIP_DEADLINE: Duration = Duration::from_secs(30);

/// Workload multiplier from `CHAOS_SCALE` (default 1).
pub fn scale() -> usize {
    std::env::var("CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The retry policy devices use in chaos runs: quick stall detection so a
/// killed relay or a dead link is noticed in seconds, and patience for long
/// outages.
pub fn chaos_policy() -> RetryPolicy {
    RetryPolicy {
        stall_timeout: Duration::from_secs(4),
        max_attempts: Some(40),
        ..RetryPolicy::default()
    }
}

/// A blackhole that surely forces a reconnect: longer than the stall timeout
/// of [`chaos_policy`], plus its watchdog's tick (a fifth of it), plus 2 s
/// of margin (packets a bandwidth cap had queued before the cut still
/// arrive for up to the queue's 500 ms).
pub fn reconnect_forcing_outage() -> Duration {
    let stall = chaos_policy().stall_timeout;
    stall + stall / 5 + Duration::from_secs(2)
}

/// The client's connection number (1 = first connection; 0 while it is
/// reconnecting).
pub fn generation(client: &SyncClient) -> u64 {
    generation_of(&client.link_state())
}

fn generation_of(link: &watch::Receiver<LinkState>) -> u64 {
    match &*link.borrow() {
        LinkState::Connected { generation } => *generation,
        LinkState::Reconnecting { .. } => 0,
    }
}

/// Poll `check` every 10 ms until it is true; panic after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a device received before the final pull of [`Chaos::verify`].
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Messages, in arrival order (duplicates kept, to be caught).
    pub messages: Vec<Vec<u8>>,
    /// Names of completed files, in arrival order (duplicates kept).
    pub files: Vec<String>,
    /// Rejections and replays: none may happen. (A gap is only a problem at
    /// the final pull: mid-scenario, a pull can run while a sender's
    /// pipelined chunks are stored out of order.)
    pub problems: Vec<String>,
}

impl Received {
    /// Record one pull event.
    pub fn record(&mut self, e: &PullEvent) {
        match e {
            PullEvent::Message { data, .. } => self.messages.push(data.clone()),
            PullEvent::File { name, .. } => self.files.push(name.clone()),
            PullEvent::Rejected { .. } | PullEvent::Replay { .. } => {
                self.problems.push(format!("{e:?}"))
            }
            _ => {}
        }
    }
}

/// One device of the scenario, behind its own proxy.
pub struct ChaosDevice {
    /// Its identity and state.
    pub lib: LibDevice,
    /// Its link to the relay.
    pub proxy: UdpProxy,
    /// Where its received files go.
    pub out: PathBuf,
    /// What it received during the scenario.
    pub received: Arc<Mutex<Received>>,
}

/// What a spawned task needs to act as a device (owned, `'static`).
#[derive(Clone)]
pub struct DeviceHandle {
    /// Connection options.
    pub opts: ConnectOptions,
    /// Its state file.
    pub state_path: PathBuf,
    /// Where its received files go.
    pub out: PathBuf,
    /// What it received during the scenario.
    pub received: Arc<Mutex<Received>>,
}

impl DeviceHandle {
    /// Connect with the chaos retry policy.
    pub async fn connect(&self) -> SyncClient {
        SyncClient::connect_with(&self.opts, chaos_policy())
            .await
            .expect("connect")
    }

    /// Its sync state, as last saved.
    pub fn state(&self) -> StateStore {
        StateStore::open(&self.state_path).expect("state")
    }

    /// Pull with `client`, recording what it receives and showing every
    /// event to `observe` first.
    pub async fn pull_observed(
        &self,
        client: &SyncClient,
        observe: &mut (dyn FnMut(&PullEvent) + Send),
    ) -> sync_client::error::Result<sync_client::PullSummary> {
        let mut state = self.state();
        let received = Arc::clone(&self.received);
        client
            .pull(&mut state, &self.out, &mut |e| {
                observe(&e);
                received.lock().unwrap().record(&e);
            })
            .await
    }
}

impl ChaosDevice {
    /// Connect with the chaos retry policy.
    pub async fn connect(&self) -> SyncClient {
        self.handle().connect().await
    }

    /// This device's node id.
    pub fn id(&self) -> DeviceId {
        DeviceId(*self.lib.opts.device_key.public().as_bytes())
    }

    /// Its sync state, as last saved (each task opens its own view; the
    /// files are the truth).
    pub fn state(&self) -> StateStore {
        StateStore::open(self.lib.state.path()).expect("state")
    }

    /// An owned handle for spawned tasks.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle {
            opts: self.lib.opts.clone(),
            state_path: self.lib.state.path().to_path_buf(),
            out: self.out.clone(),
            received: Arc::clone(&self.received),
        }
    }
}

/// Where the relay stored one acknowledged chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    /// Cursor.
    pub cursor: u64,
    /// Blob id.
    pub blob_id: BlobId,
}

/// What pushes were acknowledged (cursor → blob id) and what content was
/// sent (by sender: messages and files), for the final check.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    /// Every acknowledged cursor → blob id (messages and file chunks).
    pub acked: BTreeMap<u64, BlobId>,
    /// Messages pushed by each device (by index).
    pub messages: BTreeMap<usize, BTreeSet<Vec<u8>>>,
    /// Files pushed by each device: name → content.
    pub files: BTreeMap<usize, BTreeMap<String, Vec<u8>>>,
    /// Acknowledged chunks of each file (device, name), by chunk index.
    pub chunks: BTreeMap<(usize, String), BTreeMap<u32, ChunkRecord>>,
    /// Contradictory acknowledgements (one cursor for two blobs, one chunk
    /// at two places): none may happen.
    pub conflicts: Vec<String>,
}

impl Ledger {
    /// Record that `cursor` holds `blob_id`.
    pub fn ack(&mut self, cursor: u64, blob_id: BlobId) {
        if let Some(before) = self.acked.insert(cursor, blob_id)
            && before != blob_id
        {
            self.conflicts.push(format!(
                "cursor {cursor} acknowledged for {before:?} and {blob_id:?}"
            ));
        }
    }

    /// Record an acknowledged chunk of file `name` of `device`.
    pub fn chunk(&mut self, device: usize, name: &str, ack: ChunkAck) {
        self.ack(ack.cursor, ack.blob_id);
        let record = ChunkRecord {
            cursor: ack.cursor,
            blob_id: ack.blob_id,
        };
        let chunks = self.chunks.entry((device, name.to_string())).or_default();
        if let Some(before) = chunks.insert(ack.index, record)
            && before != record
        {
            self.conflicts.push(format!(
                "chunk {} of {name} (device {device}) acknowledged as {before:?} and {record:?}",
                ack.index
            ));
        }
    }

    /// Record the content of a file `device` pushes (before pushing it: a
    /// file whose push is interrupted and resumed must still arrive).
    pub fn file(&mut self, device: usize, name: &str, content: &[u8]) {
        self.files
            .entry(device)
            .or_default()
            .insert(name.to_string(), content.to_vec());
    }
}

/// Push the file at `path` as `name` from `device`, recording every chunk in
/// `ledger` as the relay acknowledges it (so chunks acknowledged to a push
/// that is then killed count too), then calling `on_ack` with the number of
/// chunks this call has had acknowledged so far. `on_ack` runs in the push,
/// before the next chunk is sent: a fault it injects lands at that exact
/// point (with at most [`PUSH_PIPELINE`] - 1 requests in flight).
pub async fn push_path_recorded(
    client: &SyncClient,
    state: &mut StateStore,
    ledger: &Mutex<Ledger>,
    device: usize,
    path: &Path,
    name: &str,
    on_ack: &mut (dyn FnMut(u32) + Send),
) -> sync_client::error::Result<PushedFile> {
    let mut acked = 0;
    client
        .push_path_observed(
            state,
            path,
            Some(name),
            &PushOptions::default(),
            &mut |_, _| {},
            &mut |ack| {
                ledger.lock().unwrap().chunk(device, name, ack);
                acked += 1;
                on_ack(acked);
            },
        )
        .await
}

/// Holds a transfer at one point while the test injects a fault (e.g. kills
/// the relay), so the fault lands exactly there. The transfer calls
/// [`Hold::here`]; the test awaits [`HoldControl::reached`], acts, and
/// releases it (dropping the control releases it too).
pub struct Hold {
    reached: Option<tokio::sync::oneshot::Sender<()>>,
    release: std::sync::mpsc::Receiver<()>,
}

/// The test's side of a [`Hold`].
pub struct HoldControl {
    reached: tokio::sync::oneshot::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

/// A new hold and its control.
pub fn hold() -> (Hold, HoldControl) {
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    (
        Hold {
            reached: Some(reached_tx),
            release: release_rx,
        },
        HoldControl { reached, release },
    )
}

impl Hold {
    /// The first call tells the test and blocks this thread (inside
    /// `block_in_place`: multi-thread runtimes only) until released, for at
    /// most two minutes; later calls return at once.
    pub fn here(&mut self) {
        if let Some(reached) = self.reached.take() {
            let _ = reached.send(());
            tokio::task::block_in_place(|| {
                let _ = self.release.recv_timeout(Duration::from_secs(120));
            });
        }
    }
}

impl HoldControl {
    /// Wait until the transfer is held; panics if it ended without getting
    /// there, or after `limit`.
    pub async fn reached(&mut self, limit: Duration, what: &str) {
        tokio::time::timeout(limit, &mut self.reached)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .unwrap_or_else(|_| panic!("the transfer ended before {what}"));
    }

    /// Let the transfer go on.
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

/// What a canary run did.
type CanaryVerdict = Result<u32, String>;

struct Canary {
    task: JoinHandle<CanaryVerdict>,
    stop: watch::Sender<bool>,
}

/// One canary round trip: `writer` pushes message `i`, `reader` (same group)
/// pulls and must get exactly that message.
async fn canary_round_trip(
    writer: &SyncClient,
    wdev: &mut LibDevice,
    reader: &SyncClient,
    rdev: &mut LibDevice,
    out: &Path,
    i: u32,
) -> Result<(), String> {
    let msg = format!("canary {i}").into_bytes();
    writer
        .push_messages(
            &mut wdev.state,
            std::slice::from_ref(&msg),
            &PushOptions::default(),
        )
        .await
        .map_err(|e| format!("canary push {i}: {e}"))?;
    let mut got = Vec::new();
    reader
        .pull(&mut rdev.state, out, &mut |e| {
            if let PullEvent::Message { data, .. } = e {
                got.push(data)
            }
        })
        .await
        .map_err(|e| format!("canary pull {i}: {e}"))?;
    if got != [msg] {
        return Err(format!(
            "canary pull {i} read {:?} instead of its message",
            got.iter()
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    Ok(())
}

/// The canary: connect two devices of a fresh group, then round trips every
/// 200 ms until stopped; at least one round trip per run, each within
/// [`CANARY_ROUND_TRIP_DEADLINE`]. Returns how many completed.
async fn run_canary(address: String, mut stop: watch::Receiver<bool>) -> CanaryVerdict {
    let secret = GroupSecret::generate();
    let mut wdev = LibDevice::new(&address, &secret);
    let mut rdev = LibDevice::new(&address, &secret);
    let out = tempfile::tempdir().map_err(|e| e.to_string())?;
    let connect = |dev: &LibDevice| {
        let opts = dev.opts.clone();
        async move {
            tokio::time::timeout(CANARY_ROUND_TRIP_DEADLINE, SyncClient::connect(&opts))
                .await
                .map_err(|_| "the canary could not connect in time".to_string())?
                .map_err(|e| format!("the canary could not connect: {e}"))
        }
    };
    let writer = connect(&wdev).await?;
    let reader = connect(&rdev).await?;
    let mut done = 0u32;
    loop {
        let trip = canary_round_trip(&writer, &mut wdev, &reader, &mut rdev, out.path(), done);
        tokio::time::timeout(CANARY_ROUND_TRIP_DEADLINE, trip)
            .await
            .map_err(|_| {
                format!("canary round trip {done} took over {CANARY_ROUND_TRIP_DEADLINE:?}")
            })??;
        done += 1;
        if *stop.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            break;
        }
    }
    writer.close().await;
    reader.close().await;
    Ok(done)
}

/// A running scenario.
pub struct Chaos {
    /// The relay (listening on IPv6 loopback, reached through the proxies).
    pub relay: RelayProcess,
    /// The devices of the group.
    pub devices: Vec<ChaosDevice>,
    /// What was pushed and acknowledged.
    pub ledger: Arc<Mutex<Ledger>>,
    secret: GroupSecret,
    canary: Option<Canary>,
    /// Canary round trips completed so far (all runs).
    pub canary_round_trips: u32,
    /// Temporary directory of the run.
    pub tmp: TempDir,
}

impl Chaos {
    /// Start a relay and `n` devices, each behind a proxy with `link`.
    pub async fn start(n: usize, link: Link) -> Chaos {
        Self::start_with(n, link, &[]).await
    }

    /// As [`Chaos::start`], with extra relay arguments.
    pub async fn start_with(n: usize, link: Link, relay_args: &[&str]) -> Chaos {
        let tmp = tempfile::tempdir().unwrap();
        let config = tmp.path().join("relay.toml");
        // Chaos traffic comes from one address and can be bursty.
        std::fs::write(
            &config,
            format!(
                "[rate_limits]\nrequests_per_s = 100000\nrequests_burst = 100000\n\
                 connections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n\
                 [limits]\nmax_blob_size = {CHAOS_BLOB_SIZE}\n"
            ),
        )
        .unwrap();
        let mut args = vec!["--config", config.to_str().unwrap()];
        args.extend_from_slice(relay_args);
        let data = tmp.path().join("relay");
        let relay = tokio::task::block_in_place(|| RelayProcess::start_behind_proxy(&data, &args));
        let secret = GroupSecret::generate();
        let mut devices = Vec::new();
        for i in 0..n {
            let proxy = UdpProxy::with_seed(relay.quic, 1000 + i as u64).await;
            proxy.set(link.clone());
            let address = format!("{}@{}", relay.node_id(), proxy.addr);
            devices.push(ChaosDevice {
                lib: LibDevice::new(&address, &secret),
                proxy,
                out: tmp.path().join(format!("out-{i}")),
                received: Arc::default(),
            });
        }
        let mut chaos = Chaos {
            relay,
            devices,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            secret,
            canary: None,
            canary_round_trips: 0,
            tmp,
        };
        chaos.start_canary();
        chaos
    }

    /// Start (or restart) the canary: two devices of another group,
    /// directly connected; one pushes, the other pulls that message, every
    /// 200 ms. Its verdict comes from [`Chaos::stop_canary`].
    pub fn start_canary(&mut self) {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run_canary(self.relay.address.clone(), stopped));
        self.canary = Some(Canary { task, stop });
    }

    /// Stop the canary and check its verdict: panics if a round trip failed,
    /// read anything but its own message, or hit the deadline, or if none
    /// completed.
    pub async fn stop_canary(&mut self) {
        self.check_canary("when it was stopped").await
    }

    async fn check_canary(&mut self, when: &str) {
        if let Some(canary) = self.canary.take() {
            let _ = canary.stop.send(true);
            let verdict = canary.task.await.expect("the canary task panicked");
            let done = verdict.unwrap_or_else(|e| {
                panic!("the relay stopped serving another group (canary checked {when}): {e}")
            });
            assert!(done > 0, "the canary completed no round trip");
            self.canary_round_trips += done;
        }
    }

    /// Check the canary, then `kill -9` the relay. [`Chaos::restart_relay`]
    /// brings it back.
    pub async fn kill_relay(&mut self) {
        self.check_canary("before a relay kill").await;
        tokio::task::block_in_place(|| self.relay.kill9());
    }

    /// Start the relay again on the same address and data, and the canary.
    pub async fn restart_relay(&mut self) {
        let quic = self.relay.quic.to_string();
        let config = self.tmp.path().join("relay.toml");
        let data = self.tmp.path().join("relay");
        self.relay = tokio::task::block_in_place(|| {
            RelayProcess::start_with(&data, &quic, &["--config", config.to_str().unwrap()])
        });
        self.start_canary();
    }

    /// `kill -9` the relay (after checking the canary) and restart it on the
    /// same address and data after `down_for`.
    pub async fn crash_relay(&mut self, down_for: Duration) {
        self.kill_relay().await;
        tokio::time::sleep(down_for).await;
        self.restart_relay().await;
    }

    /// Set every device's link.
    pub fn set_links(&self, link: Link) {
        for d in &self.devices {
            d.proxy.set(link.clone());
        }
    }

    /// A chaos message: the marker, the device, the index, padding.
    pub fn message(device: usize, index: usize) -> Vec<u8> {
        format!(
            "{MARKER} from device {device} message {index} {}",
            "x".repeat(index % 97)
        )
        .into_bytes()
    }

    /// Push messages `range` from device `i` in batches, recording acks.
    pub async fn push_messages(
        &self,
        client: &SyncClient,
        i: usize,
        range: std::ops::Range<usize>,
    ) {
        let mut state = self.devices[i].state();
        let state = &mut state;
        let msgs: Vec<Vec<u8>> = range.map(|k| Self::message(i, k)).collect();
        for chunk in msgs.chunks(200) {
            let oks = client
                .push_messages(state, chunk, &PushOptions::default())
                .await
                .unwrap_or_else(|e| panic!("device {i} push failed: {e}"));
            let mut ledger = self.ledger.lock().unwrap();
            for ok in oks {
                for r in ok.results {
                    ledger.ack(r.cursor, r.blob_id);
                }
            }
            ledger
                .messages
                .entry(i)
                .or_default()
                .extend(chunk.iter().cloned());
        }
    }

    /// Write `content` as the source file `name` of device `i` and record it
    /// in the ledger as pushed; returns its path.
    pub fn source(&self, i: usize, name: &str, content: &[u8]) -> PathBuf {
        let path = self.tmp.path().join(format!("src-{i}-{name}"));
        std::fs::write(&path, content).unwrap();
        self.ledger.lock().unwrap().file(i, name, content);
        path
    }

    /// Push a file of `content` as `name` from device `i`, recording it and
    /// every chunk's cursor; `on_ack` as in [`push_path_recorded`].
    pub async fn push_file_observed(
        &self,
        client: &SyncClient,
        i: usize,
        name: &str,
        content: &[u8],
        on_ack: &mut (dyn FnMut(u32) + Send),
    ) -> PushedFile {
        let path = self.source(i, name, content);
        let mut state = self.devices[i].state();
        let pushed = push_path_recorded(client, &mut state, &self.ledger, i, &path, name, on_ack)
            .await
            .unwrap_or_else(|e| panic!("device {i} file push failed: {e}"));
        assert_eq!(pushed.size, content.len() as u64);
        pushed
    }

    /// Push a file of `content` as `name` from device `i`, recording it and
    /// every chunk's cursor.
    pub async fn push_file(&self, client: &SyncClient, i: usize, name: &str, content: &[u8]) {
        self.push_file_observed(client, i, name, content, &mut |_| {})
            .await;
    }

    /// Chunks a file of `len` bytes is pushed in, at the relay's blob size.
    pub fn chunks_of(client: &SyncClient, len: usize) -> u32 {
        len.div_ceil(client.chunk_size()).max(1) as u32
    }

    /// Pull on device `i` with `client`, recording what it receives and
    /// showing every event to `observe` first. Returns the number of blobs
    /// applied.
    pub async fn pull_observed(
        &self,
        i: usize,
        client: &SyncClient,
        observe: &mut (dyn FnMut(&PullEvent) + Send),
    ) -> u64 {
        self.devices[i]
            .handle()
            .pull_observed(client, observe)
            .await
            .unwrap_or_else(|e| panic!("device {i} pull: {e}"))
            .blobs
    }

    /// Pull on device `i` with `client`, recording what it receives.
    /// Returns the number of blobs applied.
    pub async fn pull(&self, i: usize, client: &SyncClient) -> u64 {
        self.pull_observed(i, client, &mut |_| {}).await
    }

    /// Clear all faults, let every device pull everything, and check the
    /// invariants (module docs). Returns the group's head.
    pub async fn verify(&mut self) -> u64 {
        self.set_links(Link::default());
        self.check_canary("at the end of the scenario").await;
        // 1 + 2: what the relay stores, read by a fresh direct device.
        let reader = LibDevice::new(&self.relay.address, &self.secret);
        let client = SyncClient::connect_with(&reader.opts, chaos_policy())
            .await
            .unwrap();
        let chunk_size = client.chunk_size();
        let mut stored: BTreeMap<u64, BlobId> = BTreeMap::new();
        let mut after = 0;
        loop {
            let mut resp = client.session().pull(after, 10_000).await.unwrap();
            let mut n = 0;
            while let Some(batch) = resp.next_batch().await.unwrap() {
                for b in batch.blobs {
                    n += 1;
                    after = b.cursor;
                    stored.insert(b.cursor, b.blob_id);
                }
            }
            if n == 0 {
                break;
            }
        }
        client.close().await;
        let head = stored.keys().last().copied().unwrap_or(0);
        assert_eq!(
            stored.keys().copied().collect::<Vec<_>>(),
            (1..=head).collect::<Vec<_>>(),
            "cursors gapless"
        );
        let ids: BTreeSet<BlobId> = stored.values().copied().collect();
        assert_eq!(ids.len(), stored.len(), "a blob id stored twice");
        let ledger = self.ledger.lock().unwrap().clone();
        assert!(
            ledger.conflicts.is_empty(),
            "contradictory acknowledgements: {:?}",
            ledger.conflicts
        );
        for (cursor, id) in &ledger.acked {
            assert_eq!(
                stored.get(cursor),
                Some(id),
                "acknowledged blob at cursor {cursor} lost"
            );
        }
        let mut expected_blobs = ledger.messages.values().map(BTreeSet::len).sum::<usize>();
        for (sender, files) in &ledger.files {
            for (name, content) in files {
                let chunks = content.len().div_ceil(chunk_size).max(1);
                expected_blobs += chunks;
                let acked: Vec<u32> = ledger
                    .chunks
                    .get(&(*sender, name.clone()))
                    .map(|c| c.keys().copied().collect())
                    .unwrap_or_default();
                assert_eq!(
                    acked,
                    (0..chunks as u32).collect::<Vec<_>>(),
                    "acknowledged chunks of {name} (device {sender}, {chunks} chunks)"
                );
            }
        }
        assert_eq!(
            ledger.acked.len(),
            expected_blobs,
            "acknowledged blobs vs messages + file chunks pushed"
        );
        assert_eq!(
            head as usize, expected_blobs,
            "the relay stores blobs nobody was acknowledged for: head vs messages + file chunks"
        );
        // 3 + 4: every device gets exactly what the others pushed, once.
        for (i, dev) in self.devices.iter().enumerate() {
            let client = SyncClient::connect_with(&dev.lib.opts, chaos_policy())
                .await
                .unwrap();
            let mut state = dev.state();
            let mut last = Received::default();
            client
                .pull(&mut state, &dev.out, &mut |e| {
                    if let PullEvent::Gap { .. } = e {
                        last.problems.push(format!("{e:?}"));
                    }
                    last.record(&e)
                })
                .await
                .unwrap_or_else(|e| panic!("device {i} final pull: {e}"));
            client.close().await;
            let before = dev.received.lock().unwrap().clone();
            assert!(
                before.problems.is_empty(),
                "device {i}: {:?}",
                before.problems
            );
            assert!(last.problems.is_empty(), "device {i}: {:?}", last.problems);
            let expected: BTreeSet<Vec<u8>> = ledger
                .messages
                .iter()
                .filter(|(sender, _)| **sender != i)
                .flat_map(|(_, m)| m.iter().cloned())
                .collect();
            let all_messages: Vec<Vec<u8>> =
                before.messages.into_iter().chain(last.messages).collect();
            let distinct: BTreeSet<Vec<u8>> = all_messages.iter().cloned().collect();
            assert_eq!(
                distinct.len(),
                all_messages.len(),
                "device {i} got a message twice"
            );
            assert_eq!(
                distinct, expected,
                "device {i} did not converge on the messages"
            );
            let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
            for name in before.files.into_iter().chain(last.files) {
                *deliveries.entry(name).or_default() += 1;
            }
            let mut expected_files: BTreeMap<String, usize> = BTreeMap::new();
            for (sender, sent) in &ledger.files {
                if *sender == i {
                    continue;
                }
                for (name, content) in sent {
                    expected_files.insert(name.clone(), 1);
                    let on_disk = std::fs::read(dev.out.join(name))
                        .unwrap_or_else(|_| panic!("device {i} lacks {name}"));
                    assert!(on_disk == *content, "device {i}: {name} corrupted");
                }
            }
            assert_eq!(
                deliveries, expected_files,
                "device {i}: files delivered (name → times) vs files pushed by the others"
            );
            let in_out_dir: BTreeSet<String> = match std::fs::read_dir(&dev.out) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
                Err(e) => panic!("device {i}: {e}"),
            };
            assert_eq!(
                in_out_dir,
                expected_files.keys().cloned().collect::<BTreeSet<_>>(),
                "device {i}: files in its output directory"
            );
        }
        // 5: no plaintext at the relay: its database and every payload
        // file (`blobs/xx/…`, docs/deploy.md "Data directory").
        let mut dirs = vec![self.tmp.path().join("relay")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                assert!(
                    !contains(&bytes, MARKER.as_bytes()),
                    "plaintext in {}",
                    path.display()
                );
            }
        }
        head
    }
}

/// How far a pull had got: the bytes of files applied so far (from
/// `Progress` events), when the fault struck, and what was applied after a
/// reconnect.
#[derive(Debug, Default)]
pub struct PullProgress {
    /// Most bytes of a file applied so far.
    pub bytes: AtomicU64,
    /// Bytes applied when the fault was injected (at the first progress).
    pub at_fault: AtomicU64,
    /// `Progress` events seen on a later connection (generation ≥ 2).
    pub after_reconnect: AtomicU32,
}

impl PullProgress {
    /// An observer for [`Chaos::pull_observed`] that updates `self` and
    /// calls `fault` at the first progress (part of a file applied), inside
    /// the pull: the fault lands at that exact point. `client` tells the
    /// connection generation.
    pub fn observer<'a>(
        &'a self,
        client: &SyncClient,
        fault: impl FnOnce() + Send + 'a,
    ) -> impl FnMut(&PullEvent) + Send + 'a {
        let link = client.link_state();
        let mut fault = Some(fault);
        move |e| {
            if let PullEvent::Progress { received, .. } = e {
                self.bytes.fetch_max(*received, Ordering::SeqCst);
                if generation_of(&link) >= 2 {
                    self.after_reconnect.fetch_add(1, Ordering::SeqCst);
                }
                if *received > 0
                    && let Some(fault) = fault.take()
                {
                    self.at_fault.store(*received, Ordering::SeqCst);
                    fault();
                }
            }
        }
    }
}
