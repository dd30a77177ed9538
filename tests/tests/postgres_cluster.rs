//! Two relay processes as one cluster on one PostgreSQL database (docs/deploy.md
//! "Storage backends", docs/client.md "Several relays"), each test on a
//! database of its own on the server `SYNC_TEST_POSTGRES_URL` names (without
//! it they print a loud SKIPPED line and pass):
//!
//! - `eight_devices_on_two_relays_push_concurrently_without_gaps_loss_or_duplicates`:
//!   eight devices of one group, four on each relay, push batches at once
//!   (their commits interleave across the instances); everything pulled
//!   from relay 1 and everything pulled from relay 2 are the same, the
//!   cursors are gapless, and the stored blobs are exactly the acknowledged
//!   ones, each once, under its acknowledged cursor, with its payload.
//! - `killing_relay_1_mid_push_fails_over_to_relay_2_and_every_acked_blob_is_pulled_once`:
//!   device A (`init --relay R1 --relay R2`) pushes a file through the real
//!   CLI; once relay 1 has answered enough pushes that A must have received
//!   acknowledgements, relay 1 is killed with `kill -9` while the push runs;
//!   A fails over to relay 2 and finishes; device B pulls every blob of the
//!   group exactly once (gapless cursors, one blob per chunk, no repeat)
//!   and gets the file byte for byte.

use e2e_tests::{Device, LibDevice, RelayProcess, json, ndjson, random_bytes, wait_until};
use std::collections::{BTreeMap, HashSet};
use std::net::UdpSocket;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;
use sync_client::client::push::PUSH_PIPELINE;
use sync_client::{GroupSecret, RelaySession};
use sync_protocol::{BlobId, PushItem};
use sync_storage_postgres::testing::TestDatabase;

/// Generous bound for anything the tests wait on.
const DEADLINE: Duration = Duration::from_secs(120);

/// Start relay `name` of the cluster on `db`: blobs of at most 64 KiB (a
/// file is many chunks), request limits out of the way, push bytes limited
/// to `push_bytes_per_s` per device (so a push takes long enough to be
/// interrupted).
fn relay(dir: &Path, name: &str, db: &TestDatabase, push_bytes_per_s: u64) -> RelayProcess {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        format!(
            "[limits]\nmax_blob_size = 65536\n[rate_limits]\nrequests_per_s = 1000000\n\
             requests_burst = 1000000\npush_bytes_per_s = {push_bytes_per_s}\n\
             push_bytes_burst = 262144\nconnections_per_ip_per_s = 1000\n\
             connections_per_ip_burst = 1000\n"
        ),
    )
    .unwrap();
    let url = db.url();
    RelayProcess::start_with_env(
        &dir.join(name),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[("SYNC_RELAY__STORAGE__URL", url.as_str())],
    )
}

/// The payload of blob `id`: 256–1279 bytes of BLAKE3 output keyed by the
/// id (its length too), so a swapped or torn payload cannot match.
fn payload_of(id: &BlobId) -> Vec<u8> {
    let mut xof = blake3::Hasher::new_derive_key("0k-sync e2e cluster payload")
        .update(&id.0)
        .finalize_xof();
    let mut len = [0u8; 2];
    xof.fill(&mut len);
    let mut payload = vec![0; 256 + usize::from(u16::from_le_bytes(len)) % 1024];
    xof.fill(&mut payload);
    payload
}

/// Batch `i` of device `d`: `BATCH` fresh ids, payloads derived from them.
fn batch(d: usize, i: u32) -> Vec<PushItem> {
    (0..BATCH)
        .map(|k| {
            let mut id = [0u8; 16];
            id[0] = d as u8;
            id[1..5].copy_from_slice(&i.to_be_bytes());
            id[5] = k;
            let blob_id = BlobId(id);
            PushItem {
                blob_id,
                payload: payload_of(&blob_id),
                ttl_s: None,
            }
        })
        .collect()
}

/// Every blob stored after cursor 0: cursor → (id, payload). Panics if a
/// cursor comes twice.
async fn pull_all(session: &RelaySession) -> BTreeMap<u64, (BlobId, Vec<u8>)> {
    let mut stored = BTreeMap::new();
    let mut after = 0;
    loop {
        let mut resp = session.pull(after, 10_000).await.unwrap();
        let mut n = 0;
        while let Some(batch) = resp.next_batch().await.unwrap() {
            for b in batch.blobs {
                n += 1;
                after = b.cursor;
                assert!(
                    stored.insert(b.cursor, (b.blob_id, b.payload)).is_none(),
                    "cursor {} pulled twice",
                    b.cursor
                );
            }
        }
        if n == 0 {
            return stored;
        }
    }
}

