//! Blob storage behind a trait (docs/protocol.md and docs/deploy.md "Storage backends"): the
//! relay stores through [`Storage`], implemented by `sync-storage-sqlite` (one relay on one
//! file, the default) and `sync-storage-postgres` (several relays on one PostgreSQL). This
//! crate holds no backend's types: the trait, its error, the in-memory reference model
//! ([`MemoryStorage`]) and, behind the `testing` feature, the contract tests and the model
//! check every backend runs ([`testing`]).
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
//! - a push that would take the group over its storage quota, or its owner
//!   over the owner's budget, stores nothing;
//! - a group is created only by [`Storage::open_session`], as [`NewGroup`]
//!   allows, decided in the same transaction that creates it (two racing
//!   creations cannot overshoot a token's `max_groups`); a push or an ack to
//!   a group that does not exist is refused ([`StorageError::UnknownGroup`])
//!   and creates nothing, so no group ever escapes admission (not even one
//!   pruned under a request in flight);
//! - each owner's counters stay exact through pushes, deletions and prunes
//!   (a pruned group gives its place back to its owner), and an owner's row
//!   goes once it owns nothing and its new-group window has ended;
//! - a closed group ([`Storage::close_group`]) takes new blobs and opens
//!   sessions only for the devices its close keeps and only until its grace
//!   ends ([`GroupClosure::admits`], decided in the push transaction, on the
//!   group row the push locks); their blobs' expiry is lowered to the
//!   grace's end,
//!   and is never pruned: its row, and so its closed mark, stays, so its id
//!   can never be created again; its blobs expire by the end of the grace
//!   and go like any expired blob;
//! - a call returns `Ok` only after its writes are durable against a crash of
//!   the relay process.

#![forbid(unsafe_code)]

mod feed;
mod memory;
pub mod quota;
mod results;
#[cfg(feature = "testing")]
pub mod testing;

pub use feed::{FEED_CAPACITY, FeedClosed, FeedSender, HeadEvent, HeadFeed};
pub use memory::MemoryStorage;
pub use results::push_results;

use async_trait::async_trait;
use std::net::IpAddr;
use std::sync::Arc;
use sync_protocol::{AccessToken, BlobId, DeviceId, GroupId, KeepList, PulledBlob, PushResult};

/// A group's close as recorded ([`Storage::close_group`];
/// docs/security.md "What the relay must do").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupClosure {
    /// When the close committed, Unix ms.
    pub closed_at_ms: i64,
    /// End of the grace period, Unix ms: `closed_at_ms` + the relay's
    /// longest TTL. From then on ([`GroupClosure::admits`]) no device is
    /// served, and every blob of the group has expired.
    pub grace_until_ms: i64,
    /// The devices that may still open sessions, pull and ack until then.
    pub keep: KeepList,
}

impl GroupClosure {
    /// Whether `device` may still be served at `now_ms`: it is on the keep
    /// list and the grace has not ended (`now_ms < grace_until_ms`).
    pub fn admits(&self, device: &DeviceId, now_ms: i64) -> bool {
        now_ms < self.grace_until_ms && self.keep.contains(device)
    }

    /// The keep list as stored: the ids' 32 bytes one after another.
    pub fn keep_bytes(keep: &KeepList) -> Vec<u8> {
        keep.ids().iter().flat_map(|d| d.0).collect()
    }

    /// The keep list stored as `bytes` ([`GroupClosure::keep_bytes`]), or
    /// `None` when they are not a whole number of sorted, unique ids.
    pub fn keep_from_bytes(bytes: &[u8]) -> Option<KeepList> {
        if !bytes.len().is_multiple_of(32) {
            return None;
        }
        let ids: Vec<DeviceId> = bytes
            .chunks_exact(32)
            .filter_map(|c| <[u8; 32]>::try_from(c).ok().map(DeviceId))
            .collect();
        let n = ids.len();
        KeepList::new(ids).ok().filter(|k| k.len() == n)
    }
}

/// The answer to [`Storage::close_group`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseOutcome {
    /// The close recorded (this call's, or the earlier one that stands).
    pub closure: GroupClosure,
    /// True when this call closed the group; false when it was closed
    /// already (nothing changed).
    pub applied: bool,
}

