//! What only PostgreSQL promises among several relay instances: the
//! relay-wide quota holds when pushes race on two pools, and cleanup runs on
//! one instance at a time (the advisory lock) without double-counting. Each
//! test in a database of its own (`SYNC_TEST_POSTGRES_URL`; without it, a
//! loud SKIPPED line and a pass).

use std::sync::Arc;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId};
use sync_storage::{NewBlob, NewGroup, PushRequest, Quotas, Storage, StorageError};
use sync_storage_postgres::testing::TestDatabase;
use sync_storage_postgres::{CLEANUP_LOCK, PostgresStorage};

fn blob(task: u8, i: u16, len: usize, expires_at_ms: i64) -> NewBlob {
    let mut id = [0u8; 16];
    id[0] = task;
    id[1..3].copy_from_slice(&i.to_be_bytes());
    NewBlob {
        blob_id: BlobId(id),
        payload: vec![task; len],
        expires_at_ms,
    }
}

async fn two(db: &TestDatabase, quotas: Quotas) -> [Arc<dyn Storage>; 2] {
    let a = PostgresStorage::open(db.options(quotas)).await.unwrap();
    let b = PostgresStorage::open(db.options(quotas)).await.unwrap();
    [Arc::new(a), Arc::new(b)]
}

/// 8 tasks over two instances push 10-byte blobs to 8 groups until the
/// relay is full: the relay stores exactly `max_storage` bytes, never one
/// blob more, and every task was refused with RelayStorageFull.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_quota_holds_across_two_instances() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let quotas = Quotas {
        max_storage: 2000,
        ..Quotas::UNLIMITED
    };
    let stores = two(&db, quotas).await;
    let mut tasks = Vec::new();
    for t in 0..8u8 {
        let s = Arc::clone(&stores[usize::from(t % 2)]);
        tasks.push(tokio::spawn(async move {
            let group = GroupId([t; 32]);
            s.open_session(group, DeviceId([t; 32]), 1, NewGroup::Unowned)
                .await
                .unwrap();
            // 2000 bytes are 200 blobs: each task is refused long before 1000.
            for i in 0..1000 {
                let req = PushRequest {
                    group,
                    sender: DeviceId([t; 32]),
                    items: vec![blob(t, i, 10, i64::MAX)],
                    now_ms: 10,
                };
                match s.push(req).await {
                    Ok(_) => {}
                    Err(StorageError::RelayStorageFull { limit: 2000, .. }) => return,
                    Err(e) => panic!("{e}"),
                }
            }
            panic!("1000 pushes of 10 bytes and never RelayStorageFull");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in &stores {
        assert_eq!(s.stats().await.unwrap().bytes, 2000);
        let audit = s.audit().await.unwrap();
        assert_eq!(audit.actual_bytes, 2000);
        assert_eq!((audit.mismatched_groups, audit.mismatched_owners), (0, 0));
    }
    for s in stores {
        s.close().await;
    }
}

/// Two instances drain 1,000 expired blobs in batches of 50 at the same
/// time: together they delete each blob once (the counts add up to 1,000,
/// the counters balance). And while another session holds the cleanup's
/// advisory lock (as an instance in the middle of a batch does), a batch
/// waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_runs_on_one_instance_at_a_time() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let stores = two(&db, Quotas::UNLIMITED).await;
    let group = GroupId([1; 32]);
    stores[0]
        .open_session(group, DeviceId([1; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    for b in 0..10u16 {
        let items = (0..100).map(|i| blob(1, b * 100 + i, 16, 500)).collect();
        let req = PushRequest {
            group,
            sender: DeviceId([1; 32]),
            items,
            now_ms: 10,
        };
        stores[b as usize % 2].push(req).await.unwrap();
    }
    let drains = stores.iter().map(|s| {
        let s = Arc::clone(s);
        tokio::spawn(async move {
            let mut total = 0;
            loop {
                let d = s.delete_expired(1000, 50).await.unwrap();
                total += d.blobs;
                if d.blobs < 50 {
                    return total;
                }
            }
        })
    });
    let mut deleted = 0;
    for d in drains.collect::<Vec<_>>() {
        deleted += d.await.unwrap();
    }
    assert_eq!(deleted, 1000);
    let audit = stores[0].audit().await.unwrap();
    assert_eq!((audit.counted_blobs, audit.actual_blobs), (0, 0));
    assert_eq!((audit.counted_bytes, audit.mismatched_groups), (0, 0));
    assert_eq!(
        audit.mismatched_owners, 0,
        "the relay-wide counter balances"
    );

    // Another instance in the middle of a cleanup batch: its lock held.
    let mut holder = sqlx::PgConnection::connect_with(&db.options(Quotas::UNLIMITED).connect)
        .await
        .unwrap();
    use sqlx::Connection;
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CLEANUP_LOCK)
        .execute(&mut *tx)
        .await
        .unwrap();
    let waiting = {
        let s = Arc::clone(&stores[1]);
        tokio::spawn(async move { s.prune_idle(i64::MAX, 10, Arc::new(Vec::new)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a cleanup batch ran while another instance held the cleanup lock"
    );
    tx.commit().await.unwrap();
    let pruned = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the batch goes on once the lock is released")
        .unwrap()
        .unwrap();
    assert_eq!((pruned.devices, pruned.groups), (1, 1));
    let _ = holder.close().await;
    for s in stores {
        s.close().await;
    }
}

/// The owner's budget is split into quota shares like the relay's
/// (docs/deploy.md "Quota shares"): 16 tasks on two instances push 7-byte
/// blobs to 16 groups of one address owner until its 3,000-byte budget
/// refuses them. The owner then stores exactly 2,996 bytes (the most 7-byte
/// blobs that fit: a push is refused only on the exact sum, never early and
/// never over), and the counters balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_budget_holds_exactly_across_two_instances() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut quotas = Quotas::UNLIMITED;
    quotas.address.max_storage = 3000;
    let stores = two(&db, quotas).await;
    let owner = sync_storage::AddressKey::of("192.0.2.7".parse().unwrap());
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let s = Arc::clone(&stores[usize::from(t % 2)]);
        tasks.push(tokio::spawn(async move {
            let group = GroupId([t; 32]);
            s.open_session(group, DeviceId([t; 32]), 1, NewGroup::Address(owner))
                .await
                .unwrap();
            for i in 0..1000 {
                let req = PushRequest {
                    group,
                    sender: DeviceId([t; 32]),
                    items: vec![blob(t, i, 7, i64::MAX)],
                    now_ms: 10,
                };
                match s.push(req).await {
                    Ok(_) => {}
                    Err(StorageError::OwnerQuotaExceeded {
                        kind: "address",
                        limit: 3000,
                        used,
                        adding: 7,
                    }) => {
                        assert!(used + 7 > 3000, "refused early at {used}");
                        return;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            panic!("1000 pushes of 7 bytes and never OwnerQuotaExceeded");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for s in &stores {
        assert_eq!(s.stats().await.unwrap().bytes, 2996);
        let audit = s.audit().await.unwrap();
        assert_eq!((audit.mismatched_groups, audit.mismatched_owners), (0, 0));
    }
    for s in stores {
        s.close().await;
    }
}

/// Shares dealt out under one limit are not spent under another: after an
/// instance with `max_storage` = 10,000 stored 100 bytes (its shares then
/// have room for thousands more), an instance configured with 150 is
/// decided on the exact sum and refuses the next 100 bytes (an operator
/// lowering the limit, or two instances with different configs, never
/// overshoot the lower one). Raising it back admits them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_relay_limit_is_decided_on_the_exact_sum() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let generous = PostgresStorage::open(db.options(Quotas {
        max_storage: 10_000,
        ..Quotas::UNLIMITED
    }))
    .await
    .unwrap();
    let tight = PostgresStorage::open(db.options(Quotas {
        max_storage: 150,
        ..Quotas::UNLIMITED
    }))
    .await
    .unwrap();
    let group = GroupId([1; 32]);
    let push = |i: u16| PushRequest {
        group,
        sender: DeviceId([1; 32]),
        items: vec![blob(1, i, 100, i64::MAX)],
        now_ms: 10,
    };
    generous
        .open_session(group, DeviceId([1; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    generous.push(push(0)).await.unwrap();
    let err = tight.push(push(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::RelayStorageFull {
                used: 100,
                adding: 100,
                limit: 150
            }
        ),
        "{err:?}"
    );
    assert_eq!(generous.push(push(1)).await.unwrap().head, 2);
    assert_eq!(tight.stats().await.unwrap().bytes, 200);
    generous.close().await;
    tight.close().await;
}
