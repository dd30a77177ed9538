//! The transaction path of a push, taken for a push with new blobs to a
//! closed group (every other push is one statement: [`crate::push_single`]).
//! One push batch in one transaction of four round trips (docs/protocol.md
//! "Push", docs/deploy.md "Quota shares"): BEGIN → `push_prepare` (a
//! server-side function, migrations/postgres/0003: the cleanup lock shared,
//! the group's row lock, the duplicate check by blob id, the owner's and the
//! relay's budgets charged through their quota shares) → the quota decision
//! in Rust ([`check_push`], shared with every backend; a refusal rolls the
//! charges back) → one statement that moves the group's counters and head
//! and inserts the new blobs → COMMIT. The wake-up for other instances
//! (`pg_notify`) follows the commit in a statement of its own (the caller,
//! `PostgresStorage::push`).
//!
//! No row every push takes is held to the commit any more: the group's row
//! is this group's (its pushes are ordered by it: gapless cursors), and the
//! budgets are charged on whichever of their slots is free.

use crate::{dberr, fixed, signed, unsigned};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::HashMap;
use sync_protocol::BlobId;
use sync_storage::quota::{Adding, Budget, GroupUse, OwnerUse, check_push};
use sync_storage::{NewBlob, PushOutcome, PushRequest, Quotas, StorageError, push_results};

/// Apply `req` inside the caller's transaction. Errors (the caller rolls
/// back, nothing is stored): [`StorageError::UnknownGroup`],
/// [`StorageError::GroupClosed`] (the group is closed and its close does
/// not admit the sender now, [`sync_storage::GroupClosure::admits`];
/// decided on the group's row lock, which a close takes too), then the
/// refusals of [`check_push`] in its order.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    req: &PushRequest,
    quotas: Quotas,
) -> Result<PushOutcome, StorageError> {
    let ids: Vec<&[u8]> = req.items.iter().map(|b| &b.blob_id.0[..]).collect();
    let sizes: Vec<i64> = req
        .items
        .iter()
        .map(|b| signed(b.payload.len() as u64))
        .collect();
    let row = sqlx::query("SELECT * FROM push_prepare($1, $2, $3, $4, $5, $6)")
        .bind(&req.group.0[..])
        .bind(&ids)
        .bind(&sizes)
        .bind(crate::CLEANUP_LOCK)
        .bind(signed(quotas.address.max_storage))
        .bind(signed(quotas.max_storage))
        .fetch_one(&mut *conn)
        .await
        .map_err(dberr)?;
    let prepared = Prepared::from_row(&row)?.ok_or(StorageError::UnknownGroup)?;
    let mut head = prepared.head;

    // Which items are new: the first occurrence of an id not yet stored.
    let existing = &prepared.existing;
    let mut first_index: HashMap<BlobId, usize> = HashMap::new();
    let mut new_items: Vec<&NewBlob> = Vec::new();
    for item in &req.items {
        if !existing.contains_key(&item.blob_id) && !first_index.contains_key(&item.blob_id) {
            first_index.insert(item.blob_id, new_items.len());
            new_items.push(item);
        }
    }
    let adding = Adding {
        bytes: new_items.iter().map(|b| b.payload.len() as u64).sum(),
        blobs: new_items.len() as u64,
    };
    // The budgets were charged with what `push_prepare` counted: it must be
    // what is stored, or the counters would drift.
    if adding != prepared.adding {
        return Err(StorageError::database(format!(
            "push_prepare counted {:?}, the batch adds {adding:?}",
            prepared.adding
        )));
    }
    let n = adding.blobs;
    if n > 0 {
        // Closed (`crate::close`, under the row lock `push_prepare` took):
        // new blobs only from a device the close keeps, until its grace
        // ends, and they expire with the rest by then.
        let (mut owner, mut relay) = (prepared.owner, prepared.relay);
        let expiry_cap = if prepared.closed {
            let cap = match crate::close::closure_of(&mut *conn, req.group).await? {
                Some(c) if c.admits(&req.sender, req.now_ms) => c.grace_until_ms,
                _ => return Err(StorageError::GroupClosed),
            };
            // `push_prepare` charges no budget for a closed group.
            if !prepared.charged {
                (owner, relay) =
                    crate::kept_push::charge(conn, prepared.owner_key.as_deref(), adding, quotas)
                        .await?;
            }
            cap
        } else {
            i64::MAX
        };
        check_push(&quotas, prepared.group, owner, relay, adding)?;
        store(conn, req, &new_items, head, adding, expiry_cap).await?;
        head += n;
    }

    let results = push_results(&req.items, existing, head + 1 - n);
    Ok(PushOutcome { results, head })
}

