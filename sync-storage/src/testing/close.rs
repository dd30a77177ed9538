//! Closing a group ([`Storage::close_group`]; docs/security.md "What the
//! relay must do"): a closed group takes new blobs only from the devices it
//! keeps (expiring by the grace's end), opens sessions only for them, both
//! until its grace ends, orders with pushes racing
//! it, keeps its first close, and after the grace its blobs go like expired
//! ones while its row (its closed mark) stays so its id is never created
//! again. The single-instance tests also run on the in-memory model
//! ([`SINGLE_INSTANCE`]).

use super::Backend;
use crate::*;
use std::collections::BTreeSet;
use std::sync::Arc;
use sync_protocol::{AccessToken, BlobId, DeviceId, GroupId, KeepList};

const G: GroupId = GroupId([5; 32]);
/// A device the close keeps.
const A: DeviceId = DeviceId([0xa0; 32]);
/// A device the close removes.
const B: DeviceId = DeviceId([0xb0; 32]);
const GRACE: i64 = 1_000;

/// The tests of this module that open one store only (the in-memory model
/// runs these too: it has no second instance over the same data).
pub const SINGLE_INSTANCE: &[&str] = &[
    "a_closed_group_refuses_pushes_and_unlisted_devices",
    "a_kept_device_pushes_until_the_grace_and_its_blobs_expire_by_then",
    "a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it",
    "listed_devices_pull_until_the_grace_then_the_blobs_go_and_the_mark_stays",
];

fn keep(ids: &[DeviceId]) -> KeepList {
    KeepList::new(ids.to_vec()).expect("short list")
}

fn push(sender: DeviceId, id: u16, now_ms: i64) -> PushRequest {
    let mut blob_id = [0u8; 16];
    blob_id[..2].copy_from_slice(&id.to_be_bytes());
    PushRequest {
        group: G,
        sender,
        items: vec![NewBlob {
            blob_id: BlobId(blob_id),
            payload: vec![7; 10],
            expires_at_ms: i64::MAX,
        }],
        now_ms,
    }
}

async fn all_cursors(s: &dyn Storage, now_ms: i64) -> Vec<u64> {
    let mut cursors = Vec::new();
    loop {
        let after = cursors.last().copied().unwrap_or(0);
        let page = s
            .pull_page(G, after, 1_000, usize::MAX, now_ms)
            .await
            .unwrap();
        cursors.extend(page.blobs.iter().map(|b| b.cursor));
        if page.complete {
            return cursors;
        }
        assert!(!page.blobs.is_empty(), "an empty page that is not complete");
    }
}

/// See the test name: pushes from a device the close does not keep are
/// refused at once, from a kept one once the grace ended. Also: a retried
/// push whose blobs were all stored before the close gets its cursors back (it stores nothing); a later
/// close changes nothing and answers the first; a close of a group that is
/// not stored is refused.
pub async fn a_closed_group_refuses_pushes_and_unlisted_devices(b: &mut dyn Backend) {
    let s = b.open(Quotas::UNLIMITED).await;
    for d in [A, B] {
        s.open_session(G, d, 1, NewGroup::Unowned).await.unwrap();
    }
    s.push(push(A, 1, 10)).await.unwrap();
    s.push(push(B, 2, 10)).await.unwrap();
    assert_eq!(s.closure(G).await.unwrap(), None);
    let out = s.close_group(G, keep(&[A]), 100, GRACE).await.unwrap();
    assert!(out.applied);
    let recorded = GroupClosure {
        closed_at_ms: 100,
        grace_until_ms: 100 + GRACE,
        keep: keep(&[A]),
    };
    assert_eq!(out.closure, recorded);
    assert_eq!(s.closure(G).await.unwrap(), Some(recorded.clone()));

    // The removed device is refused at once; the kept one from the grace's
    // end on (its pushes before then: `a_kept_device_pushes_until_the_grace…`).
    let err = s.push(push(B, 3, 200)).await.unwrap_err();
    assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    let err = s.push(push(A, 3, 100 + GRACE)).await.unwrap_err();
    assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    assert_eq!(s.head(G).await.unwrap(), 2, "a refused push stores nothing");
    let retried = s.push(push(A, 1, 200)).await.unwrap();
    assert_eq!((retried.results[0].cursor, retried.head), (1, 2));
    assert!(retried.results[0].duplicate);

    s.open_session(G, A, 200, NewGroup::Unowned).await.unwrap();
    let err = s
        .open_session(G, B, 200, NewGroup::Unowned)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    // From the grace's end on, the kept device is refused too.
    let err = s
        .open_session(G, A, 100 + GRACE, NewGroup::Unowned)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::GroupClosed), "{err:?}");

    // A second close, with another list or the same one, changes nothing.
    for list in [keep(&[B]), keep(&[]), keep(&[A])] {
        let again = s.close_group(G, list, 300, 5 * GRACE).await.unwrap();
        assert!(!again.applied);
        assert_eq!(again.closure, recorded);
    }
    assert_eq!(s.closure(G).await.unwrap(), Some(recorded));
    let err = s
        .close_group(GroupId([6; 32]), keep(&[A]), 300, GRACE)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::UnknownGroup), "{err:?}");
}

