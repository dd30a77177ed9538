//! Closing a group on PostgreSQL ([`sync_storage::Storage::close_group`],
//! docs/security.md "What the relay must do").
//!
//! The close updates the group's row, taking the same row lock a push
//! takes (`FOR NO KEY UPDATE` in `push_apply`, [`crate::push_single`]): a push in flight on any
//! instance commits wholly before the close, or waits and is then refused
//! (it reads `closed_at` after the lock). Two closes from two instances
//! race on the same lock: `closed_at IS NULL` is evaluated again on the
//! row the first one committed, so the second changes nothing and reads
//! the first's close.

use crate::dberr;
use sqlx::{PgConnection, Row};
use sync_protocol::{GroupId, KeepList};
use sync_storage::{CloseOutcome, GroupClosure, StorageError};

/// Close `group` inside the caller's transaction (see the module docs).
pub(crate) async fn close_group(
    conn: &mut PgConnection,
    group: GroupId,
    keep: &KeepList,
    now_ms: i64,
    grace_ms: i64,
) -> Result<CloseOutcome, StorageError> {
    let grace_until = now_ms.saturating_add(grace_ms);
    let updated = sqlx::query(
        "UPDATE groups SET closed_at = $2, grace_until = $3, keep_list = $4 \
         WHERE group_id = $1 AND closed_at IS NULL",
    )
    .bind(&group.0[..])
    .bind(now_ms)
    .bind(grace_until)
    .bind(GroupClosure::keep_bytes(keep))
    .execute(&mut *conn)
    .await
    .map_err(dberr)?
    .rows_affected();
    if updated == 0 {
        // Closed already (the first close stands), or not stored.
        return closure_of(conn, group)
            .await?
            .map(|closure| CloseOutcome {
                closure,
                applied: false,
            })
            .ok_or(StorageError::UnknownGroup);
    }
    sqlx::query("UPDATE blobs SET expires_at = $2 WHERE group_id = $1 AND expires_at > $2")
        .bind(&group.0[..])
        .bind(grace_until)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    Ok(CloseOutcome {
        closure: GroupClosure {
            closed_at_ms: now_ms,
            grace_until_ms: grace_until,
            keep: keep.clone(),
        },
        applied: true,
    })
}

/// The close of `group`, `None` when it is open or not stored; a stored
/// keep list that does not decode ([`GroupClosure::keep_from_bytes`]) is a
/// database error. Inside a push's transaction it reads the row the push
/// has locked.
pub(crate) async fn closure_of<'e>(
    db: impl sqlx::PgExecutor<'e>,
    group: GroupId,
) -> Result<Option<GroupClosure>, StorageError> {
    let row = sqlx::query(
        "SELECT closed_at, grace_until, keep_list FROM groups \
         WHERE group_id = $1 AND closed_at IS NOT NULL",
    )
    .bind(&group.0[..])
    .fetch_optional(db)
    .await
    .map_err(dberr)?;
    let Some(row) = row else {
        return Ok(None);
    };
    let keep: Vec<u8> = row.try_get(2).map_err(dberr)?;
    Ok(Some(GroupClosure {
        closed_at_ms: row.try_get(0).map_err(dberr)?,
        grace_until_ms: row.try_get(1).map_err(dberr)?,
        keep: GroupClosure::keep_from_bytes(&keep)
            .ok_or_else(|| StorageError::database("stored keep list is malformed"))?,
    }))
}