/// Devices pushing at once, spread over the two relays.
const DEVICES: usize = 8;
/// Batches each device pushes.
const BATCHES: u32 = 25;
/// Blobs per batch.
const BATCH: u8 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_devices_on_two_relays_push_concurrently_without_gaps_loss_or_duplicates() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (r1, r2) = tokio::task::block_in_place(|| {
        (
            relay(tmp.path(), "r1", &db, 1 << 30),
            relay(tmp.path(), "r2", &db, 1 << 30),
        )
    });
    let relays = [&r1, &r2];
    let secret = GroupSecret::generate();
    let devices: Vec<LibDevice> = (0..DEVICES)
        .map(|d| LibDevice::new(&relays[d % 2].address, &secret))
        .collect();
    // Connect all first (the group is created by whichever Hello commits
    // first, on either instance), then push all at once.
    let sessions: Vec<RelaySession> =
        futures::future::join_all(devices.iter().map(|d| RelaySession::connect(&d.opts)))
            .await
            .into_iter()
            .map(|s| s.expect("connect"))
            .collect();
    // cursor → (blob id, relay that acknowledged it)
    let ledger: Mutex<BTreeMap<u64, (BlobId, usize)>> = Mutex::default();
    let pushes = sessions.iter().enumerate().map(|(d, session)| {
        let ledger = &ledger;
        async move {
            for i in 0..BATCHES {
                let items = batch(d, i);
                let ok = tokio::time::timeout(DEADLINE, session.push(items.clone()))
                    .await
                    .unwrap_or_else(|_| panic!("device {d} batch {i}: no answer"))
                    .unwrap_or_else(|e| panic!("device {d} batch {i}: {e}"));
                assert_eq!(ok.results.len(), items.len());
                let mut acked = ledger.lock().unwrap();
                for (r, item) in ok.results.iter().zip(&items) {
                    assert_eq!(r.blob_id, item.blob_id);
                    assert!(!r.duplicate, "device {d}: fresh blob called duplicate");
                    assert!(r.cursor <= ok.head);
                    if let Some(other) = acked.insert(r.cursor, (r.blob_id, d % 2)) {
                        panic!("cursor {} acknowledged twice: {other:?}", r.cursor);
                    }
                }
            }
        }
    });
    futures::future::join_all(pushes).await;
    let acked = ledger.into_inner().unwrap();
    let total = DEVICES as u64 * u64::from(BATCHES) * u64::from(BATCH);
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "acknowledged cursors are not 1..={total}"
    );
    // The pushes really ran concurrently on both instances: in cursor
    // order, the relay that committed switches back and forth.
    let switches = acked
        .values()
        .zip(acked.values().skip(1))
        .filter(|(a, b)| a.1 != b.1)
        .count();
    println!("{total} blobs acknowledged; the committing relay switched {switches} times");
    assert!(
        switches >= 2,
        "the two relays' commits did not interleave ({switches} switches)"
    );
    for s in &sessions {
        s.close().await;
    }

    // A fresh device on each relay pulls the whole group.
    let mut pulled = Vec::new();
    for r in relays {
        let reader = LibDevice::new(&r.address, &secret);
        let session = RelaySession::connect(&reader.opts).await.unwrap();
        pulled.push(pull_all(&session).await);
        session.close().await;
    }
    assert!(
        pulled[0] == pulled[1],
        "relay 1 and relay 2 return different blobs ({} and {})",
        pulled[0].len(),
        pulled[1].len()
    );
    let stored = &pulled[0];
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=total).collect::<Vec<_>>(),
        "stored cursors are not gapless"
    );
    let mut ids = HashSet::new();
    for (cursor, (id, payload)) in stored {
        assert!(ids.insert(*id), "blob {id:?} stored twice");
        assert_eq!(
            acked[cursor].0, *id,
            "cursor {cursor} holds another blob than acknowledged"
        );
        assert!(
            *payload == payload_of(id),
            "payload of blob {id:?} at cursor {cursor} differs from what was pushed"
        );
    }
    drop((r1, r2));
    drop(db);
}

/// Kill `relay` and hold its UDP port, so its address stays dead.
fn kill_and_hold(relay: &mut RelayProcess) -> UdpSocket {
    relay.kill9();
    UdpSocket::bind(relay.quic).expect("the killed relay's port is free")
}

/// Acknowledged pushes (`sync_relay_pushes{result="ok"}`) a relay answered.
fn pushes_ok(relay: &RelayProcess) -> f64 {
    relay.metrics().value("sync_relay_pushes", &["ok"])
}