/// A device the close keeps may still push until the grace ends (a
/// concurrent revocation's `Rotate` must reach the old group:
/// docs/security.md "Closing and concurrent rotations"): its new blobs are
/// stored under the next cursors with their expiry lowered to the grace's
/// end, and still charged to the group, its owner (token) and the relay —
/// a push over the owner's budget is refused as ever. A device the close
/// does not keep is refused throughout, the kept one from the grace's end
/// on; by then every blob has expired and the expiry gives all bytes back.
pub async fn a_kept_device_pushes_until_the_grace_and_its_blobs_expire_by_then(
    b: &mut dyn Backend,
) {
    let s = b.open(Quotas::UNLIMITED).await;
    let token = TokenHash::of(&AccessToken([8; 32]));
    s.create_token(NewToken {
        hash: token,
        label: None,
        created_at_ms: 1,
        max_groups: 10,
        max_storage: 30,
    })
    .await
    .unwrap();
    s.open_session(G, A, 1, NewGroup::Token(token))
        .await
        .unwrap();
    s.open_session(G, B, 1, NewGroup::Unowned).await.unwrap();
    s.push(push(A, 1, 10)).await.unwrap();
    s.close_group(G, keep(&[A]), 100, GRACE).await.unwrap();
    let grace_end = 100 + GRACE;

    let err = s.push(push(B, 2, 200)).await.unwrap_err();
    assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    let kept = s.push(push(A, 3, 200)).await.unwrap();
    assert_eq!(kept.results[0].cursor, 2);
    assert!(!kept.results[0].duplicate);
    let err = s.push(push(B, 4, grace_end - 1)).await.unwrap_err();
    assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    let last = s.push(push(A, 5, grace_end - 1)).await.unwrap();
    assert_eq!((last.results[0].cursor, last.head), (3, 3));
    // Charged like any push: the token's 30 bytes are used up.
    assert_eq!(s.tokens().await.unwrap()[0].bytes_used, 30);
    assert_eq!(s.stats().await.unwrap().bytes, 30);
    let err = s.push(push(A, 6, grace_end - 1)).await.unwrap_err();
    assert!(
        matches!(err, StorageError::OwnerQuotaExceeded { .. }),
        "{err:?}"
    );
    for d in [A, B] {
        let err = s.push(push(d, 7, grace_end)).await.unwrap_err();
        assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    }
    assert_eq!(s.head(G).await.unwrap(), 3, "a refused push stores nothing");

    // Pushed with no expiry, the kept device's blobs expire at the grace's
    // end with the rest.
    assert_eq!(all_cursors(&*s, grace_end - 1).await, vec![1, 2, 3]);
    assert_eq!(all_cursors(&*s, grace_end).await, Vec::<u64>::new());
    let d = s.delete_expired(grace_end, 100).await.unwrap();
    assert_eq!(
        d,
        Deleted {
            blobs: 3,
            bytes: 30
        }
    );
    assert_eq!(s.tokens().await.unwrap()[0].bytes_used, 0);
    let audit = s.audit().await.unwrap();
    assert_eq!((audit.mismatched_groups, audit.mismatched_owners), (0, 0));
}

