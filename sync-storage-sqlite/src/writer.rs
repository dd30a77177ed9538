//! The SQLite writer task: the only connection that writes.
//!
//! It takes every write waiting in its queue (up to [`MAX_OPS_PER_TXN`]),
//! applies each inside its own savepoint of one transaction, commits once,
//! and only then answers the callers (group commit). An op refused by a quota
//! rolls back to its savepoint without touching the others. With one writer
//! there is no `SQLITE_BUSY` between writers, cursor assignment
//! (`UPDATE … RETURNING head_cursor`) is trivially serial, and the relay-wide
//! byte total can be kept exactly in memory.

use crate::access;
use crate::files::{BlobFiles, FileRef, Staged};
use crate::{dberr, fixed};
use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, Row};
use std::collections::HashMap;
use std::sync::Arc;
use sync_protocol::{BlobId, DeviceId, GroupId, KeepList};
use sync_storage::quota::{Adding, Budget, GroupUse, check_push};
use sync_storage::{
    CloseOutcome, Deleted, GroupClosure, LiveGroups, NewBlob, NewGroup, NewToken, OpenedSession,
    Pruned, PushOutcome, PushRequest, Quotas, StorageError, TokenInfo, push_results,
};
use tokio::sync::{mpsc, oneshot};

/// Most queued writes committed in one transaction.
pub const MAX_OPS_PER_TXN: usize = 128;

/// One queued write: its arguments and the slot of its caller's typed
/// answer (so an op can only be answered with its own result type).
pub(crate) enum Write {
    OpenSession {
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
        new_group: NewGroup,
        slot: Slot<OpenedSession>,
    },
    Push {
        req: PushRequest,
        /// The payload files it wrote; `None` when it wrote none.
        files: Option<Box<PushFiles>>,
        slot: Slot<PushOutcome>,
    },
    CreateToken {
        token: NewToken,
        slot: Slot<TokenInfo>,
    },
    RevokeToken {
        id: String,
        now_ms: i64,
        slot: Slot<TokenInfo>,
    },
    Ack {
        group: GroupId,
        device: DeviceId,
        cursor: u64,
        now_ms: i64,
        slot: Slot<u64>,
    },
    DeleteExpired {
        now_ms: i64,
        limit: u32,
        slot: Slot<Deleted>,
    },
    DeleteAcked {
        seen_since_ms: i64,
        limit: u32,
        slot: Slot<Deleted>,
    },
    PruneIdle {
        idle_before_ms: i64,
        limit: u32,
        live: LiveGroups,
        slot: Slot<Pruned>,
    },
    CloseGroup {
        group: GroupId,
        keep: KeepList,
        now_ms: i64,
        grace_ms: i64,
        slot: Slot<CloseOutcome>,
    },
}

/// The payload files of one push ([`crate::files`]).
pub(crate) struct PushFiles {
    /// Per item: the file its payload was written to (its `payload` then
    /// empty), or `None` for an inline payload.
    pub refs: Vec<Option<FileRef>>,
    /// The names, reserved until this is dropped (after the push's answer).
    pub staged: Staged,
    /// Per item: whether a row of this transaction names its file.
    pub used: Vec<bool>,
}

/// A caller waiting for a value of type `T`, and that value once its op is
/// applied (sent only after the commit).
pub(crate) struct Slot<T> {
    reply: oneshot::Sender<Result<T, StorageError>>,
    out: Option<T>,
}

impl<T> Slot<T> {
    /// A slot answering `reply`.
    pub(crate) fn new(reply: oneshot::Sender<Result<T, StorageError>>) -> Self {
        Slot { reply, out: None }
    }

    /// Answer the caller: the applied value if `result` is `Ok`.
    fn answer(self, result: Result<(), StorageError>) {
        let answer = result.and_then(|()| {
            self.out
                .ok_or_else(|| StorageError::database("write committed without its result"))
        });
        let _ = self.reply.send(answer);
    }
}

