//! The storage contract (the crate docs), as tests any backend runs: each
//! takes a [`Backend`] over empty storage of its own
//! ([`crate::storage_contract_tests`] makes one `#[test]` per function).

use super::Backend;
use crate::*;
use std::sync::Arc;
use sync_protocol::{BlobId, DeviceId, GroupId};

const G: GroupId = GroupId([1; 32]);
const D: DeviceId = DeviceId([2; 32]);

/// A fresh store where device `D` opened a session on group `G` at time 0
/// (only sessions create groups).
async fn store_with(b: &mut dyn Backend, quotas: Quotas) -> Arc<dyn Storage> {
    let s: Arc<dyn Storage> = Arc::from(b.open(quotas).await);
    open(&*s, G, 0).await;
    s
}

/// Open a session of `D` on `group` (created unowned if new).
async fn open(s: &dyn Storage, group: GroupId, now_ms: i64) -> u64 {
    s.open_session(group, D, now_ms, NewGroup::Unowned)
        .await
        .unwrap()
        .head
}

async fn store(b: &mut dyn Backend, max_group_storage: u64) -> Arc<dyn Storage> {
    store_with(
        b,
        Quotas {
            max_group_storage,
            ..Quotas::UNLIMITED
        },
    )
    .await
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

/// See the test name.
pub async fn pushes_get_consecutive_cursors_and_duplicates_their_first_cursor(b: &mut dyn Backend) {
    let s = store(b, 1 << 20).await;
    assert_eq!(
        s.open_session(G, D, 1, NewGroup::Unowned)
            .await
            .unwrap()
            .head,
        0
    );
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

/// See the test name.
pub async fn a_push_over_the_quota_stores_nothing(b: &mut dyn Backend) {
    let s = store(b, 100).await;
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

/// See the test name.
pub async fn pull_pages_respect_row_and_byte_limits_and_expiry(b: &mut dyn Backend) {
    let s = store(b, 1 << 20).await;
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

/// See the test name.
pub async fn acks_never_go_backwards_or_beyond_the_head(b: &mut dyn Backend) {
    let s = store(b, 1 << 20).await;
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

/// See the test name.
pub async fn concurrent_pushes_share_commits_without_gaps(b: &mut dyn Backend) {
    let s = store(b, u64::MAX / 4).await;
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

/// See the test name.
pub async fn acknowledged_pushes_survive_reopening(b: &mut dyn Backend) {
    {
        let s = b.open(Quotas::UNLIMITED).await;
        open(&*s, G, 0).await;
        s.push(req(vec![blob(1, 5)])).await.unwrap();
        // No close(): like a crash after the answer.
    }
    let s = b.open(Quotas::UNLIMITED).await;
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

/// See the test name.
pub async fn group_blob_quota_and_relay_storage_limit_store_nothing(b: &mut dyn Backend) {
    let s = store_with(
        b,
        Quotas {
            max_group_blobs: 3,
            max_storage: 1000,
            ..Quotas::UNLIMITED
        },
    )
    .await;
    s.push(req(vec![blob(1, 10), blob(2, 10)])).await.unwrap();
    let err = s
        .push(req(vec![blob(3, 10), blob(4, 10)]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::GroupBlobsExceeded {
                count: 2,
                adding: 2,
                limit: 3
            }
        ),
        "{err:?}"
    );
    // Another group fills the relay up to its limit, then the next byte is refused.
    let other = GroupId([9; 32]);
    open(&*s, other, 0).await;
    let mut big = req(vec![blob(5, 980)]);
    big.group = other;
    s.push(big).await.unwrap();
    let mut over = req(vec![blob(6, 1)]);
    over.group = other;
    let err = s.push(over).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::RelayStorageFull {
                used: 1000,
                adding: 1,
                limit: 1000
            }
        ),
        "{err:?}"
    );
    // Deleting frees relay-wide room again.
    let deleted = s.delete_expired(1000, 100).await.unwrap();
    assert_eq!(
        deleted,
        Deleted { blobs: 0, bytes: 0 },
        "nothing expired yet"
    );
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.blobs, stats.bytes), (3, 1000));
}

/// See the test name.
pub async fn concurrent_pushes_never_overshoot_the_group_quota(b: &mut dyn Backend) {
    let s = store(b, 100).await;
    s.push(req(vec![blob(200, 30)])).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u8 {
        let s = Arc::clone(&s);
        tasks.push(tokio::spawn(
            async move { s.push(req(vec![blob(t, 10)])).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StorageError::GroupQuotaExceeded { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(ok, 7, "exactly the 70 bytes left fit");
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.actual_bytes, 100);
    assert_eq!(audit.counted_bytes, 100);
}

fn expiring(id: u32, len: usize, expires_at_ms: i64) -> NewBlob {
    let mut blob_id = [0u8; 16];
    blob_id[..4].copy_from_slice(&id.to_be_bytes());
    NewBlob {
        blob_id: BlobId(blob_id),
        payload: vec![7; len],
        expires_at_ms,
    }
}

/// See the test name.
pub async fn expired_blobs_are_deleted_in_bounded_batches_with_exact_counters(b: &mut dyn Backend) {
    let s = store(b, u64::MAX / 4).await;
    let mut items: Vec<_> = (0..250)
        .map(|i| expiring(i, 10 + (i as usize % 7), 500))
        .collect();
    items.extend((250..300).map(|i| expiring(i, 3, 5000)));
    s.push(req(items)).await.unwrap();
    let mut other = req((300..340).map(|i| expiring(i, 5, 600)).collect());
    other.group = GroupId([9; 32]);
    open(&*s, other.group, 0).await;
    s.push(other).await.unwrap();

    let first = s.delete_expired(1000, 100).await.unwrap();
    assert_eq!(first.blobs, 100, "one batch deletes at most its limit");
    let mut total = first;
    loop {
        let d = s.delete_expired(1000, 100).await.unwrap();
        total.blobs += d.blobs;
        total.bytes += d.bytes;
        if d.blobs < 100 {
            break;
        }
    }
    assert_eq!(total.blobs, 290);
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.mismatched_groups, 0, "{audit:?}");
    assert_eq!((audit.counted_blobs, audit.actual_blobs), (50, 50));
    assert_eq!((audit.counted_bytes, audit.actual_bytes), (150, 150));
    // The survivors are the unexpired ones, and the head did not move back.
    let page = s.pull_page(G, 0, 1000, 1 << 20, 1000).await.unwrap();
    assert_eq!(page.blobs.len(), 50);
    assert_eq!(page.blobs[0].cursor, 251);
    assert_eq!(s.head(G).await.unwrap(), 300);
    s.maintenance().await.unwrap();
}

/// See the test name.
pub async fn acked_blobs_are_deleted_only_when_every_recent_device_has_them(b: &mut dyn Backend) {
    let s = store(b, u64::MAX / 4).await;
    let other = DeviceId([3; 32]);
    s.push(req((0..10).map(|i| expiring(i, 4, i64::MAX)).collect()))
        .await
        .unwrap();
    s.open_session(G, other, 1000, NewGroup::Unowned)
        .await
        .unwrap();
    s.ack(G, D, 8, 1000).await.unwrap();
    s.ack(G, other, 5, 1000).await.unwrap();
    let d = s.delete_acked(0, 100).await.unwrap();
    assert_eq!(d.blobs, 5, "up to the lowest acknowledged cursor");
    // A device not seen since the window no longer holds deletion back.
    s.ack(G, D, 10, 5000).await.unwrap();
    let d = s.delete_acked(2000, 100).await.unwrap();
    assert_eq!(d.blobs, 5);
    assert_eq!(s.audit().await.unwrap().actual_blobs, 0);
    assert_eq!(s.stats().await.unwrap().bytes, 0);
}

fn no_live() -> LiveGroups {
    Arc::new(Vec::new)
}

/// Pruning (`Storage::prune_idle`): idle devices go, then the groups they
/// leave with no blob, no device and no recent activity, unless named live;
/// a group holding a blob is never pruned; a pruned group's head becomes the
/// head floor, so a group created (again) later never starts below it.
/// See the test name.
pub async fn idle_empty_groups_are_pruned_and_heads_never_go_backwards(b: &mut dyn Backend) {
    let s = store(b, u64::MAX / 4).await;
    let g = |n: u8| GroupId([n; 32]);
    // 1: holds a blob (idle for ages). 2: its 3 blobs expired (head 3).
    // 3: never held one. 4: idle but live. 5: active after the cutoff.
    for n in 1..=4 {
        open(&*s, g(n), 100).await;
    }
    let mut with_blob = req(vec![expiring(1, 10, i64::MAX)]);
    with_blob.group = g(1);
    with_blob.now_ms = 100;
    s.push(with_blob).await.unwrap();
    let mut expired = req((0..3).map(|i| expiring(i, 10, 500)).collect());
    expired.group = g(2);
    expired.now_ms = 100;
    s.push(expired).await.unwrap();
    open(&*s, g(5), 5000).await;
    assert_eq!(s.delete_expired(1000, 100).await.unwrap().blobs, 3);
    assert_eq!(s.stats().await.unwrap().groups, 5);

    let live: LiveGroups = Arc::new(move || vec![(g(4), D)]);
    let pruned = s.prune_idle(2000, 100, Arc::clone(&live)).await.unwrap();
    // Devices of 1, 2, 3 (not 4's: live session; not 5's: recent), then
    // groups 2 and 3.
    assert_eq!(
        pruned,
        Pruned {
            groups: 2,
            devices: 3,
            owners: 0
        }
    );
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.groups, stats.devices, stats.blobs), (3, 2, 1));
    assert_eq!(
        s.prune_idle(2000, 100, live).await.unwrap(),
        Pruned::default()
    );

    // Group 2 comes back where it was, not at 0; so does any new group.
    assert_eq!(s.head(g(2)).await.unwrap(), 3);
    assert_eq!(open(&*s, g(2), 6000).await, 3);
    assert_eq!(open(&*s, g(6), 6000).await, 3);
    let mut fresh = req(vec![expiring(9, 10, i64::MAX)]);
    fresh.group = g(6);
    let out = s.push(fresh).await.unwrap();
    assert_eq!((out.results[0].cursor, out.head), (4, 4));
    // Only sessions create groups: a push or an ack to a group with no row
    // (never opened, or pruned) is refused and creates nothing.
    assert!(matches!(
        s.ack(g(7), D, 3, 6000).await,
        Err(StorageError::UnknownGroup)
    ));
    let mut stray = req(vec![expiring(8, 10, i64::MAX)]);
    stray.group = g(7);
    assert!(matches!(
        s.push(stray).await,
        Err(StorageError::UnknownGroup)
    ));
    assert_eq!(s.stats().await.unwrap().groups, 5);
    // The group with a blob kept its head and blob.
    assert_eq!(s.head(g(1)).await.unwrap(), 1);
    assert_eq!(
        s.pull_page(g(1), 0, 10, 1 << 20, 6000)
            .await
            .unwrap()
            .blobs
            .len(),
        1
    );
    let audit = s.audit().await.unwrap();
    assert_eq!(audit.mismatched_groups, 0, "{audit:?}");
}

/// Idle devices go even from a group that stays (live, or holding a blob):
/// a member who keeps one session open and reconnects with fresh device ids
/// must not grow the devices table without bound (docs/deploy.md "Idle
/// groups and devices"). The device with the live session, and the group,
/// stay. See the test name.
pub async fn idle_devices_of_a_live_group_are_pruned_but_not_its_live_device(b: &mut dyn Backend) {
    let s = store(b, u64::MAX / 4).await;
    let idle = |n: u8| DeviceId([n + 10; 32]);
    for n in 0..50u8 {
        s.open_session(G, idle(n), 100 + i64::from(n), NewGroup::Unowned)
            .await
            .unwrap();
    }
    // The live session opened first, long ago: as idle as the others.
    s.open_session(G, D, 50, NewGroup::Unowned).await.unwrap();
    let mut kept = req(vec![expiring(1, 10, i64::MAX)]);
    kept.now_ms = 200;
    s.push(kept).await.unwrap();
    assert_eq!(s.ack(G, D, 1, 60).await.unwrap(), 1);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.groups, stats.devices), (1, 51));

    let live: LiveGroups = Arc::new(|| vec![(G, D)]);
    let mut pruned = Pruned::default();
    loop {
        let p = s.prune_idle(2000, 20, Arc::clone(&live)).await.unwrap();
        pruned.devices += p.devices;
        pruned.groups += p.groups;
        if p.devices < 20 && p.groups < 20 {
            break;
        }
    }
    assert_eq!((pruned.devices, pruned.groups), (50, 0));
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.groups, stats.devices, stats.blobs), (1, 1, 1));
    // The live device kept its row and its acknowledged cursor (a lower
    // ack returns the stored 1, a re-created row would answer 0).
    assert_eq!(s.ack(G, D, 0, 70).await.unwrap(), 1);
    assert_eq!(s.stats().await.unwrap().devices, 1);
    // Once its session ended, it goes too; the group keeps its blob.
    let p = s.prune_idle(2000, 20, no_live()).await.unwrap();
    assert_eq!((p.devices, p.groups), (1, 0));
    assert_eq!(s.head(G).await.unwrap(), 1);
}

