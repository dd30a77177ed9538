//! SQLite backend (DESIGN §5.2–5.3): WAL, `synchronous = NORMAL` (a commit
//! survives a crash of the relay process), `busy_timeout`, foreign keys on.
//!
//! Writes go through one writer task that owns the only write connection and
//! group-commits: it takes every write waiting in its queue (up to
//! [`MAX_OPS_PER_TXN`]), applies each inside its own savepoint of one
//! transaction, commits once, and only then answers the callers. A batch that
//! fails its quota rolls back to its savepoint without touching the others.
//! With a single writer there is no `SQLITE_BUSY` between writers, and cursor
//! assignment (`UPDATE … RETURNING head_cursor`) is trivially serial.
//! Reads use a separate pool of read-only connections (WAL readers never
//! block the writer).

use super::{NewBlob, PullPage, PushOutcome, PushRequest, Storage, StorageError, StorageStats};
use async_trait::async_trait;
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row, SqliteExecutor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId, PulledBlob, PushResult};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;

/// Most queued writes committed in one transaction.
pub const MAX_OPS_PER_TXN: usize = 128;

/// Depth of the writer's queue; callers wait (asynchronously) when it is full.
const WRITE_QUEUE: usize = 1024;

/// How the SQLite backend is opened.
#[derive(Debug, Clone)]
pub struct SqliteStorageOptions {
    /// Database file; created with its schema if missing.
    pub path: PathBuf,
    /// Per-group quota in payload bytes (`limits.max_group_storage`).
    pub max_group_storage: u64,
    /// Read-only connections in the reader pool.
    pub read_connections: u32,
    /// How long a statement waits on a locked database.
    pub busy_timeout: Duration,
}

impl SqliteStorageOptions {
    /// Options for `path` with the given quota and default tuning.
    pub fn new(path: impl Into<PathBuf>, max_group_storage: u64) -> Self {
        SqliteStorageOptions {
            path: path.into(),
            max_group_storage,
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

enum WriteOp {
    OpenSession {
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
    },
    Push(PushRequest),
    Ack {
        group: GroupId,
        device: DeviceId,
        cursor: u64,
        now_ms: i64,
    },
}

enum WriteReply {
    Head(u64),
    Pushed(PushOutcome),
    Acked(u64),
}

enum Job {
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<WriteReply, StorageError>>,
    },
    Shutdown,
}

/// The SQLite [`Storage`] backend. See the module docs.
pub struct SqliteStorage {
    readers: SqlitePool,
    writer: mpsc::Sender<Job>,
    writer_task: Mutex<Option<JoinHandle<()>>>,
}

impl SqliteStorage {
    /// Open (or create) the database, run the migrations in
    /// `migrations/sqlite`, and start the writer task.
    /// Errors: [`StorageError::Database`], [`StorageError::Migration`].
    pub async fn open(opts: SqliteStorageOptions) -> Result<Self, StorageError> {
        create_private(&opts.path)?;
        let connect = SqliteConnectOptions::new()
            .filename(&opts.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(opts.busy_timeout)
            .foreign_keys(true);
        let mut write_conn = SqliteConnection::connect_with(&connect).await?;
        sqlx::migrate!("../migrations/sqlite")
            .run(&mut write_conn)
            .await?;
        let readers = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(connect.read_only(true))
            .await?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let task = tokio::spawn(run_writer(write_conn, rx, opts.max_group_storage));
        Ok(SqliteStorage {
            readers,
            writer: tx,
            writer_task: Mutex::new(Some(task)),
        })
    }

    async fn write(&self, op: WriteOp) -> Result<WriteReply, StorageError> {
        let (reply, rx) = oneshot::channel();
        self.writer
            .send(Job::Write { op, reply })
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
    ) -> Result<u64, StorageError> {
        match self
            .write(WriteOp::OpenSession {
                group,
                device,
                now_ms,
            })
            .await?
        {
            WriteReply::Head(h) => Ok(h),
            _ => unreachable!("open_session answers Head"),
        }
    }

    async fn push(&self, req: PushRequest) -> Result<PushOutcome, StorageError> {
        match self.write(WriteOp::Push(req)).await? {
            WriteReply::Pushed(out) => Ok(out),
            _ => unreachable!("push answers Pushed"),
        }
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
        let mut rows = sqlx::query(
            "SELECT cursor, blob_id, sender, created_at, payload FROM blobs \
             WHERE group_id = ?1 AND cursor > ?2 AND expires_at > ?3 \
             ORDER BY cursor LIMIT ?4",
        )
        .bind(&group.0[..])
        .bind(after as i64)
        .bind(now_ms)
        .bind(max_blobs as i64 + 1)
        .fetch(&self.readers);
        let mut page = PullPage {
            blobs: Vec::new(),
            complete: true,
        };
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await? {
            if page.blobs.len() == max_blobs {
                page.complete = false;
                break;
            }
            let payload: Vec<u8> = row.try_get(4)?;
            if !page.blobs.is_empty() && bytes + payload.len() > max_bytes {
                page.complete = false;
                break;
            }
            bytes += payload.len();
            page.blobs.push(PulledBlob {
                cursor: row.try_get::<i64, _>(0)? as u64,
                blob_id: BlobId(fixed(row.try_get(1)?)?),
                sender: DeviceId(fixed(row.try_get(2)?)?),
                created_at: row.try_get::<i64, _>(3)? as u64,
                payload,
            });
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
        match self
            .write(WriteOp::Ack {
                group,
                device,
                cursor,
                now_ms,
            })
            .await?
        {
            WriteReply::Acked(c) => Ok(c),
            _ => unreachable!("ack answers Acked"),
        }
    }

    async fn stats(&self) -> Result<StorageStats, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(blob_count), 0), COALESCE(SUM(bytes_used), 0) FROM groups",
        )
        .fetch_one(&self.readers)
        .await?;
        Ok(StorageStats {
            groups: row.try_get::<i64, _>(0)? as u64,
            blobs: row.try_get::<i64, _>(1)? as u64,
            bytes: row.try_get::<i64, _>(2)? as u64,
        })
    }

    async fn close(&self) {
        let _ = self.writer.send(Job::Shutdown).await;
        if let Some(task) = self.writer_task.lock().await.take() {
            let _ = task.await;
        }
        self.readers.close().await;
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
        Err(e) => Err(StorageError::Database(sqlx::Error::Io(e))),
    }
}

fn fixed<const N: usize>(bytes: Vec<u8>) -> Result<[u8; N], StorageError> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        StorageError::Database(sqlx::Error::Decode(
            format!("expected {N} bytes, found {}", b.len()).into(),
        ))
    })
}

