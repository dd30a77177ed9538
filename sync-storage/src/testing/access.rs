//! Admission and owners' budgets (docs/deploy.md "Access"), as tests any
//! backend runs: each refusal stores nothing, racing creations never
//! overshoot a token's `max_groups`, a revocation written through another
//! connection (or instance) is seen by the very next transaction, and
//! cleanup keeps owners' counters exact.

use super::Backend;
use crate::*;
use std::sync::Arc;
use sync_protocol::{AccessToken, BlobId, DeviceId, GroupId};

const D: DeviceId = DeviceId([2; 32]);

fn group(n: u8) -> GroupId {
    GroupId([n; 32])
}

fn token(n: u8) -> TokenHash {
    TokenHash::of(&AccessToken([n; 32]))
}

fn new_token(n: u8, max_groups: u64, max_storage: u64) -> NewToken {
    NewToken {
        hash: token(n),
        label: Some(format!("t{n}")),
        created_at_ms: 1,
        max_groups,
        max_storage,
    }
}

fn address(last: u8) -> AddressKey {
    AddressKey::of(std::net::IpAddr::from([198, 51, 100, last]))
}

fn push(g: GroupId, id: u8, len: usize, expires_at_ms: i64) -> PushRequest {
    PushRequest {
        group: g,
        sender: D,
        items: vec![NewBlob {
            blob_id: BlobId([id; 16]),
            payload: vec![id; len],
            expires_at_ms,
        }],
        now_ms: 1000,
    }
}

async fn open(b: &mut dyn Backend, quotas: Quotas) -> Arc<dyn Storage> {
    Arc::from(b.open(quotas).await)
}

async fn assert_balanced(s: &dyn Storage) {
    let a = s.audit().await.unwrap();
    assert_eq!((a.mismatched_groups, a.mismatched_owners), (0, 0), "{a:?}");
}

/// See the test name.
pub async fn without_a_token_no_group_is_created_but_existing_ones_open(b: &mut dyn Backend) {
    let s = open(b, Quotas::UNLIMITED).await;
    // A group from before admission existed (no owner) stays open to all.
    s.open_session(group(1), D, 1, NewGroup::Unowned)
        .await
        .unwrap();
    let err = s
        .open_session(group(2), D, 1, NewGroup::Refuse)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessTokenRequired), "{err:?}");
    let err = s
        .open_session(group(2), D, 1, NewGroup::Token(token(9)))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessTokenInvalid), "{err:?}");
    assert_eq!(s.stats().await.unwrap().groups, 1, "nothing was created");
    let opened = s
        .open_session(group(1), DeviceId([3; 32]), 2, NewGroup::Refuse)
        .await
        .unwrap();
    assert_eq!(opened.owner, None);
}