/// BLAKE3 hash of an access token's 32 bytes: all the relay stores of a
/// token, and what it looks tokens up by. (Tokens are 32 random bytes, so a
/// fast hash is right: there is nothing to brute-force.)
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    /// The hash of `token`.
    pub fn of(token: &AccessToken) -> TokenHash {
        TokenHash(*blake3::hash(&token.0).as_bytes())
    }

    /// The token's public id: the first 4 bytes of the hash as 8 hex
    /// characters (what `token list` shows and `token revoke` takes).
    pub fn public_id(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenHash({})", self.public_id())
    }
}

/// An address that creates groups in open mode: an IPv4 address, or the /64
/// prefix of an IPv6 address (one host usually holds a whole /64). 9 bytes:
/// `4` or `6`, then the 4 or 8 address bytes, zero-padded. IPv4-mapped IPv6
/// addresses count as their IPv4 address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct AddressKey(pub [u8; 9]);

impl AddressKey {
    /// Connections without an IP address of their own (through an iroh
    /// relay server) share this one key.
    pub const RELAYED: AddressKey = AddressKey([0; 9]);

    /// The key of `ip`.
    pub fn of(ip: IpAddr) -> AddressKey {
        let mut key = [0u8; 9];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                key[0] = 4;
                key[1..5].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                key[0] = 6;
                key[1..9].copy_from_slice(&v6.octets()[..8]);
            }
        }
        AddressKey(key)
    }
}

/// Who created a group, and whose budget its bytes count against.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Owner {
    /// Created with an access token.
    Token(TokenHash),
    /// Created without a token, in open mode, from this address.
    Address(AddressKey),
}

impl Owner {
    /// The key stored in `owners.owner` / `groups.owner`.
    pub fn bytes(&self) -> &[u8] {
        match self {
            Owner::Token(h) => &h.0,
            Owner::Address(a) => &a.0,
        }
    }

    /// The owner stored as `bytes` (32 bytes: a token, 9: an address).
    pub fn from_bytes(bytes: &[u8]) -> Option<Owner> {
        if let Ok(h) = <[u8; 32]>::try_from(bytes) {
            Some(Owner::Token(TokenHash(h)))
        } else {
            <[u8; 9]>::try_from(bytes)
                .ok()
                .map(|a| Owner::Address(AddressKey(a)))
        }
    }

    /// `token` or `address` (the `owners.kind` column).
    pub fn kind(&self) -> &'static str {
        match self {
            Owner::Token(_) => "token",
            Owner::Address(_) => "address",
        }
    }
}

/// What [`Storage::open_session`] may do when the group does not exist yet
/// (decided by the relay's admission (`sync_relay::admission`) from the access mode and the `Hello`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum NewGroup {
    /// Create it, owned by this token: refused when the token is unknown or
    /// revoked ([`StorageError::AccessTokenInvalid`]) or has created its
    /// `max_groups` ([`StorageError::TokenGroupLimit`]).
    Token(TokenHash),
    /// Create it, owned by this address: refused over
    /// [`AddressQuotas::new_groups_per_window`]
    /// ([`StorageError::AddressGroupRate`]) or, for an address that owns no
    /// group yet, when [`AddressQuotas::max_addresses`] addresses already do
    /// ([`StorageError::AddressesFull`]).
    Address(AddressKey),
    /// Create nothing: [`StorageError::AccessTokenRequired`].
    Refuse,
    /// Create it without an owner (tools and tests; the relay's admission
    /// never chooses this).
    Unowned,
}

/// The answer to [`Storage::open_session`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenedSession {
    /// The group's head cursor (a new group's is the head floor: 0 until an
    /// idle group was pruned).
    pub head: u64,
    /// Who owns the group (`None` for groups from before owners existed).
    pub owner: Option<Owner>,
}

/// A token to store ([`Storage::create_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Hash of the token.
    pub hash: TokenHash,
    /// The operator's note.
    pub label: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Groups the token may create (live at once).
    pub max_groups: u64,
    /// Payload bytes all its groups may store together.
    pub max_storage: u64,
}

/// A stored token and what its groups use (`token list`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenInfo {
    /// Public id (8 hex characters).
    pub id: String,
    /// The operator's note.
    pub label: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Groups the token may create.
    pub max_groups: u64,
    /// Payload bytes its groups may store together.
    pub max_storage: u64,
    /// When it was revoked, Unix ms.
    pub revoked_at_ms: Option<i64>,
    /// Groups it created that exist now.
    pub groups: u64,
    /// Payload bytes its groups store now.
    pub bytes_used: u64,
}

