//! Admission of new groups, owners' budgets and tokens in SQL (docs/deploy.md "Access"): the
//! pieces of a transaction that touch `tokens`, `owners` and `groups.owner`.
//! Every function runs inside the caller's transaction, so a refusal rolls
//! back with it; the locks they take make decisions race-free across relay
//! instances.

use crate::{dberr, signed, unsigned};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use sync_protocol::{DeviceId, GroupId};
use sync_storage::{
    AddressKey, AddressQuotas, NewGroup, NewToken, OpenedSession, Owner, StorageError, TokenHash,
    TokenInfo,
};

/// First key of the two-key advisory locks that serialize the creation of
/// one group (the second key is from the group id): two sessions creating
/// the same group, on any instances, decide one after the other.
const GROUP_CREATION_LOCK: i32 = 0x0c5c_0001;

/// Advisory lock serializing the creation of groups by addresses: whether
/// `max_addresses` addresses own groups already is a relay-wide count.
pub(crate) const ADDRESS_ADMISSION_LOCK: i64 = 0x0c5c_0000_0000_0002;

/// Touch `group` (its `last_active_at`) and return its head and owner; a
/// group that does not exist is created as `new_group` allows, at the head
/// floor, under a lock on its id so racing creations decide in turn.
pub(crate) async fn open_group(
    conn: &mut PgConnection,
    group: GroupId,
    now_ms: i64,
    new_group: NewGroup,
    address: AddressQuotas,
) -> Result<OpenedSession, StorageError> {
    if let Some(opened) = touch_group(conn, group, now_ms).await? {
        return Ok(opened);
    }
    let key = i32::from_be_bytes([group.0[0], group.0[1], group.0[2], group.0[3]]);
    sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
        .bind(GROUP_CREATION_LOCK)
        .bind(key)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    // Created by another transaction while we waited for the lock?
    if let Some(opened) = touch_group(conn, group, now_ms).await? {
        return Ok(opened);
    }
    let owner = match new_group {
        NewGroup::Refuse => return Err(StorageError::AccessTokenRequired),
        NewGroup::Unowned => None,
        NewGroup::Token(hash) => {
            admit_token(conn, hash).await?;
            Some(Owner::Token(hash))
        }
        NewGroup::Address(key) => {
            admit_address(conn, key, now_ms, address).await?;
            Some(Owner::Address(key))
        }
    };
    let head: i64 = sqlx::query_scalar(
        "INSERT INTO groups (group_id, head_cursor, created_at, last_active_at, owner) \
         VALUES ($1, (SELECT head_floor FROM relay_state), $2, $2, $3) RETURNING head_cursor",
    )
    .bind(&group.0[..])
    .bind(now_ms)
    .bind(owner.as_ref().map(Owner::bytes))
    .fetch_one(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(OpenedSession {
        head: unsigned(head)?,
        owner,
    })
}

/// Touch an existing group; `None` if it does not exist.
async fn touch_group(
    conn: &mut PgConnection,
    group: GroupId,
    now_ms: i64,
) -> Result<Option<OpenedSession>, StorageError> {
    let row = sqlx::query(
        "UPDATE groups SET last_active_at = $2 WHERE group_id = $1 RETURNING head_cursor, owner",
    )
    .bind(&group.0[..])
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await
    .map_err(dberr)?;
    let Some(row) = row else { return Ok(None) };
    let owner: Option<Vec<u8>> = row.try_get(1).map_err(dberr)?;
    Ok(Some(OpenedSession {
        head: unsigned(row.try_get(0).map_err(dberr)?)?,
        owner: owner.as_deref().and_then(Owner::from_bytes),
    }))
}

/// Record that `device` was seen on `group` now (created if new).
pub(crate) async fn touch_device(
    conn: &mut PgConnection,
    group: GroupId,
    device: DeviceId,
    now_ms: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO devices (group_id, device_id, first_seen_at, last_seen_at) \
         VALUES ($1, $2, $3, $3) \
         ON CONFLICT (group_id, device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
    )
    .bind(&group.0[..])
    .bind(&device.0[..])
    .bind(now_ms)
    .execute(conn)
    .await
    .map_err(dberr)?;
    Ok(())
}

/// The token must exist, be unrevoked and below its `max_groups` (read
/// under the token row's lock, so creations with one token decide in turn);
/// its owner row then counts one more group.
async fn admit_token(conn: &mut PgConnection, hash: TokenHash) -> Result<(), StorageError> {
    let row = sqlx::query(
        "SELECT max_groups, revoked_at FROM tokens WHERE token_hash = $1 FOR NO KEY UPDATE",
    )
    .bind(&hash.0[..])
    .fetch_optional(&mut *conn)
    .await
    .map_err(dberr)?;
    let Some(row) = row else {
        return Err(StorageError::AccessTokenInvalid);
    };
    if row.try_get::<Option<i64>, _>(1).map_err(dberr)?.is_some() {
        return Err(StorageError::AccessTokenInvalid);
    }
    let limit = unsigned(row.try_get(0).map_err(dberr)?)?;
    let count: Option<i64> = sqlx::query_scalar("SELECT group_count FROM owners WHERE owner = $1")
        .bind(&hash.0[..])
        .fetch_optional(&mut *conn)
        .await
        .map_err(dberr)?;
    let count = unsigned(count.unwrap_or(0))?;
    if count >= limit {
        return Err(StorageError::TokenGroupLimit { count, limit });
    }
    sqlx::query(
        "INSERT INTO owners (owner, kind, group_count) VALUES ($1, 'token', 1) \
         ON CONFLICT (owner) DO UPDATE SET group_count = owners.group_count + 1",
    )
    .bind(&hash.0[..])
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(())
}

/// An address that owns no group yet needs a free place among
/// `max_addresses`; every address is limited to `new_groups_per_window`
/// creations per window. Decided under [`ADDRESS_ADMISSION_LOCK`]. Its
/// owner row then counts one more group.
async fn admit_address(
    conn: &mut PgConnection,
    key: AddressKey,
    now_ms: i64,
    q: AddressQuotas,
) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADDRESS_ADMISSION_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    let row =
        sqlx::query("SELECT group_count, window_start, window_groups FROM owners WHERE owner = $1")
            .bind(&key.0[..])
            .fetch_optional(&mut *conn)
            .await
            .map_err(dberr)?;
    let (count, mut start, mut in_window) = match row {
        Some(r) => (
            r.try_get::<i64, _>(0).map_err(dberr)?,
            r.try_get::<i64, _>(1).map_err(dberr)?,
            unsigned(r.try_get(2).map_err(dberr)?)?,
        ),
        None => (0, 0, 0),
    };
    if count == 0 {
        let owning: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM owners WHERE kind = 'address' AND group_count > 0",
        )
        .fetch_one(&mut *conn)
        .await
        .map_err(dberr)?;
        if unsigned(owning)? >= q.max_addresses {
            return Err(StorageError::AddressesFull {
                limit: q.max_addresses,
            });
        }
    }
    // A window starts with the first group created after the last one ended.
    if in_window == 0 || now_ms.saturating_sub(start) >= q.window_ms {
        start = now_ms;
        in_window = 0;
    }
    if in_window >= q.new_groups_per_window {
        return Err(StorageError::AddressGroupRate {
            count: in_window,
            limit: q.new_groups_per_window,
            retry_after_ms: (start.saturating_add(q.window_ms) - now_ms).max(1) as u64,
        });
    }
    sqlx::query(
        "INSERT INTO owners (owner, kind, group_count, window_start, window_groups) \
         VALUES ($1, 'address', 1, $2, $3) ON CONFLICT (owner) DO UPDATE SET \
         group_count = owners.group_count + 1, window_start = $2, window_groups = $3",
    )
    .bind(&key.0[..])
    .bind(start)
    .bind(signed(in_window + 1))
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(())
}

