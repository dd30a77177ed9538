//! Chaos scenarios (issue: proof under faults). Every scenario ends with
//! [`Chaos::verify`], which checks the invariants: no acknowledged blob
//! lost, no duplicate, no corruption, all devices converge, no plaintext at
//! the relay, the relay kept serving a canary client of another group.
//! `CHAOS_SCALE=10 cargo test -p e2e-tests --test chaos` runs the large
//! version of every workload; CI runs scale 1.

use e2e_tests::chaos::{Chaos, scale};
use e2e_tests::proxy::{Faults, Link};
use e2e_tests::random_bytes;
use futures::future::join_all;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_loss_for_5s_then_recovery() {
    let mut chaos = Chaos::start(3, Link::default()).await;
    let clients = join_all(chaos.devices.iter().map(|d| d.connect())).await;
    for d in &chaos.devices {
        let _restore = d.proxy.blackhole_for(Duration::from_secs(5));
    }
    let started = Instant::now();
    let c = &chaos;
    let clients_ref = &clients;
    join_all((0..3).map(|i| async move {
        c.push_messages(&clients_ref[i], i, 0..10 * scale()).await;
    }))
    .await;
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "pushes went through a blackhole"
    );
    for (i, client) in clients.iter().enumerate() {
        chaos.pull(i, client).await;
    }
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_kill_9_mid_push() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(2_000_000))).await;
    pushing_with_crash(&mut chaos, 4 * MIB * scale()).await;
    chaos.verify().await;
}

/// Push a file from device 0 while the relay is killed and restarted.
async fn pushing_with_crash(chaos: &mut Chaos, len: usize) {
    let content = random_bytes(len);
    let path = chaos.tmp.path().join("src-crash.bin");
    std::fs::write(&path, &content).unwrap();
    let opts = chaos.devices[0].lib.opts.clone();
    let state_path = chaos.devices[0].lib.state.path().to_path_buf();
    let push = tokio::spawn(async move {
        let client = sync_client::SyncClient::connect_with(&opts, e2e_tests::chaos::chaos_policy())
            .await
            .unwrap();
        let mut state = sync_client::StateStore::open(&state_path).unwrap();
        client
            .push_path(
                &mut state,
                &path,
                Some("during-crash.bin"),
                &Default::default(),
                &mut |_, _| {},
            )
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(900)).await;
    chaos.crash_relay(Duration::from_millis(300)).await;
    let pushed = push.await.unwrap();
    assert_eq!(pushed.size, len as u64);
    chaos
        .ledger
        .lock()
        .unwrap()
        .files
        .entry(0)
        .or_default()
        .insert("during-crash.bin".into(), content);
}

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
    let opts = chaos.devices[1].lib.opts.clone();
    let state_path = chaos.devices[1].lib.state.path().to_path_buf();
    let out = chaos.devices[1].out.clone();
    let pull = tokio::spawn(async move {
        let client = sync_client::SyncClient::connect_with(&opts, e2e_tests::chaos::chaos_policy())
            .await
            .unwrap();
        let mut state = sync_client::StateStore::open(&state_path).unwrap();
        client.pull(&mut state, &out, &mut |_| {}).await.unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    chaos.crash_relay(Duration::from_millis(300)).await;
    let summary = pull.await.unwrap();
    assert_eq!(summary.files, 1);
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_push_then_resumed() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(2_000_000))).await;
    let content = random_bytes(4 * MIB * scale());
    let path = chaos.tmp.path().join("src-killed.bin");
    std::fs::write(&path, &content).unwrap();
    let opts = chaos.devices[0].lib.opts.clone();
    let state_path = chaos.devices[0].lib.state.path().to_path_buf();
    let run = |path: std::path::PathBuf| {
        let opts = opts.clone();
        let state_path = state_path.clone();
        async move {
            let client =
                sync_client::SyncClient::connect_with(&opts, e2e_tests::chaos::chaos_policy())
                    .await
                    .unwrap();
            let mut state = sync_client::StateStore::open(&state_path).unwrap();
            client
                .push_path(
                    &mut state,
                    &path,
                    Some("killed.bin"),
                    &Default::default(),
                    &mut |_, _| {},
                )
                .await
                .unwrap()
        }
    };
    // The "process" dies mid-push, once some chunks are acknowledged: its
    // task is dropped with requests in flight.
    let first = tokio::spawn(run(path.clone()));
    let transfers = state_path.with_file_name("transfers");
    let deadline = Instant::now() + Duration::from_secs(30);
    while journal_acked(&transfers) < 1 {
        assert!(Instant::now() < deadline, "no chunk acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.abort();
    let _ = first.await;
    let pushed = run(path.clone()).await;
    assert!(pushed.resumed_chunks > 0, "{pushed:?}");
    chaos
        .ledger
        .lock()
        .unwrap()
        .files
        .entry(0)
        .or_default()
        .insert("killed.bin".into(), content);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_connect_disconnect_cycles_in_5s() {
    let mut chaos = Chaos::start(2, Link::default()).await;
    let started = Instant::now();
    for k in 0..10 {
        let client = chaos.devices[0].connect().await;
        chaos.push_messages(&client, 0, k..k + 1).await;
        client.close().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_drop_mid_transfer() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(5_000_000))).await;
    let content = random_bytes(MIB + MIB / 2);
    let client = chaos.devices[0].connect().await;
    let c = &chaos;
    let slow_down = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.devices[0].proxy.set(each_way(bandwidth(400_000)));
    };
    tokio::join!(c.push_file(&client, 0, "slowed.bin", &content), slow_down);
    client.close().await;
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_push() {
    let mut chaos = Chaos::start(2, each_way(bandwidth(2_000_000))).await;
    let content = random_bytes(2 * MIB);
    let client = chaos.devices[0].connect().await;
    let c = &chaos;
    let cut = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(c.devices[0].proxy.blackhole_for(Duration::from_secs(3)));
    };
    tokio::join!(c.push_file(&client, 0, "cut.bin", &content), cut);
    client.close().await;
    chaos.verify().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_during_pull() {
    let mut chaos = Chaos::start(2, Link::default()).await;
    let content = random_bytes(3 * MIB);
    let c0 = chaos.devices[0].connect().await;
    chaos.push_file(&c0, 0, "cut-pull.bin", &content).await;
    c0.close().await;
    chaos.devices[1].proxy.set(each_way(bandwidth(2_000_000)));
    let c1 = chaos.devices[1].connect().await;
    let c = &chaos;
    let cut = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        drop(c.devices[1].proxy.blackhole_for(Duration::from_secs(3)));
    };
    tokio::join!(c.pull(1, &c1), cut);
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
    let c = &chaos;
    let clients_ref = &clients;
    join_all((0..3).map(|i| async move {
        c.push_messages(&clients_ref[i], i, 0..10 * scale()).await;
        c.pull(i, &clients_ref[i]).await;
    }))
    .await;
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
