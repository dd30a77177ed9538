//! PostgreSQL backend of the relay's storage (docs/deploy.md "Storage backends"): several relay
//! instances share one database and keep the contract of [`sync_storage`] among them.
//!
//! Every call is one transaction on a connection from a pool (READ
//! COMMITTED), committed before it returns `Ok` (`synchronous_commit` as the
//! server sets it: on by default, so an acknowledged push is durable). What
//! makes it safe across instances is row locks, taken in one order by every
//! transaction (group → owner's quota shares → relay's quota shares), so
//! they cannot deadlock:
//! - a push is one statement (`push_apply`, migrations/postgres/0004 and
//!   0005, [`push_single`]; a closed group's too). It locks its group's row (`SELECT …
//!   FOR NO KEY UPDATE`) for the statement's implicit transaction only (no
//!   round trip to the relay under it): the group's pushes, from any instance, assign
//!   cursors one after the other from the head they read under the lock, so
//!   cursors are gapless and a retried blob id is found by the duplicate
//!   check under the same lock;
//! - the owner's and the relay-wide byte budgets are split into quota shares
//!   (migrations/postgres/0003, docs/deploy.md "Quota shares"): a push
//!   charges a slot no other transaction holds, or decides on the exact sum
//!   under the locks of all slots, so budgets are never exceeded and no row
//!   every push takes is held until a commit;
//! - new groups of a token lock the token's row; new groups of addresses
//!   take one transaction-scoped advisory lock (the count of addresses that
//!   own groups is relay-wide);
//! - pushes of one group from this instance are queued and carried in
//!   turns, several in one transaction ([`combine`]): such a transaction
//!   holds its group's row and fast-path quota shares only (which never
//!   wait), and refuses the exact quota path (migrations/postgres/0006), so
//!   the order above still holds; the turn is then applied push by push;
//! - cleanup (expiry, acknowledged deletion, pruning) takes a
//!   transaction-scoped advisory lock, so one instance cleans at a time
//!   (the others wait for that batch, then find what is left); pushes hold
//!   the same lock shared, so a batch runs between pushes, never inside one
//!   (as SQLite's single writer orders them).
//!
//! A deadlock or serialization failure the server reports (40P01, 40001)
//! is retried, at most [`RETRIES`] times.
//!
//! A push that moves a head also hands a wake-up to the store's
//! [`notifier`] task, which sends it (`pg_notify`, coalesced per group, off
//! the push's acknowledgement path); every instance's
//! [`Storage::head_changes`] feed hears it on one dedicated `LISTEN`
//! connection ([`listen`]).

#![forbid(unsafe_code)]

mod access;
#[cfg(test)]
mod classify_tests;
mod cleanup;
mod close;
mod combine;
#[cfg(test)]
mod combine_pg_tests;
pub mod listen;
pub mod notifier;
#[cfg(test)]
mod push_refusal_tests;
mod push_single;
#[cfg(feature = "testing")]
pub mod testing;

pub use cleanup::CLEANUP_LOCK;
pub use listen::{LISTENER_APPLICATION_NAME, NOTIFY_CHANNEL};
pub use notifier::{SINK_APPLICATION_NAME, WakeUpStats};

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, Row, Transaction};
use std::str::FromStr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, GroupId, KeepList, PulledBlob};
use sync_storage::{
    CloseOutcome, CounterAudit, Deleted, GroupClosure, HeadFeed, LiveGroups, NewGroup, NewToken,
    OpenedSession, Pruned, PullPage, PushOutcome, PushRequest, Quotas, Storage, StorageError,
    StorageStats, TokenInfo,
};
use tokio::task::AbortHandle;

/// How often a transaction the server aborted as a deadlock or a
/// serialization failure is tried again before the error is returned.
pub const RETRIES: u32 = 3;

/// How the PostgreSQL backend is opened.
#[derive(Debug, Clone)]
pub struct PostgresStorageOptions {
    /// Where the database is (`postgres://user@host:port/db`, any option
    /// libpq-style URLs take).
    pub connect: PgConnectOptions,
    /// Quotas checked inside the push transaction.
    pub quotas: Quotas,
    /// Connections in this instance's pool.
    pub max_connections: u32,
    /// How long a call waits for a free connection.
    pub acquire_timeout: Duration,
    /// The channel pushes send their wake-ups on and
    /// [`Storage::head_changes`] listens on ([`NOTIFY_CHANNEL`]). Relays
    /// of one cluster must agree on it.
    pub notify_channel: String,
}

