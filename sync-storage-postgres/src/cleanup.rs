//! Cleanup in bounded batches (docs/deploy.md "Storage backends"): expired blobs,
//! acknowledged blobs, idle devices, groups and owners. Each batch is one
//! short transaction under [`CLEANUP_LOCK`] (an advisory lock), so one relay
//! instance cleans at a time; the others wait for that batch and then find
//! what is left. Counters are settled in one order (groups, then owners,
//! then the relay row, each sorted by key), the order pushes lock them in.

use crate::{dberr, signed, unsigned};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use std::collections::BTreeMap;
use sync_storage::{Deleted, LiveGroups, Pruned, StorageError};

/// The advisory lock every cleanup batch holds (transaction-scoped,
/// `pg_advisory_xact_lock(CLEANUP_LOCK)`).
pub const CLEANUP_LOCK: i64 = 0x0c5c_0000_0000_0001;

async fn lock_cleanup(conn: &mut PgConnection) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CLEANUP_LOCK)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    Ok(())
}

/// [`sync_storage::Storage::delete_expired`].
pub(crate) async fn delete_expired(
    conn: &mut PgConnection,
    now_ms: i64,
    limit: u32,
) -> Result<Deleted, StorageError> {
    lock_cleanup(conn).await?;
    let rows = sqlx::query(
        "DELETE FROM blobs WHERE (group_id, cursor) IN \
         (SELECT group_id, cursor FROM blobs WHERE expires_at <= $1 \
           ORDER BY expires_at LIMIT $2 FOR UPDATE) \
         RETURNING group_id, octet_length(payload)::BIGINT",
    )
    .bind(now_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    settle_deletions(conn, rows).await
}

/// [`sync_storage::Storage::delete_acked`].
pub(crate) async fn delete_acked(
    conn: &mut PgConnection,
    seen_since_ms: i64,
    limit: u32,
) -> Result<Deleted, StorageError> {
    lock_cleanup(conn).await?;
    let rows = sqlx::query(
        "WITH floor AS (SELECT group_id, MIN(acked_cursor) AS acked FROM devices \
           WHERE last_seen_at >= $1 GROUP BY group_id) \
         DELETE FROM blobs WHERE (group_id, cursor) IN \
         (SELECT b.group_id, b.cursor FROM blobs b JOIN floor f ON b.group_id = f.group_id \
           WHERE b.cursor <= f.acked LIMIT $2) \
         RETURNING group_id, octet_length(payload)::BIGINT",
    )
    .bind(seen_since_ms)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    settle_deletions(conn, rows).await
}

/// Subtract deleted rows from their groups', owners' and the relay's
/// counters: one UPDATE per group and owner touched (sorted, the order
/// pushes lock them in), never one per blob.
async fn settle_deletions(
    conn: &mut PgConnection,
    rows: Vec<PgRow>,
) -> Result<Deleted, StorageError> {
    let mut per_group: BTreeMap<Vec<u8>, (i64, i64)> = BTreeMap::new();
    let mut deleted = Deleted::default();
    for row in rows {
        let group: Vec<u8> = row.try_get(0).map_err(dberr)?;
        let len: i64 = row.try_get(1).map_err(dberr)?;
        let e = per_group.entry(group).or_default();
        e.0 += 1;
        e.1 += len;
        deleted.blobs += 1;
        deleted.bytes += unsigned(len)?;
    }
    let mut per_owner: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    for (group, (count, bytes)) in per_group {
        let owner: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "UPDATE groups SET blob_count = blob_count - $2, bytes_used = bytes_used - $3 \
             WHERE group_id = $1 RETURNING owner",
        )
        .bind(group)
        .bind(count)
        .bind(bytes)
        .fetch_optional(&mut *conn)
        .await
        .map_err(dberr)?;
        if let Some(Some(owner)) = owner {
            *per_owner.entry(owner).or_default() += bytes;
        }
    }
    release_owners(conn, &per_owner, &BTreeMap::new()).await?;
    release_relay(conn, signed(deleted.bytes)).await?;
    Ok(deleted)
}

