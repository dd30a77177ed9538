//! Chaos scenarios (issue: proof under faults). Every scenario ends with
//! [`Chaos::verify`], which checks the invariants: no acknowledged blob
//! lost (messages and every file chunk), nothing stored twice or beyond
//! what was pushed (`head` = messages + chunks), no corruption, each file
//! delivered exactly once, all devices converge, no plaintext at the relay,
//! the relay kept serving a canary of another group (checked before every
//! relay kill too). Faults are triggered on observed progress (an
//! acknowledged chunk, part of a file applied) and each fault scenario
//! asserts that the fault landed mid-transfer and, where it must, that the
//! client reconnected. `CHAOS_SCALE=10 cargo test -p e2e-tests --test e2e chaos::`
//! runs the large version of every workload; CI runs scale 1.

use e2e_tests::chaos::{
    Chaos, PUSH_PIPELINE, PullProgress, generation, hold, push_path_recorded,
    reconnect_forcing_outage, scale, wait_for,
};
use e2e_tests::proxy::{Faults, Link};
use e2e_tests::random_bytes;
use futures::future::join_all;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering::SeqCst};
use std::time::Duration;

const MIB: usize = 1 << 20;

/// How long a scenario waits for a condition before failing (generous: only
/// there so that a broken build fails instead of hanging).
const DEADLINE: Duration = Duration::from_secs(60);

/// A fault hit a push mid-transfer: some chunks were acknowledged when it
/// struck, and more than the [`PUSH_PIPELINE`] requests that may have been
/// in flight then were still to come (so at least one chunk was sent after
/// the fault); and the client had to reconnect.
fn assert_landed_mid_push(at_fault: u32, chunks: u32, generation: Option<u64>) {
    eprintln!("fault at {at_fault} of {chunks} chunks acknowledged; connection {generation:?}");
    assert!(
        at_fault >= 1 && chunks.saturating_sub(at_fault) > PUSH_PIPELINE as u32,
        "the fault did not land mid-push: {at_fault} of {chunks} chunks were acknowledged \
         when it struck (and up to {PUSH_PIPELINE} more may have been in flight)"
    );
    if let Some(generation) = generation {
        assert!(
            generation >= 2,
            "the push did not reconnect (connection {generation})"
        );
    }
}

/// A fault hit a pull mid-transfer: part, not all, of the file had been
/// applied when it struck, the client reconnected, and part of the file was
/// applied on the new connection.
fn assert_landed_mid_pull(len: usize, progress: &PullProgress, generation: u64) {
    let at_fault = progress.at_fault.load(SeqCst);
    eprintln!("fault at {at_fault} of {len} bytes applied; connection {generation}; {progress:?}");
    assert!(
        at_fault > 0 && at_fault < len as u64,
        "the fault did not land mid-pull: {at_fault} of {len} bytes applied when it struck"
    );
    assert!(
        generation >= 2,
        "the pull did not reconnect (connection {generation})"
    );
    assert!(
        progress.after_reconnect.load(SeqCst) > 0,
        "no part of the file was applied on a new connection"
    );
}

fn each_way(f: Faults) -> Link {
    Link::both(f)
}

fn delay(ms: u64) -> Faults {
    Faults::delay(ms)
}

fn loss(p: f64) -> Faults {
    Faults {
        loss: p,
        ..Faults::default()
    }
}

fn bandwidth(bytes_per_s: u64) -> Faults {
    Faults {
        bandwidth: Some(bytes_per_s),
        queue: Duration::from_millis(500),
        ..Faults::default()
    }
}

/// The standard workload: every device pushes its messages concurrently,
/// then pulls once; then the invariants are checked.
async fn standard(mut chaos: Chaos, per_device: usize) {
    let chaos_ref = &chaos;
    join_all((0..chaos.devices.len()).map(|i| async move {
        let client = chaos_ref.devices[i].connect().await;
        chaos_ref.push_messages(&client, i, 0..per_device).await;
        chaos_ref.pull(i, &client).await;
        client.close().await;
    }))
    .await;
    chaos.verify().await;
}

macro_rules! link_scenario {
    ($name:ident, $link:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            standard(Chaos::start(3, $link).await, 10 * scale()).await;
        }
    };
}