/// A token and its use; its bytes are its owner row's settled bytes plus
/// its quota shares' (migrations/postgres/0003).
const TOKEN_INFO: &str = "SELECT t.id, t.label, t.created_at, t.max_groups, t.max_storage, \
     t.revoked_at, COALESCE(o.group_count, 0), COALESCE(o.bytes_used, 0) \
     + (SELECT COALESCE(SUM(s.used), 0)::BIGINT FROM quota_shares s WHERE s.scope = t.token_hash) \
     FROM tokens t LEFT JOIN owners o ON o.owner = t.token_hash";

fn token_info(row: &PgRow) -> Result<TokenInfo, StorageError> {
    Ok(TokenInfo {
        id: row.try_get(0).map_err(dberr)?,
        label: row.try_get(1).map_err(dberr)?,
        created_at_ms: row.try_get(2).map_err(dberr)?,
        max_groups: unsigned(row.try_get(3).map_err(dberr)?)?,
        max_storage: unsigned(row.try_get(4).map_err(dberr)?)?,
        revoked_at_ms: row.try_get(5).map_err(dberr)?,
        groups: unsigned(row.try_get(6).map_err(dberr)?)?,
        bytes_used: unsigned(row.try_get(7).map_err(dberr)?)?,
    })
}

async fn token_by_id(conn: &mut PgConnection, id: &str) -> Result<TokenInfo, StorageError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{TOKEN_INFO} WHERE t.id = $1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(dberr)?;
    match row {
        Some(row) => token_info(&row),
        None => Err(StorageError::TokenNotFound(id.to_string())),
    }
}

