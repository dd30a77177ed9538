//! SQLite backend of the relay's storage (docs/deploy.md "Storage backends"): WAL, `synchronous = NORMAL` (a commit
//! survives a crash of the relay process), `busy_timeout`, foreign keys on.
//!
//! Writes go through one writer task ([`writer`]) that owns the only write
//! connection and group-commits. Reads use a separate pool of read-only
//! connections (WAL readers never block the writer).

#![forbid(unsafe_code)]

mod access;
mod backup;
#[cfg(test)]
mod classify_tests;
mod files;
mod writer;

pub use backup::backup_database;
pub use files::{BLOBS_DIR, DEFAULT_FILE_THRESHOLD, blobs_dir_of};
pub use writer::{FAILPOINT_ENV, FAILPOINT_EXIT_CODE, MAX_OPS_PER_TXN};

use files::{BlobFiles, FileRef};
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row, SqliteExecutor};
use std::path::PathBuf;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId, KeepList, PulledBlob};
use sync_storage::{
    CloseOutcome, CounterAudit, Deleted, GroupClosure, LiveGroups, NewGroup, NewToken,
    OpenedSession, Pruned, PullPage, PushOutcome, PushRequest, Quotas, Storage, StorageError,
    StorageStats, TokenInfo,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use writer::{Job, Slot, Write};

/// [`FAILPOINT_ENV`] value (debug builds only) that ends the process with
/// [`FAILPOINT_EXIT_CODE`] right after a push's payload files are written
/// and fsync'd, before its transaction is queued: the crash window that
/// leaves orphaned files (swept at the next start).
#[cfg_attr(not(debug_assertions), allow(dead_code))]
pub const FAILPOINT_AFTER_FILES: &str = "crash-after-blob-files";

/// Depth of the writer's queue; callers wait (asynchronously) when it is full.
const WRITE_QUEUE: usize = 1024;

/// How the SQLite backend is opened.
#[derive(Debug, Clone)]
pub struct SqliteStorageOptions {
    /// Database file; created with its schema if missing.
    pub path: PathBuf,
    /// Quotas checked inside the push transaction.
    pub quotas: Quotas,
    /// Read-only connections in the reader pool.
    pub read_connections: u32,
    /// How long a statement waits on a locked database.
    pub busy_timeout: Duration,
    /// Payloads of this many bytes or more are written to files in
    /// [`blobs_dir_of`] the database instead of into it (default
    /// [`DEFAULT_FILE_THRESHOLD`]; docs/deploy.md "Data directory").
    pub file_threshold: usize,
}

impl SqliteStorageOptions {
    /// Options for `path` with the given quotas and default tuning.
    pub fn new(path: impl Into<PathBuf>, quotas: Quotas) -> Self {
        SqliteStorageOptions {
            path: path.into(),
            quotas,
            read_connections: 2,
            busy_timeout: Duration::from_secs(5),
            file_threshold: DEFAULT_FILE_THRESHOLD,
        }
    }
}

/// The SQLite [`Storage`] backend. See the module docs.
pub struct SqliteStorage {
    readers: SqlitePool,
    files: Arc<BlobFiles>,
    /// The `crash-after-blob-files` fail point is armed (debug builds only).
    #[cfg(debug_assertions)]
    crash_after_files: bool,
    writer: mpsc::Sender<Job>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteStorage {
    /// Open (or create) the database, run the migrations in
    /// `migrations/sqlite`, create the payload file directory
    /// ([`blobs_dir_of`]), remove the files no row names (orphans of a
    /// crash between a file's write and its commit), and start the writer
    /// task. Errors: [`StorageError::Database`], [`StorageError::Migration`].
    pub async fn open(opts: SqliteStorageOptions) -> Result<Self, StorageError> {
        create_private(&opts.path)?;
        let connect = SqliteConnectOptions::new()
            .filename(&opts.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(opts.busy_timeout)
            .foreign_keys(true);
        let mut write_conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(dberr)?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&mut write_conn)
            .await
            .map_err(StorageError::migration)?;
        let readers = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await
            .map_err(dberr)?;
        let files = Arc::new(BlobFiles::open(
            blobs_dir_of(&opts.path),
            opts.file_threshold,
        )?);
        // Nothing writes yet: every file no row names is an orphan.
        files::sweep(&files, &readers).await?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let task = tokio::spawn(writer::run(write_conn, rx, opts.quotas, Arc::clone(&files)));
        Ok(SqliteStorage {
            readers,
            files,
            #[cfg(debug_assertions)]
            crash_after_files: std::env::var(FAILPOINT_ENV).as_deref() == Ok(FAILPOINT_AFTER_FILES),
            writer: tx,
            writer_task: Mutex::new(Some(task)),
        })
    }

    /// Queue the write `make` builds around its caller's slot and wait for
    /// its answer (sent after the commit).
    async fn write<T>(&self, make: impl FnOnce(Slot<T>) -> Write) -> Result<T, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job::Write(make(Slot::new(reply))))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }
}

