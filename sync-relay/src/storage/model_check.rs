//! Model check: random operation sequences run against the SQLite backend
//! and the in-memory reference model ([`super::MemoryStorage`]); every
//! answer must be the same (pushes with duplicates and quota hits, pulls
//! with row and byte limits, acks, expiry, acknowledged-blob deletion,
//! stats, audits). proptest shrinks any difference to a minimal sequence.

use super::*;
use proptest::prelude::*;
use sync_protocol::{BlobId, DeviceId, GroupId};

#[derive(Debug, Clone)]
enum Op {
    Push {
        group: u8,
        device: u8,
        items: Vec<(u8, u8, i64)>,
    },
    Pull {
        group: u8,
        after_back: u8,
        max_blobs: u32,
        max_bytes: usize,
    },
    Ack {
        group: u8,
        device: u8,
        back: u8,
    },
    Tick(i64),
    Expire,
    DeleteAcked {
        window: i64,
    },
    Stats,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2u8, 0..3u8, prop::collection::vec((0..24u8, 0..60u8, 1..40i64), 1..6))
            .prop_map(|(group, device, items)| Op::Push { group, device, items }),
        3 => (0..2u8, 0..6u8, 1..5u32, 1..200usize)
            .prop_map(|(group, after_back, max_blobs, max_bytes)| Op::Pull { group, after_back, max_blobs, max_bytes }),
        2 => (0..2u8, 0..3u8, 0..4u8).prop_map(|(group, device, back)| Op::Ack { group, device, back }),
        2 => (1..15i64).prop_map(Op::Tick),
        1 => Just(Op::Expire),
        1 => (0..30i64).prop_map(|window| Op::DeleteAcked { window }),
        1 => Just(Op::Stats),
    ]
}

/// Errors made comparable.
fn norm<T: std::fmt::Debug>(r: Result<T, StorageError>) -> Result<String, String> {
    match r {
        Ok(v) => Ok(format!("{v:?}")),
        Err(e) => Err(e.to_string()),
    }
}

const QUOTAS: Quotas = Quotas {
    max_group_storage: 400,
    max_group_blobs: 14,
    max_storage: 700,
};

async fn drain(s: &dyn Storage, expired: bool, arg: i64) -> Result<Deleted, StorageError> {
    let mut total = Deleted::default();
    loop {
        let d = if expired {
            s.delete_expired(arg, 3).await?
        } else {
            s.delete_acked(arg, 3).await?
        };
        total.blobs += d.blobs;
        total.bytes += d.bytes;
        if d.blobs < 3 {
            return Ok(total);
        }
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStorage::open(SqliteStorageOptions::new(dir.path().join("m.db"), QUOTAS))
        .await
        .unwrap();
    let model = MemoryStorage::new(QUOTAS);
    let backends: [&dyn Storage; 2] = [&sqlite, &model];
    let gid = |g: u8| GroupId([g + 1; 32]);
    let dev = |d: u8| DeviceId([d + 1; 32]);
    let mut now: i64 = 1000;
    for b in backends {
        for g in 0..2 {
            for d in 0..3 {
                b.open_session(gid(g), dev(d), now).await.unwrap();
            }
        }
    }
    for (step, op) in ops.into_iter().enumerate() {
        let mut answers = Vec::new();
        for b in backends {
            let answer = match &op {
                Op::Push {
                    group,
                    device,
                    items,
                } => {
                    let items = items
                        .iter()
                        .map(|(id, len, ttl)| NewBlob {
                            blob_id: BlobId([*id; 16]),
                            payload: vec![*id; *len as usize],
                            expires_at_ms: now + ttl,
                        })
                        .collect();
                    norm(
                        b.push(PushRequest {
                            group: gid(*group),
                            sender: dev(*device),
                            items,
                            now_ms: now,
                        })
                        .await,
                    )
                }
                Op::Pull {
                    group,
                    after_back,
                    max_blobs,
                    max_bytes,
                } => {
                    let head = b.head(gid(*group)).await.unwrap();
                    let after = head.saturating_sub(u64::from(*after_back));
                    norm(
                        b.pull_page(gid(*group), after, *max_blobs, *max_bytes, now)
                            .await
                            .map(|p| {
                                (
                                    p.complete,
                                    p.blobs
                                        .iter()
                                        .map(|x| (x.cursor, x.blob_id, x.sender, x.payload.clone()))
                                        .collect::<Vec<_>>(),
                                )
                            }),
                    )
                }
                Op::Ack {
                    group,
                    device,
                    back,
                } => {
                    let head = b.head(gid(*group)).await.unwrap();
                    // `back` 0 asks for one beyond the head: refused.
                    let cursor = if *back == 0 {
                        head + 1
                    } else {
                        head.saturating_sub(u64::from(*back) - 1)
                    };
                    norm(b.ack(gid(*group), dev(*device), cursor, now).await)
                }
                Op::Tick(dt) => Ok(format!("{}", now + dt)),
                Op::Expire => norm(drain(b, true, now).await),
                Op::DeleteAcked { window } => norm(drain(b, false, now - window).await),
                Op::Stats => norm(b.stats().await),
            };
            answers.push(answer);
        }
        prop_assert_eq!(&answers[0], &answers[1], "step {}: {:?}", step, op);
        if let Op::Tick(dt) = op {
            now += dt;
        }
        let audit = sqlite.audit().await.unwrap();
        prop_assert_eq!(audit.mismatched_groups, 0, "step {}: {:?}", step, audit);
        prop_assert_eq!(audit.counted_bytes, audit.actual_bytes);
    }
    sqlite.close().await;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn sqlite_answers_like_the_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
