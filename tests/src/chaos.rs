//! Harness for chaos scenarios: a relay reachable only through one fault
//! proxy per device, a canary client of another group talking to the relay
//! directly the whole time, and a checker for the invariants every scenario
//! must keep:
//!
//! 1. no acknowledged blob lost — every cursor a push was acknowledged with
//!    holds that blob at the end;
//! 2. no duplicate — no blob id stored twice, cursors gapless `1..=head`;
//! 3. no corruption — every device receives exactly the messages and files
//!    the others pushed, byte for byte, each once, nothing rejected;
//! 4. all devices converge on the same content;
//! 5. no plaintext at the relay — the marker in every message never appears
//!    in its data directory;
//! 6. the relay keeps serving other clients — the canary's round trips
//!    never fail and stay fast.
//!
//! `CHAOS_SCALE` (default 1) multiplies workload sizes; CI runs 1, the full
//! set is `CHAOS_SCALE=10 cargo test -p e2e-tests --test chaos`.

use crate::proxy::{Link, UdpProxy};
use crate::{LibDevice, RelayProcess, contains};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, PullEvent, PushOptions, RetryPolicy, SyncClient};
use sync_protocol::{BlobId, DeviceId};
use tempfile::TempDir;
use tokio::task::JoinHandle;

/// The plaintext marker every chaos message carries.
pub const MARKER: &str = "CHAOS-PLAINTEXT-MARKER-9c4e";