#[async_trait]
impl Storage for SqliteStorage {
    async fn open_session(
        &self,
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
        new_group: NewGroup,
    ) -> Result<OpenedSession, StorageError> {
        self.write(|slot| Write::OpenSession {
            group,
            device,
            now_ms,
            new_group,
            slot,
        })
        .await
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenInfo, StorageError> {
        self.write(|slot| Write::CreateToken { token, slot }).await
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<TokenInfo, StorageError> {
        self.write(|slot| Write::RevokeToken {
            id: id.to_string(),
            now_ms,
            slot,
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError> {
        access::list_tokens(&self.readers).await
    }

    async fn push(&self, mut req: PushRequest) -> Result<PushOutcome, StorageError> {
        let n = req.items.len();
        let threshold = self.files.threshold();
        let large: Vec<usize> = (0..n)
            .filter(|&i| req.items[i].payload.len() >= threshold)
            .collect();
        if large.is_empty() {
            return self
                .write(|slot| Write::Push {
                    req,
                    files: None,
                    slot,
                })
                .await;
        }
        // Write and fsync the large payloads before the writer sees the
        // push (off the runtime: fsync blocks), then let go of them.
        let payloads: Vec<Vec<u8>> = large
            .iter()
            .map(|&i| std::mem::take(&mut req.items[i].payload))
            .collect();
        let files = Arc::clone(&self.files);
        let (staged, refs) = tokio::task::spawn_blocking(move || {
            let views: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
            files.write_all(&views)
        })
        .await
        .map_err(|e| StorageError::database(format!("blob file task failed: {e}")))??;
        #[cfg(debug_assertions)]
        if self.crash_after_files {
            tracing::error!("fail point crash-after-blob-files: exiting before the commit");
            std::process::exit(FAILPOINT_EXIT_CODE);
        }
        let mut files = vec![None; n];
        for (i, file) in large.into_iter().zip(refs) {
            files[i] = Some(file);
        }
        let files = Box::new(writer::PushFiles {
            refs: files,
            staged,
            used: vec![false; n],
        });
        self.write(|slot| Write::Push {
            req,
            files: Some(files),
            slot,
        })
        .await
    }

    async fn head(&self, group: GroupId) -> Result<u64, StorageError> {
        head_of(&self.readers, group).await
    }

    async fn pull_page(
        &self,
        group: GroupId,
        after: u64,
        max_blobs: u32,
        max_bytes: usize,
        now_ms: i64,
    ) -> Result<PullPage, StorageError> {
        let max_blobs = max_blobs.max(1) as usize;
        // One read connection is held until the page is returned, its file
        // payloads included: at most `read_connections` pages are being
        // read at once. A page can be larger than its caller has paid for
        // (one blob always comes back), and the relay's pull path relies on
        // this bound (sync-relay/src/handlers/pull.rs); with the connection
        // given back before the files were read, every waiting pull could
        // hold a page of file payloads at once.
        let mut conn = self.readers.acquire().await.map_err(dberr)?;
        let mut rows = sqlx::query(
            "SELECT cursor, blob_id, sender, created_at, payload, file_name, file_len, file_hash \
             FROM blobs \
             WHERE group_id = ?1 AND cursor > ?2 AND expires_at > ?3 \
             ORDER BY cursor LIMIT ?4",
        )
        .bind(&group.0[..])
        .bind(after as i64)
        .bind(now_ms)
        .bind(max_blobs as i64 + 1)
        .fetch(&mut *conn);
        let mut page = PullPage {
            blobs: Vec::new(),
            complete: true,
        };
        let mut bytes = 0usize;
        // (index in the page, file) of the payloads to read from files.
        let mut in_files: Vec<(usize, FileRef)> = Vec::new();
        while let Some(row) = rows.try_next().await.map_err(dberr)? {
            if page.blobs.len() == max_blobs {
                page.complete = false;
                break;
            }
            let payload: Vec<u8> = row.try_get(4).map_err(dberr)?;
            let file = file_in_row(&row, 5)?;
            let len = match &file {
                Some(f) => usize::try_from(f.len)
                    .map_err(|_| StorageError::database("stored file length is too large"))?,
                None => payload.len(),
            };
            if !page.blobs.is_empty() && bytes + len > max_bytes {
                page.complete = false;
                break;
            }
            bytes += len;
            if let Some(file) = file {
                in_files.push((page.blobs.len(), file));
            }
            page.blobs.push(PulledBlob {
                cursor: row.try_get::<i64, _>(0).map_err(dberr)? as u64,
                blob_id: BlobId(fixed(row.try_get(1).map_err(dberr)?)?),
                sender: DeviceId(fixed(row.try_get(2).map_err(dberr)?)?),
                created_at: row.try_get::<i64, _>(3).map_err(dberr)? as u64,
                payload,
            });
        }
        drop(rows);
        if !in_files.is_empty() {
            let files = Arc::clone(&self.files);
            let read = tokio::task::spawn_blocking(move || {
                in_files
                    .into_iter()
                    .map(|(i, f)| files.read(&f).map(|p| (i, f, p)))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
            .map_err(|e| StorageError::database(format!("blob file task failed: {e}")))??;
            // Blobs whose file and row the cleanup removed after the page
            // was read: left out, as if deleted before.
            let mut gone = Vec::new();
            for (i, file, payload) in read {
                match payload {
                    Some(payload) => {
                        if let Some(blob) = page.blobs.get_mut(i) {
                            blob.payload = payload;
                        }
                    }
                    None => {
                        let named: Option<i64> =
                            sqlx::query_scalar("SELECT 1 FROM blobs WHERE file_name = ?1")
                                .bind(&file.name)
                                .fetch_optional(&mut *conn)
                                .await
                                .map_err(dberr)?;
                        if named.is_some() {
                            return Err(StorageError::database(format!(
                                "blob file {} is missing",
                                self.files.path(&file.name).display()
                            )));
                        }
                        gone.push(i);
                    }
                }
            }
            if !gone.is_empty() {
                let mut i = 0;
                page.blobs.retain(|_| {
                    i += 1;
                    !gone.contains(&(i - 1))
                });
            }
        }
        Ok(page)
    }

    async fn ack(
        &self,
        group: GroupId,
        device: DeviceId,
        cursor: u64,
        now_ms: i64,
    ) -> Result<u64, StorageError> {
        self.write(|slot| Write::Ack {
            group,
            device,
            cursor,
            now_ms,
            slot,
        })
        .await
    }

    async fn close_group(
        &self,
        group: GroupId,
        keep: KeepList,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<CloseOutcome, StorageError> {
        self.write(|slot| Write::CloseGroup {
            group,
            keep,
            now_ms,
            grace_ms,
            slot,
        })
        .await
    }

    async fn closure(&self, group: GroupId) -> Result<Option<GroupClosure>, StorageError> {
        closure_of(&self.readers, group).await
    }

    async fn stats(&self) -> Result<StorageStats, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(blob_count), 0), COALESCE(SUM(bytes_used), 0), \
             (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM owners) FROM groups",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(dberr)?;
        Ok(StorageStats {
            groups: row.try_get::<i64, _>(0).map_err(dberr)? as u64,
            devices: row.try_get::<i64, _>(3).map_err(dberr)? as u64,
            owners: row.try_get::<i64, _>(4).map_err(dberr)? as u64,
            blobs: row.try_get::<i64, _>(1).map_err(dberr)? as u64,
            bytes: row.try_get::<i64, _>(2).map_err(dberr)? as u64,
        })
    }

    async fn delete_expired(&self, now_ms: i64, limit: u32) -> Result<Deleted, StorageError> {
        self.write(|slot| Write::DeleteExpired {
            now_ms,
            limit,
            slot,
        })
        .await
    }

    async fn delete_acked(&self, seen_since_ms: i64, limit: u32) -> Result<Deleted, StorageError> {
        self.write(|slot| Write::DeleteAcked {
            seen_since_ms,
            limit,
            slot,
        })
        .await
    }

    async fn prune_idle(
        &self,
        idle_before_ms: i64,
        limit: u32,
        live: LiveGroups,
    ) -> Result<Pruned, StorageError> {
        self.write(|slot| Write::PruneIdle {
            idle_before_ms,
            limit,
            live,
            slot,
        })
        .await
    }

    /// Checkpoint and optimize (in the writer), then remove orphaned
    /// payload files ([`files`]: a crash between a file's write and its
    /// commit, or between a row's deletion and its file's).
    async fn maintenance(&self) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job::Maintenance(reply))
            .await
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)??;
        files::sweep(&self.files, &self.readers).await?;
        Ok(())
    }

    async fn audit(&self) -> Result<CounterAudit, StorageError> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(SUM(bytes_used), 0) FROM groups),                     (SELECT COALESCE(SUM(COALESCE(file_len, LENGTH(payload))), 0) FROM blobs),                     (SELECT COALESCE(SUM(blob_count), 0) FROM groups),                     (SELECT COUNT(*) FROM blobs),                     (SELECT COUNT(*) FROM groups g WHERE                        g.bytes_used != (SELECT COALESCE(SUM(COALESCE(file_len, LENGTH(payload))), 0) FROM blobs b WHERE b.group_id = g.group_id)                     OR g.blob_count != (SELECT COUNT(*) FROM blobs b WHERE b.group_id = g.group_id)), \
                    (SELECT COUNT(*) FROM owners o WHERE \
                       o.bytes_used != (SELECT COALESCE(SUM(bytes_used), 0) FROM groups g WHERE g.owner = o.owner) \
                    OR o.group_count != (SELECT COUNT(*) FROM groups g WHERE g.owner = o.owner)) \
                  + (SELECT COUNT(DISTINCT g.owner) FROM groups g WHERE g.owner IS NOT NULL \
                       AND NOT EXISTS (SELECT 1 FROM owners o WHERE o.owner = g.owner))",
        )
        .fetch_one(&self.readers)
        .await.map_err(dberr)?;
        Ok(CounterAudit {
            counted_bytes: row.try_get::<i64, _>(0).map_err(dberr)? as u64,
            actual_bytes: row.try_get::<i64, _>(1).map_err(dberr)? as u64,
            counted_blobs: row.try_get::<i64, _>(2).map_err(dberr)? as u64,
            actual_blobs: row.try_get::<i64, _>(3).map_err(dberr)? as u64,
            mismatched_groups: row.try_get::<i64, _>(4).map_err(dberr)? as u64,
            mismatched_owners: row.try_get::<i64, _>(5).map_err(dberr)? as u64,
        })
    }