impl PostgresStorageOptions {
    /// Options for `url` with the given quotas and default tuning (16
    /// connections, 5 s to get one). Errors: [`StorageError::Database`] for
    /// a URL that does not parse.
    pub fn new(url: &str, quotas: Quotas) -> Result<Self, StorageError> {
        Ok(PostgresStorageOptions {
            connect: PgConnectOptions::from_str(url).map_err(dberr)?,
            quotas,
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            notify_channel: NOTIFY_CHANNEL.to_string(),
        })
    }
}

/// The PostgreSQL [`Storage`] backend. See the module docs.
pub struct PostgresStorage {
    pool: PgPool,
    quotas: Quotas,
    /// Calls that found no connection within the acquire timeout.
    acquire_timeouts: AtomicU64,
    /// Where listeners connect (the pool's options).
    connect: PgConnectOptions,
    /// The wake-up sender; `None` when the debug-only fail point
    /// `skip-notify` is armed ([`FAILPOINT_ENV`]).
    notifier: Option<notifier::Notifier>,
    /// The channel listeners listen on.
    listen_channel: String,
    /// The listener tasks of [`Storage::head_changes`], stopped by `close`.
    listeners: Mutex<Vec<AbortHandle>>,
    /// Pushes queued by group, one transaction a turn ([`combine`]).
    combiner: combine::Combiner,
    /// What the turns did ([`PushTurnStats`]).
    turns: [AtomicU64; 3],
}

/// What this store's push turns did so far (docs/deploy.md "Pushes of one
/// group, one transaction at a time"): counts since it opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushTurnStats {
    /// Turns that carried more than one push in one transaction.
    pub combined: u64,
    /// Pushes those turns carried.
    pub combined_pushes: u64,
    /// Turns whose transaction failed as a whole, each push then applied
    /// on its own (a database error, or a push that needed the exact quota
    /// path: migrations/postgres/0006).
    pub fallbacks: u64,
}

/// Test-only fail point, read at [`PostgresStorage::open`] and **only in
/// debug builds** (release builds compile it out): with
/// `SYNC_RELAY_FAILPOINT=skip-notify` pushes send no wake-up, so the
/// end-to-end tests can prove that a lost notification is delivered by the
/// relay's fallback poll.
pub const FAILPOINT_ENV: &str = "SYNC_RELAY_FAILPOINT";

/// True when the `skip-notify` fail point is armed (debug builds only).
fn skip_notify_armed() -> bool {
    #[cfg(debug_assertions)]
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == "skip-notify") {
        tracing::warn!("test fail point armed: pushes send no wake-up (skip-notify)");
        return true;
    }
    false
}

impl PostgresStorage {
    /// Connect, run the migrations in `migrations/postgres` (sqlx holds an
    /// advisory lock while it migrates, so instances starting together
    /// migrate once) and return the store.
    /// Errors: [`StorageError::Database`], [`StorageError::Migration`].
    pub async fn open(opts: PostgresStorageOptions) -> Result<Self, StorageError> {
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(opts.connect.clone())
            .await
            .map_err(dberr)?;
        sqlx::migrate!("../migrations/postgres")
            .run(&pool)
            .await
            .map_err(StorageError::migration)?;
        let notifier = (!skip_notify_armed()).then(|| {
            notifier::Notifier::start(notifier::PgSink {
                pool: notifier::sink_pool(&opts.connect, opts.acquire_timeout),
                channel: opts.notify_channel.as_str().into(),
            })
        });
        Ok(PostgresStorage {
            pool,
            quotas: opts.quotas,
            acquire_timeouts: AtomicU64::new(0),
            connect: opts.connect,
            notifier,
            listen_channel: opts.notify_channel,
            listeners: Mutex::new(Vec::new()),
            combiner: combine::Combiner::default(),
            turns: Default::default(),
        })
    }

    /// The wake-ups this store's pushes have sent to other instances so far
    /// (all zero while the `skip-notify` fail point is armed).
    pub fn wake_up_stats(&self) -> WakeUpStats {
        self.notifier
            .as_ref()
            .map(notifier::Notifier::stats)
            .unwrap_or_default()
    }

    /// What this store's push turns did so far.
    pub fn push_turn_stats(&self) -> PushTurnStats {
        let [combined, combined_pushes, fallbacks] =
            self.turns.each_ref().map(|n| n.load(Ordering::Relaxed));
        PushTurnStats {
            combined,
            combined_pushes,
            fallbacks,
        }
    }