/// See the test name.
pub async fn pruning_goes_in_bounded_batches_and_the_floor_survives_reopening(b: &mut dyn Backend) {
    let s = b.open(Quotas::UNLIMITED).await;
    for n in 0..10u8 {
        open(&*s, GroupId([n; 32]), 100).await;
    }
    let mut expired = req(vec![expiring(1, 10, 500), expiring(2, 10, 500)]);
    expired.group = GroupId([200; 32]);
    open(&*s, expired.group, 100).await;
    s.push(expired).await.unwrap();
    s.delete_expired(1000, 100).await.unwrap();
    let mut calls = Vec::new();
    loop {
        let p = s.prune_idle(2000, 4, no_live()).await.unwrap();
        calls.push((p.devices, p.groups));
        if p.devices < 4 && p.groups < 4 {
            break;
        }
    }
    // 11 devices and 11 groups, at most 4 of each per transaction; a group
    // goes in the transaction that removed its last device.
    assert_eq!(calls, vec![(4, 4), (4, 4), (3, 3)]);
    assert_eq!(s.stats().await.unwrap(), StorageStats::default());
    s.close().await;
    let s = b.open(Quotas::UNLIMITED).await;
    assert_eq!(open(&*s, GroupId([1; 32]), 3000).await, 2);
    s.close().await;
}