/// One blob to store.
#[derive(Clone)]
pub struct NewBlob {
    /// Idempotency key chosen by the device.
    pub blob_id: BlobId,
    /// Opaque bytes, already checked against `max_blob_size`.
    pub payload: Vec<u8>,
    /// When the blob expires, Unix ms: from this time on (`now_ms >=
    /// expires_at_ms`) it is no longer pulled and may be deleted.
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
    /// Owners with a row in storage: tokens and addresses that own groups,
    /// and addresses whose new-group window has not ended yet.
    pub owners: u64,
    /// Blobs stored.
    pub blobs: u64,
    /// Payload bytes stored.
    pub bytes: u64,
}

/// A snapshot of a backend's connection pool, for the relay's metrics
/// (docs/deploy.md "Prometheus"). Backend-neutral: no driver's types.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open now (idle or in use).
    pub size: u32,
    /// Of those, connections idle now.
    pub idle: u32,
    /// The most connections the pool opens.
    pub max: u32,
    /// Calls that gave up waiting for a connection since the store opened
    /// (the database unreachable, or every connection busy for the whole
    /// acquire timeout); cumulative.
    pub acquire_timeouts: u64,
}

/// Storage failures. Quota and cursor errors are the client's;
/// [`StorageError::Unavailable`] maps to STORAGE_UNAVAILABLE on the wire, the
/// other failures to INTERNAL.
///
/// Not `#[non_exhaustive]`: the relay maps every variant to a wire error in
/// one exhaustive `match`, so a new variant must be given its wire meaning.
#[derive(Debug, thiserror::Error)]
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
    /// The group does not exist and [`NewGroup::Refuse`] forbids creating it.
    #[error("this relay creates groups only with an access token")]
    AccessTokenRequired,
    /// [`NewGroup::Token`] names a token that is unknown or revoked.
    #[error("the access token is unknown or revoked")]
    AccessTokenInvalid,
    /// A push to a group whose token has been revoked.
    #[error("the access token that created this group was revoked")]
    TokenRevoked,
    /// The token has created `limit` groups that still exist.
    #[error("the access token has {count} groups, at most {limit} allowed")]
    TokenGroupLimit {
        /// Its groups now.
        count: u64,
        /// Its `max_groups`.
        limit: u64,
    },
    /// The address created `limit` groups in the current window.
    #[error("this address created {count} groups in the current window, at most {limit} allowed")]
    AddressGroupRate {
        /// Groups created in the window.
        count: u64,
        /// The limit per window.
        limit: u64,
        /// Milliseconds until the window ends.
        retry_after_ms: u64,
    },
    /// `limit` addresses own groups already; a new address gets none.
    #[error("{limit} addresses own groups already, the most the relay promises storage to")]
    AddressesFull {
        /// [`AddressQuotas::max_addresses`].
        limit: u64,
    },
    /// The batch's new bytes would take the group's owner over its budget.
    #[error("the {kind}'s groups store {used} bytes + {adding} new > {limit} allowed")]
    OwnerQuotaExceeded {
        /// `token` or `address`.
        kind: &'static str,
        /// Bytes all the owner's groups store now.
        used: u64,
        /// New bytes of the batch.
        adding: u64,
        /// The owner's budget.
        limit: u64,
    },
    /// No token has this public id.
    #[error("no token with id {0:?}")]
    TokenNotFound(String),
    /// A token with the same public id exists already.
    #[error("a token with id {0:?} exists already")]
    TokenIdTaken(String),
    /// A push or an ack to a group that is not stored: only
    /// [`Storage::open_session`] creates groups (through admission). A
    /// session's group is never pruned while the session is live, so this
    /// answers only a request that outlived its session.
    #[error("the group is not stored on this relay")]
    UnknownGroup,
    /// The group was closed ([`Storage::close_group`]): a push or a
    /// session of a device its close does not keep, or any after its grace.
    #[error("the group was closed by a member")]
    GroupClosed,
    /// An acknowledged cursor is beyond the group's head.
    #[error("cursor {cursor} is beyond the group's head {head}")]
    CursorBeyondHead {
        /// The cursor sent.
        cursor: u64,
        /// The group's head.
        head: u64,
    },
    /// The database failed: the backend's own error (a `sqlx::Error`, an
    /// I/O error), boxed so that this crate names no backend's types.
    #[error("database error: {0}")]
    Database(#[source] BoxError),
    /// The database cannot be reached for now: no connection within the
    /// pool's acquire timeout, a connection refused or lost, the server
    /// shutting down, or (SQLite) the file locked by another process beyond
    /// the busy timeout. Never a logic error: the same request may succeed
    /// unchanged once the database is back. The backend's error, boxed.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// Running the schema migrations failed (the backend's error, boxed).
    #[error("database migration failed: {0}")]
    Migration(#[source] BoxError),
    /// The storage has been closed (the relay is stopping).
    #[error("storage is closed")]
    Closed,
}

/// Limits on groups created by addresses (open mode), enforced inside the
/// transactions that create groups and store blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressQuotas {
    /// Payload bytes all groups one address created may store together.
    pub max_storage: u64,
    /// Groups one address may create per window.
    pub new_groups_per_window: u64,
    /// Length of that window in ms (one hour on the relay). A window starts
    /// with the first group created after the previous one ended.
    pub window_ms: i64,
    /// Addresses that may own groups at once: the relay can keep its
    /// promise of `max_storage` to each (`access` config, the relay's admission (`sync_relay::admission`)).
    pub max_addresses: u64,
}

