//! The quota decisions of a push (docs/deploy.md "Access" and "Several
//! relays on one PostgreSQL"), in one pure function every backend calls
//! with the figures it read inside its push transaction: the in-memory
//! model, SQLite and PostgreSQL cannot disagree on a rule, nor on the order
//! in which refusals are reported, because there is only one copy of it.
//!
//! Backends differ only in how they *find* the figures (a counter row, a
//! sum, a share of a budget) and in keeping them race-free; the decision is
//! here.

use crate::{Quotas, StorageError};

/// What the push's group stores before the push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupUse {
    /// Payload bytes the group stores.
    pub bytes: u64,
    /// Blobs the group stores.
    pub blobs: u64,
}

/// A byte budget and what is spent of it before the push: the group owner's
/// (a token's `max_storage`, an address's `access.address_max_storage`) or
/// the relay's (`limits.max_storage`).
///
/// `limit` is what the backend checks `used` against: the whole budget
/// (SQLite, the model, PostgreSQL's exact path), or the part of it one
/// PostgreSQL budget share was allotted (docs/deploy.md "Quota shares"), in
/// which case `used` is that share's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Bytes spent.
    pub used: u64,
    /// Bytes allowed.
    pub limit: u64,
}

/// The group owner's side of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerUse {
    /// `token` or `address` ([`crate::Owner::kind`]), named in the refusal.
    pub kind: &'static str,
    /// The owner's byte budget.
    pub budget: Budget,
    /// The owner is a token that was revoked (or is no longer stored).
    pub revoked: bool,
}

impl OwnerUse {
    /// The owner stored as `owner` (`groups.owner`), having spent `used`
    /// bytes, as both SQL backends read it in one statement: `token` is its
    /// token row's `(max_storage, revoked)` when one is stored. A token owner
    /// without a token row counts as revoked (limit 0); an address owner
    /// gets `address_budget` and is never revoked. `None` for bytes that
    /// name no owner (no owner check, as for an unowned group).
    pub fn of(
        owner: &[u8],
        used: u64,
        token: Option<(u64, bool)>,
        address_budget: u64,
    ) -> Option<OwnerUse> {
        let owner = crate::Owner::from_bytes(owner)?;
        let (limit, revoked) = match owner {
            crate::Owner::Token(_) => token.unwrap_or((0, true)),
            crate::Owner::Address(_) => (address_budget, false),
        };
        Some(OwnerUse {
            kind: owner.kind(),
            budget: Budget { used, limit },
            revoked,
        })
    }
}

/// What a push adds: only its *new* blobs (duplicates add nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Adding {
    /// Payload bytes of the new blobs.
    pub bytes: u64,
    /// Number of new blobs.
    pub blobs: u64,
}