/// Eight tasks, none of them on the close's keep list, push one blob at a
/// time until the group, closed once 20 blobs are in, refuses them: every push answered `Ok` is stored and every
/// refused one (GroupClosed) is not, the stored cursors stay gapless, and no
/// blob committed after the close (all were committed before it or
/// refused). Each task pushes until its first refusal (at most
/// [`RACE_CAP`] times, so a close that never lands ends the test), so the
/// close races live pushes however fast the backend is; afterwards every
/// store refuses a push.
pub async fn a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it(
    b: &mut dyn Backend,
) {
    let s: Arc<dyn Storage> = Arc::from(b.open(Quotas::UNLIMITED).await);
    s.open_session(G, A, 1, NewGroup::Unowned).await.unwrap();
    race(&[Arc::clone(&s)], &s).await;
}

/// Pushes one racing task makes at most before it stops waiting for the
/// close.
const RACE_CAP: u16 = 4_000;

/// The race of [`a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it`]
/// with pushes spread over `stores` and the close sent through `closer`.
async fn race(stores: &[Arc<dyn Storage>], closer: &Arc<dyn Storage>) {
    let mut tasks = Vec::new();
    // The racing devices are not kept: a kept one could push on after the
    // close (until the grace), and the race would prove nothing.
    assert!((0..8u8).all(|t| !keep(&[A]).contains(&DeviceId([t; 32]))));
    for t in 0..8u16 {
        let s = Arc::clone(&stores[usize::from(t) % stores.len()]);
        tasks.push(tokio::spawn(async move {
            let mut stored = Vec::new();
            for i in 0..RACE_CAP {
                // Distinct blob ids: t * RACE_CAP + i < 8 * 4_000 < 65_536.
                match s
                    .push(push(DeviceId([t as u8; 32]), t * RACE_CAP + i, 10))
                    .await
                {
                    Ok(out) => stored.push(out.results[0].cursor),
                    Err(StorageError::GroupClosed) => return (stored, true),
                    Err(e) => panic!("push failed: {e:?}"),
                }
                tokio::task::yield_now().await;
            }
            (stored, false)
        }));
    }
    // Let some pushes commit first.
    while closer.head(G).await.unwrap() < 20 {
        tokio::task::yield_now().await;
    }
    let closed = closer.close_group(G, keep(&[A]), 50, GRACE).await.unwrap();
    assert!(closed.applied);
    let head_at_close = closer.head(G).await.unwrap();
    let mut stored = BTreeSet::new();
    let mut answered_ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (s, was_refused) = t.await.unwrap();
        answered_ok += s.len();
        refused += usize::from(was_refused);
        stored.extend(s);
    }
    assert_eq!(stored.len(), answered_ok, "a cursor was handed out twice");
    assert!(refused > 0, "the close raced no push");
    for (i, s) in stores.iter().enumerate() {
        let err = s.push(push(B, 65_000 + i as u16, 60)).await.unwrap_err();
        assert!(
            matches!(err, StorageError::GroupClosed),
            "store {i}: {err:?}"
        );
    }
    assert_eq!(
        closer.head(G).await.unwrap(),
        head_at_close,
        "nothing committed after the close"
    );
    let expected: Vec<u64> = (1..=head_at_close).collect();
    assert_eq!(stored.into_iter().collect::<Vec<_>>(), expected);
    assert_eq!(all_cursors(&**closer, 60).await, expected);
}