impl Write {
    /// Drop a value applied in a transaction that did not commit.
    fn reset(&mut self) {
        match self {
            Write::OpenSession { slot, .. } => slot.out = None,
            Write::Push { slot, files, .. } => {
                slot.out = None;
                if let Some(f) = files {
                    f.used.iter_mut().for_each(|u| *u = false);
                }
            }
            Write::CreateToken { slot, .. } | Write::RevokeToken { slot, .. } => slot.out = None,
            Write::Ack { slot, .. } => slot.out = None,
            Write::DeleteExpired { slot, .. } | Write::DeleteAcked { slot, .. } => slot.out = None,
            Write::PruneIdle { slot, .. } => slot.out = None,
            Write::CloseGroup { slot, .. } => slot.out = None,
        }
    }

    /// Answer the caller with its applied value, or `result`'s error.
    fn answer(self, result: Result<(), StorageError>) {
        match self {
            Write::OpenSession { slot, .. } => slot.answer(result),
            Write::Push { slot, .. } => slot.answer(result),
            Write::CreateToken { slot, .. } | Write::RevokeToken { slot, .. } => {
                slot.answer(result)
            }
            Write::Ack { slot, .. } => slot.answer(result),
            Write::DeleteExpired { slot, .. } | Write::DeleteAcked { slot, .. } => {
                slot.answer(result)
            }
            Write::PruneIdle { slot, .. } => slot.answer(result),
            Write::CloseGroup { slot, .. } => slot.answer(result),
        }
    }
}

pub(crate) enum Job {
    Write(Write),
    /// WAL checkpoint + optimize; outside any transaction.
    Maintenance(oneshot::Sender<Result<(), StorageError>>),
    Shutdown,
}

/// Writer state that outlives transactions.
struct Writer {
    conn: SqliteConnection,
    /// Payload files: removed here after the commit that deletes their rows.
    files: Arc<BlobFiles>,
    quotas: Quotas,
    /// `SUM(bytes_used)` over all groups, as committed.
    total_bytes: u64,
    /// Armed `crash-after-commit` fail point: push commits left before it
    /// fires (debug builds only, see [`FAILPOINT_ENV`]).
    #[cfg(debug_assertions)]
    crash_after_push_commits: Option<u32>,
}

/// Test-only fail point, read once when the writer starts and **only in
/// debug builds** (`cfg(debug_assertions)`; release builds, which are what
/// the Dockerfile ships, compile it out). `SYNC_RELAY_FAILPOINT=
/// crash-after-commit[:N]` ends the process with exit code
/// [`FAILPOINT_EXIT_CODE`] right after the N-th (default: first) committed
/// transaction that contains a push, before any caller of that transaction
/// is answered: the crash window between COMMIT and the reply that a
/// `kill -9` can only hit by chance. The end-to-end suite (which runs the
/// debug binaries `cargo test --workspace` builds) uses it to prove that a
/// retried push is answered as a duplicate with its original cursor.
///
/// A cargo feature was not used: the e2e tests run the binary built for
/// the workspace, and enabling a feature for that build would need a
/// dependency edge that exists only to unify features (and would rebuild
/// the relay whenever `-p` selections differ).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const FAILPOINT_ENV: &str = "SYNC_RELAY_FAILPOINT";

/// Exit code of a fired fail point (distinct from a panic's 101 and from
/// signals), so a test can tell the fail point from any other crash.
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const FAILPOINT_EXIT_CODE: i32 = 86;

/// Parse the fail point from the environment: `Some(N)` for
/// `crash-after-commit[:N]` (N ≥ 1). Anything else is logged and ignored.
#[cfg(debug_assertions)]
fn failpoint_from_env() -> Option<u32> {
    let value = std::env::var(FAILPOINT_ENV).ok()?;
    let n = match value.split_once(':') {
        None if value == "crash-after-commit" => Some(1),
        Some(("crash-after-commit", n)) => n.parse().ok().filter(|&n| n >= 1),
        // Armed in `SqliteStorage::push` (crate root), not here.
        None if value == crate::FAILPOINT_AFTER_FILES => return None,
        _ => None,
    };
    match n {
        Some(_) => tracing::warn!(failpoint = %value, "test fail point armed"),
        None => tracing::error!(failpoint = %value, "unknown fail point; ignored"),
    }
    n
}

