//! A push as one statement (docs/deploy.md "The push path",
//! migrations/postgres/0004 and 0005): `SELECT * FROM push_apply(…)` sent outside
//! an explicit transaction, so its implicit transaction takes the group's
//! row lock, checks, charges, stores and commits within the one round trip
//! and the lock is held for the server's own work and the commit's flush,
//! never across a round trip to the relay. The quota decision is made by
//! the function (`push_refusal`, a port of [`check_push`]); this side runs
//! [`check_push`] on the figures the function returns and turns a refusal
//! into its [`StorageError`], so the error a device sees is the Rust one
//! and a disagreement of the two is reported, not hidden.
//!
//! Every push takes this path, a closed group's too (docs/protocol.md
//! §CloseGroup): the function admits new blobs only from a device the
//! close keeps, before the grace ends, and lowers their expiry to it; it
//! returns the close it read, and this side checks its decision with
//! [`GroupClosure::admits`] the same way.

use crate::{dberr, fixed, signed, unsigned};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::{HashMap, HashSet};
use sync_protocol::BlobId;
use sync_storage::quota::{Adding, Budget, GroupUse, OwnerUse, check_push};
use sync_storage::{
    GroupClosure, NewBlob, Owner, PushOutcome, PushRequest, Quotas, StorageError, push_results,
};

/// Apply `req` in one statement on `conn`. Outside a transaction the
/// statement is its own and is committed when this returns `Ok` (sqlx reads
/// the reply up to `ReadyForQuery`, which the server sends after the
/// implicit transaction's commit); inside one (several pushes of a group in
/// one turn, `crate::combine`) the caller commits. Errors (nothing stored):
/// [`StorageError::UnknownGroup`], [`StorageError::GroupClosed`] (the group
/// is closed and its close does not admit the sender now, for a batch with
/// new blobs), then the refusals of [`check_push`] in its order;
/// [`StorageError::Database`] for a database error or when the function
/// and the Rust rules disagree.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    req: &PushRequest,
    quotas: Quotas,
) -> Result<PushOutcome, StorageError> {
    // Repeats of an id within the batch are answered as duplicates of its
    // first occurrence; only first occurrences are sent.
    let mut seen = HashSet::new();
    let firsts: Vec<&NewBlob> = req
        .items
        .iter()
        .filter(|b| seen.insert(b.blob_id))
        .collect();
    let ids: Vec<&[u8]> = firsts.iter().map(|b| &b.blob_id.0[..]).collect();
    let payloads: Vec<&[u8]> = firsts.iter().map(|b| &b.payload[..]).collect();
    let expiries: Vec<i64> = firsts.iter().map(|b| b.expires_at_ms).collect();
    let row = sqlx::query("SELECT * FROM push_apply($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)")
        .bind(&req.group.0[..])
        .bind(&req.sender.0[..])
        .bind(req.now_ms)
        .bind(&ids)
        .bind(&payloads)
        .bind(&expiries)
        .bind(crate::CLEANUP_LOCK)
        .bind(signed(quotas.max_group_storage))
        .bind(signed(quotas.max_group_blobs))
        .bind(signed(quotas.address.max_storage))
        .bind(signed(quotas.max_storage))
        .fetch_one(&mut *conn)
        .await
        .map_err(dberr)?;
    let applied = Applied::from_row(&row)?.ok_or(StorageError::UnknownGroup)?;

    // The new items: first occurrences not stored yet, in batch order.
    let new_items: Vec<&NewBlob> = firsts
        .iter()
        .copied()
        .filter(|b| !applied.existing.contains_key(&b.blob_id))
        .collect();
    let adding = Adding {
        bytes: new_items.iter().map(|b| b.payload.len() as u64).sum(),
        blobs: new_items.len() as u64,
    };
    if adding != applied.adding {
        return Err(StorageError::database(format!(
            "push_apply counted {:?}, the batch adds {adding:?}",
            applied.adding
        )));
    }
    // The Rust rules, in the reference model's order: the close first
    // (only for new blobs: a retry is answered whatever the group's state),
    // then the quotas.
    let decision = match &applied.closure {
        Some(c) if adding.blobs > 0 && !c.admits(&req.sender, req.now_ms) => {
            Err(StorageError::GroupClosed)
        }
        _ => check_push(&quotas, applied.group, applied.owner, applied.relay, adding),
    };
    match (&applied.refusal, decision, applied.stored) {
        (Some(rule), Err(e), false) if refusal_rule(&e) == Some(rule.as_str()) => Err(e),
        (None, Ok(()), stored) if stored == (adding.blobs > 0) => {
            Ok(outcome(req, &applied.existing, applied.head, adding.blobs))
        }
        (rule, decision, stored) => Err(StorageError::database(format!(
            "push_apply and check_push disagree: the function refused {rule:?} \
             (stored: {stored}), check_push decided {decision:?}"
        ))),
    }
}

