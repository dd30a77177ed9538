//! Crash durability (issue: proof under faults).
//!
//! `acknowledged_blobs_survive_repeated_kill_9`: `CRASH_LOOPS` times
//! (default 20), four devices push batches concurrently; once every device
//! has had at least one batch acknowledged in the round, and after a further
//! random delay, the relay is killed with `kill -9` and restarted on the same
//! data. A pusher may then fail only with a lost connection; any other
//! error, or a panic, fails the test. The batch each device had in flight
//! at the kill (sent, unanswered) is pushed again after the restart with the
//! same ids and payloads: a batch that had committed must be answered as a
//! duplicate under the cursors it is stored at, one that had not is stored
//! now. Then the round's blobs are pulled (every fourth round and the last,
//! the whole group: the data accumulates, so later kills are checked
//! against earlier rounds' data too): cursors are gapless, every blob id is
//! stored once, every stored blob is exactly one that was acknowledged,
//! under its acknowledged cursor, and every payload equals, byte for byte,
//! the one derived from its id. `CRASH_SEED` fixes the random delays (the
//! seed is printed).
//!
//! `a_push_committed_but_unanswered_is_a_duplicate_on_retry`: the relay's
//! debug-build fail point ends the process right after a push's COMMIT and
//! before its answer (the window `kill -9` only hits by chance); after a
//! restart the retried push is a duplicate with its original cursors and
//! nothing is stored twice.
//!
//! `a_crash_between_blob_file_and_commit_leaves_an_orphan_swept_at_restart`:
//! the fail point ends the relay after a push's payload files are written
//! and fsync'd and before its transaction (the SQLite backend stores
//! payloads of 64 KiB and more as files, docs/deploy.md "Data directory"):
//! after a restart no row names the file (nothing was stored), the file is
//! gone (swept at start), and the retried push stores it once.
//!
//! Some payloads of the kill loop are large enough to be files, so the
//! kill -9 rounds check file-backed blobs too.

use e2e_tests::{LibDevice, RelayProcess};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_client::{ClientError, ConnectOptions, GroupSecret, RelaySession};
use sync_protocol::{BlobId, PushItem, PushOk};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Devices pushing concurrently in each round.
const PUSHERS: usize = 4;
/// Blobs per pushed batch.
const BATCH: u8 = 4;
/// Large enough to be stored as a file by the SQLite backend
/// (`sync_storage_sqlite::DEFAULT_FILE_THRESHOLD`, 64 KiB).
const LARGE_PAYLOAD: usize = 64 * 1024 + 1;
/// Generous bound for anything the test waits on.
const DEADLINE: Duration = Duration::from_secs(60);

/// The payload of blob `id`: 1–4 KiB of BLAKE3 output keyed by the id (its
/// length too), so a torn, truncated or swapped payload cannot match.
fn payload_of(id: &BlobId) -> Vec<u8> {
    let mut xof = blake3::Hasher::new_derive_key("0k-sync e2e durability payload")
        .update(&id.0)
        .finalize_xof();
    let mut len = [0u8; 2];
    xof.fill(&mut len);
    // The first item of batches 0, 8, 16, … is stored as a file.
    let base = if id.0[8] == 0 && id.0[7].is_multiple_of(8) {
        LARGE_PAYLOAD
    } else {
        1024
    };
    let mut payload = vec![0; base + usize::from(u16::from_le_bytes(len)) % 3072];
    xof.fill(&mut payload);
    payload
}

/// Batch `i` of pusher `tag`: fresh ids, payloads derived from them.
fn batch(tag: u32, i: u32) -> Vec<PushItem> {
    (0..BATCH)
        .map(|k| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&tag.to_be_bytes());
            id[4..8].copy_from_slice(&i.to_be_bytes());
            id[8] = k;
            let blob_id = BlobId(id);
            PushItem {
                blob_id,
                payload: payload_of(&blob_id),
                ttl_s: None,
            }
        })
        .collect()
}

/// Every acknowledged cursor and the blob id it was acknowledged for.
type Ledger = Arc<Mutex<BTreeMap<u64, BlobId>>>;