#[test]
fn killing_relay_1_mid_push_fails_over_to_relay_2_and_every_acked_blob_is_pulled_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(TestDatabase::create()) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    // 2 MB/s per device: the 16 MiB push takes about 8 s, so the kill
    // lands well inside it.
    let mut r1 = relay(tmp.path(), "r1", &db, 2_000_000);
    let r2 = relay(tmp.path(), "r2", &db, 2_000_000);
    let a = Device::new();
    let invite = a.run(&[
        "init",
        "--relay",
        &r1.address,
        "--relay",
        &r2.address,
        "--name",
        "failover",
    ]);
    let b = Device::new();
    b.join(&a, invite.trim(), &[]);

    let file = tmp.path().join("big.bin");
    let content = random_bytes(16 << 20);
    std::fs::write(&file, &content).unwrap();
    let mut push = a
        .cmd()
        .args(["push", "--json", file.to_str().unwrap()])
        .args(["--stall-timeout", "2s", "--retry-for", "60s"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sync-cli push");

    // A file push keeps at most PUSH_PIPELINE pushes in flight: when relay
    // 1 has answered `PUSH_PIPELINE + 4` of them, A had sent that many, so
    // it had received at least 4 acknowledgements.
    let enough = (PUSH_PIPELINE + 4) as f64;
    wait_until(DEADLINE, "relay 1 to acknowledge pushes", || {
        assert!(
            push.try_wait().unwrap().is_none(),
            "the push ended before relay 1 was killed"
        );
        pushes_ok(&r1) >= enough
    });
    let answered_by_r1 = pushes_ok(&r1);
    assert!(
        push.try_wait().unwrap().is_none(),
        "the push ended before relay 1 was killed"
    );
    let _hold = kill_and_hold(&mut r1);

    wait_until(DEADLINE, "the push to finish", || {
        push.try_wait().unwrap().is_some()
    });
    let out = push.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "push failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = &json(&String::from_utf8_lossy(&out.stdout))["files"][0];
    let chunks = pushed["blobs"].as_u64().unwrap();
    // 16 MiB in chunks of a little under 64 KiB (the envelope's overhead).
    assert!((256..=512).contains(&chunks), "{pushed}");
    assert!(
        chunks as f64 > answered_by_r1 + PUSH_PIPELINE as f64,
        "relay 1 had stored {answered_by_r1} of {chunks} chunks: the kill did not land mid-transfer"
    );
    // Every chunk is acknowledged under cursors 2..=chunks + 1 (cursor 1 is
    // A's roster blob that added B; A alone pushes to the group); chunks in flight at the kill that had committed came
    // back as duplicates from relay 2.
    assert_eq!(
        (
            pushed["first_cursor"].as_u64(),
            pushed["last_cursor"].as_u64()
        ),
        (Some(2), Some(chunks + 1)),
        "{pushed}"
    );
    assert!(
        pushed["duplicates"].as_u64().unwrap() <= PUSH_PIPELINE as u64,
        "{pushed}"
    );
    println!(
        "{chunks} chunks; relay 1 answered {answered_by_r1} pushes before the kill; \
         {} came back as duplicates from relay 2",
        pushed["duplicates"]
    );
    // A failed over: it now prefers relay 2, which stored the rest.
    let current = std::fs::read_to_string(a.home.join("current-relay")).unwrap();
    assert_eq!(current.trim(), r2.address);
    assert!(
        pushes_ok(&r2) >= chunks as f64 - answered_by_r1 - PUSH_PIPELINE as f64,
        "relay 2 answered too few pushes"
    );

    // B sees every blob of the group exactly once: gapless cursors
    // 1..=chunks + 1 (A's roster blob, then the chunks), each blob id once.
    let secret = sync_client::Home::at(&b.home).secret().unwrap();
    let reader = LibDevice::new(&r2.address, &secret);
    let stored = rt.block_on(async {
        let session = RelaySession::connect(&reader.opts).await.unwrap();
        let stored = pull_all(&session).await;
        session.close().await;
        stored
    });
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=chunks + 1).collect::<Vec<_>>()
    );
    let ids: HashSet<BlobId> = stored.values().map(|(id, _)| *id).collect();
    assert_eq!(ids.len() as u64, chunks + 1, "a blob is stored twice");

    // And through the CLI (relay 1 dead, so B fails over too): the file,
    // byte for byte, once, with nothing rejected, replayed or missing.
    let out_dir = tmp.path().join("out-b");
    let events = ndjson(&b.run(&[
        "pull",
        "--json",
        "--out",
        out_dir.to_str().unwrap(),
        "--stall-timeout",
        "2s",
        "--retry-for",
        "60s",
    ]));
    let kinds: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event"].as_str())
        .filter(|e| *e != "progress")
        .collect();
    assert_eq!(kinds, ["file", "done"], "{events:?}");
    assert_eq!(events.last().unwrap()["cursor"], chunks + 1);
    assert!(std::fs::read(out_dir.join("big.bin")).unwrap() == content);
    drop(r2);
    drop(db);
}