/// Workload multiplier from `CHAOS_SCALE` (default 1).
pub fn scale() -> usize {
    std::env::var("CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// The retry policy devices use in chaos runs: quick stall detection so a
/// killed relay is noticed in seconds, and patience for long outages.
pub fn chaos_policy() -> RetryPolicy {
    RetryPolicy {
        stall_timeout: Duration::from_secs(4),
        max_attempts: Some(40),
        ..RetryPolicy::default()
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
    /// Messages it received during the scenario.
    pub seen: Mutex<BTreeSet<Vec<u8>>>,
}

impl ChaosDevice {
    /// Connect with the chaos retry policy.
    pub async fn connect(&self) -> SyncClient {
        SyncClient::connect_with(&self.lib.opts, chaos_policy())
            .await
            .expect("connect")
    }

    /// This device's node id.
    pub fn id(&self) -> DeviceId {
        DeviceId(*self.lib.opts.device_key.public().as_bytes())
    }

    /// Its sync state, as last saved (each task opens its own view; the
    /// files are the truth).
    pub fn state(&self) -> sync_client::StateStore {
        sync_client::StateStore::open(self.lib.state.path()).expect("state")
    }
}

/// What pushes were acknowledged (cursor → blob id) and what content was
/// sent (by sender: messages and files), for the final check.
#[derive(Default)]
pub struct Ledger {
    /// Acknowledged cursor → blob id.
    pub acked: BTreeMap<u64, BlobId>,
    /// Messages pushed by each device (by index).
    pub messages: BTreeMap<usize, BTreeSet<Vec<u8>>>,
    /// Files pushed by each device: name → content.
    pub files: BTreeMap<usize, BTreeMap<String, Vec<u8>>>,
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
    canary: Option<(JoinHandle<Duration>, Arc<AtomicBool>)>,
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
            "[rate_limits]\nrequests_per_s = 100000\nrequests_burst = 100000\n\
             connections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n",
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
                seen: Mutex::new(BTreeSet::new()),
            });
        }
        let mut chaos = Chaos {
            relay,
            devices,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            secret,
            canary: None,
            tmp,
        };
        chaos.start_canary();
        chaos
    }

    /// Start (or restart) the canary: a device of another group, directly
    /// connected, pushing and pulling every 200 ms. Returns nothing; its
    /// verdict comes from [`Chaos::stop_canary`].
    pub fn start_canary(&mut self) {
        let address = self.relay.address.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let secret = GroupSecret::generate();
            let mut dev = LibDevice::new(&address, &secret);
            let client = SyncClient::connect(&dev.opts)
                .await
                .expect("canary connects");
            let mut worst = Duration::ZERO;
            let mut i = 0u32;
            while !flag.load(Ordering::Relaxed) {
                let started = Instant::now();
                client
                    .push_messages(
                        &mut dev.state,
                        &[format!("canary {i}").into_bytes()],
                        &PushOptions::default(),
                    )
                    .await
                    .expect("canary push");
                let mut got = 0;
                client
                    .pull(
                        &mut dev.state,
                        Path::new("/nonexistent-canary-out"),
                        &mut |e| {
                            if matches!(e, PullEvent::Message { .. }) {
                                got += 1
                            }
                        },
                    )
                    .await
                    .expect("canary pull");
                worst = worst.max(started.elapsed());
                i += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            client.close().await;
            worst
        });
        self.canary = Some((task, stop));
    }

    /// Stop the canary; panics if it failed or was ever slow (> 3 s).
    pub async fn stop_canary(&mut self) {
        if let Some((task, stop)) = self.canary.take() {
            stop.store(true, Ordering::Relaxed);
            let worst = task
                .await
                .expect("the canary failed: the relay stopped serving others");
            assert!(
                worst < Duration::from_secs(3),
                "canary round trip took {worst:?}"
            );
        }
    }

    /// `kill -9` the relay and restart it on the same address and data.
    pub async fn crash_relay(&mut self, down_for: Duration) {
        let quic = self.relay.quic.to_string();
        let config = self.tmp.path().join("relay.toml");
        let data = self.tmp.path().join("relay");
        if let Some((task, _)) = self.canary.take() {
            task.abort(); // its connection dies with the relay
        }
        tokio::task::block_in_place(|| self.relay.kill9());
        tokio::time::sleep(down_for).await;
        self.relay = tokio::task::block_in_place(|| {
            RelayProcess::start_with(&data, &quic, &["--config", config.to_str().unwrap()])
        });
        self.start_canary();
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
                    ledger.acked.insert(r.cursor, r.blob_id);
                }
            }
            ledger
                .messages
                .entry(i)
                .or_default()
                .extend(chunk.iter().cloned());
        }
    }

    /// Push a file of `content` as `name` from device `i`, recording it.
    pub async fn push_file(&self, client: &SyncClient, i: usize, name: &str, content: &[u8]) {
        let mut state = self.devices[i].state();
        let state = &mut state;
        let path = self.tmp.path().join(format!("src-{i}-{name}"));
        std::fs::write(&path, content).unwrap();
        let pushed = client
            .push_path(
                state,
                &path,
                Some(name),
                &PushOptions::default(),
                &mut |_, _| {},
            )
            .await
            .unwrap_or_else(|e| panic!("device {i} file push failed: {e}"));
        assert_eq!(pushed.size, content.len() as u64);
        let mut ledger = self.ledger.lock().unwrap();
        ledger
            .files
            .entry(i)
            .or_default()
            .insert(name.to_string(), content.to_vec());
    }

    /// Pull on device `i` with `client`, recording received messages.
    /// Returns the number of blobs applied.
    pub async fn pull(&self, i: usize, client: &SyncClient) -> u64 {
        let dev = &self.devices[i];
        let mut state = dev.state();
        let mut got = Vec::new();
        let mut problems = Vec::new();
        let summary = client
            .pull(&mut state, &dev.out, &mut |e| match e {
                PullEvent::Message { data, .. } => got.push(data),
                PullEvent::Rejected { .. } | PullEvent::Replay { .. } => {
                    problems.push(format!("{e:?}"))
                }
                _ => {}
            })
            .await
            .unwrap_or_else(|e| panic!("device {i} pull: {e}"));
        assert!(problems.is_empty(), "device {i}: {problems:?}");
        let mut seen = dev.seen.lock().unwrap();
        for m in got {
            assert!(seen.insert(m), "device {i} received a message twice");
        }
        summary.blobs
    }

    /// Clear all faults, let every device pull everything, and check the
    /// invariants (module docs). Returns the group's head.
    pub async fn verify(&mut self) -> u64 {
        self.set_links(Link::default());
        self.stop_canary().await;
        // 1 + 2: what the relay stores, read by a fresh direct device.
        let reader = LibDevice::new(&self.relay.address, &self.secret);
        let client = SyncClient::connect_with(&reader.opts, chaos_policy())
            .await
            .unwrap();
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
        let ledger = {
            let l = self.ledger.lock().unwrap();
            Ledger {
                acked: l.acked.clone(),
                messages: l.messages.clone(),
                files: l.files.clone(),
            }
        };
        for (cursor, id) in &ledger.acked {
            assert_eq!(
                stored.get(cursor),
                Some(id),
                "acknowledged blob at cursor {cursor} lost"
            );
        }
        // 3 + 4: every device gets exactly what the others pushed.
        for (i, dev) in self.devices.iter().enumerate() {
            let client = SyncClient::connect_with(&dev.lib.opts, chaos_policy())
                .await
                .unwrap();
            let mut state = dev.state();
            let mut messages = Vec::new();
            let mut problems = Vec::new();
            let mut files = BTreeMap::new();
            client
                .pull(&mut state, &dev.out, &mut |e| match e {
                    PullEvent::Message { data, .. } => messages.push(data),
                    PullEvent::File { name, path, .. } => {
                        files.insert(name, std::fs::read(path).unwrap());
                    }
                    PullEvent::Rejected { .. }
                    | PullEvent::Replay { .. }
                    | PullEvent::Gap { .. } => problems.push(format!("{e:?}")),
                    _ => {}
                })
                .await
                .unwrap_or_else(|e| panic!("device {i} final pull: {e}"));
            client.close().await;
            assert!(problems.is_empty(), "device {i}: {problems:?}");
            let expected: BTreeSet<Vec<u8>> = ledger
                .messages
                .iter()
                .filter(|(sender, _)| **sender != i)
                .flat_map(|(_, m)| m.iter().cloned())
                .collect();
            // Messages this device already received during the scenario
            // are not delivered again; count them from its events log.
            let got: BTreeSet<Vec<u8>> = messages.iter().cloned().collect();
            assert_eq!(got.len(), messages.len(), "device {i} got a message twice");
            let seen_before = dev.seen.lock().unwrap().clone();
            let all: BTreeSet<Vec<u8>> = got.union(&seen_before).cloned().collect();
            assert_eq!(
                all.len(),
                got.len() + seen_before.len(),
                "device {i} got a message twice across pulls"
            );
            assert_eq!(all, expected, "device {i} did not converge on the messages");
            for (sender, sent) in &ledger.files {
                if *sender == i {
                    continue;
                }
                for (name, content) in sent {
                    let on_disk = std::fs::read(dev.out.join(name))
                        .unwrap_or_else(|_| panic!("device {i} lacks {name}"));
                    assert!(on_disk == *content, "device {i}: {name} corrupted");
                }
            }
        }
        // 5: no plaintext at the relay.
        for entry in std::fs::read_dir(self.tmp.path().join("relay")).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !contains(&bytes, MARKER.as_bytes()),
                "plaintext in {}",
                path.display()
            );
        }
        head
    }
}