link_scenario!(latency_200ms_each_way, each_way(delay(200)));
link_scenario!(
    jitter_200_plus_minus_150ms,
    each_way(Faults {
        jitter: Duration::from_millis(150),
        ..delay(200)
    })
);
link_scenario!(
    asymmetric_10ms_up_500ms_down,
    Link {
        up: delay(10),
        down: delay(500)
    }
);
link_scenario!(satellite_600ms_round_trip, each_way(delay(300)));
link_scenario!(loss_5_percent, each_way(loss(0.05)));
link_scenario!(loss_20_percent, each_way(loss(0.20)));
link_scenario!(
    correlated_loss_10_percent,
    each_way(Faults {
        loss: 0.10,
        loss_correlation: 0.6,
        ..Faults::default()
    })
);
link_scenario!(
    duplication_and_reordering,
    each_way(Faults {
        duplicate: 0.05,
        reorder: 0.1,
        reorder_by: Duration::from_millis(15),
        ..delay(5)
    })
);

/// 56 kbit/s: messages plus a file whose frames take longer to cross the
/// link than the stall timeout (4 s here) — a transfer that is slow but
/// moving must not be mistaken for a stalled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_56_kbit() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(7_000))).await;
    let content = random_bytes(40_000 * scale());
    let c = &chaos;
    let content_ref = &content;
    join_all((0..2).map(|i| async move {
        let client = c.devices[i].connect().await;
        c.push_messages(&client, i, 0..10 * scale()).await;
        if i == 0 {
            c.push_file(&client, 0, "slow-link.bin", content_ref).await;
        }
        client.close().await;
    }))
    .await;
    chaos.verify().await;
}

/// Every device's link drops everything for longer than the stall timeout
/// while it pushes: each must reconnect and finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_loss_past_the_stall_timeout_then_recovery() {
    let mut chaos = Chaos::start(3, Link::default()).await;
    let clients = join_all(chaos.devices.iter().map(|d| d.connect())).await;
    for d in &chaos.devices {
        let _restore = d.proxy.blackhole_for(reconnect_forcing_outage());
    }
    let c = &chaos;
    let clients_ref = &clients;
    join_all((0..3).map(|i| async move {
        c.push_messages(&clients_ref[i], i, 0..10 * scale()).await;
    }))
    .await;
    for (i, client) in clients.iter().enumerate() {
        assert!(
            generation(client) >= 2,
            "device {i} pushed through the outage without reconnecting"
        );
        assert!(chaos.devices[i].proxy.stats().dropped > 0);
        chaos.pull(i, client).await;
    }
    chaos.verify().await;
}

/// The relay is killed right after it has acknowledged the first chunk of
/// a file push (the push is held there, requests in flight, while the
/// canary is checked and the relay killed), and restarted; the push
/// reconnects, resumes and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill_9_mid_push() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(2_000_000))).await;
    let content = random_bytes(4 * MIB * scale());
    let name = "during-crash.bin";
    let path = chaos.source(0, name, &content);
    let dev = chaos.devices[0].handle();
    let ledger = Arc::clone(&chaos.ledger);
    let (mut hold, mut control) = hold();
    let at_kill = Arc::new(AtomicU32::new(0));
    let push = tokio::spawn({
        let at_kill = Arc::clone(&at_kill);
        async move {
            let client = dev.connect().await;
            let mut state = dev.state();
            let mut on_ack = |n: u32| {
                if n == 1 {
                    at_kill.store(n, SeqCst);
                    hold.here();
                }
            };
            let pushed =
                push_path_recorded(&client, &mut state, &ledger, 0, &path, name, &mut on_ack)
                    .await
                    .unwrap();
            let chunks = Chaos::chunks_of(&client, pushed.size as usize);
            let generation = generation(&client);
            client.close().await;
            (chunks, generation)
        }
    });
    control
        .reached(DEADLINE, "the first chunk acknowledged")
        .await;
    chaos.kill_relay().await;
    control.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    chaos.restart_relay().await;
    let (chunks, generation) = push.await.unwrap();
    assert_landed_mid_push(at_kill.load(SeqCst), chunks, Some(generation));
    chaos.verify().await;
}

/// The relay is killed once part of a file has been pulled (the pull is
/// held there while the canary is checked and the relay killed), and
/// restarted; the pull reconnects and completes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill_9_mid_pull() {
    let mut chaos = Chaos::start(2, Link::default()).await;
    let content = random_bytes(6 * MIB * scale());
    let c0 = chaos.devices[0].connect().await;
    chaos
        .push_file(&c0, 0, "pulled-through-crash.bin", &content)
        .await;
    c0.close().await;
    chaos.devices[1].proxy.set(each_way(bandwidth(2_000_000)));
    let dev = chaos.devices[1].handle();
    let progress = Arc::new(PullProgress::default());
    let (mut hold, mut control) = hold();
    let pull = tokio::spawn({
        let progress = Arc::clone(&progress);
        async move {
            let client = dev.connect().await;
            let mut observer = progress.observer(&client, || hold.here());
            let summary = dev.pull_observed(&client, &mut observer).await.unwrap();
            let generation = generation(&client);
            client.close().await;
            (summary, generation)
        }
    });
    control.reached(DEADLINE, "part of the file pulled").await;
    chaos.kill_relay().await;
    control.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    chaos.restart_relay().await;
    let (summary, generation) = pull.await.unwrap();
    assert_eq!(summary.files, 1);
    assert_landed_mid_pull(content.len(), &progress, generation);
    chaos.verify().await;
}