/// Run until `Shutdown` or until every sender is gone, then checkpoint the
/// WAL and close.
pub(super) async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Job>,
    quotas: Quotas,
    files: Arc<BlobFiles>,
) {
    let total_bytes =
        match sqlx::query_scalar::<_, i64>("SELECT COALESCE(SUM(bytes_used), 0) FROM groups")
            .fetch_one(&mut conn)
            .await
        {
            Ok(n) => n as u64,
            Err(err) => {
                tracing::error!(error = %err, "cannot read storage totals; refusing writes");
                rx.close();
                while let Some(job) = rx.recv().await {
                    if let Job::Write(write) = job {
                        write.answer(Err(StorageError::Closed));
                    }
                }
                return;
            }
        };
    let mut w = Writer {
        conn,
        files,
        quotas,
        total_bytes,
        #[cfg(debug_assertions)]
        crash_after_push_commits: failpoint_from_env(),
    };
    let mut stop = false;
    while !stop {
        let Some(first) = rx.recv().await else { break };
        let mut ops = Vec::with_capacity(16);
        for job in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match job {
                Job::Write(write) => ops.push(write),
                Job::Maintenance(reply) => {
                    // Commit what is queued first, then run outside a transaction.
                    w.commit_and_answer(std::mem::take(&mut ops)).await;
                    let _ = reply.send(w.maintenance().await);
                }
                Job::Shutdown => {
                    stop = true;
                    break;
                }
            }
            if ops.len() >= MAX_OPS_PER_TXN {
                break;
            }
        }
        w.commit_and_answer(ops).await;
    }
    rx.close();
    // Answer anything still queued so no caller waits forever.
    while let Ok(job) = rx.try_recv() {
        match job {
            Job::Write(write) => write.answer(Err(StorageError::Closed)),
            Job::Maintenance(reply) => {
                let _ = reply.send(Err(StorageError::Closed));
            }
            Job::Shutdown => {}
        }
    }
    if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut w.conn)
        .await
    {
        tracing::warn!(error = %err, "WAL checkpoint at close failed");
    }
    let _ = w.conn.close().await;
}

impl Writer {
    async fn commit_and_answer(&mut self, mut ops: Vec<Write>) {
        if ops.is_empty() {
            return;
        }
        match self.commit_group(&mut ops).await {
            Ok(results) => {
                self.failpoint_after_commit(&ops, &results);
                for (write, result) in ops.into_iter().zip(results) {
                    remove_unused_files(&write, &result);
                    write.answer(result);
                }
            }
            Err(err) => {
                // The shared transaction failed as a whole: retry each op in
                // a transaction of its own so each caller gets its own answer.
                tracing::warn!(error = %err, ops = ops.len(), "group commit failed; retrying one by one");
                for mut write in ops {
                    write.reset();
                    let mut one = [write];
                    let result = match self.commit_group(&mut one).await {
                        Ok(r) => {
                            self.failpoint_after_commit(&one, &r);
                            r.into_iter().next().unwrap_or(Err(StorageError::Closed))
                        }
                        Err(e) => Err(e),
                    };
                    let [write] = one;
                    remove_unused_files(&write, &result);
                    write.answer(result);
                }
            }
        }
    }

    /// The `crash-after-commit` fail point ([`FAILPOINT_ENV`]): called
    /// after a commit, before its callers are answered; counts commits
    /// that stored at least one push (a refused push was rolled back).
    #[cfg(debug_assertions)]
    fn failpoint_after_commit(&mut self, ops: &[Write], results: &[Result<(), StorageError>]) {
        if let Some(left) = &mut self.crash_after_push_commits
            && ops
                .iter()
                .zip(results)
                .any(|(w, r)| matches!(w, Write::Push { .. }) && r.is_ok())
        {
            *left -= 1;
            if *left == 0 {
                tracing::error!("fail point crash-after-commit: exiting before answering");
                std::process::exit(FAILPOINT_EXIT_CODE);
            }
        }
    }

    #[cfg(not(debug_assertions))]
    fn failpoint_after_commit(&mut self, _ops: &[Write], _results: &[Result<(), StorageError>]) {}