/// A blob expires *at* its expiry time (docs/protocol.md "Pull"): at
/// `now_ms == expires_at_ms` it is no longer pulled and cleanup deletes it;
/// one millisecond earlier it is pulled and kept. See the test name.
pub async fn a_blob_is_expired_from_its_expiry_time_on(b: &mut dyn Backend) {
    let s = store(b, 1 << 20).await;
    s.push(req(vec![
        expiring(1, 10, 2000),
        expiring(2, 10, 2001),
        expiring(3, 10, i64::MAX),
    ]))
    .await
    .unwrap();
    let pulled = |now: i64| {
        let s = Arc::clone(&s);
        async move {
            let page = s.pull_page(G, 0, 10, 1 << 20, now).await.unwrap();
            assert!(page.complete);
            page.blobs.iter().map(|b| b.cursor).collect::<Vec<_>>()
        }
    };
    assert_eq!(pulled(1999).await, vec![1, 2, 3], "before its expiry");
    assert_eq!(pulled(2000).await, vec![2, 3], "at its expiry time");
    assert_eq!(pulled(2001).await, vec![3]);
    assert_eq!(
        s.delete_expired(1999, 10).await.unwrap(),
        Deleted { blobs: 0, bytes: 0 },
        "nothing has expired a millisecond before"
    );
    assert_eq!(
        s.delete_expired(2000, 10).await.unwrap(),
        Deleted {
            blobs: 1,
            bytes: 10
        },
        "the blob is deleted at its expiry time"
    );
    assert_eq!(pulled(1999).await, vec![2, 3]);
    assert_eq!(s.delete_expired(2001, 10).await.unwrap().blobs, 1);
    assert_eq!(s.audit().await.unwrap().actual_blobs, 1);
}
