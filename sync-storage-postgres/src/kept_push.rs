//! The budgets of a push into a closed group by a device its close keeps
//! (docs/protocol.md §CloseGroup, docs/security.md "Closing and concurrent
//! rotations"): such a push is charged like any other.
//!
//! `push_prepare` (migrations/postgres/0003) charges nothing for a closed
//! group: it returns right after the group's row lock and the duplicate
//! check, leaving the budget figures NULL. When the Rust side admits the
//! push ([`sync_storage::GroupClosure::admits`]), this module charges the
//! owner's and the relay's budgets through their quota shares as
//! `push_prepare` does for an open group (the same SQL function,
//! `charge_quota_share`), in the same transaction, and returns the figures
//! [`sync_storage::quota::check_push`] decides on. A refusal rolls the
//! charges back with the transaction. Closed-group pushes are rare (a
//! concurrent revocation's roster entries), so the few extra round trips
//! cost nothing that matters.

use crate::{dberr, signed, unsigned};
use sqlx::{PgConnection, Row};
use sync_storage::quota::{Adding, Budget, OwnerUse};
use sync_storage::{Owner, Quotas, StorageError};

/// Charge `adding` to `owner`'s budget (the group's `owner` column, when
/// it has one) and to the relay's, and return the owner's use (`None` for
/// an unowned group) and the relay's budget as `push_prepare` reports them:
/// a token owner without a token row, or an owner without an owner row,
/// counts as revoked. Errors: [`StorageError::Database`].
pub(crate) async fn charge(
    conn: &mut PgConnection,
    owner: Option<&[u8]>,
    adding: Adding,
    quotas: Quotas,
) -> Result<(Option<OwnerUse>, Budget), StorageError> {
    let bytes = signed(adding.bytes);
    let owner_use = match owner {
        None => None,
        Some(key) => {
            let token: Option<(i64, bool)> = sqlx::query_as(
                "SELECT max_storage, revoked_at IS NOT NULL FROM tokens WHERE token_hash = $1",
            )
            .bind(key)
            .fetch_optional(&mut *conn)
            .await
            .map_err(dberr)?;
            let limit = match (token, Owner::from_bytes(key)) {
                (Some((max_storage, _)), _) => max_storage,
                (None, Some(Owner::Address(_))) => signed(quotas.address.max_storage),
                // A token owner without its token row: refused as revoked
                // below (limit 0 charges nothing that fits).
                (None, _) => 0,
            };
            let settled: Option<i64> =
                sqlx::query_scalar("SELECT bytes_used FROM owners WHERE owner = $1")
                    .bind(key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(dberr)?;
            let (used, limit) = charge_share(conn, key, settled.unwrap_or(0), bytes, limit).await?;
            let token = token.map(|(_, revoked)| (limit, revoked));
            OwnerUse::of(key, used, token, limit).map(|o| OwnerUse {
                revoked: o.revoked || settled.is_none(),
                ..o
            })
        }
    };
    let settled: i64 = sqlx::query_scalar("SELECT bytes_used FROM relay_state")
        .fetch_one(&mut *conn)
        .await
        .map_err(dberr)?;
    let (used, limit) = charge_share(conn, &[], settled, bytes, signed(quotas.max_storage)).await?;
    Ok((owner_use, Budget { used, limit }))
}

/// `charge_quota_share` of `scope` (empty: the relay's budget): the
/// figures to compare, `(used, limit)`.
async fn charge_share(
    conn: &mut PgConnection,
    scope: &[u8],
    settled: i64,
    adding: i64,
    limit: i64,
) -> Result<(u64, u64), StorageError> {
    let row = sqlx::query("SELECT c_used, c_limit FROM charge_quota_share($1, $2, $3, $4)")
        .bind(scope)
        .bind(settled)
        .bind(adding)
        .bind(limit)
        .fetch_one(&mut *conn)
        .await
        .map_err(dberr)?;
    Ok((
        unsigned(row.try_get(0).map_err(dberr)?)?,
        unsigned(row.try_get(1).map_err(dberr)?)?,
    ))
}