    async fn close(&self) {
        let _ = self.writer.send(Job::Shutdown).await;
        if let Some(task) = self.writer_task.lock().await.take() {
            let _ = task.await;
        }
        self.readers.close().await;
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }

    /// The reader pool (the writer's one connection is not counted).
    fn pool_stats(&self) -> sync_storage::PoolStats {
        sync_storage::PoolStats {
            size: self.readers.size(),
            idle: u32::try_from(self.readers.num_idle()).unwrap_or(u32::MAX),
            max: self.readers.options().get_max_connections(),
            acquire_timeouts: 0,
        }
    }
}

/// Operator commands on the SQLite database while the relay runs
/// (`sync-relay token …`).
pub mod admin {
    use super::*;

    /// One read-write connection to the database at `path` (created with
    /// mode 0600 and migrated if needed; WAL, `busy_timeout` 5 s), for
    /// operator commands (`sync-relay token …`) that run while the relay
    /// does: their short transactions wait for the relay's writer and the
    /// relay sees them at its next transaction (it caches no token).
    /// Errors: [`StorageError::Database`], [`StorageError::Migration`].
    pub async fn open_admin(path: &std::path::Path) -> Result<SqliteConnection, StorageError> {
        create_private(path)?;
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let mut conn = SqliteConnection::connect_with(&connect)
            .await
            .map_err(dberr)?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&mut conn)
            .await
            .map_err(StorageError::migration)?;
        Ok(conn)
    }

    /// `sync-relay token create`: store `token` in one IMMEDIATE transaction.
    pub async fn create_token(
        conn: &mut SqliteConnection,
        token: &NewToken,
    ) -> Result<TokenInfo, StorageError> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(dberr)?;
        let info = access::create_token(&mut tx, token).await?;
        tx.commit().await.map_err(dberr)?;
        Ok(info)
    }

    /// `sync-relay token revoke`: revoke token `id` in one transaction.
    pub async fn revoke_token(
        conn: &mut SqliteConnection,
        id: &str,
        now_ms: i64,
    ) -> Result<TokenInfo, StorageError> {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.map_err(dberr)?;
        let info = access::revoke_token(&mut tx, id, now_ms).await?;
        tx.commit().await.map_err(dberr)?;
        Ok(info)
    }

    /// `sync-relay token list`: every token, oldest first.
    pub async fn list_tokens(conn: &mut SqliteConnection) -> Result<Vec<TokenInfo>, StorageError> {
        access::list_tokens(conn).await
    }
}

