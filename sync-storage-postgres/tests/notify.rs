//! Wake-ups across instances (docs/deploy.md "Several relays on one
//! PostgreSQL"): a committed push reaches every instance's head feed, a
//! refused one reaches none; whatever else arrives on the channel (anyone
//! with access to the database can `NOTIFY`) is reported as malformed and
//! never stops the feed; the listener's connection, killed, comes back and
//! asks for a resync. Each test in a database of its own
//! (`SYNC_TEST_POSTGRES_URL`; without it, a loud SKIPPED line and a pass).

use sqlx::Connection;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId};
use sync_storage::{
    HeadEvent, HeadFeed, NewBlob, NewGroup, PushRequest, Quotas, Storage, StorageError,
};
use sync_storage_postgres::testing::TestDatabase;
use sync_storage_postgres::{
    LISTENER_APPLICATION_NAME, NOTIFY_CHANNEL, PostgresStorage, SINK_APPLICATION_NAME,
};

/// Generous: these wait on conditions, not for time to pass.
const DEADLINE: Duration = Duration::from_secs(30);

async fn next(feed: &mut HeadFeed) -> HeadEvent {
    tokio::time::timeout(DEADLINE, feed.recv())
        .await
        .expect("a feed event in time")
        .expect("the feed is still open")
}

/// The next event that is not a `Resync`.
async fn next_wake_up(feed: &mut HeadFeed) -> HeadEvent {
    loop {
        match next(feed).await {
            HeadEvent::Resync => continue,
            other => return other,
        }
    }
}

fn push(group: GroupId, tag: u8, len: usize) -> PushRequest {
    PushRequest {
        group,
        sender: DeviceId([1; 32]),
        items: vec![NewBlob {
            blob_id: BlobId([tag; 16]),
            payload: vec![tag; len],
            expires_at_ms: i64::MAX,
        }],
        now_ms: 1,
    }
}

async fn open(db: &TestDatabase, quotas: Quotas) -> PostgresStorage {
    PostgresStorage::open(db.options(quotas)).await.unwrap()
}

async fn sql(db: &TestDatabase) -> sqlx::PgConnection {
    sqlx::PgConnection::connect_with(&db.options(Quotas::UNLIMITED).connect)
        .await
        .unwrap()
}

/// Listeners of this test's database (their `application_name`).
async fn listeners(conn: &mut sqlx::PgConnection) -> i64 {
    named(conn, LISTENER_APPLICATION_NAME).await
}

/// Sessions of this test's database with `application_name` `name`.
async fn named(conn: &mut sqlx::PgConnection, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(name)
    .fetch_one(conn)
    .await
    .unwrap()
}

/// A push refused by the relay-wide quota wakes nobody (only a committed
/// push hands a wake-up to the notifier); the next committed push on
/// another instance is the first wake-up this instance hears, with its
/// group and head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_push_wakes_other_instances_and_a_refused_one_wakes_none() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let quotas = Quotas {
        max_storage: 100,
        ..Quotas::UNLIMITED
    };
    let listening = open(&db, quotas).await;
    let pushing = open(&db, quotas).await;
    let mut feed = listening.head_changes().expect("PostgreSQL has a feed");
    assert_eq!(next(&mut feed).await, HeadEvent::Resync, "listening first");
    let (g1, g2) = (GroupId([1; 32]), GroupId([2; 32]));
    for g in [g1, g2] {
        pushing
            .open_session(g, DeviceId([1; 32]), 1, NewGroup::Unowned)
            .await
            .unwrap();
    }
    let refused = pushing.push(push(g1, 1, 200)).await;
    assert!(
        matches!(refused, Err(StorageError::RelayStorageFull { .. })),
        "{refused:?}"
    );
    let ok = pushing.push(push(g2, 2, 10)).await.unwrap();
    assert_eq!(ok.head, 1);
    assert_eq!(
        next_wake_up(&mut feed).await,
        HeadEvent::Moved { group: g2, head: 1 },
        "the refused push to g1 woke the listener"
    );
    // A duplicate stores nothing and moves no head: no wake-up either.
    pushing.push(push(g2, 2, 10)).await.unwrap();
    pushing.push(push(g2, 3, 10)).await.unwrap();
    assert_eq!(
        next_wake_up(&mut feed).await,
        HeadEvent::Moved { group: g2, head: 2 }
    );
    listening.close().await;
    pushing.close().await;
}