/// See the test name.
pub async fn a_token_creates_up_to_max_groups_even_when_hellos_race(b: &mut dyn Backend) {
    let s = open(b, Quotas::UNLIMITED).await;
    s.create_token(new_token(1, 3, 1 << 20)).await.unwrap();
    // 20 sessions for 20 new groups at once: the writer group-commits them
    // in one transaction, each decided inside its own savepoint.
    let tasks: Vec<_> = (0..20u8)
        .map(|g| {
            let s = Arc::clone(&s);
            tokio::spawn(async move {
                s.open_session(group(10 + g), D, 1, NewGroup::Token(token(1)))
                    .await
            })
        })
        .collect();
    let mut created = Vec::new();
    for (g, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Ok(o) => {
                assert_eq!(o.owner, Some(Owner::Token(token(1))));
                created.push(group(10 + g as u8));
            }
            Err(StorageError::TokenGroupLimit { count: 3, limit: 3 }) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    assert_eq!(created.len(), 3);
    assert_eq!(s.stats().await.unwrap().groups, 3);
    let info = &s.tokens().await.unwrap()[0];
    assert_eq!((info.groups, info.max_groups), (3, 3));
    // Its existing groups open as before, with or without the token (which
    // three won the race is the backend's order).
    s.open_session(created[0], DeviceId([7; 32]), 2, NewGroup::Refuse)
        .await
        .unwrap();
    assert_balanced(&*s).await;
}

/// See the test name.
pub async fn an_owner_budget_spans_its_groups_and_cleanup_gives_it_back(b: &mut dyn Backend) {
    let s = open(b, Quotas::UNLIMITED).await;
    s.create_token(new_token(1, 5, 100)).await.unwrap();
    s.create_token(new_token(2, 5, 100)).await.unwrap();
    for g in [1, 2] {
        s.open_session(group(g), D, 1, NewGroup::Token(token(1)))
            .await
            .unwrap();
    }
    s.open_session(group(3), D, 1, NewGroup::Token(token(2)))
        .await
        .unwrap();
    s.push(push(group(1), 1, 60, 2000)).await.unwrap();
    let err = s.push(push(group(2), 2, 41, i64::MAX)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::OwnerQuotaExceeded {
                kind: "token",
                used: 60,
                adding: 41,
                limit: 100
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.head(group(2)).await.unwrap(), 0, "nothing stored");
    // Exactly up to the budget is fine; another token's groups are not
    // affected by this one being full.
    s.push(push(group(2), 2, 40, i64::MAX)).await.unwrap();
    s.push(push(group(3), 3, 100, i64::MAX)).await.unwrap();
    assert_balanced(&*s).await;
    // Expiry gives the bytes back to the owner.
    assert_eq!(s.delete_expired(5000, 10).await.unwrap().bytes, 60);
    assert_balanced(&*s).await;
    s.push(push(group(1), 4, 60, i64::MAX)).await.unwrap();
    let infos = s.tokens().await.unwrap();
    assert_eq!((infos[0].groups, infos[0].bytes_used), (2, 100));
    assert_eq!((infos[1].groups, infos[1].bytes_used), (1, 100));
}

/// The operator revokes through another connection while the relay runs
/// (`sync-relay token revoke`), or another relay instance on the same
/// database does: the store caches nothing, so its next transaction sees it.
pub async fn a_revocation_from_another_connection_freezes_pushes_at_once(b: &mut dyn Backend) {
    let s = open(b, Quotas::UNLIMITED).await;
    let other = open(b, Quotas::UNLIMITED).await;
    let info = other.create_token(new_token(1, 5, 1 << 20)).await.unwrap();
    assert_eq!(info.id, token(1).public_id());
    s.open_session(group(1), D, 1, NewGroup::Token(token(1)))
        .await
        .unwrap();
    s.push(push(group(1), 1, 10, i64::MAX)).await.unwrap();
    let revoked = other.revoke_token(&info.id, 77).await.unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(77));
    let err = s.push(push(group(1), 2, 10, i64::MAX)).await.unwrap_err();
    assert!(matches!(err, StorageError::TokenRevoked), "{err:?}");
    // Reads and sessions on the group go on; the token creates nothing more.
    let opened = s
        .open_session(group(1), DeviceId([5; 32]), 2, NewGroup::Refuse)
        .await
        .unwrap();
    assert_eq!(opened.head, 1);
    assert_eq!(
        s.pull_page(group(1), 0, 10, 1 << 20, 3)
            .await
            .unwrap()
            .blobs
            .len(),
        1
    );
    let err = s
        .open_session(group(2), D, 3, NewGroup::Token(token(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::AccessTokenInvalid), "{err:?}");
    // A second revocation keeps the first time; unknown ids are named.
    let again = s.revoke_token(&info.id, 99).await.unwrap();
    assert_eq!(again.revoked_at_ms, Some(77));
    assert!(matches!(
        other.revoke_token("00000000", 99).await,
        Err(StorageError::TokenNotFound(_))
    ));
    // Creating a token whose public id exists is refused.
    assert!(matches!(
        s.create_token(new_token(1, 1, 1)).await,
        Err(StorageError::TokenIdTaken(_))
    ));
    assert_eq!(other.tokens().await.unwrap(), s.tokens().await.unwrap());
    other.close().await;
    s.close().await;
}

/// See the test name.
pub async fn addresses_get_their_window_budget_and_a_promised_place(b: &mut dyn Backend) {
    let window = 3_600_000;
    let s = open(
        b,
        Quotas {
            max_storage: 1000,
            address: AddressQuotas {
                max_storage: 300,
                new_groups_per_window: 2,
                window_ms: window,
                max_addresses: 2,
            },
            ..Quotas::UNLIMITED
        },
    )
    .await;
    let a = NewGroup::Address(address(1));
    s.open_session(group(1), D, 1000, a).await.unwrap();
    s.open_session(group(2), D, 1500, a).await.unwrap();
    let err = s.open_session(group(3), D, 2000, a).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::AddressGroupRate {
                count: 2,
                limit: 2,
                retry_after_ms
            } if retry_after_ms == (1000 + window - 2000) as u64
        ),
        "{err:?}"
    );
    // The next window admits again.
    s.open_session(group(3), D, 1000 + window, a).await.unwrap();
    // A second address gets a place; a third does not while both own groups.
    let b = NewGroup::Address(address(2));
    s.open_session(group(4), D, 1, b).await.unwrap();
    let err = s
        .open_session(group(5), D, 1, NewGroup::Address(address(3)))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::AddressesFull { limit: 2 }),
        "{err:?}"
    );
    // The address's groups share its storage budget.
    s.push(push(group(1), 1, 200, i64::MAX)).await.unwrap();
    let err = s.push(push(group(2), 2, 101, i64::MAX)).await.unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::OwnerQuotaExceeded {
                kind: "address",
                used: 200,
                adding: 101,
                limit: 300
            }
        ),
        "{err:?}"
    );
    s.push(push(group(4), 4, 300, i64::MAX)).await.unwrap();
    assert_balanced(&*s).await;
}