/// Quotas the backend enforces inside the push transaction (and, for
/// addresses, the group-creating one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Payload bytes per group.
    pub max_group_storage: u64,
    /// Blobs per group.
    pub max_group_blobs: u64,
    /// Payload bytes of the whole relay.
    pub max_storage: u64,
    /// Groups created by addresses.
    pub address: AddressQuotas,
}

impl Quotas {
    /// No practical limit (tests, tools).
    pub const UNLIMITED: Quotas = Quotas {
        max_group_storage: u64::MAX / 4,
        max_group_blobs: u64::MAX / 4,
        max_storage: u64::MAX / 4,
        address: AddressQuotas {
            max_storage: u64::MAX / 4,
            new_groups_per_window: u64::MAX / 4,
            window_ms: 3_600_000,
            max_addresses: u64::MAX / 4,
        },
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
    /// Owner rows deleted (owning no group, new-group window ended).
    pub owners: u64,
}

/// The live sessions, as `(group, device)` pairs (one per session; a pair
/// may repeat), asked for by the backend *inside* its write transaction of a
/// prune, so that a session registered after the answer opens
/// (`open_session`) after the prune committed. A group named by any pair is
/// live (never pruned); the device of a pair is never pruned. The relay
/// answers from its NOTIFY hub, where a session subscribes before it calls
/// `open_session` and stays subscribed until it ends.
pub type LiveGroups = Arc<dyn Fn() -> Vec<(GroupId, DeviceId)> + Send + Sync>;

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
    /// Owners whose counters disagree with their groups (bytes or count),
    /// plus owners named by a group that have no row.
    pub mismatched_owners: u64,
}

/// A backend's error, boxed ([`StorageError::Database`], [`StorageError::Migration`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StorageError {
    /// [`StorageError::Database`] from a backend's error (or a message).
    pub fn database(err: impl Into<BoxError>) -> StorageError {
        StorageError::Database(err.into())
    }

    /// [`StorageError::Unavailable`] from a backend's error (or a message).
    pub fn unavailable(err: impl Into<BoxError>) -> StorageError {
        StorageError::Unavailable(err.into())
    }

    /// [`StorageError::Migration`] from a backend's error.
    pub fn migration(err: impl Into<BoxError>) -> StorageError {
        StorageError::Migration(err.into())
    }

    /// True for refusals caused by the request (quotas, admission, cursor
    /// beyond the head, token ids): nothing was stored, the storage is fine.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StorageError::GroupQuotaExceeded { .. }
                | StorageError::GroupBlobsExceeded { .. }
                | StorageError::RelayStorageFull { .. }
                | StorageError::CursorBeyondHead { .. }
                | StorageError::UnknownGroup
                | StorageError::GroupClosed
                | StorageError::AccessTokenRequired
                | StorageError::AccessTokenInvalid
                | StorageError::TokenRevoked
                | StorageError::TokenGroupLimit { .. }
                | StorageError::AddressGroupRate { .. }
                | StorageError::AddressesFull { .. }
                | StorageError::OwnerQuotaExceeded { .. }
                | StorageError::TokenNotFound(_)
                | StorageError::TokenIdTaken(_)
        )
    }
}