/// Give owners back `bytes` (and `groups`) their groups no longer hold.
async fn release_owners(
    conn: &mut PgConnection,
    bytes: &BTreeMap<Vec<u8>, i64>,
    groups: &BTreeMap<Vec<u8>, i64>,
) -> Result<(), StorageError> {
    let mut owners: BTreeMap<&Vec<u8>, (i64, i64)> = BTreeMap::new();
    for (o, b) in bytes {
        owners.entry(o).or_default().1 += b;
    }
    for (o, g) in groups {
        owners.entry(o).or_default().0 += g;
    }
    for (owner, (groups, bytes)) in owners {
        sqlx::query(
            "UPDATE owners SET group_count = group_count - $2, bytes_used = bytes_used - $3 \
             WHERE owner = $1",
        )
        .bind(owner)
        .bind(groups)
        .bind(bytes)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    }
    Ok(())
}

async fn release_relay(conn: &mut PgConnection, bytes: i64) -> Result<(), StorageError> {
    if bytes != 0 {
        sqlx::query("UPDATE relay_state SET bytes_used = bytes_used - $1")
            .bind(bytes)
            .execute(&mut *conn)
            .await
            .map_err(dberr)?;
    }
    Ok(())
}

/// [`sync_storage::Storage::prune_idle`]: idle devices without a live
/// session (in any group), then idle empty groups left without devices (so
/// deleting a group never cascades), the live groups excluded; the pruned groups' owners released and the head
/// floor raised to the highest head pruned; then owner rows left with
/// nothing (`window_ms`: the length of an address's new-group window).
///
/// Rows are picked `FOR UPDATE` and the conditions are repeated on the
/// deleted rows: a session that opens the group (or the device) while the
/// prune waits for its lock has moved `last_active_at` (`last_seen_at`),
/// and PostgreSQL re-checks those conditions on the row it finally locks,
/// so the group stays.
pub(crate) async fn prune_idle(
    conn: &mut PgConnection,
    idle_before_ms: i64,
    limit: u32,
    live: &LiveGroups,
    window_ms: i64,
) -> Result<Pruned, StorageError> {
    lock_cleanup(conn).await?;
    let sessions = live();
    // Live devices as `group || device`, live groups as ids.
    let live_devices: Vec<Vec<u8>> = sessions
        .iter()
        .map(|(g, d)| [&g.0[..], &d.0[..]].concat())
        .collect();
    let live: Vec<Vec<u8>> = sessions.iter().map(|(g, _)| g.0.to_vec()).collect();
    // The idle devices (unlocked), then their groups locked `FOR UPDATE` in
    // id order, then the devices deleted (the conditions checked again on
    // each row). Requests lock a group first and a device row second (an
    // ack or Hello holds the group `FOR KEY SHARE` while it inserts or
    // touches its device row); deleting the device rows first and locking
    // the groups after was the opposite order, and an ack racing a prune
    // ended in a deadlock (found by the model check).
    let candidates: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT group_id, device_id FROM devices WHERE last_seen_at < $1 \
           AND NOT ((group_id || device_id) = ANY($2::BYTEA[])) \
         ORDER BY last_seen_at, group_id, device_id LIMIT $3",
    )
    .bind(idle_before_ms)
    .bind(&live_devices)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    let mut their_groups: Vec<Vec<u8>> = candidates.iter().map(|(g, _)| g.clone()).collect();
    their_groups.sort();
    their_groups.dedup();
    sqlx::query(
        "SELECT 1 FROM groups WHERE group_id = ANY($1::BYTEA[]) ORDER BY group_id FOR UPDATE",
    )
    .bind(&their_groups)
    .execute(&mut *conn)
    .await
    .map_err(dberr)?;
    let candidates: Vec<Vec<u8>> = candidates
        .into_iter()
        .map(|(g, d)| [g, d].concat())
        .collect();
    let devices = sqlx::query(
        "DELETE FROM devices WHERE (group_id || device_id) = ANY($2::BYTEA[]) \
           AND last_seen_at < $1 AND NOT ((group_id || device_id) = ANY($3::BYTEA[]))",
    )
    .bind(idle_before_ms)
    .bind(&candidates)
    .bind(&live_devices)
    .execute(&mut *conn)
    .await
    .map_err(dberr)?
    .rows_affected();
    // `blob_count = 0` selects the partial index `groups_idle`; the blobs
    // check guards against a counter ever being wrong (the delete would
    // cascade to the blobs). Two statements: the first locks the idle
    // groups (`FOR UPDATE` waits for an ack or Hello holding one with
    // `FOR KEY SHARE`), the second deletes those still idle under a snapshot
    // taken after the locks, so it sees a device row such a request added.
    // In one statement the device check used the snapshot from before the
    // wait, and a group was deleted under an ack that had just answered Ok
    // (found by the model check's bursts, which must be linearizable).
    let idle: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT g.group_id FROM groups g WHERE g.blob_count = 0 AND g.last_active_at < $1 \
           AND g.closed_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.group_id = g.group_id) \
           AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.group_id = g.group_id) \
           AND NOT (g.group_id = ANY($2::BYTEA[])) \
         ORDER BY g.last_active_at, g.group_id LIMIT $3 FOR UPDATE",
    )
    .bind(idle_before_ms)
    .bind(&live)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    let rows = sqlx::query(
        "DELETE FROM groups g WHERE g.group_id = ANY($2::BYTEA[]) \
           AND g.blob_count = 0 AND g.last_active_at < $1 AND g.closed_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.group_id = g.group_id) \
           AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.group_id = g.group_id) \
         RETURNING head_cursor, owner, bytes_used",
    )
    .bind(idle_before_ms)
    .bind(&idle)
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    let mut top = None;
    // Owner → groups and bytes released; the bytes are 0 (no blobs) while
    // the counters are exact, and subtracted anyway so they stay exact.
    let mut groups: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let mut bytes: BTreeMap<Vec<u8>, i64> = BTreeMap::new();
    let mut freed = 0i64;
    for row in &rows {
        let head: i64 = row.try_get(0).map_err(dberr)?;
        top = top.max(Some(head));
        let used: i64 = row.try_get(2).map_err(dberr)?;
        freed += used;
        if let Some(owner) = row.try_get::<Option<Vec<u8>>, _>(1).map_err(dberr)? {
            *groups.entry(owner.clone()).or_default() += 1;
            *bytes.entry(owner).or_default() += used;
        }
    }
    release_owners(conn, &bytes, &groups).await?;
    if let Some(top) = top {
        sqlx::query(
            "UPDATE relay_state SET head_floor = GREATEST(head_floor, $1), \
             bytes_used = bytes_used - $2",
        )
        .bind(top)
        .bind(freed)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    }
    // `group_count = 0` selects the partial index `owners_empty`; the groups
    // check keeps the foreign key whole even if a counter were wrong.
    // Their quota shares go with them (they hold what the settled column
    // does not: together nothing, as the owner owns no group).
    let owners: i64 = sqlx::query_scalar(
        "WITH gone AS (DELETE FROM owners WHERE owner IN \
         (SELECT o.owner FROM owners o WHERE o.group_count = 0 \
           AND (o.kind = 'token' OR o.window_start + $2 <= $1) \
           AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.owner = o.owner) \
           ORDER BY o.window_start, o.owner LIMIT $3 FOR UPDATE) \
         AND group_count = 0 RETURNING owner), \
         shares AS (DELETE FROM quota_shares WHERE scope IN (SELECT owner FROM gone)) \
         SELECT COUNT(*) FROM gone",
    )
    .bind(idle_before_ms)
    .bind(window_ms)
    .bind(i64::from(limit))
    .fetch_one(&mut *conn)
    .await
    .map_err(dberr)?;
    let owners = unsigned(owners)?;
    Ok(Pruned {
        groups: rows.len() as u64,
        devices,
        owners,
    })
}