    /// [`dberr`] for an error of a call on the pool, counting the calls
    /// that got no connection in time ([`sync_storage::PoolStats::acquire_timeouts`]).
    fn pool_err(&self, err: sqlx::Error) -> StorageError {
        if matches!(err, sqlx::Error::PoolTimedOut) {
            self.acquire_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        dberr(err)
    }

    /// Run `op` in a transaction of its own and commit it; a refusal rolls
    /// it back. Retried on deadlock or serialization failure.
    async fn in_transaction<T, F>(&self, mut op: F) -> Result<T, StorageError>
    where
        T: Send,
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, StorageError>> + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut tx: Transaction<'_, Postgres> =
                    self.pool.begin().await.map_err(|e| self.pool_err(e))?;
                let out = op(&mut tx).await?;
                tx.commit().await.map_err(dberr)?;
                Ok(out)
            }
            .await;
            match result {
                Err(StorageError::Database(e)) if attempt <= RETRIES && is_retryable(&*e) => {
                    tracing::debug!(error = %e, attempt, "transaction aborted by the server; retrying");
                }
                other => return other,
            }
        }
    }
}

impl PostgresStorage {
    /// [`push_single::apply`] on the pool, run again on deadlock or
    /// serialization failure (at most [`RETRIES`] times; its statement is
    /// its whole transaction, so the server rolled all of it back).
    async fn push_single(&self, req: &PushRequest) -> Result<PushOutcome, StorageError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = self.pool.acquire().await.map_err(|e| self.pool_err(e))?;
            match push_single::apply(&mut conn, req, self.quotas).await {
                Err(StorageError::Database(e)) if attempt <= RETRIES && is_retryable(&*e) => {
                    tracing::debug!(error = %e, attempt, "push aborted by the server; retrying");
                }
                other => return other,
            }
        }
    }
}

impl PostgresStorage {
    /// The pushes of one turn of their group ([`combine`]), answered in
    /// order. One push is [`Self::push_single`]; several share one
    /// transaction — `push_apply` for each on one connection, one commit —
    /// where a refused push stores nothing and leaves the others be. If the
    /// transaction fails as a whole (a database error in any statement, the
    /// commit), it is rolled back or its outcome unknown, and each push is
    /// applied again on its own: a push that did commit finds its blob ids
    /// stored and is answered as duplicates, with their cursors.
    async fn push_turn(&self, reqs: Vec<PushRequest>) -> Vec<Result<PushOutcome, StorageError>> {
        if reqs.len() > 1 {
            match self.push_together(&reqs).await {
                Ok(results) => {
                    self.turns[0].fetch_add(1, Ordering::Relaxed);
                    self.turns[1].fetch_add(reqs.len() as u64, Ordering::Relaxed);
                    return results;
                }
                // The database away or the store closing: one at a time
                // would meet the same, each after its own wait.
                Err(StorageError::Closed) => {
                    return reqs.iter().map(|_| Err(StorageError::Closed)).collect();
                }
                Err(StorageError::Unavailable(e)) => {
                    let why = e.to_string();
                    return reqs
                        .iter()
                        .map(|_| Err(StorageError::unavailable(why.clone())))
                        .collect();
                }
                Err(e) => {
                    self.turns[2].fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, pushes = reqs.len(), "combined push failed; applying each on its own");
                }
            }
        }
        let mut results = Vec::with_capacity(reqs.len());
        for req in &reqs {
            results.push(self.push_single(req).await);
        }
        results
    }

    /// `reqs` in one transaction: every push's answer (refusals among
    /// them) once committed, or the error that failed the transaction
    /// (among them ZS001: a push needed the exact quota path, which the
    /// function refuses inside a combined transaction, migrations/postgres/0006).
    async fn push_together(
        &self,
        reqs: &[PushRequest],
    ) -> Result<Vec<Result<PushOutcome, StorageError>>, StorageError> {
        let mut tx: Transaction<'_, Postgres> =
            self.pool.begin().await.map_err(|e| self.pool_err(e))?;
        // No exact quota path in here (migrations/postgres/0006): it would
        // lock a budget's slots out of order.
        sqlx::query("SELECT set_config('zk_sync.combined_push', 'on', true)")
            .execute(&mut *tx)
            .await
            .map_err(dberr)?;
        let mut results = Vec::with_capacity(reqs.len());
        for req in reqs {
            match push_single::apply(&mut tx, req, self.quotas).await {
                Err(
                    e @ (StorageError::Database(_)
                    | StorageError::Unavailable(_)
                    | StorageError::Closed),
                ) => return Err(e),
                answer => results.push(answer),
            }
        }
        tx.commit().await.map_err(dberr)?;
        Ok(results)
    }
}