/// A storage backend. See the module docs for the contract.
#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Record that `device` opened a session on `group` and return the
    /// group's head cursor and owner. A group that does not exist is created
    /// as `new_group` allows, in the same transaction as the admission
    /// decision. Errors (nothing stored): [`StorageError::AccessTokenRequired`],
    /// [`StorageError::AccessTokenInvalid`], [`StorageError::TokenGroupLimit`],
    /// [`StorageError::AddressGroupRate`], [`StorageError::AddressesFull`],
    /// [`StorageError::GroupClosed`] (the group is closed and its close
    /// does not keep `device`, or the grace ended: [`GroupClosure::admits`]);
    /// [`StorageError::Database`], [`StorageError::Closed`].
    async fn open_session(
        &self,
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
        new_group: NewGroup,
    ) -> Result<OpenedSession, StorageError>;

    /// Store a batch atomically. Errors (nothing stored):
    /// [`StorageError::UnknownGroup`] (the group does not exist: pushes
    /// never create groups), [`StorageError::GroupClosed`] (the group was
    /// closed, its close does not admit the sender at `now_ms`
    /// ([`GroupClosure::admits`]: not kept, or the grace ended) and the
    /// batch holds a blob not stored yet; a batch of blobs all stored
    /// before the close is answered with their cursors; a kept sender's new
    /// blobs are stored with their expiry lowered to the grace's end),
    /// [`StorageError::GroupQuotaExceeded`], [`StorageError::GroupBlobsExceeded`],
    /// [`StorageError::TokenRevoked`] (the group's token was revoked),
    /// [`StorageError::OwnerQuotaExceeded`] (its owner's budget),
    /// [`StorageError::RelayStorageFull`]; [`StorageError::Database`],
    /// [`StorageError::Closed`]. Checked in that order.
    async fn push(&self, req: PushRequest) -> Result<PushOutcome, StorageError>;

    /// The group's head cursor (the head floor for an unknown group: where
    /// it would start).
    async fn head(&self, group: GroupId) -> Result<u64, StorageError>;

    /// The head of each of `groups`, in the order given, as
    /// [`Storage::head`] answers (the head floor for a group that does not
    /// exist). A backend answers them in one query where it can
    /// (PostgreSQL); the default asks [`Storage::head`] for each. The relay
    /// re-reads heads with it after a [`HeadEvent`] and on its fallback
    /// poll (docs/deploy.md "Several relays on one PostgreSQL").
    async fn heads(&self, groups: &[GroupId]) -> Result<Vec<(GroupId, u64)>, StorageError> {
        let mut out = Vec::with_capacity(groups.len());
        for &group in groups {
            out.push((group, self.head(group).await?));
        }
        Ok(out)
    }

    /// A feed of wake-ups for pushes committed by any relay instance that
    /// shares this storage ([`HeadFeed`]: hints to re-read, never heads to
    /// trust), or `None` for a backend only one relay uses (the default:
    /// SQLite, the memory model), where the relay's own push handler
    /// publishes every head. Each call starts a feed of its own
    /// (PostgreSQL: one dedicated `LISTEN` connection that reconnects on
    /// its own); the relay calls it once at start. Call it inside a tokio
    /// runtime.
    fn head_changes(&self) -> Option<HeadFeed> {
        None
    }

    /// Blobs of `group` with cursor > `after` that have not expired at
    /// `now_ms` (`expires_at_ms > now_ms`), oldest first: at most `max_blobs` of them, and no more than
    /// fit in `max_bytes` of payload (but always at least one if any exists).
    /// Because that one blob can exceed what the caller paid for, a backend
    /// bounds how many pages it reads at once by its read connections,
    /// payloads kept outside the database included (SQLite: a page holds
    /// its read connection until its payload files are read).
    async fn pull_page(
        &self,
        group: GroupId,
        after: u64,
        max_blobs: u32,
        max_bytes: usize,
        now_ms: i64,
    ) -> Result<PullPage, StorageError>;

    /// Raise `device`'s acknowledged cursor to `cursor` (never lowers it) and
    /// return the stored value; the device is created if new. Does not count
    /// as group activity (`last_active_at`). Errors:
    /// [`StorageError::UnknownGroup`] (the group does not exist: acks never
    /// create groups), [`StorageError::CursorBeyondHead`].
    async fn ack(
        &self,
        group: GroupId,
        device: DeviceId,
        cursor: u64,
        now_ms: i64,
    ) -> Result<u64, StorageError>;

    /// Close `group` at `now_ms` keeping `keep`, with a grace of `grace_ms`
    /// (the relay's longest TTL): in one transaction that takes the group
    /// row's write lock (so it orders with pushes: a push commits wholly
    /// before the close, or is refused), record `closed_at_ms = now_ms`,
    /// `grace_until_ms = now_ms + grace_ms` and the keep list, and lower
    /// every blob's expiry of the group to at most `grace_until_ms` (so the
    /// expiry deletes them by then, giving their bytes back to every
    /// counter). The first close wins: a group closed already is left as it
    /// is and its close is answered (`applied = false`). Errors:
    /// [`StorageError::UnknownGroup`]; [`StorageError::Database`],
    /// [`StorageError::Closed`]. docs/security.md "What the relay must do".
    async fn close_group(
        &self,
        group: GroupId,
        keep: KeepList,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<CloseOutcome, StorageError>;

    /// The close of `group`, or `None` when it is open or not stored. The
    /// relay asks before serving a pull or an ack of a session whose group
    /// it has not seen closed yet.
    async fn closure(&self, group: GroupId) -> Result<Option<GroupClosure>, StorageError>;

    /// Relay-wide counts; runs a real query, so it doubles as a health check.
    async fn stats(&self) -> Result<StorageStats, StorageError>;

    /// Delete at most `limit` blobs that expired at or before `now_ms`, in
    /// one short write transaction, keeping the groups' counters exact.
    async fn delete_expired(&self, now_ms: i64, limit: u32) -> Result<Deleted, StorageError>;

    /// Delete at most `limit` blobs that every device of their group seen
    /// since `seen_since_ms` has acknowledged, in one short transaction.
    async fn delete_acked(&self, seen_since_ms: i64, limit: u32) -> Result<Deleted, StorageError>;

    /// Prune idle devices and what idle empty groups leave behind, in one
    /// short write transaction, never touching a group or device `live`
    /// names (asked once, inside the transaction; docs/deploy.md "Idle
    /// groups and devices"):
    /// 1. at most `limit` devices not seen since `idle_before_ms` (Unix ms,
    ///    `last_seen_at < idle_before_ms`) and without a live session,
    ///    oldest first (ties by group id, then device id) — also in groups
    ///    that stay (holding blobs or live), so a member reconnecting with
    ///    fresh device ids cannot grow the devices table without bound;
    /// 2. then at most `limit` groups that hold no blob, have no device left,
    ///    are not live, are not closed, and were last active before `idle_before_ms` (opened
    ///    or pushed to), oldest first (ties by group id). The highest head among them raises
    ///    the head floor, where a group created later starts; each pruned
    ///    group's owner counts one group fewer (a token may create another);
    /// 3. then at most `limit` owner rows that own no group and whose
    ///    new-group window ended before `idle_before_ms` (tokens have none),
    ///    ordered by window start, then owner bytes. (Forgetting such a row
    ///    changes no decision: an ended window counts as no window.)
    ///
    /// A group that holds a blob is never pruned (expired blobs count until
    /// `delete_expired` removed them). Call again while any count comes back
    /// equal to `limit`.
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

    /// Store a new access token. Errors: [`StorageError::TokenIdTaken`]
    /// (another token has the same public id: make a new token).
    async fn create_token(&self, token: NewToken) -> Result<TokenInfo, StorageError>;

    /// Revoke the token with public id `id` at `now_ms` (a token revoked
    /// before keeps its first revocation time): it creates no more groups,
    /// and its groups take no more pushes. Errors: [`StorageError::TokenNotFound`].
    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<TokenInfo, StorageError>;

    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError>;

    /// Finish pending writes and close the database.
    async fn close(&self);

    /// The backend's name for `/health` and metrics: `sqlite`, `postgres`
    /// or `memory`. Never a URL (it may carry a password).
    fn backend(&self) -> &'static str;

    /// The connection pool right now (no query: the pool's own counters).
    /// SQLite reports its reader pool; a backend without a pool reports
    /// zeros.
    fn pool_stats(&self) -> PoolStats;
}