/// A kept device pulls every blob (and acks) until the grace ends; from
/// then on nothing is pulled, the expiry deletes the blobs and gives their
/// bytes back to the group, the owner (its token) and the relay; the idle
/// cleanup never prunes the closed group, so opening its id again — even
/// with a token that may create groups — is refused, never a new group.
pub async fn listed_devices_pull_until_the_grace_then_the_blobs_go_and_the_mark_stays(
    b: &mut dyn Backend,
) {
    let s = b.open(Quotas::UNLIMITED).await;
    let token = TokenHash::of(&AccessToken([9; 32]));
    s.create_token(NewToken {
        hash: token,
        label: None,
        created_at_ms: 1,
        max_groups: 10,
        max_storage: 1 << 20,
    })
    .await
    .unwrap();
    s.open_session(G, A, 1, NewGroup::Token(token))
        .await
        .unwrap();
    for i in 1..=3 {
        s.push(push(A, i, 10)).await.unwrap();
    }
    s.close_group(G, keep(&[A]), 100, GRACE).await.unwrap();
    let grace_end = 100 + GRACE;
    assert_eq!(all_cursors(&*s, grace_end - 1).await, vec![1, 2, 3]);
    assert_eq!(s.ack(G, A, 3, grace_end - 1).await.unwrap(), 3);
    assert_eq!(all_cursors(&*s, grace_end).await, Vec::<u64>::new());

    let d = s.delete_expired(grace_end - 1, 100).await.unwrap();
    assert_eq!(d, Deleted::default(), "nothing goes before the grace ends");
    let d = s.delete_expired(grace_end, 100).await.unwrap();
    assert_eq!(
        d,
        Deleted {
            blobs: 3,
            bytes: 30
        }
    );
    let audit = s.audit().await.unwrap();
    assert_eq!((audit.mismatched_groups, audit.mismatched_owners), (0, 0));
    assert_eq!((audit.actual_bytes, audit.counted_bytes), (0, 0));
    assert_eq!(s.stats().await.unwrap().bytes, 0);
    assert_eq!(s.tokens().await.unwrap()[0].bytes_used, 0);

    // Idle for long: the devices go, the closed group stays.
    let far = grace_end + 1_000_000;
    let pruned = s.prune_idle(far, 100, Arc::new(Vec::new)).await.unwrap();
    assert_eq!(pruned.groups, 0, "{pruned:?}");
    assert_eq!(s.stats().await.unwrap().groups, 1);
    assert!(s.closure(G).await.unwrap().is_some());
    for d in [A, B] {
        let err = s
            .open_session(G, d, far, NewGroup::Token(token))
            .await
            .unwrap_err();
        assert!(matches!(err, StorageError::GroupClosed), "{err:?}");
    }
    assert_eq!(s.head(G).await.unwrap(), 3, "the head never goes back");
}

/// [`a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it`]
/// with the pushes on two instances over one database (two relays), the
/// close through one of them.
pub async fn a_close_racing_pushes_on_two_instances_keeps_exactly_those_committed(
    b: &mut dyn Backend,
) {
    let one: Arc<dyn Storage> = Arc::from(b.open(Quotas::UNLIMITED).await);
    let other: Arc<dyn Storage> = Arc::from(b.open(Quotas::UNLIMITED).await);
    one.open_session(G, A, 1, NewGroup::Unowned).await.unwrap();
    race(&[Arc::clone(&one), Arc::clone(&other)], &other).await;
}

/// Two instances close the same group at once, with different keep lists,
/// ten times over: exactly one close is applied and both answers carry it.
pub async fn two_instances_closing_at_once_record_one_close(b: &mut dyn Backend) {
    let one: Arc<dyn Storage> = Arc::from(b.open(Quotas::UNLIMITED).await);
    let other: Arc<dyn Storage> = Arc::from(b.open(Quotas::UNLIMITED).await);
    for round in 0..10u8 {
        let g = GroupId([round + 100; 32]);
        one.open_session(g, A, 1, NewGroup::Unowned).await.unwrap();
        let close = |s: &Arc<dyn Storage>, list: KeepList, at: i64| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.close_group(g, list, at, GRACE).await.unwrap() })
        };
        let x = close(&one, keep(&[A]), 10);
        let y = close(&other, keep(&[B]), 20);
        let (x, y) = (x.await.unwrap(), y.await.unwrap());
        assert!(x.applied ^ y.applied, "round {round}: {x:?} {y:?}");
        assert_eq!(x.closure, y.closure, "round {round}");
        assert_eq!(one.closure(g).await.unwrap(), Some(x.closure));
    }
}
