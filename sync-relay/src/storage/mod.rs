//! Blob storage behind a trait (DESIGN §5.2–5.3), so a second backend can be
//! added next to SQLite.
//!
//! The contract every backend keeps:
//! - a push batch is atomic: all of its new blobs are stored, or none;
//! - cursors are per group, gapless and strictly increasing in commit order,
//!   under any concurrency; a new group starts at the *head floor* (0 until
//!   an idle group is pruned, then the highest head pruned so far), so its
//!   first cursor is the floor + 1;
//! - a group's head never decreases, not even when the group is pruned by
//!   [`Storage::prune_idle`] and created again: a device's saved cursor is
//!   never beyond its group's head because of a prune;
//! - a blob id already stored in the group is not stored again: its first
//!   cursor is returned with `duplicate = true`;
//! - a push that would take the group over its storage quota stores nothing;
//! - a call returns `Ok` only after its writes are durable against a crash of
//!   the relay process.

mod memory;
mod sqlite;

pub use memory::MemoryStorage;
pub use sqlite::{SqliteStorage, SqliteStorageOptions, backup_database};

use async_trait::async_trait;
use std::sync::Arc;
use sync_protocol::{BlobId, DeviceId, GroupId, PulledBlob, PushResult};

/// One blob to store.
#[derive(Clone)]
pub struct NewBlob {
    /// Idempotency key chosen by the device.
    pub blob_id: BlobId,
    /// Opaque bytes, already checked against `max_blob_size`.
    pub payload: Vec<u8>,
    /// When the blob may be deleted, Unix ms.
    pub expires_at_ms: i64,
}

/// A push batch from one device.
pub struct PushRequest {
    /// Group the batch goes to.
    pub group: GroupId,
    /// The pushing device's node id.
    pub sender: DeviceId,
    /// The blobs, in order; stored under consecutive cursors.
    pub items: Vec<NewBlob>,
    /// Commit time, Unix ms (becomes `created_at`).
    pub now_ms: i64,
}

/// The result of a committed push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    /// One entry per item, in request order.
    pub results: Vec<PushResult>,
    /// The group's head after the commit.
    pub head: u64,
}

/// One page of a pull.
#[derive(Debug, Clone, Default)]
pub struct PullPage {
    /// Blobs with increasing cursors.
    pub blobs: Vec<PulledBlob>,
    /// True when no stored blob follows the last one returned (at the time
    /// of the query); false when the page was cut by a row or byte limit.
    pub complete: bool,
}

/// Relay-wide counters for `/health` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StorageStats {
    /// Groups with a row in storage.
    pub groups: u64,
    /// Devices with a row in storage (one per group and device seen).
    pub devices: u64,
    /// Blobs stored.
    pub blobs: u64,
    /// Payload bytes stored.
    pub bytes: u64,
}

/// Storage failures. Quota and cursor errors are the client's; the rest map
/// to INTERNAL on the wire.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The batch's new bytes would take the group over `max_group_storage`.
    #[error("group storage quota exceeded: {used} bytes used + {adding} new > {limit} allowed")]
    GroupQuotaExceeded {
        /// Bytes the group stores now.
        used: u64,
        /// New bytes of the batch.
        adding: u64,
        /// The quota.
        limit: u64,
    },
    /// The batch would take the group over `max_group_blobs`.
    #[error("group blob quota exceeded: {count} blobs stored + {adding} new > {limit} allowed")]
    GroupBlobsExceeded {
        /// Blobs the group stores now.
        count: u64,
        /// New blobs of the batch.
        adding: u64,
        /// The quota.
        limit: u64,
    },
    /// The batch would take the relay over `max_storage`.
    #[error("relay storage is full: {used} bytes used + {adding} new > {limit} allowed")]
    RelayStorageFull {
        /// Bytes the relay stores now.
        used: u64,
        /// New bytes of the batch.
        adding: u64,
        /// The relay-wide limit.
        limit: u64,
    },
    /// An acknowledged cursor is beyond the group's head.
    #[error("cursor {cursor} is beyond the group's head {head}")]
    CursorBeyondHead {
        /// The cursor sent.
        cursor: u64,
        /// The group's head.
        head: u64,
    },
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Running the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// The storage has been closed (the relay is stopping).
    #[error("storage is closed")]
    Closed,
}

/// Quotas the backend enforces inside the push transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Payload bytes per group.
    pub max_group_storage: u64,
    /// Blobs per group.
    pub max_group_blobs: u64,
    /// Payload bytes of the whole relay.
    pub max_storage: u64,
}

impl Quotas {
    /// No practical limit (tests, tools).
    pub const UNLIMITED: Quotas = Quotas {
        max_group_storage: u64::MAX / 4,
        max_group_blobs: u64::MAX / 4,
        max_storage: u64::MAX / 4,
    };
}

/// What one cleanup step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Blobs deleted.
    pub blobs: u64,
    /// Payload bytes freed.
    pub bytes: u64,
}