async fn head_of<'e>(db: impl SqliteExecutor<'e>, group: GroupId) -> Result<u64, StorageError> {
    let head: Option<i64> =
        sqlx::query_scalar("SELECT head_cursor FROM groups WHERE group_id = ?1")
            .bind(&group.0[..])
            .fetch_optional(db)
            .await?;
    Ok(head.unwrap_or(0) as u64)
}

/// The writer task: group-commits queued writes until `Shutdown` or until
/// every sender is gone, then checkpoints the WAL and closes.
async fn run_writer(mut conn: SqliteConnection, mut rx: mpsc::Receiver<Job>, quota: u64) {
    let mut stop = false;
    while !stop {
        let Some(first) = rx.recv().await else { break };
        let mut jobs = Vec::with_capacity(16);
        for job in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match job {
                Job::Write { op, reply } => jobs.push((op, reply)),
                Job::Shutdown => {
                    stop = true;
                    break;
                }
            }
            if jobs.len() >= MAX_OPS_PER_TXN {
                break;
            }
        }
        if jobs.is_empty() {
            continue;
        }
        let (ops, replies): (Vec<_>, Vec<_>) = jobs.into_iter().unzip();
        match commit_group(&mut conn, &ops, quota).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(err) => {
                // The shared transaction failed as a whole: retry each op in
                // a transaction of its own so each caller gets its own answer.
                tracing::warn!(error = %err, ops = ops.len(), "group commit failed; retrying one by one");
                for (op, reply) in ops.iter().zip(replies) {
                    let result =
                        match commit_group(&mut conn, std::slice::from_ref(op), quota).await {
                            Ok(mut r) => r.pop().unwrap_or(Err(StorageError::Closed)),
                            Err(e) => Err(e),
                        };
                    let _ = reply.send(result);
                }
            }
        }
    }
    rx.close();
    // Answer anything still queued so no caller waits forever.
    while let Ok(job) = rx.try_recv() {
        if let Job::Write { reply, .. } = job {
            let _ = reply.send(Err(StorageError::Closed));
        }
    }
    if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut conn)
        .await
    {
        tracing::warn!(error = %err, "WAL checkpoint at close failed");
    }
    let _ = conn.close().await;
}