/// True for a deadlock (40P01) or serialization failure (40001): the
/// server rolled the transaction back, and running it again is safe.
fn is_retryable(err: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        err.downcast_ref::<sqlx::Error>(),
        Some(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("40P01" | "40001"))
    )
}

/// A database error as a [`StorageError`]: a closed pool is
/// [`StorageError::Closed`] (only the relay closes it, when stopping); the
/// server out of reach is [`StorageError::Unavailable`] (see
/// [`is_unavailable`]); anything else (a constraint violation, bad SQL, a
/// decode error) [`StorageError::Database`]. (`sqlx::Error` is not this
/// crate's type, so there is no `From`.)
pub(crate) fn dberr(err: sqlx::Error) -> StorageError {
    match err {
        sqlx::Error::PoolClosed => StorageError::Closed,
        err if is_unavailable(&err) => StorageError::unavailable(err),
        err => StorageError::database(err),
    }
}

/// True when `err` says the server cannot be reached for now, not that the
/// request was wrong: no connection within the acquire timeout
/// (`PoolTimedOut`: the server refuses connections, or every connection
/// stayed busy for the whole timeout), a socket refused, reset or closed
/// (`Io`), a connection worker that died (`WorkerCrashed`), and the
/// server's own "connection exception" class 08 and 57P01–57P03
/// (administrator or crash shutdown, "cannot connect now" while starting).
/// A TLS or protocol error is not: it does not heal by waiting.
pub(crate) fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}

/// `bytes` as an `N`-byte array, or a database error naming the length.
pub(crate) fn fixed<const N: usize>(bytes: Vec<u8>) -> Result<[u8; N], StorageError> {
    bytes.try_into().map_err(|b: Vec<u8>| {
        StorageError::database(format!("expected {N} bytes, found {}", b.len()))
    })
}

/// A non-negative stored integer as `u64` (a negative one is a database
/// error: the schema never stores one).
pub(crate) fn unsigned(v: i64) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::database(format!("negative counter {v}")))
}

/// `v` for a BIGINT column (values above `i64::MAX` are stored as it).
pub(crate) fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[async_trait]
impl Storage for PostgresStorage {
    async fn open_session(
        &self,
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
        new_group: NewGroup,
    ) -> Result<OpenedSession, StorageError> {
        let address = self.quotas.address;
        self.in_transaction(|conn| {
            Box::pin(async move {
                let opened = access::open_group(conn, group, now_ms, new_group, address).await?;
                // A refusal rolls back the touch of the group above.
                if close::closure_of(&mut *conn, group)
                    .await?
                    .is_some_and(|c| !c.admits(&device, now_ms))
                {
                    return Err(StorageError::GroupClosed);
                }
                access::touch_device(conn, group, device, now_ms).await?;
                Ok(opened)
            })
        })
        .await
    }

    async fn push(&self, req: PushRequest) -> Result<PushOutcome, StorageError> {
        let group = req.group;
        let outcome = self.combiner.push(req, |reqs| self.push_turn(reqs)).await?;
        // Committed: the wake-up for other instances goes to the notifier
        // task and `PushOk` does not wait for it (a NOTIFY inside the push
        // would also make its commit take PostgreSQL's notify-queue lock,
        // serializing every committing push). A wake-up lost on the way
        // (the instance dying, the database away) only adds latency: the
        // relay's fallback poll finds the head.
        let stored = outcome.results.iter().any(|r| !r.duplicate);
        if let (Some(n), true) = (&self.notifier, stored) {
            n.pushed(group, outcome.head);
        }
        Ok(outcome)
    }