/// What one [`Storage::prune_idle`] step removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Group rows deleted.
    pub groups: u64,
    /// Device rows deleted.
    pub devices: u64,
}

/// The groups that have a live session, asked for by the backend *inside*
/// its write transaction of a prune, so that a session registered after the
/// answer opens (`open_session`) after the prune committed. The relay
/// answers from its NOTIFY hub, where a session subscribes before it calls
/// `open_session`.
pub type LiveGroups = Arc<dyn Fn() -> Vec<GroupId> + Send + Sync>;

/// Stored counters compared with the blobs table (a consistency audit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterAudit {
    /// `SUM(bytes_used)` over groups.
    pub counted_bytes: u64,
    /// `SUM(LENGTH(payload))` over blobs.
    pub actual_bytes: u64,
    /// `SUM(blob_count)` over groups.
    pub counted_blobs: u64,
    /// `COUNT(*)` over blobs.
    pub actual_blobs: u64,
    /// Groups whose own counters disagree with their blobs.
    pub mismatched_groups: u64,
}

impl StorageError {
    /// True for refusals caused by the request (quotas, cursor beyond the
    /// head): nothing was stored, the storage is fine.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StorageError::GroupQuotaExceeded { .. }
                | StorageError::GroupBlobsExceeded { .. }
                | StorageError::RelayStorageFull { .. }
                | StorageError::CursorBeyondHead { .. }
        )
    }
}

/// A storage backend. See the module docs for the contract.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Record that `device` opened a session on `group` (creating the group
    /// if new) and return the group's head cursor.
    async fn open_session(
        &self,
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
    ) -> Result<u64, StorageError>;

    /// Store a batch atomically. Errors: [`StorageError::GroupQuotaExceeded`]
    /// (nothing stored), [`StorageError::Database`], [`StorageError::Closed`].
    async fn push(&self, req: PushRequest) -> Result<PushOutcome, StorageError>;

    /// The group's head cursor (the head floor for an unknown group: where
    /// it would start).
    async fn head(&self, group: GroupId) -> Result<u64, StorageError>;

    /// Blobs of `group` with cursor > `after` that have not expired at
    /// `now_ms`, oldest first: at most `max_blobs` of them, and no more than
    /// fit in `max_bytes` of payload (but always at least one if any exists).
    async fn pull_page(
        &self,
        group: GroupId,
        after: u64,
        max_blobs: u32,
        max_bytes: usize,
        now_ms: i64,
    ) -> Result<PullPage, StorageError>;

    /// Raise `device`'s acknowledged cursor to `cursor` (never lowers it) and
    /// return the stored value; the group and the device are created if new,
    /// as by [`Storage::open_session`]. Errors:
    /// [`StorageError::CursorBeyondHead`].
    async fn ack(
        &self,
        group: GroupId,
        device: DeviceId,
        cursor: u64,
        now_ms: i64,
    ) -> Result<u64, StorageError>;

    /// Relay-wide counts; runs a real query, so it doubles as a health check.
    async fn stats(&self) -> Result<StorageStats, StorageError>;

    /// Delete at most `limit` blobs that expired at or before `now_ms`, in
    /// one short write transaction, keeping the groups' counters exact.
    async fn delete_expired(&self, now_ms: i64, limit: u32) -> Result<Deleted, StorageError>;

    /// Delete at most `limit` blobs that every device of their group seen
    /// since `seen_since_ms` has acknowledged, in one short transaction.
    async fn delete_acked(&self, seen_since_ms: i64, limit: u32) -> Result<Deleted, StorageError>;

    /// Prune what idle empty groups leave behind, in one short write
    /// transaction, never touching a group `live` names (asked once, inside
    /// the transaction):
    /// 1. at most `limit` devices not seen since `idle_before_ms` (Unix ms,
    ///    `last_seen_at < idle_before_ms`), oldest first (ties by group id,
    ///    then device id);
    /// 2. then at most `limit` groups that hold no blob, have no device left
    ///    and were last active before `idle_before_ms` (opened or pushed to),
    ///    oldest first (ties by group id). The highest head among them raises
    ///    the head floor, where a group created later starts.
    ///
    /// A group that holds a blob is never pruned (expired blobs count until
    /// `delete_expired` removed them). Call again while either count comes
    /// back equal to `limit`.
    async fn prune_idle(
        &self,
        idle_before_ms: i64,
        limit: u32,
        live: LiveGroups,
    ) -> Result<Pruned, StorageError>;

    /// Checkpoint the WAL into the database (truncating it) and let SQLite
    /// refresh its query statistics.
    async fn maintenance(&self) -> Result<(), StorageError>;

    /// Compare the stored counters with the blobs actually stored.
    async fn audit(&self) -> Result<CounterAudit, StorageError>;

    /// Finish pending writes and close the database.
    async fn close(&self);
}

#[cfg(test)]
mod model_check;
#[cfg(test)]
mod tests;