/// Pruning meets admission: a pruned group gives its place back to its
/// token (at `max_groups`, it may create another) and to its address; an
/// owner row left with nothing goes once its new-group window has ended
/// (a token's at once), which changes no later decision; a group admitted
/// after a prune starts at the head floor; pushes and acks to a pruned
/// group are refused and re-create nothing, so it cannot come back unowned.
/// See the test name.
pub async fn pruned_groups_go_back_to_their_owners_and_empty_owner_rows_go(b: &mut dyn Backend) {
    let s = open(
        b,
        Quotas {
            address: AddressQuotas {
                max_storage: 1000,
                new_groups_per_window: 1,
                window_ms: 1000,
                max_addresses: 1,
            },
            ..Quotas::UNLIMITED
        },
    )
    .await;
    s.create_token(new_token(1, 1, 1000)).await.unwrap();
    let by_token = NewGroup::Token(token(1));
    let by_address = NewGroup::Address(address(1));
    s.open_session(group(1), D, 1000, by_token).await.unwrap();
    s.open_session(group(2), D, 1000, by_address).await.unwrap();
    // Group 1's head goes to 3, its blobs expire.
    for id in 1..=3 {
        s.push(push(group(1), id, 10, 1500)).await.unwrap();
    }
    assert!(matches!(
        s.open_session(group(3), D, 1000, by_token).await,
        Err(StorageError::TokenGroupLimit { count: 1, limit: 1 })
    ));
    assert_eq!(s.delete_expired(2000, 100).await.unwrap().blobs, 3);
    let none: LiveGroups = Arc::new(Vec::new);

    // Idle before 1500: both groups and devices go; the token's row goes,
    // the address's stays (its window runs from 1000 to 2000).
    let p = s.prune_idle(1500, 100, Arc::clone(&none)).await.unwrap();
    assert_eq!(
        p,
        Pruned {
            groups: 2,
            devices: 2,
            owners: 1
        }
    );
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.groups, stats.owners), (0, 1));
    assert_balanced(&*s).await;
    let t = &s.tokens().await.unwrap()[0];
    assert_eq!((t.groups, t.bytes_used), (0, 0));
    // Pruned groups take no push or ack: nothing re-creates them unowned.
    assert!(matches!(
        s.push(push(group(1), 9, 10, i64::MAX)).await,
        Err(StorageError::UnknownGroup)
    ));
    assert!(matches!(
        s.ack(group(2), D, 0, 2000).await,
        Err(StorageError::UnknownGroup)
    ));
    assert_eq!(s.stats().await.unwrap().groups, 0);
    // Still in its window, the address may not create another group.
    assert!(matches!(
        s.open_session(group(4), D, 1900, by_address).await,
        Err(StorageError::AddressGroupRate { count: 1, .. })
    ));
    // Once the window ended the address's empty row goes too.
    let p = s.prune_idle(2000, 100, Arc::clone(&none)).await.unwrap();
    assert_eq!(p.owners, 1);
    assert_eq!(s.stats().await.unwrap().owners, 0);
    // Both may create groups again, starting at the head floor (3).
    let o = s.open_session(group(1), D, 2500, by_token).await.unwrap();
    assert_eq!((o.head, o.owner), (3, Some(Owner::Token(token(1)))));
    let o = s.open_session(group(4), D, 2500, by_address).await.unwrap();
    assert_eq!((o.head, o.owner), (3, Some(Owner::Address(address(1)))));
    let out = s.push(push(group(4), 1, 10, i64::MAX)).await.unwrap();
    assert_eq!(out.head, 4);
    assert_eq!(s.stats().await.unwrap().owners, 2);
    assert_balanced(&*s).await;
}