    /// One query for all of `groups` (an unknown group answers the head
    /// floor, as [`Storage::head`]).
    async fn heads(&self, groups: &[GroupId]) -> Result<Vec<(GroupId, u64)>, StorageError> {
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&[u8]> = groups.iter().map(|g| &g.0[..]).collect();
        let heads: Vec<i64> = sqlx::query_scalar(
            "SELECT COALESCE(g.head_cursor, r.head_floor) \
             FROM UNNEST($1::BYTEA[]) WITH ORDINALITY AS u(id, i) \
             CROSS JOIN relay_state r LEFT JOIN groups g ON g.group_id = u.id ORDER BY u.i",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .map_err(dberr)?;
        if heads.len() != groups.len() {
            return Err(StorageError::database(format!(
                "asked for {} heads, got {}",
                groups.len(),
                heads.len()
            )));
        }
        groups
            .iter()
            .zip(heads)
            .map(|(g, h)| Ok((*g, unsigned(h)?)))
            .collect()
    }

    /// A listener on a connection of its own ([`listen`]), stopped when
    /// the feed is dropped or the storage closed.
    fn head_changes(&self) -> Option<HeadFeed> {
        let (tx, feed) = HeadFeed::channel();
        let task = tokio::spawn(listen::run(
            self.connect.clone(),
            self.listen_channel.clone(),
            tx,
        ));
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.retain(|l| !l.is_finished());
            listeners.push(task.abort_handle());
        }
        Some(feed)
    }

