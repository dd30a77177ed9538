//! Turns of several pushes on a real database (`crate::combine`,
//! `PostgresStorage::push_turn`): a refusal inside a turn leaves the
//! others stored, and a push that needs the exact quota path fails the
//! combined transaction (ZS001, migrations/postgres/0006) so that each push
//! is applied on its own. The turn is made deterministic by holding the
//! group's row from another session: the first push waits on it holding
//! the turn while the others queue behind it in the relay.

use crate::testing::TestDatabase;
use crate::{PostgresStorage, PushTurnStats};
use sqlx::Connection;
use std::sync::Arc;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId};
use sync_storage::{NewBlob, NewGroup, PushOutcome, PushRequest, Quotas, Storage, StorageError};

const GROUP: GroupId = GroupId([4; 32]);

fn push(id: u8, bytes: usize) -> PushRequest {
    PushRequest {
        group: GROUP,
        sender: DeviceId([1; 32]),
        items: vec![NewBlob {
            blob_id: BlobId([id; 16]),
            payload: vec![id; bytes],
            expires_at_ms: i64::MAX,
        }],
        now_ms: 10,
    }
}

/// A store on `db` under `quotas` with the group opened; push a first
/// blob while another session holds the group's row, queue `rest` behind
/// it, then let the row go: `rest` is one turn. The store, and the
/// answers in order (the first push's first).
async fn one_turn_behind(
    db: &TestDatabase,
    quotas: Quotas,
    rest: Vec<PushRequest>,
) -> (Arc<PostgresStorage>, Vec<Result<PushOutcome, StorageError>>) {
    let store = open(db, quotas).await;
    let mut locker = sqlx::PgConnection::connect_with(&db.options(Quotas::UNLIMITED).connect)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT 1 FROM groups WHERE group_id = $1 FOR UPDATE")
        .bind(&GROUP.0[..])
        .execute(&mut locker)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for req in std::iter::once(push(1, 10)).chain(rest) {
        let s = Arc::clone(&store);
        tasks.push(tokio::spawn(async move { s.push(req).await }));
        // The first takes the turn and waits on the row; the others queue
        // in this order.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    (store, answers)
}

/// Each answer's cursor (one blob a push), `None` for a refusal.
fn cursors(answers: &[Result<PushOutcome, StorageError>]) -> Vec<Option<u64>> {
    answers
        .iter()
        .map(|a| a.as_ref().map(|o| o.results[0].cursor).ok())
        .collect()
}

async fn open(db: &TestDatabase, quotas: Quotas) -> Arc<PostgresStorage> {
    let store = Arc::new(PostgresStorage::open(db.options(quotas)).await.unwrap());
    store
        .open_session(GROUP, DeviceId([1; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_inside_a_turn_leaves_the_other_pushes_stored() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let quotas = Quotas {
        max_group_blobs: 3,
        ..Quotas::UNLIMITED
    };
    let (store, answers) =
        one_turn_behind(&db, quotas, vec![push(2, 10), push(3, 10), push(4, 10)]).await;
    let cursors = cursors(&answers);
    assert_eq!(cursors, [Some(1), Some(2), Some(3), None], "{answers:?}");
    assert!(
        matches!(answers[3], Err(StorageError::GroupBlobsExceeded { .. })),
        "{answers:?}"
    );
    assert_eq!(
        store.push_turn_stats(),
        PushTurnStats {
            combined: 1,
            combined_pushes: 3,
            fallbacks: 0
        }
    );
    assert_eq!(store.head(GROUP).await.unwrap(), 3);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_needing_the_exact_quota_path_makes_its_turn_apply_each_alone() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    // A relay-wide budget of 64 KiB: the first push deals it out as 32
    // shares of ~2 KiB; a 4 KiB push fits no share, so it needs the exact
    // path, which a combined transaction refuses.
    let quotas = Quotas {
        max_storage: 64 << 10,
        ..Quotas::UNLIMITED
    };
    let (store, answers) = one_turn_behind(
        &db,
        quotas,
        vec![push(2, 10), push(3, 4 << 10), push(4, 10)],
    )
    .await;
    let cursors = cursors(&answers);
    assert_eq!(cursors, [Some(1), Some(2), Some(3), Some(4)], "{answers:?}");
    let stats = store.push_turn_stats();
    assert_eq!((stats.combined, stats.fallbacks), (0, 1), "{stats:?}");
    // Every byte charged once: the relay's shares hold exactly the four
    // pushes (the rolled-back turn charged nothing), the counters balance.
    let stored = 30 + (4 << 10);
    assert_eq!(store.stats().await.unwrap().bytes, stored);
    let mut conn = sqlx::PgConnection::connect_with(&db.options(Quotas::UNLIMITED).connect)
        .await
        .unwrap();
    let charged: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(used), 0)::BIGINT FROM quota_shares WHERE scope = '\\x'::BYTEA",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(charged, stored as i64);
    let audit = store.audit().await.unwrap();
    assert_eq!(audit.mismatched_groups, 0, "{audit:?}");
    store.close().await;
}