/// The pushing "process" dies (its task is dropped with requests in
/// flight) once its journal records acknowledged chunks; a new run resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_push_then_resumed() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(2_000_000))).await;
    let content = random_bytes(4 * MIB * scale());
    let name = "killed.bin";
    let path = chaos.source(0, name, &content);
    let dev = chaos.devices[0].handle();
    let run = |acks: Arc<AtomicU32>| {
        let (dev, ledger, path) = (dev.clone(), Arc::clone(&chaos.ledger), path.clone());
        async move {
            let client = dev.connect().await;
            let mut state = dev.state();
            let mut on_ack = |n| acks.store(n, SeqCst);
            let pushed =
                push_path_recorded(&client, &mut state, &ledger, 0, &path, name, &mut on_ack)
                    .await
                    .unwrap();
            let chunks = Chaos::chunks_of(&client, pushed.size as usize);
            client.close().await;
            (pushed, chunks)
        }
    };
    let first_acks = Arc::new(AtomicU32::new(0));
    let first = tokio::spawn(run(Arc::clone(&first_acks)));
    let transfers = dev.state_path.with_file_name("transfers");
    wait_for(DEADLINE, "a chunk acknowledged in the push journal", || {
        journal_acked(&transfers) >= 1 || first.is_finished()
    })
    .await;
    first.abort();
    assert!(
        first.await.is_err_and(|e| e.is_cancelled()),
        "the first push ended before it was killed"
    );
    let first_acks = first_acks.load(SeqCst);
    let second_acks = Arc::new(AtomicU32::new(0));
    let (pushed, chunks) = run(Arc::clone(&second_acks)).await;
    assert!(pushed.resumed_chunks > 0, "{pushed:?}");
    assert!(
        first_acks >= 1 && first_acks < chunks && second_acks.load(SeqCst) >= 1,
        "the client was not killed mid-push: {first_acks} of {chunks} chunks acknowledged before"
    );
    chaos.verify().await;
}

/// Chunks acknowledged according to the (single) push journal in `dir`.
fn journal_acked(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .ok()
        .and_then(|d| {
            // The journal itself, not a temp file of an atomic write.
            d.flatten()
                .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        })
        .and_then(|e| std::fs::read(e.path()).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j["acked"].as_u64())
        .unwrap_or(0)
}

/// Ten sessions one after the other: each is a new connection, and the
/// relay releases every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_connect_disconnect_cycles() {
    let mut chaos = Chaos::start(2, Link::default()).await;
    let metric = |chaos: &Chaos, name: &str| {
        tokio::task::block_in_place(|| chaos.relay.metrics().value(name, &[]))
    };
    let connections_before = metric(&chaos, "sync_relay_connections");
    for k in 0..10 {
        let client = chaos.devices[0].connect().await;
        chaos.push_messages(&client, 0, k..k + 1).await;
        assert_eq!(generation(&client), 1);
        client.close().await;
    }
    assert!(
        metric(&chaos, "sync_relay_connections") - connections_before >= 10.0,
        "the ten sessions did not each open a connection"
    );
    // Only the canary's two sessions stay.
    wait_for(DEADLINE, "the relay to release the sessions", || {
        metric(&chaos, "sync_relay_sessions") == 2.0
    })
    .await;
    chaos.verify().await;
}

/// The link slows from 5 MB/s to 400 kB/s right after the first chunk is
/// acknowledged; later chunks cross the slow link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_drop_mid_transfer() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(5_000_000))).await;
    let content = random_bytes(2 * MIB);
    let client = chaos.devices[0].connect().await;
    let proxy = &chaos.devices[0].proxy;
    let mut on_ack = |n| {
        if n == 1 {
            proxy.set(each_way(bandwidth(400_000)));
        }
    };
    chaos
        .push_file_observed(&client, 0, "slowed.bin", &content, &mut on_ack)
        .await;
    assert_landed_mid_push(1, Chaos::chunks_of(&client, content.len()), None);
    client.close().await;
    chaos.verify().await;
}

