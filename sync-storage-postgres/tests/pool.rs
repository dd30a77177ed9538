//! The pool figures the relay exports (`Storage::pool_stats`, docs/deploy.md "Prometheus"):
//! connections open and idle, the configured maximum, and calls that found no connection
//! within the acquire timeout. A database of its own (`SYNC_TEST_POSTGRES_URL`; without it,
//! a loud SKIPPED line and a pass).

use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId};
use sync_storage::{NewBlob, NewGroup, PushRequest, Quotas, Storage, StorageError};
use sync_storage_postgres::PostgresStorage;
use sync_storage_postgres::testing::TestDatabase;

/// The pool's figures once `done` holds for them (a connection goes back
/// to the pool in a task of its own after a call, so not at once).
async fn once(
    store: &PostgresStorage,
    what: &str,
    done: impl Fn(&sync_storage::PoolStats) -> bool,
) -> sync_storage::PoolStats {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stats = store.pool_stats();
        if done(&stats) {
            return stats;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A one-connection pool whose connection is held by a push waiting on a
/// row lock another session holds: a second call gives up after the
/// acquire timeout and is counted; the pool shows one busy connection, and
/// once the lock goes everything is idle again and the push commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_stats_show_busy_connections_and_count_acquire_timeouts() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let mut opts = db.options(Quotas::UNLIMITED);
    opts.max_connections = 1;
    opts.acquire_timeout = Duration::from_millis(300);
    let store = Arc::new(PostgresStorage::open(opts.clone()).await.unwrap());
    assert_eq!(store.backend(), "postgres");
    let group = GroupId([7; 32]);
    let device = DeviceId([1; 32]);
    store
        .open_session(group, device, 1, NewGroup::Unowned)
        .await
        .unwrap();
    let idle = once(&store, "connection back in the pool", |s| s.idle == 1).await;
    assert_eq!((idle.size, idle.idle, idle.max), (1, 1, 1), "{idle:?}");
    assert_eq!(idle.acquire_timeouts, 0);

    // Another session locks the group's row; a push waits for it while
    // holding the pool's only connection.
    let mut locker = sqlx::PgConnection::connect_with(&opts.connect)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT 1 FROM groups WHERE group_id = $1 FOR UPDATE")
        .bind(&group.0[..])
        .execute(&mut locker)
        .await
        .unwrap();
    let pusher = Arc::clone(&store);
    let push = tokio::spawn(async move {
        pusher
            .push(PushRequest {
                group,
                sender: device,
                items: vec![NewBlob {
                    blob_id: BlobId([3; 16]),
                    payload: b"waits for the lock".to_vec(),
                    expires_at_ms: i64::MAX,
                }],
                now_ms: 2,
            })
            .await
    });
    let busy = once(&store, "the push taking the connection", |s| s.idle == 0).await;
    assert_eq!((busy.size, busy.idle), (1, 0), "{busy:?}");
    let err = store.head(group).await.unwrap_err();
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    assert_eq!(store.pool_stats().acquire_timeouts, 1);
    assert!(store.stats().await.is_err());
    assert_eq!(store.pool_stats().acquire_timeouts, 2);

    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    let _ = locker.close().await;
    let pushed = push.await.unwrap().unwrap();
    assert_eq!(pushed.head, 1);
    let after = once(&store, "connection back after the push", |s| s.idle == 1).await;
    assert_eq!(
        (after.size, after.idle, after.acquire_timeouts),
        (1, 1, 2),
        "{after:?}"
    );
    store.close().await;
}