/// Apply `ops` in one transaction, each in a savepoint. Client errors (quota,
/// cursor) roll back only their op; a database error aborts the whole group.
async fn commit_group(
    conn: &mut SqliteConnection,
    ops: &[WriteOp],
    quota: u64,
) -> Result<Vec<Result<WriteReply, StorageError>>, StorageError> {
    let mut tx = conn.begin().await?;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let mut sp = tx.begin().await?;
        match apply(&mut sp, op, quota).await {
            Ok(reply) => {
                sp.commit().await?;
                results.push(Ok(reply));
            }
            Err(
                err @ (StorageError::GroupQuotaExceeded { .. }
                | StorageError::CursorBeyondHead { .. }),
            ) => {
                sp.rollback().await?;
                results.push(Err(err));
            }
            Err(err) => return Err(err),
        }
    }
    tx.commit().await?;
    Ok(results)
}

async fn apply(
    conn: &mut SqliteConnection,
    op: &WriteOp,
    quota: u64,
) -> Result<WriteReply, StorageError> {
    match op {
        WriteOp::OpenSession {
            group,
            device,
            now_ms,
        } => {
            touch_group(conn, *group, *now_ms).await?;
            touch_device(conn, *group, *device, *now_ms).await?;
            Ok(WriteReply::Head(head_of(&mut *conn, *group).await?))
        }
        WriteOp::Push(req) => Ok(WriteReply::Pushed(apply_push(conn, req, quota).await?)),
        WriteOp::Ack {
            group,
            device,
            cursor,
            now_ms,
        } => {
            let head = head_of(&mut *conn, *group).await?;
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
            .await?;
            Ok(WriteReply::Acked(acked as u64))
        }
    }
}

async fn touch_group(
    conn: &mut SqliteConnection,
    group: GroupId,
    now_ms: i64,
) -> Result<(), StorageError> {
    sqlx::query(
        "INSERT INTO groups (group_id, created_at, last_active_at) VALUES (?1, ?2, ?2) \
         ON CONFLICT (group_id) DO UPDATE SET last_active_at = excluded.last_active_at",
    )
    .bind(&group.0[..])
    .bind(now_ms)
    .execute(conn)
    .await?;
    Ok(())
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
    .await?;
    Ok(())
}

/// One push batch (DESIGN §5.3): duplicate check by blob id → quota check on
/// `bytes_used` → cursor assignment → inserts.
async fn apply_push(
    conn: &mut SqliteConnection,
    req: &PushRequest,
    quota: u64,
) -> Result<PushOutcome, StorageError> {
    touch_group(conn, req.group, req.now_ms).await?;
    touch_device(conn, req.group, req.sender, req.now_ms).await?;

    let existing = existing_cursors(conn, req.group, &req.items).await?;
    // Which items are new: the first occurrence of an id not yet stored.
    let mut first_index: HashMap<BlobId, usize> = HashMap::new();
    let mut new_items: Vec<&NewBlob> = Vec::new();
    for item in &req.items {
        if !existing.contains_key(&item.blob_id) && !first_index.contains_key(&item.blob_id) {
            first_index.insert(item.blob_id, new_items.len());
            new_items.push(item);
        }
    }

    let head = if new_items.is_empty() {
        head_of(&mut *conn, req.group).await?
    } else {
        let adding: u64 = new_items.iter().map(|b| b.payload.len() as u64).sum();
        let used: i64 = sqlx::query_scalar("SELECT bytes_used FROM groups WHERE group_id = ?1")
            .bind(&req.group.0[..])
            .fetch_one(&mut *conn)
            .await?;
        let used = used as u64;
        if used.saturating_add(adding) > quota {
            return Err(StorageError::GroupQuotaExceeded {
                used,
                adding,
                limit: quota,
            });
        }
        let head: i64 = sqlx::query_scalar(
            "UPDATE groups SET head_cursor = head_cursor + ?2, bytes_used = bytes_used + ?3, \
             blob_count = blob_count + ?2, last_active_at = ?4 WHERE group_id = ?1 RETURNING head_cursor",
        )
        .bind(&req.group.0[..])
        .bind(new_items.len() as i64)
        .bind(adding as i64)
        .bind(req.now_ms)
        .fetch_one(&mut *conn)
        .await?;
        let first = head as u64 - new_items.len() as u64 + 1;
        for (i, item) in new_items.iter().enumerate() {
            sqlx::query(
                "INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .bind(&req.group.0[..])
            .bind((first + i as u64) as i64)
            .bind(&item.blob_id.0[..])
            .bind(&req.sender.0[..])
            .bind(&item.payload[..])
            .bind(req.now_ms)
            .bind(item.expires_at_ms)
            .execute(&mut *conn)
            .await?;
        }
        head as u64
    };

    let first_new = head + 1 - new_items.len() as u64;
    let mut seen = std::collections::HashSet::new();
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
        for row in q.fetch_all(&mut *conn).await? {
            let id = BlobId(fixed(row.try_get(0)?)?);
            found.insert(id, row.try_get::<i64, _>(1)? as u64);
        }
    }
    Ok(found)
}