/// The link drops everything, for longer than the stall timeout, right after
/// the first chunk is acknowledged: the client reconnects and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_push() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(2_000_000))).await;
    let content = random_bytes(3 * MIB);
    let client = chaos.devices[0].connect().await;
    let proxy = &chaos.devices[0].proxy;
    let mut on_ack = |n| {
        if n == 1 {
            drop(proxy.blackhole_for(reconnect_forcing_outage()));
        }
    };
    chaos
        .push_file_observed(&client, 0, "cut.bin", &content, &mut on_ack)
        .await;
    assert_landed_mid_push(
        1,
        Chaos::chunks_of(&client, content.len()),
        Some(generation(&client)),
    );
    client.close().await;
    chaos.verify().await;
}

/// The link drops everything, for longer than the stall timeout, once part
/// of a file has been pulled: the client reconnects and completes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_pull() {
    let mut chaos = Chaos::start(2, Link::default()).await;
    let content = random_bytes(4 * MIB);
    let c0 = chaos.devices[0].connect().await;
    chaos.push_file(&c0, 0, "cut-pull.bin", &content).await;
    c0.close().await;
    chaos.devices[1].proxy.set(each_way(bandwidth(2_000_000)));
    let c1 = chaos.devices[1].connect().await;
    let progress = PullProgress::default();
    let proxy = &chaos.devices[1].proxy;
    let mut observer = progress.observer(&c1, || {
        drop(proxy.blackhole_for(reconnect_forcing_outage()));
    });
    chaos.pull_observed(1, &c1, &mut observer).await;
    drop(observer);
    assert_landed_mid_pull(content.len(), &progress, generation(&c1));
    c1.close().await;
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_push_pull_switching() {
    let mut chaos = Chaos::start(2, each_way(delay(2))).await;
    let c = &chaos;
    join_all((0..2).map(|i| async move {
        let client = c.devices[i].connect().await;
        for k in 0..15 * scale() {
            c.push_messages(&client, i, k..k + 1).await;
            c.pull(i, &client).await;
        }
        client.close().await;
    }))
    .await;
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_pushes_from_5_devices() {
    standard(Chaos::start(5, each_way(delay(5))).await, 40 * scale()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_while_another_pulls() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(20_000_000))).await;
    let content = random_bytes(4 * MIB * scale());
    let c = &chaos;
    let pusher = async {
        let client = c.devices[0].connect().await;
        c.push_file(&client, 0, "streamed.bin", &content).await;
        c.push_messages(&client, 0, 0..20).await;
        client.close().await;
    };
    let puller = async {
        let client = c.devices[1].connect().await;
        for _ in 0..10 {
            c.pull(1, &client).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        client.close().await;
    };
    tokio::join!(pusher, puller);
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_device_catches_up_on_10000_blobs() {
    let mut chaos = Chaos::start(2, Link::default()).await;
    let client = chaos.devices[0].connect().await;
    chaos.push_messages(&client, 0, 0..10_000).await;
    client.close().await;
    let head = chaos.verify().await;
    assert_eq!(head, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_after_a_partition() {
    let mut chaos = Chaos::start(3, Link::default()).await;
    let clients = join_all(chaos.devices.iter().map(|d| d.connect())).await;
    // Device 2 is cut off while everyone keeps writing.
    let _heal = chaos.devices[2].proxy.blackhole_for(Duration::from_secs(4));
    let dropped_before = chaos.devices[2].proxy.stats().dropped;
    let c = &chaos;
    let clients_ref = &clients;
    join_all((0..3).map(|i| async move {
        c.push_messages(&clients_ref[i], i, 0..10 * scale()).await;
        c.pull(i, &clients_ref[i]).await;
    }))
    .await;
    assert!(
        chaos.devices[2].proxy.stats().dropped > dropped_before,
        "the partition dropped nothing"
    );
    for (i, client) in clients.iter().enumerate() {
        chaos.pull(i, client).await;
        client.close().await;
    }
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_after_a_relay_restart() {
    let mut chaos = Chaos::start(3, Link::default()).await;
    {
        let c = &chaos;
        join_all((0..3).map(|i| async move {
            let client = c.devices[i].connect().await;
            c.push_messages(&client, i, 0..10).await;
            client.close().await;
        }))
        .await;
    }
    chaos.crash_relay(Duration::from_millis(200)).await;
    let c = &chaos;
    join_all((0..3).map(|i| async move {
        let client = c.devices[i].connect().await;
        c.push_messages(&client, i, 10..20).await;
        c.pull(i, &client).await;
        client.close().await;
    }))
    .await;
    chaos.verify().await;
}