    /// Apply `ops` in one transaction, each in a savepoint, each keeping its
    /// value in its own slot (answered after the commit). Client errors
    /// (quotas, cursor) roll back only their op; a database error aborts the
    /// whole group. The in-memory byte total moves only after the commit.
    async fn commit_group(
        &mut self,
        ops: &mut [Write],
    ) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        let quotas = self.quotas;
        let mut total = self.total_bytes;
        // IMMEDIATE: take the write lock up front, where `busy_timeout`
        // applies. A deferred transaction upgrading from read to write fails
        // at once with SQLITE_BUSY if another connection (a backup, a
        // closing connection's checkpoint) holds the lock at that moment.
        let mut tx = self
            .conn
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(dberr)?;
        let mut results = Vec::with_capacity(ops.len());
        // Files of the rows this transaction deletes: removed only once it
        // committed (a crash before leaves orphans for the sweep).
        let mut removals = Vec::new();
        if let [op] = ops {
            // One op alone needs no savepoint: a refusal rolls back the
            // whole transaction (two fewer statements on the common path).
            match apply(&mut tx, op, quotas, total, &mut removals).await {
                Ok(delta) => {
                    tx.commit().await.map_err(dberr)?;
                    self.total_bytes = total.saturating_add_signed(delta);
                    self.files.remove(&removals);
                    return Ok(vec![Ok(())]);
                }
                Err(err) if err.is_refusal() => {
                    tx.rollback().await.map_err(dberr)?;
                    return Ok(vec![Err(err)]);
                }
                Err(err) => return Err(err),
            }
        }
        for op in ops.iter_mut() {
            let mut sp = tx.begin().await.map_err(dberr)?;
            match apply(&mut sp, op, quotas, total, &mut removals).await {
                Ok(delta) => {
                    sp.commit().await.map_err(dberr)?;
                    total = total.saturating_add_signed(delta);
                    results.push(Ok(()));
                }
                Err(err) if err.is_refusal() => {
                    sp.rollback().await.map_err(dberr)?;
                    results.push(Err(err));
                }
                Err(err) => return Err(err),
            }
        }
        tx.commit().await.map_err(dberr)?;
        self.total_bytes = total;
        self.files.remove(&removals);
        Ok(results)
    }

    async fn maintenance(&mut self) -> Result<(), StorageError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
            .execute(&mut self.conn)
            .await
            .map_err(dberr)?;
        sqlx::query("PRAGMA optimize")
            .execute(&mut self.conn)
            .await
            .map_err(dberr)?;
        Ok(())
    }
}

