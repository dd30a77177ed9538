//! Admission of new groups, owners' budgets and tokens in SQL: the pieces of
//! the writer's transactions that touch `tokens`, `owners` and
//! `groups.owner` (migration `0003_access.sql`). Every function runs inside
//! the caller's transaction or savepoint, so a refusal rolls back with it.

use crate::dberr;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sync_protocol::GroupId;
use sync_storage::quota::OwnerUse;
use sync_storage::{
    AddressKey, AddressQuotas, NewGroup, NewToken, OpenedSession, Owner, StorageError, TokenHash,
    TokenInfo,
};

/// Touch `group` (its `last_active_at`) and return its head and owner; a
/// group that does not exist is created as `new_group` allows, at the head
/// floor.
pub(super) async fn open_group(
    conn: &mut SqliteConnection,
    group: GroupId,
    now_ms: i64,
    new_group: NewGroup,
    address: AddressQuotas,
) -> Result<OpenedSession, StorageError> {
    let existing = sqlx::query(
        "UPDATE groups SET last_active_at = ?2 WHERE group_id = ?1 RETURNING head_cursor, owner",
    )
    .bind(&group.0[..])
    .bind(now_ms)
    .fetch_optional(&mut *conn)
    .await
    .map_err(dberr)?;
    if let Some(row) = existing {
        let owner: Option<Vec<u8>> = row.try_get(1).map_err(dberr)?;
        return Ok(OpenedSession {
            head: row.try_get::<i64, _>(0).map_err(dberr)? as u64,
            owner: owner.as_deref().and_then(Owner::from_bytes),
        });
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
         VALUES (?1, (SELECT head_floor FROM relay_state), ?2, ?2, ?3) RETURNING head_cursor",
    )
    .bind(&group.0[..])
    .bind(now_ms)
    .bind(owner.as_ref().map(Owner::bytes))
    .fetch_one(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(OpenedSession {
        head: head as u64,
        owner,
    })
}

/// The token must exist, be unrevoked and below its `max_groups`; its
/// owner row then counts one more group.
async fn admit_token(conn: &mut SqliteConnection, hash: TokenHash) -> Result<(), StorageError> {
    let row = sqlx::query(
        "SELECT t.max_groups, t.revoked_at, COALESCE(o.group_count, 0) FROM tokens t \
         LEFT JOIN owners o ON o.owner = t.token_hash WHERE t.token_hash = ?1",
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
    let limit = row.try_get::<i64, _>(0).map_err(dberr)? as u64;
    let count = row.try_get::<i64, _>(2).map_err(dberr)? as u64;
    if count >= limit {
        return Err(StorageError::TokenGroupLimit { count, limit });
    }
    sqlx::query(
        "INSERT INTO owners (owner, kind, group_count) VALUES (?1, 'token', 1) \
         ON CONFLICT (owner) DO UPDATE SET group_count = group_count + 1",
    )
    .bind(&hash.0[..])
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(())
}

/// An address that owns no group yet needs a free place among
/// `max_addresses`; every address is limited to `new_groups_per_window`
/// creations per window. Its owner row then counts one more group.
async fn admit_address(
    conn: &mut SqliteConnection,
    key: AddressKey,
    now_ms: i64,
    q: AddressQuotas,
) -> Result<(), StorageError> {
    let row =
        sqlx::query("SELECT group_count, window_start, window_groups FROM owners WHERE owner = ?1")
            .bind(&key.0[..])
            .fetch_optional(&mut *conn)
            .await
            .map_err(dberr)?;
    let (count, mut start, mut in_window) = match row {
        Some(r) => (
            r.try_get::<i64, _>(0).map_err(dberr)?,
            r.try_get::<i64, _>(1).map_err(dberr)?,
            r.try_get::<i64, _>(2).map_err(dberr)? as u64,
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
        if owning as u64 >= q.max_addresses {
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
         VALUES (?1, 'address', 1, ?2, ?3) ON CONFLICT (owner) DO UPDATE SET \
         group_count = group_count + 1, window_start = ?2, window_groups = ?3",
    )
    .bind(&key.0[..])
    .bind(start)
    .bind((in_window + 1) as i64)
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(())
}

/// Add `adding` bytes to `owner`'s counter (the caller rolls back on a
/// refusal) and return what [`sync_storage::quota::check_push`] needs of
/// the owner, read in the same statement. `None`: bytes that name no owner.
pub(super) async fn charge_owner(
    conn: &mut SqliteConnection,
    owner: &[u8],
    adding: u64,
    address_budget: u64,
) -> Result<Option<OwnerUse>, StorageError> {
    let row = sqlx::query(
        "UPDATE owners SET bytes_used = bytes_used + ?2 WHERE owner = ?1 RETURNING bytes_used, \
         (SELECT max_storage FROM tokens WHERE token_hash = ?1), \
         (SELECT revoked_at FROM tokens WHERE token_hash = ?1)",
    )
    .bind(owner)
    .bind(adding as i64)
    .fetch_optional(&mut *conn)
    .await
    .map_err(dberr)?;
    let Some(row) = row else {
        // A group's owner row exists while the group does (foreign key);
        // treat a missing one as a vanished token: revoked.
        return Ok(OwnerUse::of(owner, 0, None, 0).map(|o| OwnerUse { revoked: true, ..o }));
    };
    let used = (row.try_get::<i64, _>(0).map_err(dberr)? as u64).saturating_sub(adding);
    let limit: Option<i64> = row.try_get(1).map_err(dberr)?;
    let revoked: Option<i64> = row.try_get(2).map_err(dberr)?;
    let token = limit.map(|limit| (limit as u64, revoked.is_some()));
    Ok(OwnerUse::of(owner, used, token, address_budget))
}

/// Subtract freed bytes from the owners of the groups that lost blobs.
pub(super) async fn release_owners(
    conn: &mut SqliteConnection,
    freed: std::collections::HashMap<Vec<u8>, i64>,
) -> Result<(), StorageError> {
    for (owner, bytes) in freed {
        sqlx::query("UPDATE owners SET bytes_used = bytes_used - ?2 WHERE owner = ?1")
            .bind(owner)
            .bind(bytes)
            .execute(&mut *conn)
            .await
            .map_err(dberr)?;
    }
    Ok(())
}

/// Delete at most `limit` owner rows that own no group and whose new-group
/// window (`window_ms` long) ended before `before_ms` (a token's row has
/// none): [`sync_storage::Storage::prune_idle`]'s third step. Forgetting
/// such a row changes no decision (an ended window counts as no window, a
/// missing row as no groups and no bytes). Returns how many went.
pub(super) async fn prune_owners(
    conn: &mut SqliteConnection,
    before_ms: i64,
    window_ms: i64,
    limit: u32,
) -> Result<u64, StorageError> {
    // `group_count = 0` selects the partial index `owners_empty`; the groups
    // check keeps the foreign key whole even if a counter were wrong.
    let deleted = sqlx::query(
        "DELETE FROM owners WHERE owner IN \
         (SELECT o.owner FROM owners o WHERE o.group_count = 0 \
           AND (o.kind = 'token' OR o.window_start + ?2 <= ?1) \
           AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.owner = o.owner) \
           ORDER BY o.window_start, o.owner LIMIT ?3)",
    )
    .bind(before_ms)
    .bind(window_ms)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await
    .map_err(dberr)?
    .rows_affected();
    Ok(deleted)
}

const TOKEN_INFO: &str = "SELECT t.id, t.label, t.created_at, t.max_groups, t.max_storage, \
     t.revoked_at, COALESCE(o.group_count, 0), COALESCE(o.bytes_used, 0) \
     FROM tokens t LEFT JOIN owners o ON o.owner = t.token_hash";

fn token_info(row: &SqliteRow) -> Result<TokenInfo, StorageError> {
    Ok(TokenInfo {
        id: row.try_get(0).map_err(dberr)?,
        label: row.try_get(1).map_err(dberr)?,
        created_at_ms: row.try_get(2).map_err(dberr)?,
        max_groups: row.try_get::<i64, _>(3).map_err(dberr)? as u64,
        max_storage: row.try_get::<i64, _>(4).map_err(dberr)? as u64,
        revoked_at_ms: row.try_get(5).map_err(dberr)?,
        groups: row.try_get::<i64, _>(6).map_err(dberr)? as u64,
        bytes_used: row.try_get::<i64, _>(7).map_err(dberr)? as u64,
    })
}

async fn token_by_id(conn: &mut SqliteConnection, id: &str) -> Result<TokenInfo, StorageError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("{TOKEN_INFO} WHERE t.id = ?1")))
        .bind(id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(dberr)?;
    match row {
        Some(row) => token_info(&row),
        None => Err(StorageError::TokenNotFound(id.to_string())),
    }
}

/// Store `token` (inside the caller's transaction). Errors:
/// [`StorageError::TokenIdTaken`].
pub(crate) async fn create_token(
    conn: &mut SqliteConnection,
    token: &NewToken,
) -> Result<TokenInfo, StorageError> {
    let id = token.hash.public_id();
    let taken: Option<i64> = sqlx::query_scalar("SELECT 1 FROM tokens WHERE id = ?1")
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(dberr)?;
    if taken.is_some() {
        return Err(StorageError::TokenIdTaken(id));
    }
    sqlx::query(
        "INSERT INTO tokens (token_hash, id, label, created_at, max_groups, max_storage) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .bind(&token.hash.0[..])
    .bind(&id)
    .bind(token.label.as_deref())
    .bind(token.created_at_ms)
    .bind(token.max_groups.min(i64::MAX as u64) as i64)
    .bind(token.max_storage.min(i64::MAX as u64) as i64)
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    token_by_id(conn, &id).await
}

/// Revoke the token `id` (keeping an earlier revocation time). Errors:
/// [`StorageError::TokenNotFound`].
pub(crate) async fn revoke_token(
    conn: &mut SqliteConnection,
    id: &str,
    now_ms: i64,
) -> Result<TokenInfo, StorageError> {
    sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1")
        .bind(id)
        .bind(now_ms)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    token_by_id(conn, id).await
}

/// Every token, oldest first.
pub(crate) async fn list_tokens<'e>(
    db: impl sqlx::SqliteExecutor<'e>,
) -> Result<Vec<TokenInfo>, StorageError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "{TOKEN_INFO} ORDER BY t.created_at, t.id"
    )))
    .fetch_all(db)
    .await
    .map_err(dberr)?;
    rows.iter().map(token_info).collect()
}