/// Record an answer to a push of fresh ids: one new cursor per item.
fn record(ledger: &Ledger, ok: &PushOk, what: &str) {
    let mut acked = ledger.lock().unwrap();
    for r in &ok.results {
        assert!(
            !r.duplicate,
            "{what}: fresh blob {:?} called duplicate",
            r.blob_id
        );
        assert!(r.cursor <= ok.head, "{what}: cursor above the head");
        assert!(
            acked.insert(r.cursor, r.blob_id).is_none(),
            "{what}: cursor {} acknowledged twice",
            r.cursor
        );
    }
}

/// What the test lets a pusher see.
struct Round {
    /// Set just before the `kill -9`: from then on a lost connection is
    /// expected.
    killed: watch::Receiver<bool>,
    /// Set once the relay is dead: the pusher stops waiting for an answer.
    stop: watch::Receiver<bool>,
    /// Acknowledged batches per pusher in this round.
    acks: watch::Sender<[u32; PUSHERS]>,
}

/// Push fresh batches until the relay dies. Returns the batch in flight
/// when it died (sent, no answer): it may or may not have been committed.
/// Fails on any error but a lost connection after the kill.
async fn push_until_killed(
    opts: ConnectOptions,
    d: usize,
    tag: u32,
    ledger: Ledger,
    mut round: Round,
) -> Result<Vec<PushItem>, String> {
    let session = RelaySession::connect(&opts)
        .await
        .map_err(|e| format!("pusher {d}: connect failed before the kill: {e}"))?;
    for i in 0u32.. {
        let items = batch(tag, i);
        let answer = tokio::select! {
            r = session.push(items.clone()) => r,
            _ = round.stop.wait_for(|s| *s) => return Ok(items),
        };
        match answer {
            Ok(ok) => {
                record(&ledger, &ok, &format!("pusher {d} batch {i}"));
                round.acks.send_modify(|a| a[d] += 1);
            }
            Err(ClientError::ConnectionLost(_) | ClientError::Stalled(_))
                if *round.killed.borrow() =>
            {
                return Ok(items);
            }
            Err(e) => {
                let when = if *round.killed.borrow() {
                    "after"
                } else {
                    "before"
                };
                return Err(format!("pusher {d} batch {i} failed {when} the kill: {e}"));
            }
        }
    }
    unreachable!("u32 batches")
}

/// A pusher task's result; a panic inside it is re-raised here.
async fn join<T>(task: JoinHandle<Result<T, String>>) -> T {
    match task.await {
        Ok(Ok(v)) => v,
        Ok(Err(msg)) => panic!("{msg}"),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => panic!("pusher task cancelled: {e}"),
    }
}

/// Every blob stored after cursor `after`: cursor → (id, payload).
async fn pull_all(session: &RelaySession, after: u64) -> BTreeMap<u64, (BlobId, Vec<u8>)> {
    let mut stored = BTreeMap::new();
    let mut after = after;
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

/// The group's blobs after cursor `after` (`stored`) are exactly those
/// `acked` after it: gapless cursors, each id once, each payload the one
/// derived from its id.
fn check_group(
    ctx: &str,
    after: u64,
    stored: &BTreeMap<u64, (BlobId, Vec<u8>)>,
    acked: &BTreeMap<u64, BlobId>,
) {
    let head = stored.keys().last().copied().unwrap_or(after);
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (after + 1..=head).collect::<Vec<_>>(),
        "{ctx}: cursors not gapless"
    );
    let mut seen = HashMap::new();
    for (cursor, (id, payload)) in stored {
        if let Some(first) = seen.insert(*id, *cursor) {
            panic!("{ctx}: blob {id:?} stored twice, at cursors {first} and {cursor}");
        }
        assert!(
            *payload == payload_of(id),
            "{ctx}: payload of blob {id:?} at cursor {cursor} differs from what was pushed ({} bytes)",
            payload.len()
        );
    }
    for (cursor, id) in acked.range(after + 1..) {
        match stored.get(cursor) {
            Some((got, _)) if got == id => {}
            Some((got, _)) => {
                panic!("{ctx}: cursor {cursor} acknowledged for {id:?} holds {got:?}")
            }
            None => panic!("{ctx}: acknowledged cursor {cursor} ({id:?}) lost"),
        }
    }
    if let Some((cursor, (id, _))) = stored.iter().find(|(c, _)| !acked.contains_key(c)) {
        panic!("{ctx}: blob {id:?} stored at cursor {cursor} was never acknowledged");
    }
}

