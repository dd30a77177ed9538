//! The storage contract (module docs of [`super`]), checked against the
//! SQLite backend. Written against the trait so a second backend can run the
//! same suite.

use super::*;
use std::sync::Arc;
use sync_protocol::{BlobId, DeviceId, GroupId};

const G: GroupId = GroupId([1; 32]);
const D: DeviceId = DeviceId([2; 32]);

async fn sqlite(quota: u64) -> (tempfile::TempDir, Arc<dyn Storage>) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(SqliteStorageOptions::new(dir.path().join("t.db"), quota))
        .await
        .unwrap();
    (dir, Arc::new(s))
}

fn blob(id: u8, len: usize) -> NewBlob {
    NewBlob {
        blob_id: BlobId([id; 16]),
        payload: vec![id; len],
        expires_at_ms: i64::MAX,
    }
}

fn req(items: Vec<NewBlob>) -> PushRequest {
    PushRequest {
        group: G,
        sender: D,
        items,
        now_ms: 1000,
    }
}

#[tokio::test]
async fn pushes_get_consecutive_cursors_and_duplicates_their_first_cursor() {
    let (_d, s) = sqlite(1 << 20).await;
    assert_eq!(s.open_session(G, D, 1).await.unwrap(), 0);
    let out = s.push(req(vec![blob(1, 10), blob(2, 10)])).await.unwrap();
    assert_eq!(out.head, 2);
    assert_eq!(
        out.results
            .iter()
            .map(|r| (r.cursor, r.duplicate))
            .collect::<Vec<_>>(),
        vec![(1, false), (2, false)]
    );
    let out = s
        .push(req(vec![blob(2, 10), blob(3, 10), blob(3, 10)]))
        .await
        .unwrap();
    assert_eq!(
        out.results
            .iter()
            .map(|r| (r.cursor, r.duplicate))
            .collect::<Vec<_>>(),
        vec![(2, true), (3, false), (3, true)]
    );
    assert_eq!(out.head, 3);
    assert_eq!(s.head(G).await.unwrap(), 3);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.groups, stats.blobs, stats.bytes), (1, 3, 30));
}

#[tokio::test]
async fn a_push_over_the_quota_stores_nothing() {
    let (_d, s) = sqlite(100).await;
    s.push(req(vec![blob(1, 60)])).await.unwrap();
    let err = s
        .push(req(vec![blob(2, 20), blob(3, 21)]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::GroupQuotaExceeded {
                used: 60,
                adding: 41,
                limit: 100
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.head(G).await.unwrap(), 1);
    assert_eq!(s.stats().await.unwrap().bytes, 60);
    // Exactly up to the quota is fine; duplicates cost nothing.
    let out = s.push(req(vec![blob(1, 60), blob(2, 40)])).await.unwrap();
    assert_eq!(out.head, 2);
    assert_eq!(s.stats().await.unwrap().bytes, 100);
}

#[tokio::test]
async fn pull_pages_respect_row_and_byte_limits_and_expiry() {
    let (_d, s) = sqlite(1 << 20).await;
    let mut items: Vec<_> = (1..=10).map(|i| blob(i, 100)).collect();
    items[4].expires_at_ms = 500; // cursor 5 expired at now = 1000
    s.push(req(items)).await.unwrap();
    let page = s.pull_page(G, 0, 3, 1 << 20, 1000).await.unwrap();
    assert_eq!(
        page.blobs.iter().map(|b| b.cursor).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert!(!page.complete);
    let page = s.pull_page(G, 3, 100, 250, 1000).await.unwrap();
    assert_eq!(
        page.blobs.iter().map(|b| b.cursor).collect::<Vec<_>>(),
        vec![4, 6],
        "5 expired; 250 bytes fit two"
    );
    assert!(!page.complete);
    let page = s.pull_page(G, 6, 100, 1 << 20, 1000).await.unwrap();
    assert_eq!(
        page.blobs.iter().map(|b| b.cursor).collect::<Vec<_>>(),
        vec![7, 8, 9, 10]
    );
    assert!(page.complete);
    assert_eq!(page.blobs[0].sender, D);
    assert_eq!(page.blobs[0].payload, vec![7; 100]);
    // A single blob larger than the byte budget still comes alone.
    let page = s.pull_page(G, 0, 100, 10, 1000).await.unwrap();
    assert_eq!(page.blobs.len(), 1);
}

#[tokio::test]
async fn acks_never_go_backwards_or_beyond_the_head() {
    let (_d, s) = sqlite(1 << 20).await;
    s.push(req(vec![blob(1, 1), blob(2, 1), blob(3, 1)]))
        .await
        .unwrap();
    assert_eq!(s.ack(G, D, 2, 5).await.unwrap(), 2);
    assert_eq!(s.ack(G, D, 1, 6).await.unwrap(), 2);
    assert!(matches!(
        s.ack(G, D, 4, 7).await,
        Err(StorageError::CursorBeyondHead { cursor: 4, head: 3 })
    ));
}

#[tokio::test]
async fn concurrent_pushes_share_commits_without_gaps() {
    let (_d, s) = sqlite(u64::MAX / 4).await;
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(async move {
            let mut cursors = Vec::new();
            for i in 0..20u8 {
                let mut b = blob(0, 8);
                b.blob_id = BlobId([t, i, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
                let out = s
                    .push(req(vec![b.clone(), {
                        let mut c = b;
                        c.blob_id.0[2] = 1;
                        c
                    }]))
                    .await
                    .unwrap();
                assert_eq!(out.results[1].cursor, out.results[0].cursor + 1);
                cursors.extend(out.results.iter().map(|r| r.cursor));
            }
            cursors
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=640).collect::<Vec<u64>>());
}

#[tokio::test]
async fn acknowledged_pushes_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    {
        let s = SqliteStorage::open(SqliteStorageOptions::new(&path, 1 << 20))
            .await
            .unwrap();
        s.push(req(vec![blob(1, 5)])).await.unwrap();
        // No close(): like a crash after the answer.
    }
    let s = SqliteStorage::open(SqliteStorageOptions::new(&path, 1 << 20))
        .await
        .unwrap();
    assert_eq!(s.head(G).await.unwrap(), 1);
    let out = s.push(req(vec![blob(1, 5), blob(2, 5)])).await.unwrap();
    assert!(out.results[0].duplicate);
    assert_eq!(out.head, 2);
    s.close().await;
    assert!(matches!(
        s.push(req(vec![blob(3, 1)])).await,
        Err(StorageError::Closed)
    ));
}