/// Both kinds of deletion — expiry cleanup and acknowledged deletion —
/// give the bytes back to every counter that charged them: the group's
/// (its quota admits as much again), the owner's (`tokens()` and the
/// audit), and the relay-wide one (limits.max_storage admits exactly as
/// much again; the refusal names the exact use). See the test name.
pub async fn deleted_blobs_give_their_bytes_back_to_group_owner_and_relay(b: &mut dyn Backend) {
    let s = open(
        b,
        Quotas {
            max_storage: 100,
            max_group_storage: 100,
            ..Quotas::UNLIMITED
        },
    )
    .await;
    s.create_token(new_token(1, 5, 1000)).await.unwrap();
    for g in [1, 2] {
        s.open_session(group(g), D, 1, NewGroup::Token(token(1)))
            .await
            .unwrap();
    }
    let relay_full = |err: StorageError, adding: u64| {
        assert!(
            matches!(
                err,
                StorageError::RelayStorageFull { used: 100, adding: a, limit: 100 } if a == adding
            ),
            "{err:?}"
        );
    };
    let owner_bytes = || async { s.tokens().await.unwrap()[0].bytes_used };
    s.push(push(group(1), 1, 60, 2000)).await.unwrap();
    s.push(push(group(2), 2, 40, i64::MAX)).await.unwrap();
    relay_full(s.push(push(group(2), 3, 1, i64::MAX)).await.unwrap_err(), 1);

    // Expiry: group 1's 60 bytes go back to group 1, the token, the relay.
    let d = s.delete_expired(2000, 10).await.unwrap();
    assert_eq!(
        d,
        Deleted {
            blobs: 1,
            bytes: 60
        }
    );
    assert_balanced(&*s).await;
    assert_eq!(owner_bytes().await, 40);
    assert_eq!(s.stats().await.unwrap().bytes, 40);
    // 60 more fit group 1 (quota 100) and the relay (limit 100) only if
    // both were given the 60 back; then the relay is full again.
    s.push(push(group(1), 4, 60, i64::MAX)).await.unwrap();
    relay_full(s.push(push(group(1), 5, 1, i64::MAX)).await.unwrap_err(), 1);
    assert_eq!(owner_bytes().await, 100);

    // Acknowledged deletion: D has both groups' blobs; all 100 bytes go
    // back, so one group may take its whole quota and the relay its limit.
    assert_eq!(s.ack(group(1), D, 2, 3000).await.unwrap(), 2);
    assert_eq!(s.ack(group(2), D, 1, 3000).await.unwrap(), 1);
    let d = s.delete_acked(0, 10).await.unwrap();
    assert_eq!(
        d,
        Deleted {
            blobs: 2,
            bytes: 100
        }
    );
    assert_balanced(&*s).await;
    assert_eq!(owner_bytes().await, 0);
    assert_eq!(s.stats().await.unwrap().bytes, 0);
    s.push(push(group(2), 6, 100, i64::MAX)).await.unwrap();
    relay_full(s.push(push(group(1), 7, 1, i64::MAX)).await.unwrap_err(), 1);
    assert_eq!(owner_bytes().await, 100);
    assert_balanced(&*s).await;
}