fn relay_config(dir: &std::path::Path) -> std::path::PathBuf {
    let config = dir.join("relay.toml");
    std::fs::write(&config, "[rate_limits]\nrequests_per_s = 1000000\nrequests_burst = 1000000\nconnections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n").unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_blobs_survive_repeated_kill_9() {
    let loops: usize = std::env::var("CRASH_LOOPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("CRASH_SEED={seed} CRASH_LOOPS={loops}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let config = relay_config(tmp.path());
    let args = ["--config", config.to_str().unwrap()];
    let secret = GroupSecret::generate();
    let ledger: Ledger = Arc::default();
    let mut quic = "127.0.0.1:0".to_string();
    let (mut committed_in_flight, mut lost_in_flight) = (0, 0);
    let mut checked_head = 0;
    for round in 0..loops {
        let ctx = format!("round {round} (CRASH_SEED={seed})");
        let mut relay =
            tokio::task::block_in_place(|| RelayProcess::start_with(&data, &quic, &args));
        quic = relay.quic.to_string();
        let devices: Vec<_> = (0..PUSHERS)
            .map(|_| LibDevice::new(&relay.address, &secret))
            .collect();
        let (killed_tx, killed) = watch::channel(false);
        let (stop_tx, stop) = watch::channel(false);
        let (acks, mut acks_rx) = watch::channel([0u32; PUSHERS]);
        let mut pushers: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(d, dev)| {
                tokio::spawn(push_until_killed(
                    dev.opts.clone(),
                    d,
                    (round * PUSHERS + d) as u32,
                    Arc::clone(&ledger),
                    Round {
                        killed: killed.clone(),
                        stop: stop.clone(),
                        acks: acks.clone(),
                    },
                ))
            })
            .collect();

        // Kill only once every pusher has had a batch acknowledged this
        // round (a pusher ending before that is a failure), then after a
        // random extra delay.
        tokio::time::timeout(DEADLINE, async {
            tokio::select! {
                r = acks_rx.wait_for(|a| a.iter().all(|&n| n > 0)) => { r.unwrap(); }
                (r, d, _) = futures::future::select_all(pushers.iter_mut()) => match r {
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Ok(Err(msg)) => panic!("{ctx}: {msg}"),
                    other => panic!("{ctx}: pusher {d} ended before the kill: {:?}",
                        other.map(|r| r.map(|items| items.len()))),
                },
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{ctx}: not every pusher acknowledged within {DEADLINE:?}"));
        let extra = Duration::from_millis(rng.random_range(0..200));
        tokio::time::sleep(extra).await;
        killed_tx.send_replace(true);
        tokio::task::block_in_place(|| relay.kill9());
        // The relay is gone: a pusher waiting for an answer would only wait
        // for the QUIC idle timeout, so stop them now. An answer sent but
        // not yet read makes no difference: its batch is retried below and
        // must then be a duplicate under the same cursors.
        stop_tx.send_replace(true);
        let mut in_flight = Vec::new();
        for (d, p) in pushers.into_iter().enumerate() {
            in_flight.push((d, join(p).await));
        }
        let acks = *acks_rx.borrow();
        drop(relay);

        // Restart; push each in-flight batch again.
        let relay = tokio::task::block_in_place(|| RelayProcess::start_with(&data, &quic, &args));
        let reader = LibDevice::new(&relay.address, &secret);
        let session = RelaySession::connect(&reader.opts).await.unwrap();
        // This round's ids can only be after the head checked last round.
        let before: HashMap<BlobId, u64> = pull_all(&session, checked_head)
            .await
            .into_iter()
            .map(|(c, (id, _))| (id, c))
            .collect();
        // The retries go through another device of the group: blob ids are
        // idempotency keys for the whole group, whoever pushes them.
        let retries = futures::future::join_all(in_flight.into_iter().map(|(d, items)| {
            let session = &session;
            async move {
                let ok = session.push(items.clone()).await;
                ok.map(|ok| (d, items, ok))
            }
        }))
        .await;
        for retry in retries {
            let (d, items, ok) =
                retry.unwrap_or_else(|e| panic!("{ctx}: retry of an in-flight batch failed: {e}"));
            let ids: Vec<BlobId> = items.iter().map(|i| i.blob_id).collect();
            let prior: Vec<Option<u64>> = ids.iter().map(|id| before.get(id).copied()).collect();
            if prior.iter().all(Option::is_some) {
                committed_in_flight += 1;
                for (r, c) in ok.results.iter().zip(&prior) {
                    assert!(
                        r.duplicate && Some(r.cursor) == *c,
                        "{ctx}: pusher {d}'s committed batch retried: {r:?}, stored at {c:?}"
                    );
                }
                ledger
                    .lock()
                    .unwrap()
                    .extend(ok.results.iter().map(|r| (r.cursor, r.blob_id)));
            } else {
                assert!(
                    prior.iter().all(Option::is_none),
                    "{ctx}: pusher {d}'s batch partly stored: {prior:?}"
                );
                lost_in_flight += 1;
                record(&ledger, &ok, &format!("{ctx}: retry of pusher {d}"));
            }
        }

        // The group, payloads included, is exactly what was acknowledged:
        // this round's blobs, and every fourth round (and the last) the
        // whole group again, so later kills are checked against earlier
        // rounds' data too.
        let after = if round % 4 == 3 || round + 1 == loops {
            0
        } else {
            checked_head
        };
        // Read by a device that pushed nothing: `session` retried the
        // in-flight batches above and gets no echo of them (docs/protocol.md
        // "Version 2: no echo").
        let checker = LibDevice::new(&relay.address, &secret);
        let checker = RelaySession::connect(&checker.opts).await.unwrap();
        let stored = pull_all(&checker, after).await;
        checker.close().await;
        session.close().await;
        check_group(&ctx, after, &stored, &ledger.lock().unwrap());
        checked_head = stored.keys().last().copied().unwrap_or(after);
        println!(
            "round {round}: killed {extra:?} after every pusher's first ack, acks {acks:?}, \
             head {checked_head}, checked after {after}"
        );
        drop(relay);
    }
    println!(
        "in-flight batches at the kills: {committed_in_flight} had committed (retried as duplicates), \
         {lost_in_flight} had not (stored by the retry)"
    );
}

/// Exit code of the relay's fail point (`FAILPOINT_EXIT_CODE` in
/// `sync-relay/src/storage/sqlite/writer.rs`).
const FAILPOINT_EXIT_CODE: i32 = 86;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_committed_but_unanswered_is_a_duplicate_on_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    // The second push's transaction commits, then the relay exits before
    // answering it.
    let mut relay = tokio::task::block_in_place(|| {
        RelayProcess::start_with_env(
            &data,
            "127.0.0.1:0",
            &[],
            &[("SYNC_RELAY_FAILPOINT", "crash-after-commit:2")],
        )
    });
    let quic = relay.quic.to_string();
    let secret = GroupSecret::generate();
    let dev = LibDevice::new(&relay.address, &secret);
    let ledger: Ledger = Arc::default();
    let session = RelaySession::connect(&dev.opts).await.unwrap();
    let first = session.push(batch(1, 0)).await.unwrap();
    record(&ledger, &first, "first push");
    assert_eq!(first.head, u64::from(BATCH));

    let unanswered = batch(1, 1);
    let push = session.push(unanswered.clone());
    // Wait for the relay to exit; the push must not be answered first.
    let status = {
        let exited = async {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            loop {
                let status = relay.wait_exit(Duration::ZERO);
                if status.is_some() || tokio::time::Instant::now() >= deadline {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::pin!(exited);
        tokio::select! {
            biased;
            status = &mut exited => status,
            r = push => match r {
                Ok(ok) => panic!("the push was answered, the fail point did not fire: {ok:?}"),
                Err(_) => exited.await,
            },
        }
    };
    let status = status.expect("the relay exits at the fail point");
    assert_eq!(
        status.code(),
        Some(FAILPOINT_EXIT_CODE),
        "the relay ended by its fail point ({status}):\n{}",
        relay.log()
    );
    drop(relay);
    drop(session);

    let relay = tokio::task::block_in_place(|| RelayProcess::start_with(&data, &quic, &[]));
    let session = RelaySession::connect(&dev.opts).await.unwrap();
    // What is stored is read by another device of the group: the pusher
    // gets no echo of its own blobs (docs/protocol.md "Version 2: no echo").
    let reader = LibDevice::new(&relay.address, &secret);
    let reader = RelaySession::connect(&reader.opts).await.unwrap();
    // The batch committed before the crash: it is stored, under cursors
    // after the first batch's.
    let stored = pull_all(&reader, 0).await;
    let original: Vec<u64> = unanswered
        .iter()
        .map(|item| {
            stored
                .iter()
                .find(|(_, (id, _))| *id == item.blob_id)
                .map(|(c, _)| *c)
                .expect("the unanswered batch had committed")
        })
        .collect();
    let expected: Vec<u64> = (u64::from(BATCH) + 1..=2 * u64::from(BATCH)).collect();
    assert_eq!(original, expected, "stored after the first batch");

    // The retry is answered as a duplicate with the original cursors.
    let retry = session.push(unanswered.clone()).await.unwrap();
    for (r, c) in retry.results.iter().zip(&original) {
        assert!(r.duplicate, "retried blob {:?} not a duplicate", r.blob_id);
        assert_eq!(
            r.cursor, *c,
            "retried blob {:?} has a new cursor",
            r.blob_id
        );
    }
    assert_eq!(retry.head, 2 * u64::from(BATCH), "the retry stored nothing");
    ledger
        .lock()
        .unwrap()
        .extend(retry.results.iter().map(|r| (r.cursor, r.blob_id)));
    // A fresh batch continues right after: the head counter moved once.
    let next = session.push(batch(1, 2)).await.unwrap();
    record(&ledger, &next, "push after the retry");
    assert_eq!(next.results[0].cursor, 2 * u64::from(BATCH) + 1);

    let stored = pull_all(&reader, 0).await;
    check_group("after the retry", 0, &stored, &ledger.lock().unwrap());
    assert_eq!(stored.len(), 3 * usize::from(BATCH));
    reader.close().await;
    session.close().await;
    drop(relay);
}

/// Payload files under the relay's data directory (`blobs/xx/name`).
fn blob_files(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(subs) = std::fs::read_dir(data.join("blobs")) else {
        return out;
    };
    for sub in subs {
        for f in std::fs::read_dir(sub.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_blob_file_and_commit_leaves_an_orphan_swept_at_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let mut relay = tokio::task::block_in_place(|| {
        RelayProcess::start_with_env(
            &data,
            "127.0.0.1:0",
            &[],
            &[("SYNC_RELAY_FAILPOINT", "crash-after-blob-files")],
        )
    });
    let quic = relay.quic.to_string();
    let secret = GroupSecret::generate();
    let dev = LibDevice::new(&relay.address, &secret);
    let session = RelaySession::connect(&dev.opts).await.unwrap();
    // Batch 0's first item is a file-sized payload.
    let items = batch(7, 0);
    assert!(items[0].payload.len() >= LARGE_PAYLOAD);
    match tokio::time::timeout(DEADLINE, session.push(items.clone())).await {
        Ok(Ok(ok)) => panic!("the push was answered, the fail point did not fire: {ok:?}"),
        Ok(Err(_)) => {}
        Err(_) => panic!("the push neither failed nor was answered"),
    }
    let status = {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = relay.wait_exit(Duration::ZERO) {
                break status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not exit"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(
        status.code(),
        Some(FAILPOINT_EXIT_CODE),
        "the relay ended by its fail point ({status}):\n{}",
        relay.log()
    );
    drop(relay);
    drop(session);
    // The crash left the written file and no row.
    assert_eq!(blob_files(&data).len(), 1, "the fsync'd file is on disk");

    let relay = tokio::task::block_in_place(|| RelayProcess::start_with(&data, &quic, &[]));
    assert_eq!(
        blob_files(&data),
        Vec::<std::path::PathBuf>::new(),
        "the orphan was swept at start"
    );
    let session = RelaySession::connect(&dev.opts).await.unwrap();
    let reader = LibDevice::new(&relay.address, &secret);
    let reader = RelaySession::connect(&reader.opts).await.unwrap();
    assert!(pull_all(&reader, 0).await.is_empty(), "nothing was stored");
    // The retry stores the batch once, its large payload in one new file.
    let ledger: Ledger = Arc::default();
    let ok = session.push(items.clone()).await.unwrap();
    record(&ledger, &ok, "retry after the crash");
    assert!(ok.results.iter().all(|r| !r.duplicate));
    assert_eq!(blob_files(&data).len(), 1);
    let stored = pull_all(&reader, 0).await;
    check_group("after the retry", 0, &stored, &ledger.lock().unwrap());
    assert_eq!(stored.len(), items.len());
    reader.close().await;
    session.close().await;
    drop(relay);
}