/// Apply one op, keeping its value in its slot; returns the change of the
/// relay's byte total.
async fn apply(
    conn: &mut SqliteConnection,
    write: &mut Write,
    quotas: Quotas,
    total_bytes: u64,
    removals: &mut Vec<String>,
) -> Result<i64, StorageError> {
    match write {
        Write::OpenSession {
            group,
            device,
            now_ms,
            new_group,
            slot,
        } => {
            let opened =
                access::open_group(conn, *group, *now_ms, *new_group, quotas.address).await?;
            // A refusal rolls back the touch of the group above.
            if crate::closure_of(&mut *conn, *group)
                .await?
                .is_some_and(|c| !c.admits(device, *now_ms))
            {
                return Err(StorageError::GroupClosed);
            }
            touch_device(conn, *group, *device, *now_ms).await?;
            slot.out = Some(opened);
            Ok(0)
        }
        Write::CreateToken { token, slot } => {
            slot.out = Some(access::create_token(conn, token).await?);
            Ok(0)
        }
        Write::RevokeToken { id, now_ms, slot } => {
            slot.out = Some(access::revoke_token(conn, id, *now_ms).await?);
            Ok(0)
        }
        Write::Push { req, files, slot } => {
            let (out, added) = match files {
                Some(f) => apply_push(conn, req, &f.refs, &mut f.used, quotas, total_bytes).await?,
                None => apply_push(conn, req, &[], &mut [], quotas, total_bytes).await?,
            };
            slot.out = Some(out);
            Ok(added as i64)
        }
        Write::Ack {
            group,
            device,
            cursor,
            now_ms,
            slot,
        } => {
            // Only `open_session` creates groups (through admission).
            let head = group_head(conn, *group)
                .await?
                .0
                .ok_or(StorageError::UnknownGroup)?;
            if *cursor > head {
                return Err(StorageError::CursorBeyondHead {
                    cursor: *cursor,
                    head,
                });
            }
            touch_device(conn, *group, *device, *now_ms).await?;
            let acked: i64 = sqlx::query_scalar(
                "UPDATE devices SET acked_cursor = MAX(acked_cursor, ?3) \
                 WHERE group_id = ?1 AND device_id = ?2 RETURNING acked_cursor",
            )
            .bind(&group.0[..])
            .bind(&device.0[..])
            .bind(*cursor as i64)
            .fetch_one(&mut *conn)
            .await
            .map_err(dberr)?;
            slot.out = Some(acked as u64);
            Ok(0)
        }
        Write::DeleteExpired {
            now_ms,
            limit,
            slot,
        } => {
            let rows = sqlx::query(
                "DELETE FROM blobs WHERE rowid IN \
                 (SELECT rowid FROM blobs WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2) \
                 RETURNING group_id, COALESCE(file_len, LENGTH(payload)), file_name",
            )
            .bind(*now_ms)
            .bind(i64::from(*limit))
            .fetch_all(&mut *conn)
            .await
            .map_err(dberr)?;
            let deleted = settle_deletions(conn, rows, removals).await?;
            slot.out = Some(deleted);
            Ok(-(deleted.bytes as i64))
        }
        Write::DeleteAcked {
            seen_since_ms,
            limit,
            slot,
        } => {
            let rows = sqlx::query(
                "WITH floor AS (SELECT group_id, MIN(acked_cursor) AS acked FROM devices \
                   WHERE last_seen_at >= ?1 GROUP BY group_id) \
                 DELETE FROM blobs WHERE rowid IN \
                 (SELECT b.rowid FROM blobs b JOIN floor f ON b.group_id = f.group_id \
                   WHERE b.cursor <= f.acked LIMIT ?2) \
                 RETURNING group_id, COALESCE(file_len, LENGTH(payload)), file_name",
            )
            .bind(*seen_since_ms)
            .bind(i64::from(*limit))
            .fetch_all(&mut *conn)
            .await
            .map_err(dberr)?;
            let deleted = settle_deletions(conn, rows, removals).await?;
            slot.out = Some(deleted);
            Ok(-(deleted.bytes as i64))
        }
        Write::CloseGroup {
            group,
            keep,
            now_ms,
            grace_ms,
            slot,
        } => {
            slot.out = Some(close_group(conn, *group, keep, *now_ms, *grace_ms).await?);
            Ok(0)
        }
        Write::PruneIdle {
            idle_before_ms,
            limit,
            live,
            slot,
        } => {
            let pruned = prune_idle(
                conn,
                *idle_before_ms,
                *limit,
                live,
                quotas.address.window_ms,
            )
            .await?;
            slot.out = Some(pruned);
            Ok(0)
        }
    }
}