/// Create the database file with mode 0600 if it does not exist; SQLite
/// gives its `-wal` and `-shm` files the same mode.
fn create_private(path: &std::path::Path) -> Result<(), StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StorageError::database(e)),
    }
}

pub(crate) fn fixed<const N: usize>(bytes: Vec<u8>) -> Result<[u8; N], StorageError> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        StorageError::database(format!("expected {N} bytes, found {}", b.len()))
    })
}

/// A database error as a [`StorageError`] (`map_err(dberr)`: `sqlx::Error`
/// is not this crate's type, so there is no `From`).
pub(crate) fn dberr(err: sqlx::Error) -> StorageError {
    if is_unavailable(&err) {
        StorageError::unavailable(err)
    } else {
        StorageError::database(err)
    }
}

/// True when `err` says the database file cannot be used for now, not that
/// the request was wrong: no reader connection within the pool's acquire
/// timeout (`PoolTimedOut`), `SQLITE_BUSY` (primary code 5, with its
/// extended codes) left after the whole `busy_timeout` — the relay's own
/// writes go through one writer, so only another process holding the file
/// (a backup, an operator's `sqlite3` shell) causes it, and it heals when
/// that process lets go — and `SQLITE_CANTOPEN` (14: the file or its
/// directory gone, a volume unmounted). Disk full, I/O and corruption
/// errors are not: they need the operator, not a wait.
pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 14)),
        _ => false,
    }
}