    async fn head(&self, group: GroupId) -> Result<u64, StorageError> {
        // An unknown group's head is the floor it would start at.
        let head: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT head_cursor FROM groups WHERE group_id = $1), head_floor) \
             FROM relay_state",
        )
        .bind(&group.0[..])
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.pool_err(e))?;
        unsigned(head)
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
             WHERE group_id = $1 AND cursor > $2 AND expires_at > $3 \
             ORDER BY cursor LIMIT $4",
        )
        .bind(&group.0[..])
        .bind(signed(after))
        .bind(now_ms)
        .bind(max_blobs as i64 + 1)
        .fetch(&self.pool);
        let mut page = PullPage {
            blobs: Vec::new(),
            complete: true,
        };
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.map_err(|e| self.pool_err(e))? {
            if page.blobs.len() == max_blobs {
                page.complete = false;
                break;
            }
            let payload: Vec<u8> = row.try_get(4).map_err(dberr)?;
            if !page.blobs.is_empty() && bytes + payload.len() > max_bytes {
                page.complete = false;
                break;
            }
            bytes += payload.len();
            page.blobs.push(PulledBlob {
                cursor: unsigned(row.try_get(0).map_err(dberr)?)?,
                blob_id: BlobId(fixed(row.try_get(1).map_err(dberr)?)?),
                sender: DeviceId(fixed(row.try_get(2).map_err(dberr)?)?),
                created_at: unsigned(row.try_get(3).map_err(dberr)?)?,
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
        self.in_transaction(|conn| {
            Box::pin(async move {
                // FOR KEY SHARE: a prune cannot delete the group under the
                // ack; pushes (FOR NO KEY UPDATE) are not held up.
                let head: i64 = sqlx::query_scalar(
                    "SELECT head_cursor FROM groups WHERE group_id = $1 FOR KEY SHARE",
                )
                .bind(&group.0[..])
                .fetch_optional(&mut *conn)
                .await
                .map_err(dberr)?
                .ok_or(StorageError::UnknownGroup)?;
                let head = unsigned(head)?;
                if cursor > head {
                    return Err(StorageError::CursorBeyondHead { cursor, head });
                }
                access::touch_device(conn, group, device, now_ms).await?;
                let acked: i64 = sqlx::query_scalar(
                    "UPDATE devices SET acked_cursor = GREATEST(acked_cursor, $3) \
                     WHERE group_id = $1 AND device_id = $2 RETURNING acked_cursor",
                )
                .bind(&group.0[..])
                .bind(&device.0[..])
                .bind(signed(cursor))
                .fetch_one(&mut *conn)
                .await
                .map_err(dberr)?;
                unsigned(acked)
            })
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
        self.in_transaction(move |conn| {
            let keep = keep.clone();
            Box::pin(async move { close::close_group(conn, group, &keep, now_ms, grace_ms).await })
        })
        .await
    }

    async fn closure(&self, group: GroupId) -> Result<Option<GroupClosure>, StorageError> {
        close::closure_of(&self.pool, group).await
    }

    async fn stats(&self) -> Result<StorageStats, StorageError> {
        let row = sqlx::query(
            "SELECT COUNT(*), COALESCE(SUM(blob_count), 0)::BIGINT, \
             COALESCE(SUM(bytes_used), 0)::BIGINT, \
             (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM owners) FROM groups",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.pool_err(e))?;
        let get = |i: usize| -> Result<u64, StorageError> {
            unsigned(row.try_get::<i64, _>(i).map_err(dberr)?)
        };
        Ok(StorageStats {
            groups: get(0)?,
            devices: get(3)?,
            owners: get(4)?,
            blobs: get(1)?,
            bytes: get(2)?,
        })
    }

    async fn delete_expired(&self, now_ms: i64, limit: u32) -> Result<Deleted, StorageError> {
        self.in_transaction(|conn| Box::pin(cleanup::delete_expired(conn, now_ms, limit)))
            .await
    }

    async fn delete_acked(&self, seen_since_ms: i64, limit: u32) -> Result<Deleted, StorageError> {
        self.in_transaction(|conn| Box::pin(cleanup::delete_acked(conn, seen_since_ms, limit)))
            .await
    }

    async fn prune_idle(
        &self,
        idle_before_ms: i64,
        limit: u32,
        live: LiveGroups,
    ) -> Result<Pruned, StorageError> {
        let window_ms = self.quotas.address.window_ms;
        self.in_transaction(move |conn| {
            let live = live.clone();
            Box::pin(async move {
                cleanup::prune_idle(conn, idle_before_ms, limit, &live, window_ms).await
            })
        })
        .await
    }

    /// Nothing to do: PostgreSQL's autovacuum keeps the tables and their
    /// statistics (there is no WAL file of ours to checkpoint).
    async fn maintenance(&self) -> Result<(), StorageError> {
        if self.pool.is_closed() {
            return Err(StorageError::Closed);
        }
        Ok(())
    }

    async fn audit(&self) -> Result<CounterAudit, StorageError> {
        let row = sqlx::query(
            "SELECT (SELECT COALESCE(SUM(bytes_used), 0)::BIGINT FROM groups), \
                    (SELECT COALESCE(SUM(octet_length(payload)), 0)::BIGINT FROM blobs), \
                    (SELECT COALESCE(SUM(blob_count), 0)::BIGINT FROM groups), \
                    (SELECT COUNT(*) FROM blobs), \
                    (SELECT COUNT(*) FROM groups g WHERE \
                       g.bytes_used != (SELECT COALESCE(SUM(octet_length(payload)), 0) FROM blobs b WHERE b.group_id = g.group_id) \
                    OR g.blob_count != (SELECT COUNT(*) FROM blobs b WHERE b.group_id = g.group_id)), \
                    (SELECT COUNT(*) FROM owners o WHERE \
                       o.bytes_used + (SELECT COALESCE(SUM(s.used), 0) FROM quota_shares s WHERE s.scope = o.owner) \
                         != (SELECT COALESCE(SUM(bytes_used), 0) FROM groups g WHERE g.owner = o.owner) \
                    OR o.group_count != (SELECT COUNT(*) FROM groups g WHERE g.owner = o.owner)) \
                  + (SELECT COUNT(DISTINCT g.owner) FROM groups g WHERE g.owner IS NOT NULL \
                       AND NOT EXISTS (SELECT 1 FROM owners o WHERE o.owner = g.owner)) \
                  + (SELECT COUNT(*) FROM relay_state r WHERE r.bytes_used \
                       + (SELECT COALESCE(SUM(s.used), 0) FROM quota_shares s WHERE s.scope = '\\x'::BYTEA) != \
                       (SELECT COALESCE(SUM(bytes_used), 0) FROM groups))",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.pool_err(e))?;
        let get = |i: usize| -> Result<u64, StorageError> {
            unsigned(row.try_get::<i64, _>(i).map_err(dberr)?)
        };
        Ok(CounterAudit {
            counted_bytes: get(0)?,
            actual_bytes: get(1)?,
            counted_blobs: get(2)?,
            actual_blobs: get(3)?,
            mismatched_groups: get(4)?,
            // The relay-wide counter, when it disagrees, counts as one
            // mismatched owner (it is the relay's budget).
            mismatched_owners: get(5)?,
        })
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenInfo, StorageError> {
        self.in_transaction(move |conn| {
            let token = token.clone();
            Box::pin(async move { access::create_token(conn, &token).await })
        })
        .await
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<TokenInfo, StorageError> {
        let id = id.to_string();
        self.in_transaction(move |conn| {
            let id = id.clone();
            Box::pin(async move { access::revoke_token(conn, &id, now_ms).await })
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.pool_err(e))?;
        access::list_tokens(&mut conn).await
    }

    async fn close(&self) {
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.drain(..).for_each(|l| l.abort());
        }
        if let Some(n) = &self.notifier {
            n.close().await;
        }
        self.pool.close().await;
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn pool_stats(&self) -> sync_storage::PoolStats {
        sync_storage::PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
            acquire_timeouts: self.acquire_timeouts.load(Ordering::Relaxed),
        }
    }
}