/// What `push_prepare` found and charged (read by column name).
struct Prepared {
    head: u64,
    group: GroupUse,
    /// The group was closed (docs/protocol.md §CloseGroup).
    closed: bool,
    /// The group's `owner` column (an [`sync_storage::Owner`]'s bytes).
    owner_key: Option<Vec<u8>>,
    /// Whether the budgets were charged (`relay_limit` is set): not for a
    /// closed group ([`crate::kept_push`]).
    charged: bool,
    /// Blob ids of the batch already stored, with their cursors.
    existing: HashMap<BlobId, u64>,
    /// What the function counted as new (and charged).
    adding: Adding,
    owner: Option<OwnerUse>,
    relay: Budget,
}

impl Prepared {
    /// `None` when the group does not exist.
    fn from_row(row: &PgRow) -> Result<Option<Prepared>, StorageError> {
        let get_u64 = |i: &str| -> Result<u64, StorageError> {
            unsigned(
                row.try_get::<Option<i64>, _>(i)
                    .map_err(dberr)?
                    .unwrap_or(0),
            )
        };
        let get_bool = |i: &str| -> Result<bool, StorageError> {
            Ok(row
                .try_get::<Option<bool>, _>(i)
                .map_err(dberr)?
                .unwrap_or(false))
        };
        if !get_bool("group_found")? {
            return Ok(None);
        }
        let owner_bytes: Option<Vec<u8>> = row.try_get("group_owner").map_err(dberr)?;
        let ids: Vec<Vec<u8>> = row.try_get("existing_ids").map_err(dberr)?;
        let cursors: Vec<i64> = row.try_get("existing_cursors").map_err(dberr)?;
        let mut existing = HashMap::with_capacity(ids.len());
        for (id, cursor) in ids.into_iter().zip(cursors) {
            existing.insert(BlobId(fixed(id)?), unsigned(cursor)?);
        }
        let adding = Adding {
            bytes: get_u64("adding")?,
            blobs: get_u64("adding_blobs")?,
        };
        let charged = row
            .try_get::<Option<i64>, _>("relay_limit")
            .map_err(dberr)?
            .is_some();
        let owner = match &owner_bytes {
            // Figures are read only for a push that adds blobs.
            Some(bytes) if adding.blobs > 0 => {
                // The limit is what the budget's charge compared against:
                // the share's or, on the exact path, the owner's budget.
                let limit = get_u64("owner_limit")?;
                let token = get_bool("token_found")?.then_some((limit, get_bool("token_revoked")?));
                let owner_found = get_bool("owner_found")?;
                OwnerUse::of(bytes, get_u64("owner_used")?, token, limit).map(|o| OwnerUse {
                    // No owner row (it exists while its groups do): refused
                    // as a vanished token.
                    revoked: o.revoked || !owner_found,
                    ..o
                })
            }
            _ => None,
        };
        Ok(Some(Prepared {
            head: get_u64("group_head")?,
            group: GroupUse {
                bytes: get_u64("group_bytes")?,
                blobs: get_u64("group_blobs")?,
            },
            closed: get_bool("group_closed")?,
            owner_key: owner_bytes,
            charged,
            existing,
            adding,
            owner,
            relay: Budget {
                used: get_u64("relay_used")?,
                limit: get_u64("relay_limit")?,
            },
        }))
    }
}

/// The second half of a push, one statement: the group's counters and head
/// (the group row is locked since `push_prepare`) and the new blobs under
/// consecutive cursors after `head`, their expiry lowered to `expiry_cap`
/// at most (a closed group's grace end).
async fn store(
    conn: &mut PgConnection,
    req: &PushRequest,
    items: &[&NewBlob],
    head: u64,
    adding: Adding,
    expiry_cap: i64,
) -> Result<(), StorageError> {
    let first = head + 1;
    let cursors: Vec<i64> = (0..items.len() as u64).map(|i| signed(first + i)).collect();
    let ids: Vec<&[u8]> = items.iter().map(|b| &b.blob_id.0[..]).collect();
    let payloads: Vec<&[u8]> = items.iter().map(|b| &b.payload[..]).collect();
    let expiries: Vec<i64> = items
        .iter()
        .map(|b| b.expires_at_ms.min(expiry_cap))
        .collect();
    sqlx::query(
        "WITH g AS (UPDATE groups SET head_cursor = head_cursor + $2, \
           bytes_used = bytes_used + $3, blob_count = blob_count + $2, last_active_at = $4 \
           WHERE group_id = $1), \
         i AS (INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at) \
           SELECT $1, c, b, $5, p, $4, e \
           FROM UNNEST($6::BIGINT[], $7::BYTEA[], $8::BYTEA[], $9::BIGINT[]) AS t(c, b, p, e)) \
         SELECT 1",
    )
    .bind(&req.group.0[..])
    .bind(signed(adding.blobs))
    .bind(signed(adding.bytes))
    .bind(req.now_ms)
    .bind(&req.sender.0[..])
    .bind(cursors)
    .bind(ids)
    .bind(payloads)
    .bind(expiries)
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    Ok(())
}
