//! One push batch in one transaction (docs/protocol.md "Push", docs/deploy.md "Storage
//! backends"): the group's row lock → duplicate check by blob id → owner's
//! counter → quota checks → group counters and head → one multi-row insert
//! → the wake-up for other instances (`pg_notify`, sent on COMMIT only)
//! → the relay-wide counter, last, so its lock is held only for that
//! statement and the commit.

use crate::access::charge_owner;
use crate::{dberr, fixed, signed, unsigned};
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
use sync_protocol::{BlobId, PushResult};
use sync_storage::quota::{Adding, Budget, GroupUse, check_push};
use sync_storage::{NewBlob, PushOutcome, PushRequest, Quotas, StorageError};

/// Apply `req` inside the caller's transaction. Errors (the caller rolls
/// back, nothing is stored), checked in this order:
/// [`StorageError::UnknownGroup`], [`StorageError::TokenRevoked`],
/// [`StorageError::GroupQuotaExceeded`], [`StorageError::GroupBlobsExceeded`],
/// [`StorageError::OwnerQuotaExceeded`], [`StorageError::RelayStorageFull`].
///
/// A push that stores something sends a wake-up on the `notify` channel
/// (when given) inside the transaction, before the last check: PostgreSQL
/// delivers it on COMMIT only, so a refused or failed push wakes nobody
/// ([`crate::listen`]).
pub(crate) async fn apply(
    conn: &mut PgConnection,
    req: &PushRequest,
    quotas: Quotas,
    notify: Option<&str>,
) -> Result<PushOutcome, StorageError> {
    // Shared with other pushes, exclusive with a cleanup batch: a batch
    // never runs between this push's duplicate check and its insert (READ
    // COMMITTED would let the push see a blob as stored that the batch then
    // deletes, while the batch missed the push's own expired blobs: no
    // order of the two answers both).
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(crate::CLEANUP_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    // The group's row lock: this group's pushes, from every instance, run
    // this transaction one at a time from here to the commit. Only
    // `open_session` creates groups (through admission).
    let row = sqlx::query(
        "SELECT head_cursor, bytes_used, blob_count, owner FROM groups \
         WHERE group_id = $1 FOR NO KEY UPDATE",
    )
    .bind(&req.group.0[..])
    .fetch_optional(&mut *conn)
    .await
    .map_err(dberr)?
    .ok_or(StorageError::UnknownGroup)?;
    let mut head = unsigned(row.try_get(0).map_err(dberr)?)?;
    let used = unsigned(row.try_get(1).map_err(dberr)?)?;
    let count = unsigned(row.try_get(2).map_err(dberr)?)?;
    let owner: Option<Vec<u8>> = row.try_get(3).map_err(dberr)?;

    let existing = existing_cursors(conn, req).await?;
    // Which items are new: the first occurrence of an id not yet stored.
    let mut first_index: HashMap<BlobId, usize> = HashMap::new();
    let mut new_items: Vec<&NewBlob> = Vec::new();
    for item in &req.items {
        if !existing.contains_key(&item.blob_id) && !first_index.contains_key(&item.blob_id) {
            first_index.insert(item.blob_id, new_items.len());
            new_items.push(item);
        }
    }
    let adding: u64 = new_items.iter().map(|b| b.payload.len() as u64).sum();
    let n = new_items.len() as u64;
    if n > 0 {
        let owner_use = match &owner {
            Some(o) => charge_owner(conn, o, adding, quotas.address.max_storage).await?,
            None => None,
        };
        let group_use = GroupUse {
            bytes: used,
            blobs: count,
        };
        let add = Adding {
            bytes: adding,
            blobs: n,
        };
        // The relay's budget is checked last, once its counter is charged:
        // everything before it, with the relay left unlimited here.
        let unchecked = Budget {
            used: 0,
            limit: u64::MAX,
        };
        check_push(&quotas, group_use, owner_use, unchecked, add)?;
        sqlx::query(
            "UPDATE groups SET head_cursor = head_cursor + $2, bytes_used = bytes_used + $3, \
             blob_count = blob_count + $2, last_active_at = $4 WHERE group_id = $1",
        )
        .bind(&req.group.0[..])
        .bind(signed(n))
        .bind(signed(adding))
        .bind(req.now_ms)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
        insert_blobs(conn, req, &new_items, head + 1).await?;
        head += n;
        if let Some(channel) = notify {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(crate::listen::payload(&req.group, head))
                .execute(&mut *conn)
                .await
                .map_err(dberr)?;
        }
        let relay = charge_relay(conn, adding, quotas.max_storage).await?;
        check_push(&quotas, group_use, owner_use, relay, add)?;
    }

    let first_new = head + 1 - n;
    let mut seen = HashSet::new();
    let results = req
        .items
        .iter()
        .map(|item| match existing.get(&item.blob_id) {
            Some(&cursor) => PushResult {
                blob_id: item.blob_id,
                cursor,
                duplicate: true,
            },
            // The first occurrence in the batch is new; repeats duplicate it.
            None => PushResult {
                blob_id: item.blob_id,
                cursor: first_new + first_index[&item.blob_id] as u64,
                duplicate: !seen.insert(item.blob_id),
            },
        })
        .collect();
    Ok(PushOutcome { results, head })
}

/// Add `adding` bytes to the relay-wide counter and return the relay's
/// budget as it was before (for [`check_push`], which refuses the push with
/// [`StorageError::RelayStorageFull`] and so rolls the charge back). The
/// row lock orders the pushes of all instances here, for this statement and
/// the commit; a push of empty payloads only reads the counter.
async fn charge_relay(
    conn: &mut PgConnection,
    adding: u64,
    max_storage: u64,
) -> Result<Budget, StorageError> {
    let total: i64 = if adding == 0 {
        sqlx::query_scalar("SELECT bytes_used FROM relay_state")
            .fetch_one(&mut *conn)
            .await
    } else {
        sqlx::query_scalar(
            "UPDATE relay_state SET bytes_used = bytes_used + $1 RETURNING bytes_used",
        )
        .bind(signed(adding))
        .fetch_one(&mut *conn)
        .await
    }
    .map_err(dberr)?;
    Ok(Budget {
        used: unsigned(total)?.saturating_sub(adding),
        limit: max_storage,
    })
}

/// Insert `items` under consecutive cursors from `first`: one statement
/// over arrays (`UNNEST`), whatever the batch size.
async fn insert_blobs(
    conn: &mut PgConnection,
    req: &PushRequest,
    items: &[&NewBlob],
    first: u64,
) -> Result<(), StorageError> {
    let cursors: Vec<i64> = (0..items.len() as u64).map(|i| signed(first + i)).collect();
    let ids: Vec<&[u8]> = items.iter().map(|b| &b.blob_id.0[..]).collect();
    let payloads: Vec<&[u8]> = items.iter().map(|b| &b.payload[..]).collect();
    let expiries: Vec<i64> = items.iter().map(|b| b.expires_at_ms).collect();
    sqlx::query(
        "INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at) \
         SELECT $1, c, b, $2, p, $3, e \
         FROM UNNEST($4::BIGINT[], $5::BYTEA[], $6::BYTEA[], $7::BIGINT[]) AS t(c, b, p, e)",
    )
    .bind(&req.group.0[..])
    .bind(&req.sender.0[..])
    .bind(req.now_ms)
    .bind(cursors)
    .bind(ids)
    .bind(payloads)
    .bind(expiries)
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(())
}

/// The cursors of the batch's blob ids already stored in the group.
async fn existing_cursors(
    conn: &mut PgConnection,
    req: &PushRequest,
) -> Result<HashMap<BlobId, u64>, StorageError> {
    let ids: Vec<&[u8]> = req.items.iter().map(|b| &b.blob_id.0[..]).collect();
    let rows = sqlx::query(
        "SELECT blob_id, cursor FROM blobs WHERE group_id = $1 AND blob_id = ANY($2::BYTEA[])",
    )
    .bind(&req.group.0[..])
    .bind(ids)
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    let mut found = HashMap::new();
    for row in rows {
        let id = BlobId(fixed(row.try_get(0).map_err(dberr)?)?);
        found.insert(id, unsigned(row.try_get(1).map_err(dberr)?)?);
    }
    Ok(found)
}
