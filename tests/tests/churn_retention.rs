//! Churn retention (issue 10): sessions from fresh node ids that connect,
//! say `Hello`, push one blob to an existing group and go away — half with
//! a close, half by vanishing — must leave (almost) nothing behind in the
//! relay's heap once they are gone. Measured on the relay's live heap
//! (`sync_relay_heap_allocated_bytes`, jemalloc `stats.allocated`), not its
//! RSS, which also holds the allocator's free pages. The figures, at scale:
//! `sync-bench churn` (BENCHMARKS.md "Soak").

use e2e_tests::{LibDevice, RelayProcess};
use futures::future::join_all;
use std::time::Duration;
use sync_client::{GroupKeys, GroupSecret, RelaySession};
use sync_protocol::PushItem;

/// Generous rate limits: the churn comes from one address, fast.
const CONFIG: &str = "[rate_limits]\nrequests_per_s = 1000000\nrequests_burst = 1000000\n\
    connections_per_ip_per_s = 1000000\nconnections_per_ip_burst = 1000000\n\
    [access]\nmode = \"open\"\nnew_groups_per_address_per_hour = 1000000\n\
    max_sessions_per_address = 1000000\n";

/// iroh 1.4 keeps a remote's state actor for 60 s after its last
/// connection; readings are taken after that, so they show what stays.
const LINGER: Duration = Duration::from_secs(65);

/// Heap the relay may keep per churned session at this small N. What
/// stays by design: iroh 1.4 never forgets a node id's mapped address
/// (~100–250 bytes; BENCHMARKS.md "Churn retention") and bounded caches
/// (SQLite pages, map capacities) that are still filling — about 2 KB a
/// session measured here. A session's own state (iroh's ~17 KiB per remote,
/// the connection, the session task) must not stay: a leaked connection
/// handle per session measured 115 KB.
const MAX_RETAINED_PER_SESSION: f64 = 8192.0;

fn heap(relay: &RelayProcess) -> f64 {
    relay
        .metrics()
        .value("sync_relay_heap_allocated_bytes", &[])
}

/// Churn `n` sessions from fresh node ids, 8 at a time; even values of
/// `from + i` close, odd ones vanish.
async fn churn(relay: &RelayProcess, keys: &GroupKeys, from: u64, n: u64) {
    let relay_addr: sync_client::RelayAddr = relay.address.parse().unwrap();
    let mut i = from;
    while i < from + n {
        let batch = (from + n - i).min(8);
        join_all((i..i + batch).map(|k| {
            let relay_addr = relay_addr.clone();
            async move {
                let opts = sync_client::ConnectOptions {
                    relay: relay_addr,
                    keys: keys.clone(),
                    device_key: iroh::SecretKey::generate(),
                    device_name: None,
                    connect_timeout: Duration::from_secs(60),
                    access_token: None,
                };
                // The session owns its endpoint; a dial that goes
                // unanswered (about one in 1,000 on a loaded machine,
                // docs/deploy.md "Unanswered dials") is made again from a
                // fresh endpoint by the library.
                let s = RelaySession::connect(&opts)
                    .await
                    .unwrap_or_else(|e| panic!("churn connect {k}: {e:?}"));
                // The same blob each time (a duplicate after the first): the
                // push path runs, the database barely grows, so SQLite's
                // page cache (up to 2 MiB a connection) does not fill
                // with it and blur the reading.
                s.push(vec![PushItem {
                    blob_id: sync_protocol::BlobId([7; 16]),
                    payload: vec![7; 1024],
                    ttl_s: Some(3600),
                }])
                .await
                .expect("churn push");
                if k.is_multiple_of(2) {
                    s.close().await;
                } else {
                    drop(s); // vanish, endpoint and all: the relay learns from its idle timeout
                }
            }
        }))
        .await;
        i += batch;
    }
}

/// Wait until the relay has no live session, then `LINGER`; its heap then
/// (the lowest of 5 readings).
async fn settled_heap(relay: &RelayProcess) -> f64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while relay.metrics().value("sync_relay_sessions", &[]) > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "sessions not gone in 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(LINGER).await;
    let mut low = f64::MAX;
    for _ in 0..5 {
        low = low.min(heap(relay));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_sessions_leave_a_bounded_heap_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, CONFIG).unwrap();
    // Without thread caches, `stats.allocated` is the live heap to the
    // byte: freed objects parked in a worker's cache would count as
    // allocated and blur a reading by hundreds of KiB.
    let relay = RelayProcess::start_with_env(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[("_RJEM_MALLOC_CONF", "tcache:false")],
    );
    let secret = GroupSecret::generate();
    let keys = secret.keys();
    // The group exists before the churn.
    let dev = LibDevice::new(&relay.address, &secret);
    let first = RelaySession::connect(&dev.opts).await.expect("first");
    first.close().await;
    // Warm-up: lazy caches, pools and map capacities fill here.
    churn(&relay, &keys, 0, 60).await;
    let before = settled_heap(&relay).await;
    let n = 240;
    churn(&relay, &keys, 1_000, n).await;
    let after = settled_heap(&relay).await;
    let per_session = (after - before) / n as f64;
    eprintln!(
        "churn retention: heap {before:.0} -> {after:.0} bytes after {n} sessions: {per_session:.0} bytes each"
    );
    assert!(
        per_session < MAX_RETAINED_PER_SESSION,
        "the relay kept {per_session:.0} bytes of heap per churned session ({before:.0} -> {after:.0} after {n})"
    );
}