/// [`sync_storage::Storage::close_group`]: the first close of a group is
/// recorded and its blobs' expiry lowered to the grace's end; a group
/// closed already is answered as it is. (The writer is the only writer, so
/// no push runs between the read and the update.)
async fn close_group(
    conn: &mut SqliteConnection,
    group: GroupId,
    keep: &KeepList,
    now_ms: i64,
    grace_ms: i64,
) -> Result<CloseOutcome, StorageError> {
    if let Some(closure) = crate::closure_of(&mut *conn, group).await? {
        return Ok(CloseOutcome {
            closure,
            applied: false,
        });
    }
    let grace_until = now_ms.saturating_add(grace_ms);
    let updated = sqlx::query(
        "UPDATE groups SET closed_at = ?2, grace_until = ?3, keep_list = ?4 WHERE group_id = ?1",
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
        return Err(StorageError::UnknownGroup);
    }
    sqlx::query("UPDATE blobs SET expires_at = ?2 WHERE group_id = ?1 AND expires_at > ?2")
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

/// [`sync_storage::Storage::prune_idle`]: idle devices without a live
/// session (in any group), then idle empty groups left without devices (so
/// deleting a group never cascades), the live devices and groups excluded in
/// SQL (JSON arrays of hex ids), the head floor
/// raised to the highest head pruned and the pruned groups' owners
/// released; then owner rows left with nothing (`window_ms`: the length of
/// an address's new-group window).
async fn prune_idle(
    conn: &mut SqliteConnection,
    idle_before_ms: i64,
    limit: u32,
    live: &LiveGroups,
    window_ms: i64,
) -> Result<Pruned, StorageError> {
    let sessions = live();
    // Live devices as upper-case hex `group || device` (what SQLite's
    // `hex(group_id) || hex(device_id)` gives), live groups as hex ids.
    let live_devices: Vec<String> = sessions
        .iter()
        .map(|(g, d)| hex::encode_upper([&g.0[..], &d.0[..]].concat()))
        .collect();
    let live_devices = serde_json::Value::from(live_devices).to_string();
    let live: Vec<String> = sessions.iter().map(|(g, _)| hex::encode(g.0)).collect();
    let live = serde_json::Value::from(live).to_string();
    let devices = sqlx::query(
        "DELETE FROM devices WHERE (group_id, device_id) IN \
         (SELECT group_id, device_id FROM devices WHERE last_seen_at < ?1 \
           AND hex(group_id) || hex(device_id) NOT IN (SELECT value FROM json_each(?2)) \
           ORDER BY last_seen_at, group_id, device_id LIMIT ?3)",
    )
    .bind(idle_before_ms)
    .bind(&live_devices)
    .bind(i64::from(limit))
    .execute(&mut *conn)
    .await
    .map_err(dberr)?
    .rows_affected();
    // `blob_count = 0` selects the partial index `groups_idle`; the blobs
    // check guards against a counter ever being wrong (the delete would
    // cascade to the blobs).
    let rows = sqlx::query(
        "DELETE FROM groups WHERE group_id IN \
         (SELECT g.group_id FROM groups g WHERE g.blob_count = 0 AND g.last_active_at < ?1 \
           AND g.closed_at IS NULL \
           AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.group_id = g.group_id) \
           AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.group_id = g.group_id) \
           AND g.group_id NOT IN (SELECT unhex(value) FROM json_each(?2)) \
           ORDER BY g.last_active_at, g.group_id LIMIT ?3) \
         RETURNING head_cursor, owner, bytes_used",
    )
    .bind(idle_before_ms)
    .bind(&live)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await
    .map_err(dberr)?;
    let mut top = None;
    // Owner → (groups, bytes) released; the bytes are 0 (no blobs) while
    // the counters are exact, and subtracted anyway so they stay exact.
    let mut released: HashMap<Vec<u8>, (i64, i64)> = HashMap::new();
    for row in &rows {
        let head: i64 = row.try_get(0).map_err(dberr)?;
        top = top.max(Some(head));
        if let Some(owner) = row.try_get::<Option<Vec<u8>>, _>(1).map_err(dberr)? {
            let e = released.entry(owner).or_default();
            e.0 += 1;
            e.1 += row.try_get::<i64, _>(2).map_err(dberr)?;
        }
    }
    if let Some(top) = top {
        sqlx::query("UPDATE relay_state SET head_floor = MAX(head_floor, ?1)")
            .bind(top)
            .execute(&mut *conn)
            .await
            .map_err(dberr)?;
    }
    for (owner, (groups, bytes)) in released {
        sqlx::query(
            "UPDATE owners SET group_count = group_count - ?2, bytes_used = bytes_used - ?3 \
             WHERE owner = ?1",
        )
        .bind(owner)
        .bind(groups)
        .bind(bytes)
        .execute(&mut *conn)
        .await
        .map_err(dberr)?;
    }
    let owners = access::prune_owners(conn, idle_before_ms, window_ms, limit).await?;
    Ok(Pruned {
        groups: rows.len() as u64,
        devices,
        owners,
    })
}

/// The group's head if it has a row, and the head floor.
async fn group_head(
    conn: &mut SqliteConnection,
    group: GroupId,
) -> Result<(Option<u64>, u64), StorageError> {
    let row = sqlx::query(
        "SELECT (SELECT head_cursor FROM groups WHERE group_id = ?1), head_floor FROM relay_state",
    )
    .bind(&group.0[..])
    .fetch_one(conn)
    .await
    .map_err(dberr)?;
    let head: Option<i64> = row.try_get(0).map_err(dberr)?;
    let floor: i64 = row.try_get(1).map_err(dberr)?;
    Ok((head.map(|h| h as u64), floor as u64))
}

/// Subtract deleted rows from their groups' counters: one UPDATE per group
/// touched (at most the batch size), never one per blob.
async fn settle_deletions(
    conn: &mut SqliteConnection,
    rows: Vec<sqlx::sqlite::SqliteRow>,
    removals: &mut Vec<String>,
) -> Result<Deleted, StorageError> {
    let mut per_group: HashMap<Vec<u8>, (i64, i64)> = HashMap::new();
    let mut deleted = Deleted::default();
    for row in rows {
        let group: Vec<u8> = row.try_get(0).map_err(dberr)?;
        let len: i64 = row.try_get(1).map_err(dberr)?;
        if let Some(name) = row.try_get::<Option<String>, _>(2).map_err(dberr)? {
            removals.push(name);
        }
        let e = per_group.entry(group).or_default();
        e.0 += 1;
        e.1 += len;
        deleted.blobs += 1;
        deleted.bytes += len as u64;
    }
    let mut per_owner: HashMap<Vec<u8>, i64> = HashMap::new();
    for (group, (count, bytes)) in per_group {
        let owner: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "UPDATE groups SET blob_count = blob_count - ?2, bytes_used = bytes_used - ?3 \
             WHERE group_id = ?1 RETURNING owner",
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
    access::release_owners(conn, per_owner).await?;
    Ok(deleted)
}

async fn touch_device(
    conn: &mut SqliteConnection,
    group: GroupId,
    device: DeviceId,
    now_ms: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO devices (group_id, device_id, first_seen_at, last_seen_at) VALUES (?1, ?2, ?3, ?3) \
         ON CONFLICT (group_id, device_id) DO UPDATE SET last_seen_at = excluded.last_seen_at",
    )
    .bind(&group.0[..])
    .bind(&device.0[..])
    .bind(now_ms)
    .execute(conn)
    .await.map_err(dberr)?;
    Ok(())
}

/// One push batch (docs/protocol.md and docs/deploy.md): duplicate check by blob id → cursor
/// assignment and counters in one upsert → quota checks on its result (an
/// op over a quota rolls back to its savepoint) → one multi-row insert.
/// Three statements whatever the batch size: each statement is a round trip
/// to sqlx's SQLite thread, the dominant cost of a small push.
/// Returns the outcome and the payload bytes added.
async fn apply_push(
    conn: &mut SqliteConnection,
    req: &PushRequest,
    files: &[Option<FileRef>],
    file_used: &mut [bool],
    quotas: Quotas,
    total_bytes: u64,
) -> Result<(PushOutcome, u64), StorageError> {
    let existing = existing_cursors(conn, req.group, &req.items).await?;
    // Which items are new: the first occurrence of an id not yet stored.
    let mut first_index: HashMap<BlobId, usize> = HashMap::new();
    let mut new_items: Vec<(&NewBlob, Option<&FileRef>)> = Vec::new();
    let mut new_index: Vec<usize> = Vec::new();
    for (i, item) in req.items.iter().enumerate() {
        if !existing.contains_key(&item.blob_id) && !first_index.contains_key(&item.blob_id) {
            first_index.insert(item.blob_id, new_items.len());
            new_items.push((item, files.get(i).and_then(Option::as_ref)));
            new_index.push(i);
        }
    }

    // A payload in a file is charged its file's length, as inline.
    let adding: u64 = new_items
        .iter()
        .map(|(b, f)| f.map_or(b.payload.len() as u64, |f| f.len))
        .sum();
    let n = new_items.len() as u64;
    let head = if new_items.is_empty() {
        group_head(&mut *conn, req.group)
            .await?
            .0
            .ok_or(StorageError::UnknownGroup)?
    } else {
        // Only `open_session` creates groups (through admission): a push to
        // a group without a row is refused and creates nothing.
        let row = sqlx::query(
            "UPDATE groups SET head_cursor = head_cursor + ?2, bytes_used = bytes_used + ?3, \
             blob_count = blob_count + ?2, last_active_at = ?4 WHERE group_id = ?1 \
             RETURNING head_cursor, bytes_used, blob_count, owner, closed_at, grace_until, keep_list",
        )
        .bind(&req.group.0[..])
        .bind(n as i64)
        .bind(adding as i64)
        .bind(req.now_ms)
        .fetch_optional(&mut *conn)
        .await
        .map_err(dberr)?
        .ok_or(StorageError::UnknownGroup)?;
        let head = row.try_get::<i64, _>(0).map_err(dberr)? as u64;
        let used = row.try_get::<i64, _>(1).map_err(dberr)? as u64 - adding;
        let count = row.try_get::<i64, _>(2).map_err(dberr)? as u64 - n;
        let owner: Option<Vec<u8>> = row.try_get(3).map_err(dberr)?;
        // A closed group takes new blobs only from the devices its close
        // keeps, until its grace ends (the close holds the write lock too,
        // so the two are ordered); the refusal rolls the update back.
        let expiry_cap = match crate::closure_in_row(&row, 4)? {
            Some(c) if !c.admits(&req.sender, req.now_ms) => {
                return Err(StorageError::GroupClosed);
            }
            Some(c) => c.grace_until_ms,
            None => i64::MAX,
        };
        let owner_use = match &owner {
            Some(o) => access::charge_owner(conn, o, adding, quotas.address.max_storage).await?,
            None => None,
        };
        let relay = Budget {
            used: total_bytes,
            limit: quotas.max_storage,
        };
        let group_use = GroupUse {
            bytes: used,
            blobs: count,
        };
        let add = Adding {
            bytes: adding,
            blobs: n,
        };
        check_push(&quotas, group_use, owner_use, relay, add)?;
        insert_blobs(conn, req, &new_items, head - n + 1, expiry_cap).await?;
        for i in new_index {
            if let Some(u) = file_used.get_mut(i) {
                *u = true;
            }
        }
        head
    };

    let results = push_results(&req.items, &existing, head + 1 - new_items.len() as u64);
    Ok((PushOutcome { results, head }, adding))
}

/// Insert `items` under consecutive cursors from `first`, their expiry
/// lowered to `expiry_cap` at most (a closed group's grace end), as few
/// multi-row statements as SQLite's parameter limit allows.
async fn insert_blobs(
    conn: &mut SqliteConnection,
    req: &PushRequest,
    items: &[(&NewBlob, Option<&FileRef>)],
    first: u64,
    expiry_cap: i64,
) -> Result<(), StorageError> {
    // 10 parameters a row; SQLite allows 32766 per statement.
    for (c, chunk) in items.chunks(1024).enumerate() {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(",");
        let sql = format!(
            "INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at, \
             file_name, file_len, file_hash) VALUES {rows}"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (i, (item, file)) in chunk.iter().enumerate() {
            q = q
                .bind(&req.group.0[..])
                .bind((first + (c * 1024 + i) as u64) as i64)
                .bind(&item.blob_id.0[..])
                .bind(&req.sender.0[..])
                .bind(&item.payload[..])
                .bind(req.now_ms)
                .bind(item.expires_at_ms.min(expiry_cap))
                .bind(file.map(|f| f.name.as_str()))
                .bind(file.map(|f| f.len as i64))
                .bind(file.map(|f| &f.hash[..]));
        }
        q.execute(&mut *conn).await.map_err(dberr)?;
    }
    Ok(())
}

async fn existing_cursors(
    conn: &mut SqliteConnection,
    group: GroupId,
    items: &[NewBlob],
) -> Result<HashMap<BlobId, u64>, StorageError> {
    let mut found = HashMap::new();
    for chunk in items.chunks(256) {
        let placeholders = vec!["?"; chunk.len()].join(",");
        let sql = format!(
            "SELECT blob_id, cursor FROM blobs WHERE group_id = ? AND blob_id IN ({placeholders})"
        );
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(&group.0[..]);
        for item in chunk {
            q = q.bind(&item.blob_id.0[..]);
        }
        for row in q.fetch_all(&mut *conn).await.map_err(dberr)? {
            let id = BlobId(fixed(row.try_get(0).map_err(dberr)?)?);
            found.insert(id, row.try_get::<i64, _>(1).map_err(dberr)? as u64);
        }
    }
    Ok(found)
}

/// After a push op's transaction ended: remove the files it wrote that no
/// committed row names (duplicates of stored blobs, a refused push). Not
/// after a database error: whether it committed is unknown, so its files
/// stay for the sweep, which asks the database.
fn remove_unused_files(write: &Write, result: &Result<(), StorageError>) {
    if let Write::Push {
        files: Some(files), ..
    } = write
        && !files.staged.is_empty()
    {
        match result {
            Ok(()) => files.staged.remove_unused(&files.refs, &files.used),
            Err(e) if e.is_refusal() => files.staged.remove_unused(&[], &[]),
            Err(_) => {}
        }
    }
}