/// Store `token`. Errors: [`StorageError::TokenIdTaken`] (also when another
/// instance stores one with the same id at the same moment: the insert
/// does nothing).
pub(crate) async fn create_token(
    conn: &mut PgConnection,
    token: &NewToken,
) -> Result<TokenInfo, StorageError> {
    let id = token.hash.public_id();
    let inserted = sqlx::query(
        "INSERT INTO tokens (token_hash, id, label, created_at, max_groups, max_storage) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&token.hash.0[..])
    .bind(&id)
    .bind(token.label.as_deref())
    .bind(token.created_at_ms)
    .bind(signed(token.max_groups))
    .bind(signed(token.max_storage))
    .execute(&mut *conn)
    .await
    .map_err(dberr)?
    .rows_affected();
    if inserted == 0 {
        return Err(StorageError::TokenIdTaken(id));
    }
    token_by_id(conn, &id).await
}

/// Revoke the token `id` (keeping an earlier revocation time). Errors:
/// [`StorageError::TokenNotFound`].
///
/// Takes [`crate::CLEANUP_LOCK`] exclusively first: every push holds it
/// shared from before it reads the token until it commits, so a push in
/// flight on any instance commits before the revocation (and is in the
/// bytes it reports) and every later push reads the token revoked. Without
/// it a push that read the token just before the revocation committed
/// after it, missing from the figures the revocation answered (found by
/// the model check's bursts, which must be linearizable). Revocations are
/// rare operator commands; pushes wait for one only as long as its
/// transaction.
pub(crate) async fn revoke_token(
    conn: &mut PgConnection,
    id: &str,
    now_ms: i64,
) -> Result<TokenInfo, StorageError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(crate::CLEANUP_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    // Decided by the UPDATE alone: a token another instance creates at
    // this moment is either seen (and revoked) by it or not at all; a
    // second read could find a token committed since and answer it
    // unrevoked (found by the model check's bursts). The row stays locked
    // until the commit, so the read below sees this revocation.
    let updated =
        sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(&mut *conn)
            .await
            .map_err(dberr)?
            .rows_affected();
    if updated == 0 {
        return Err(StorageError::TokenNotFound(id.to_string()));
    }
    token_by_id(conn, id).await
}

/// Every token, oldest first.
pub(crate) async fn list_tokens(conn: &mut PgConnection) -> Result<Vec<TokenInfo>, StorageError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TOKEN_INFO} ORDER BY t.created_at, t.id COLLATE \"C\""
    )))
    .fetch_all(conn)
    .await
    .map_err(dberr)?;
    rows.iter().map(token_info).collect()
}
