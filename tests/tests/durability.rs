//! Crash durability (issue: proof under faults): N times (`CRASH_LOOPS`,
//! default 20), four devices push concurrently, the relay is killed with
//! `kill -9` at a random moment and restarted on the same data; every blob
//! any device saw acknowledged must be stored exactly once, under the
//! cursor it was acknowledged with, and cursors must stay gapless. The data
//! accumulates across rounds, so later rounds check earlier ones too.
//! `CRASH_SEED` fixes the random kill moments (the seed is printed).

use e2e_tests::{LibDevice, RelayProcess};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_client::{GroupSecret, RelaySession};
use sync_protocol::{BlobId, PushItem};

async fn push_until_refused(dev: LibDevice, tag: u32, acked: Arc<Mutex<BTreeMap<u64, BlobId>>>) {
    let Ok(session) = RelaySession::connect(&dev.opts).await else {
        return;
    };
    for i in 0u32.. {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&tag.to_be_bytes());
        id[4..8].copy_from_slice(&i.to_be_bytes());
        let items: Vec<PushItem> = (0..4u8)
            .map(|k| {
                let mut id = id;
                id[8] = k;
                PushItem {
                    blob_id: BlobId(id),
                    payload: vec![k; 1500],
                    ttl_s: None,
                }
            })
            .collect();
        match session.push(items).await {
            Ok(ok) => {
                let mut acked = acked.lock().unwrap();
                for r in ok.results {
                    assert!(
                        acked.insert(r.cursor, r.blob_id).is_none(),
                        "cursor {} acknowledged twice",
                        r.cursor
                    );
                }
            }
            Err(_) => return, // the relay died
        }
    }
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
    let config = tmp.path().join("relay.toml");
    std::fs::write(&config, "[rate_limits]\nrequests_per_s = 1000000\nrequests_burst = 1000000\nconnections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n").unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let secret = GroupSecret::generate();
    let acked: Arc<Mutex<BTreeMap<u64, BlobId>>> = Arc::default();
    let mut quic = "127.0.0.1:0".to_string();
    for round in 0..loops {
        let mut relay =
            tokio::task::block_in_place(|| RelayProcess::start_with(&data, &quic, &args));
        quic = relay.quic.to_string();
        let pushers: Vec<_> = (0..4u32)
            .map(|d| {
                let dev = LibDevice::new(&relay.address, &secret);
                tokio::spawn(push_until_refused(
                    dev,
                    round as u32 * 16 + d,
                    Arc::clone(&acked),
                ))
            })
            .collect();
        let kill_after = Duration::from_millis(rng.random_range(30..400));
        tokio::time::sleep(kill_after).await;
        tokio::task::block_in_place(|| relay.kill9());
        // Answers already on their way arrive within milliseconds on
        // loopback; after that the pushers would only wait for the QUIC
        // idle timeout, so stop them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for p in pushers {
            p.abort();
            let _ = p.await;
        }
        // Restart and check everything acknowledged so far.
        let relay = tokio::task::block_in_place(|| RelayProcess::start_with(&data, &quic, &args));
        let reader = LibDevice::new(&relay.address, &secret);
        let session = RelaySession::connect(&reader.opts).await.unwrap();
        let mut stored = BTreeMap::new();
        let mut after = 0;
        loop {
            let mut resp = session.pull(after, 10_000).await.unwrap();
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
        session.close().await;
        let head = stored.keys().last().copied().unwrap_or(0);
        assert_eq!(
            stored.len() as u64,
            head,
            "round {round} (seed {seed}): cursors not gapless"
        );
        let ids: std::collections::BTreeSet<_> = stored.values().collect();
        assert_eq!(
            ids.len(),
            stored.len(),
            "round {round} (seed {seed}): a blob stored twice"
        );
        for (cursor, id) in acked.lock().unwrap().iter() {
            assert_eq!(
                stored.get(cursor),
                Some(id),
                "round {round} (seed {seed}): acknowledged cursor {cursor} lost"
            );
        }
        println!(
            "round {round}: killed after {kill_after:?}, {} acknowledged, head {head}",
            acked.lock().unwrap().len()
        );
        drop(relay);
    }
    assert!(
        acked.lock().unwrap().len() > loops,
        "pushes were acknowledged before the kills"
    );
}