/// Decide whether a push that adds `adding` may be stored. A push that adds
/// no blob is always allowed (a retried batch is answered, whatever the
/// quotas are now).
///
/// `owner` is `None` for a group without an owner (created before owners
/// existed, or by tools). Refusals, reported in this order (the first rule
/// broken wins):
/// 1. [`StorageError::TokenRevoked`]: the owner is a revoked token;
/// 2. [`StorageError::GroupQuotaExceeded`]: `group.bytes + adding.bytes >
///    quotas.max_group_storage`;
/// 3. [`StorageError::GroupBlobsExceeded`]: `group.blobs + adding.blobs >
///    quotas.max_group_blobs`;
/// 4. [`StorageError::OwnerQuotaExceeded`]: over the owner's budget;
/// 5. [`StorageError::RelayStorageFull`]: over the relay's budget.
///
/// Sums saturate: a counter near `u64::MAX` is refused, never wrapped.
pub fn check_push(
    quotas: &Quotas,
    group: GroupUse,
    owner: Option<OwnerUse>,
    relay: Budget,
    adding: Adding,
) -> Result<(), StorageError> {
    if adding.blobs == 0 {
        return Ok(());
    }
    if owner.is_some_and(|o| o.revoked) {
        return Err(StorageError::TokenRevoked);
    }
    if group.bytes.saturating_add(adding.bytes) > quotas.max_group_storage {
        return Err(StorageError::GroupQuotaExceeded {
            used: group.bytes,
            adding: adding.bytes,
            limit: quotas.max_group_storage,
        });
    }
    if group.blobs.saturating_add(adding.blobs) > quotas.max_group_blobs {
        return Err(StorageError::GroupBlobsExceeded {
            count: group.blobs,
            adding: adding.blobs,
            limit: quotas.max_group_blobs,
        });
    }
    if let Some(o) = owner
        && o.budget.used.saturating_add(adding.bytes) > o.budget.limit
    {
        return Err(StorageError::OwnerQuotaExceeded {
            kind: o.kind,
            used: o.budget.used,
            adding: adding.bytes,
            limit: o.budget.limit,
        });
    }
    if relay.used.saturating_add(adding.bytes) > relay.limit {
        return Err(StorageError::RelayStorageFull {
            used: relay.used,
            adding: adding.bytes,
            limit: relay.limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quotas = Quotas {
        max_group_storage: 1000,
        max_group_blobs: 10,
        max_storage: 5000,
        address: Quotas::UNLIMITED.address,
    };

    fn owner(used: u64, limit: u64, revoked: bool) -> Option<OwnerUse> {
        Some(OwnerUse {
            kind: "token",
            budget: Budget { used, limit },
            revoked,
        })
    }

    const RELAY: Budget = Budget {
        used: 0,
        limit: 5000,
    };

    fn add(bytes: u64, blobs: u64) -> Adding {
        Adding { bytes, blobs }
    }

    fn group(bytes: u64, blobs: u64) -> GroupUse {
        GroupUse { bytes, blobs }
    }

    #[test]
    fn within_every_limit_is_allowed_up_to_equality() {
        // Exactly at each limit is still allowed (`>` refuses, `=` does not).
        let r = check_push(
            &Q,
            group(900, 9),
            owner(1900, 2000, false),
            Budget {
                used: 4900,
                limit: 5000,
            },
            add(100, 1),
        );
        assert!(r.is_ok(), "{r:?}");
        assert!(check_push(&Q, group(0, 0), None, RELAY, add(1000, 10)).is_ok());
    }

    #[test]
    fn revoked_token_is_refused() {
        let r = check_push(&Q, group(0, 0), owner(0, 2000, true), RELAY, add(1, 1));
        assert!(matches!(r, Err(StorageError::TokenRevoked)), "{r:?}");
    }

    #[test]
    fn group_bytes_over_quota_is_refused_with_figures() {
        let r = check_push(&Q, group(950, 1), None, RELAY, add(51, 1));
        assert!(
            matches!(
                r,
                Err(StorageError::GroupQuotaExceeded {
                    used: 950,
                    adding: 51,
                    limit: 1000
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn group_blob_count_over_quota_is_refused_with_figures() {
        let r = check_push(&Q, group(0, 8), None, RELAY, add(3, 3));
        assert!(
            matches!(
                r,
                Err(StorageError::GroupBlobsExceeded {
                    count: 8,
                    adding: 3,
                    limit: 10
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn owner_over_budget_is_refused_with_kind_and_figures() {
        let o = Some(OwnerUse {
            kind: "address",
            budget: Budget {
                used: 150,
                limit: 200,
            },
            revoked: false,
        });
        let r = check_push(&Q, group(0, 0), o, RELAY, add(51, 1));
        assert!(
            matches!(
                r,
                Err(StorageError::OwnerQuotaExceeded {
                    kind: "address",
                    used: 150,
                    adding: 51,
                    limit: 200
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn relay_over_budget_is_refused_with_figures() {
        let relay = Budget {
            used: 4990,
            limit: 5000,
        };
        let r = check_push(&Q, group(0, 0), None, relay, add(11, 1));
        assert!(
            matches!(
                r,
                Err(StorageError::RelayStorageFull {
                    used: 4990,
                    adding: 11,
                    limit: 5000
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_push_adding_nothing_is_always_allowed() {
        // A retried batch (all duplicates) is answered even over every limit.
        let full = Budget { used: 9, limit: 0 };
        let r = check_push(&Q, group(5000, 50), owner(9, 0, true), full, add(0, 0));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn refusals_are_reported_in_order() {
        // Everything broken at once: each step removes the first broken rule
        // and the next one in the documented order is reported.
        let relay_full = Budget {
            used: 5000,
            limit: 5000,
        };
        let g = group(1000, 10);
        let r = check_push(&Q, g, owner(2000, 2000, true), relay_full, add(1, 1));
        assert!(matches!(r, Err(StorageError::TokenRevoked)), "{r:?}");
        let r = check_push(&Q, g, owner(2000, 2000, false), relay_full, add(1, 1));
        assert!(
            matches!(r, Err(StorageError::GroupQuotaExceeded { .. })),
            "{r:?}"
        );
        let g = group(0, 10);
        let r = check_push(&Q, g, owner(2000, 2000, false), relay_full, add(1, 1));
        assert!(
            matches!(r, Err(StorageError::GroupBlobsExceeded { .. })),
            "{r:?}"
        );
        let g = group(0, 0);
        let r = check_push(&Q, g, owner(2000, 2000, false), relay_full, add(1, 1));
        assert!(
            matches!(r, Err(StorageError::OwnerQuotaExceeded { .. })),
            "{r:?}"
        );
        let r = check_push(&Q, g, owner(0, 2000, false), relay_full, add(1, 1));
        assert!(
            matches!(r, Err(StorageError::RelayStorageFull { .. })),
            "{r:?}"
        );
        let r = check_push(&Q, g, owner(0, 2000, false), RELAY, add(1, 1));
        assert!(r.is_ok(), "{r:?}");
    }

    #[test]
    fn empty_payloads_still_count_as_blobs() {
        // New blobs of zero bytes add nothing to the byte budgets but count
        // against the group's blob quota.
        let r = check_push(&Q, group(0, 10), None, RELAY, add(0, 1));
        assert!(
            matches!(r, Err(StorageError::GroupBlobsExceeded { .. })),
            "{r:?}"
        );
        let r = check_push(&Q, group(0, 0), owner(0, 0, true), RELAY, add(0, 1));
        assert!(matches!(r, Err(StorageError::TokenRevoked)), "{r:?}");
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let r = check_push(&Q, group(u64::MAX, 0), None, RELAY, add(2, 1));
        assert!(
            matches!(r, Err(StorageError::GroupQuotaExceeded { .. })),
            "{r:?}"
        );
        let r = check_push(&Q, group(0, u64::MAX), None, RELAY, add(0, 2));
        assert!(
            matches!(r, Err(StorageError::GroupBlobsExceeded { .. })),
            "{r:?}"
        );
        let huge = Budget {
            used: u64::MAX,
            limit: u64::MAX - 1,
        };
        let r = check_push(&Quotas::UNLIMITED, group(0, 0), None, huge, add(2, 1));
        assert!(
            matches!(r, Err(StorageError::RelayStorageFull { .. })),
            "{r:?}"
        );
    }
    #[test]
    fn owner_use_reads_tokens_and_addresses() {
        let token = [7u8; 32];
        let address = [4u8, 127, 0, 0, 1, 0, 0, 0, 0];
        let o = OwnerUse::of(&token, 5, Some((100, false)), 999);
        assert_eq!(
            o,
            Some(OwnerUse {
                kind: "token",
                budget: Budget {
                    used: 5,
                    limit: 100
                },
                revoked: false
            })
        );
        let o = OwnerUse::of(&token, 5, Some((100, true)), 999);
        assert!(o.is_some_and(|o| o.revoked));
        // A token owner whose token row is gone is treated as revoked.
        let o = OwnerUse::of(&token, 5, None, 999);
        assert!(o.is_some_and(|o| o.revoked && o.budget.limit == 0));
        let o = OwnerUse::of(&address, 5, None, 999);
        assert_eq!(
            o,
            Some(OwnerUse {
                kind: "address",
                budget: Budget {
                    used: 5,
                    limit: 999
                },
                revoked: false
            })
        );
        assert_eq!(OwnerUse::of(&[1, 2, 3], 5, None, 999), None);
    }
}