/// The name `push_apply` (migrations/postgres/0005) gives the rule `err`
/// reports (`push_refusal`'s for the quotas), or `None` for an error that
/// is no refusal of a push.
pub(crate) fn refusal_rule(err: &StorageError) -> Option<&'static str> {
    Some(match err {
        StorageError::GroupClosed => "group_closed",
        StorageError::TokenRevoked => "token_revoked",
        StorageError::GroupQuotaExceeded { .. } => "group_storage",
        StorageError::GroupBlobsExceeded { .. } => "group_blobs",
        StorageError::OwnerQuotaExceeded { .. } => "owner_storage",
        StorageError::RelayStorageFull { .. } => "relay_storage",
        _ => return None,
    })
}

/// The device's answer: every item with its cursor, new ones after `head`
/// (the head before the push) in batch order, repeats and stored ids as
/// duplicates.
fn outcome(
    req: &PushRequest,
    existing: &HashMap<BlobId, u64>,
    head: u64,
    added: u64,
) -> PushOutcome {
    PushOutcome {
        results: push_results(&req.items, existing, head + 1),
        head: head + added,
    }
}

/// A budget the function did not reach (a rule before it refused): it
/// breaks no rule, as `push_refusal`'s NULL figures.
const NOT_REACHED: Budget = Budget {
    used: 0,
    limit: u64::MAX,
};

/// What `push_apply` found, decided and did (read by column name).
struct Applied {
    /// The group's head before the push.
    head: u64,
    group: GroupUse,
    /// The group's close, `None` while it is open.
    closure: Option<GroupClosure>,
    /// Blob ids of the batch already stored, with their cursors.
    existing: HashMap<BlobId, u64>,
    /// What the function counted as new.
    adding: Adding,
    owner: Option<OwnerUse>,
    relay: Budget,
    /// The rule that refused the push (`push_refusal`'s name).
    refusal: Option<String>,
    stored: bool,
}

impl Applied {
    /// `None` when the group does not exist.
    fn from_row(row: &PgRow) -> Result<Option<Applied>, StorageError> {
        let opt_u64 = |i: &str| -> Result<Option<u64>, StorageError> {
            row.try_get::<Option<i64>, _>(i)
                .map_err(dberr)?
                .map(unsigned)
                .transpose()
        };
        let get_u64 = |i: &str| Ok::<_, StorageError>(opt_u64(i)?.unwrap_or(0));
        let get_bool = |i: &str| -> Result<bool, StorageError> {
            Ok(row
                .try_get::<Option<bool>, _>(i)
                .map_err(dberr)?
                .unwrap_or(false))
        };
        let budget = |used: &str, limit: &str| -> Result<Budget, StorageError> {
            Ok(match (opt_u64(used)?, opt_u64(limit)?) {
                (Some(used), Some(limit)) => Budget { used, limit },
                _ => NOT_REACHED,
            })
        };
        if !get_bool("group_found")? {
            return Ok(None);
        }
        let ids: Vec<Vec<u8>> = row.try_get("existing_ids").map_err(dberr)?;
        let cursors: Vec<i64> = row.try_get("existing_cursors").map_err(dberr)?;
        let mut existing = HashMap::with_capacity(ids.len());
        for (id, cursor) in ids.into_iter().zip(cursors) {
            existing.insert(BlobId(fixed(id)?), unsigned(cursor)?);
        }
        let owner = if get_bool("owner_checked")? {
            let bytes: Option<Vec<u8>> = row.try_get("group_owner").map_err(dberr)?;
            let kind = bytes
                .as_deref()
                .and_then(Owner::from_bytes)
                .ok_or_else(|| StorageError::database("push_apply checked an unknown owner"))?
                .kind();
            Some(OwnerUse {
                kind,
                budget: budget("owner_used", "owner_limit")?,
                revoked: get_bool("owner_revoked")?,
            })
        } else {
            None
        };
        let closure = if get_bool("group_closed")? {
            let keep: Option<Vec<u8>> = row.try_get("keep_list").map_err(dberr)?;
            let keep = keep
                .as_deref()
                .and_then(GroupClosure::keep_from_bytes)
                .ok_or_else(|| StorageError::database("stored keep list is malformed"))?;
            let time = |i: &str| -> Result<i64, StorageError> {
                row.try_get::<Option<i64>, _>(i)
                    .map_err(dberr)?
                    .ok_or_else(|| StorageError::database(format!("a closed group without {i}")))
            };
            Some(GroupClosure {
                closed_at_ms: time("closed_at")?,
                grace_until_ms: time("grace_until")?,
                keep,
            })
        } else {
            None
        };
        Ok(Some(Applied {
            head: get_u64("group_head")?,
            group: GroupUse {
                bytes: get_u64("group_bytes")?,
                blobs: get_u64("group_blobs")?,
            },
            closure,
            existing,
            adding: Adding {
                bytes: get_u64("adding")?,
                blobs: get_u64("adding_blobs")?,
            },
            owner,
            relay: budget("relay_used", "relay_limit")?,
            refusal: row.try_get("refusal").map_err(dberr)?,
            stored: get_bool("stored")?,
        }))
    }
}
