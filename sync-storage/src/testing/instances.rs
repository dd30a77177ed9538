//! Two instances over one database (two relay processes on one PostgreSQL;
//! for SQLite, two connections to one file): cursors stay gapless and
//! atomic per group, retries answer their first cursors whichever instance
//! they reach, and the group and token quotas are never overshot by pushes
//! and group creations racing on both.

use super::Backend;
use crate::*;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use sync_protocol::{AccessToken, BlobId, DeviceId, GroupId};

const G: GroupId = GroupId([7; 32]);
const TASKS: u8 = 8;

fn blob(task: u8, i: u8, half: u8, len: usize) -> NewBlob {
    let mut id = [0u8; 16];
    id[..3].copy_from_slice(&[task, i, half]);
    NewBlob {
        blob_id: BlobId(id),
        payload: vec![task; len],
        expires_at_ms: i64::MAX,
    }
}

fn push(group: GroupId, task: u8, items: Vec<NewBlob>) -> PushRequest {
    PushRequest {
        group,
        sender: DeviceId([task; 32]),
        items,
        now_ms: 1000,
    }
}

async fn two(b: &mut dyn Backend, quotas: Quotas) -> [Arc<dyn Storage>; 2] {
    let one: Arc<dyn Storage> = Arc::from(b.open(quotas).await);
    let other: Arc<dyn Storage> = Arc::from(b.open(quotas).await);
    [one, other]
}

/// 8 tasks, 4 on each instance, push 25 batches of two blobs each to one
/// group, and retry every batch on the other instance: every cursor from
/// 1 to 400 is handed out exactly once, a batch's two blobs get consecutive
/// cursors, a retry gets the same cursors as duplicates, and each instance
/// pulls the 400 blobs once each.
pub async fn eight_tasks_on_two_instances_push_to_one_group_without_gaps(b: &mut dyn Backend) {
    let stores = two(b, Quotas::UNLIMITED).await;
    stores[0]
        .open_session(G, DeviceId([0; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let here = Arc::clone(&stores[usize::from(t % 2)]);
        let there = Arc::clone(&stores[usize::from(1 - t % 2)]);
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..25u8 {
                let items = vec![blob(t, i, 0, 8), blob(t, i, 1, 8)];
                let out = here.push(push(G, t, items.clone())).await.unwrap();
                assert_eq!(out.results[1].cursor, out.results[0].cursor + 1);
                assert!(out.results.iter().all(|r| !r.duplicate));
                let again = there.push(push(G, t, items)).await.unwrap();
                for (first, retry) in out.results.iter().zip(&again.results) {
                    assert_eq!((retry.cursor, retry.duplicate), (first.cursor, true));
                }
                got.extend(out.results.iter().map(|r| (r.cursor, r.blob_id)));
            }
            got
        }));
    }
    let mut by_cursor = BTreeMap::new();
    for t in tasks {
        for (cursor, id) in t.await.unwrap() {
            assert!(
                by_cursor.insert(cursor, id).is_none(),
                "cursor {cursor} twice"
            );
        }
    }
    let n = u64::from(TASKS) * 50;
    assert_eq!(
        by_cursor.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    for s in &stores {
        assert_eq!(s.head(G).await.unwrap(), n);
        let page = s.pull_page(G, 0, 10_000, usize::MAX, 2000).await.unwrap();
        assert!(page.complete);
        let pulled: Vec<_> = page.blobs.iter().map(|p| (p.cursor, p.blob_id)).collect();
        assert_eq!(pulled, by_cursor.clone().into_iter().collect::<Vec<_>>());
        let ids: HashSet<_> = page.blobs.iter().map(|p| p.blob_id).collect();
        assert_eq!(ids.len() as u64, n);
    }
    let audit = stores[0].audit().await.unwrap();
    assert_eq!((audit.counted_blobs, audit.actual_blobs), (n, n));
    assert_eq!(audit.mismatched_groups, 0);
    for s in stores {
        s.close().await;
    }
}

/// Pushes racing on two instances stop exactly at the group's quota and at
/// its token's budget (never one blob beyond), and group creations racing
/// on both stop exactly at the token's `max_groups`.
pub async fn group_and_token_quotas_hold_across_two_instances(b: &mut dyn Backend) {
    let quotas = Quotas {
        max_group_storage: 1000,
        ..Quotas::UNLIMITED
    };
    let stores = two(b, quotas).await;
    // The group quota: 10-byte blobs until refused; the last refusal comes
    // at 1000 bytes exactly.
    stores[0]
        .open_session(G, DeviceId([0; 32]), 1, NewGroup::Unowned)
        .await
        .unwrap();
    let token = TokenHash::of(&AccessToken([9; 32]));
    stores[1]
        .create_token(NewToken {
            hash: token,
            label: None,
            created_at_ms: 1,
            max_groups: 3,
            max_storage: 500,
        })
        .await
        .unwrap();
    let owned = [GroupId([20; 32]), GroupId([21; 32])];
    for (i, g) in owned.iter().enumerate() {
        stores[i]
            .open_session(*g, DeviceId([0; 32]), 1, NewGroup::Token(token))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let s = Arc::clone(&stores[usize::from(t % 2)]);
        tasks.push(tokio::spawn(async move {
            let mut refusals = (0, 0);
            for i in 0..=255u8 {
                if refusals.0 == 0 {
                    match s.push(push(G, t, vec![blob(t, i, 0, 10)])).await {
                        Ok(_) => {}
                        Err(StorageError::GroupQuotaExceeded { .. }) => refusals.0 += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                if refusals.1 == 0 {
                    let g = owned[usize::from(i % 2)];
                    match s.push(push(g, t, vec![blob(t, i, 1, 10)])).await {
                        Ok(_) => {}
                        Err(StorageError::OwnerQuotaExceeded { limit: 500, .. }) => refusals.1 += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
                if refusals == (1, 1) {
                    break;
                }
            }
            refusals
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), (1, 1));
    }
    let page = stores[1]
        .pull_page(G, 0, 1000, usize::MAX, 2000)
        .await
        .unwrap();
    assert_eq!(page.blobs.len(), 100, "the group stores 1000 bytes exactly");
    let info = &stores[0].tokens().await.unwrap()[0];
    assert_eq!((info.groups, info.bytes_used), (2, 500));
    // Six sessions race to create groups with a token that may make one
    // more: exactly one gets it.
    let mut opens = Vec::new();
    for n in 0..6u8 {
        let s = Arc::clone(&stores[usize::from(n % 2)]);
        opens.push(tokio::spawn(async move {
            s.open_session(
                GroupId([40 + n; 32]),
                DeviceId([n; 32]),
                5,
                NewGroup::Token(token),
            )
            .await
        }));
    }
    let mut created = 0;
    for o in opens {
        match o.await.unwrap() {
            Ok(_) => created += 1,
            Err(StorageError::TokenGroupLimit { count: 3, limit: 3 }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(stores[1].tokens().await.unwrap()[0].groups, 3);
    let audit = stores[1].audit().await.unwrap();
    assert_eq!((audit.mismatched_groups, audit.mismatched_owners), (0, 0));
    assert_eq!(audit.counted_bytes, audit.actual_bytes);
    for s in stores {
        s.close().await;
    }
}