/// The close of `group` ([`sync_storage::Storage::closure`]): `None` when
/// it is open or not stored; a stored keep list that does not decode is a
/// database error.
pub(crate) async fn closure_of<'e>(
    db: impl SqliteExecutor<'e>,
    group: GroupId,
) -> Result<Option<GroupClosure>, StorageError> {
    let row = sqlx::query(
        "SELECT closed_at, grace_until, keep_list FROM groups \
         WHERE group_id = ?1 AND closed_at IS NOT NULL",
    )
    .bind(&group.0[..])
    .fetch_optional(db)
    .await
    .map_err(dberr)?;
    match row {
        Some(row) => closure_in_row(&row, 0),
        None => Ok(None),
    }
}

/// The close held by `row`'s columns `at` (`closed_at`), `at + 1`
/// (`grace_until`) and `at + 2` (`keep_list`): `None` when `closed_at` is
/// NULL (open); a stored keep list that does not decode
/// ([`GroupClosure::keep_from_bytes`]) is a database error.
pub(crate) fn closure_in_row(
    row: &sqlx::sqlite::SqliteRow,
    at: usize,
) -> Result<Option<GroupClosure>, StorageError> {
    let Some(closed_at_ms) = row.try_get::<Option<i64>, _>(at).map_err(dberr)? else {
        return Ok(None);
    };
    let keep: Vec<u8> = row.try_get(at + 2).map_err(dberr)?;
    Ok(Some(GroupClosure {
        closed_at_ms,
        grace_until_ms: row.try_get(at + 1).map_err(dberr)?,
        keep: GroupClosure::keep_from_bytes(&keep)
            .ok_or_else(|| StorageError::database("stored keep list is malformed"))?,
    }))
}

pub(crate) async fn head_of<'e>(
    db: impl SqliteExecutor<'e>,
    group: GroupId,
) -> Result<u64, StorageError> {
    // An unknown group's head is the floor it would start at.
    let head: i64 = sqlx::query_scalar(
        "SELECT COALESCE((SELECT head_cursor FROM groups WHERE group_id = ?1), head_floor) \
         FROM relay_state",
    )
    .bind(&group.0[..])
    .fetch_one(db)
    .await
    .map_err(dberr)?;
    Ok(head as u64)
}

/// The payload file named by `row`'s columns `at` (`file_name`), `at + 1`
/// (`file_len`) and `at + 2` (`file_hash`), or `None` for an inline
/// payload; a malformed reference is a database error.
pub(crate) fn file_in_row(
    row: &sqlx::sqlite::SqliteRow,
    at: usize,
) -> Result<Option<FileRef>, StorageError> {
    let Some(name) = row.try_get::<Option<String>, _>(at).map_err(dberr)? else {
        return Ok(None);
    };
    if !files::is_file_name(&name) {
        return Err(StorageError::database(format!(
            "stored blob file name {name:?} is malformed"
        )));
    }
    let len: i64 = row.try_get(at + 1).map_err(dberr)?;
    let hash: Vec<u8> = row.try_get(at + 2).map_err(dberr)?;
    Ok(Some(FileRef {
        name,
        len: u64::try_from(len)
            .map_err(|_| StorageError::database("stored blob file length is negative"))?,
        hash: fixed(hash)?,
    }))
}