/// The wake-ups go over the notifier's own connection, one per instance
/// that sent one (opened when its first round needs it), not over one of
/// the pushes' pool (its `synchronous_commit = off` is checked in the
/// notifier's unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wake_ups_go_over_a_connection_of_their_own() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let listening = open(&db, Quotas::UNLIMITED).await;
    let pushing = open(&db, Quotas::UNLIMITED).await;
    let mut feed = listening.head_changes().expect("PostgreSQL has a feed");
    assert_eq!(next(&mut feed).await, HeadEvent::Resync, "listening first");
    let mut conn = sql(&db).await;
    assert_eq!(
        named(&mut conn, SINK_APPLICATION_NAME).await,
        0,
        "none before a wake-up"
    );
    let g = GroupId([7; 32]);
    pushing
        .open_session(g, DeviceId([1; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    pushing.push(push(g, 1, 10)).await.unwrap();
    assert_eq!(
        next_wake_up(&mut feed).await,
        HeadEvent::Moved { group: g, head: 1 }
    );
    assert_eq!(
        named(&mut conn, SINK_APPLICATION_NAME).await,
        1,
        "the pushing instance's notifier, kept open for the next round"
    );
    pushing.close().await;
    listening.close().await;
}

/// Payloads that are not ours, sent straight to the channel, are each
/// reported as `Malformed` (no panic, no end of the feed); a well-formed
/// forged one is passed on as the hint it is (the relay re-reads the head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_on_the_channel_are_malformed_and_the_feed_goes_on() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = open(&db, Quotas::UNLIMITED).await;
    let mut feed = store.head_changes().unwrap();
    assert_eq!(next(&mut feed).await, HeadEvent::Resync);
    let mut conn = sql(&db).await;
    let hex = "ab".repeat(32);
    let hostile = [
        String::new(),
        "hello".into(),
        format!("1:{hex}:18446744073709551616"),
        format!("1:{hex}:-5"),
        format!("1:{}:5", "AB".repeat(32)),
        format!("1:{hex}:5\n"),
        "é".repeat(3000),
        "x".repeat(7990),
    ];
    for p in &hostile {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(NOTIFY_CHANNEL)
            .bind(p)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for p in &hostile {
        assert_eq!(
            next_wake_up(&mut feed).await,
            HeadEvent::Malformed,
            "{:?}",
            &p[..p.len().min(40)]
        );
    }
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(format!("1:{hex}:{}", u64::MAX))
        .execute(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        next_wake_up(&mut feed).await,
        HeadEvent::Moved {
            group: GroupId([0xab; 32]),
            head: u64::MAX
        }
    );
    store.close().await;
}

/// One connection listens per feed; killed (as an operator or a failover
/// would), it is reported, comes back, asks for a resync, and the next
/// push is heard again. Dropping the feed closes the connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = open(&db, Quotas::UNLIMITED).await;
    let mut feed = store.head_changes().unwrap();
    assert_eq!(next(&mut feed).await, HeadEvent::Resync);
    let mut conn = sql(&db).await;
    assert_eq!(listeners(&mut conn).await, 1, "one dedicated connection");
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(killed, vec![true]);
    assert_eq!(next(&mut feed).await, HeadEvent::Disconnected);
    assert_eq!(next(&mut feed).await, HeadEvent::Resync, "caught up");
    let g = GroupId([7; 32]);
    store
        .open_session(g, DeviceId([1; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    store.push(push(g, 1, 10)).await.unwrap();
    assert_eq!(
        next_wake_up(&mut feed).await,
        HeadEvent::Moved { group: g, head: 1 }
    );
    assert_eq!(listeners(&mut conn).await, 1, "still one");

    drop(feed);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while listeners(&mut conn).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dropped feed's connection stays open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.close().await;
}

/// `heads` answers every group asked for, in order, in one query: a
/// group's head, or the head floor for one that does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_are_read_in_the_order_asked() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let store = open(&db, Quotas::UNLIMITED).await;
    let (g1, g2, unknown) = (GroupId([1; 32]), GroupId([2; 32]), GroupId([9; 32]));
    for g in [g1, g2] {
        store
            .open_session(g, DeviceId([1; 32]), 1, NewGroup::Unowned)
            .await
            .unwrap();
    }
    for tag in 1..=3 {
        store.push(push(g2, tag, 5)).await.unwrap();
    }
    store.push(push(g1, 9, 5)).await.unwrap();
    assert_eq!(
        store.heads(&[g2, unknown, g1, g2]).await.unwrap(),
        vec![(g2, 3), (unknown, 0), (g1, 1), (g2, 3)]
    );
    assert_eq!(store.heads(&[]).await.unwrap(), vec![]);
    store.close().await;
}

/// A burst of pushes to one group from 16 tasks at once: the instance
/// listening hears the burst's last head (the wake-up of the final round is
/// always sent) and the pushing instance
/// sent at most one wake-up per push in at most one statement per push
/// (coalesced rounds: the deterministic count is the notifier's unit test,
/// `a_burst_to_one_group_costs_two_statements_and_ends_with_its_last_head`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_pushes_ends_with_its_last_head_heard() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let listening = open(&db, Quotas::UNLIMITED).await;
    let pushing = std::sync::Arc::new(open(&db, Quotas::UNLIMITED).await);
    let mut feed = listening.head_changes().unwrap();
    assert_eq!(next(&mut feed).await, HeadEvent::Resync);
    let g = GroupId([5; 32]);
    pushing
        .open_session(g, DeviceId([1; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    const TASKS: u8 = 16;
    const PER_TASK: u8 = 8;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let pushing = std::sync::Arc::clone(&pushing);
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let mut req = push(g, t, 10);
                req.items[0].blob_id = BlobId([t, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                pushing.push(req).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let last = u64::from(TASKS) * u64::from(PER_TASK);
    assert_eq!(pushing.head(g).await.unwrap(), last);
    // A hand-in that arrives late may be sent after a higher head: the
    // listener keeps the highest (the relay re-reads the head anyway).
    let mut heard = 0;
    while heard < last {
        match next_wake_up(&mut feed).await {
            HeadEvent::Moved { group, head } => {
                assert_eq!(group, g);
                heard = heard.max(head);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let stats = pushing.wake_up_stats();
    eprintln!("{last} pushes: {stats:?}");
    assert!(stats.statements <= last, "{stats:?}");
    assert!(stats.sent <= last && stats.dropped == 0, "{stats:?}");
    listening.close().await;
    pushing.close().await;
}
