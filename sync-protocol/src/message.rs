//! The messages of the protocol (`docs/protocol.md` §Messages).
//!
//! Every frame body is one [`Message`], encoded with postcard 1.x. The enum's
//! variant order is the wire tag and must never change: new messages are
//! appended at the end.

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;
use std::fmt;

/// A sync group's id: the Ed25519 verifying key derived from the group
/// secret (docs/protocol.md "Blob payloads"). 32 bytes, sent raw.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 32]);

/// A device's (or the relay's) iroh node id: an Ed25519 public key that the
/// QUIC handshake authenticates. 32 bytes, sent raw.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DeviceId(pub [u8; 32]);

/// A blob's id, chosen at random by the pushing device; a retried push
/// reuses it so the relay can store the blob once. 16 bytes, sent raw.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobId(pub [u8; 16]);

/// A membership proof: an Ed25519 signature by the group signing key over
/// `"0k-sync/1 hello" ‖ relay node id ‖ device node id` (docs/protocol.md "Blob payloads").
/// 64 bytes, sent raw.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof(#[serde(with = "BigArray")] pub [u8; 64]);

macro_rules! hex_debug {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for b in self.0.iter() {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($t), self)
            }
        }
    )*};
}
hex_debug!(GroupId, DeviceId, BlobId, Proof);

/// First request of a session, on the first bidirectional stream.
/// Answered by [`Welcome`], or by an `Error` (UNSUPPORTED_VERSION,
/// UNAUTHORIZED, INVALID_MESSAGE) after which the relay closes the
/// connection with [`crate::CloseCode::HelloRejected`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version the device speaks: [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// The group the session acts on.
    pub group_id: GroupId,
    /// Membership proof for this relay and this device.
    pub proof: Proof,
    /// Optional human name of the device, UTF-8, at most
    /// [`crate::limits::MAX_DEVICE_NAME`] bytes. Never used for auth.
    pub device_name: Option<String>,
}

/// An operator-issued access token (32 random bytes): lets a `Hello` create
/// a new group on a relay that admits new groups only with a token
/// (`docs/protocol.md` §Hello). A secret: its `Debug` is redacted and it has
/// no `Display`; [`AccessToken::to_text`] spells it out on purpose.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessToken(pub [u8; 32]);

/// Prefix of an access token's text form: `0ksync-token-` then 64 lowercase
/// hex characters.
pub const ACCESS_TOKEN_PREFIX: &str = "0ksync-token-";

/// Why a string is not an access token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an access token: expected {ACCESS_TOKEN_PREFIX} followed by 64 hex characters")]
pub struct ParseTokenError;

impl AccessToken {
    /// The text form, `0ksync-token-<64 hex>` (what the operator hands out).
    pub fn to_text(&self) -> String {
        format!("{ACCESS_TOKEN_PREFIX}{}", hex::encode(self.0))
    }

    /// Parse the text form (surrounding whitespace ignored; hex in either
    /// case). Errors: [`ParseTokenError`].
    pub fn parse(text: &str) -> Result<AccessToken, ParseTokenError> {
        let hex = text
            .trim()
            .strip_prefix(ACCESS_TOKEN_PREFIX)
            .ok_or(ParseTokenError)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(hex, &mut out).map_err(|_| ParseTokenError)?;
        Ok(AccessToken(out))
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// First request of a session that also presents an [`AccessToken`]: the
/// fields of [`Hello`] in order, then the token (32 bytes, raw). The relay
/// checks the token only when the group does not exist yet (creating it);
/// a device joining an existing group needs none and sends a plain
/// [`Hello`]. Answered like [`Hello`], plus ACCESS_TOKEN_INVALID (unknown or
/// revoked token) and GROUP_LIMIT_REACHED (the token's `max_groups`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloWithToken {
    /// Everything a [`Hello`] carries (encoded inline, no length).
    pub hello: Hello,
    /// The operator-issued token.
    pub access_token: AccessToken,
}

/// Answer to [`Hello`]: the session is active; the relay's limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Protocol version the relay speaks for this session.
    pub version: u16,
    /// The relay's node id (the same key the QUIC handshake authenticated).
    pub relay_id: DeviceId,
    /// The group's newest cursor (0 for a group with no blobs yet).
    pub head_cursor: u64,
    /// Largest payload (bytes) of one blob the relay accepts.
    pub max_blob_size: u32,
    /// Largest frame body (bytes) the relay reads or writes in this session.
    pub max_frame: u32,
    /// Most items in one `Push`.
    pub max_batch: u32,
    /// TTL (seconds) of a blob pushed without `ttl_s`.
    pub default_ttl_s: u32,
    /// Largest `ttl_s` (seconds) the relay accepts.
    pub max_ttl_s: u32,
}

/// One blob of a [`Push`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushItem {
    /// Idempotency key: pushing the same id again returns the first cursor.
    pub blob_id: BlobId,
    /// Opaque (encrypted) payload, 0..=`max_blob_size` bytes.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    /// Time to live in seconds, at most `max_ttl_s`; `None` = `default_ttl_s`.
    pub ttl_s: Option<u32>,
}

impl fmt::Debug for PushItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PushItem")
            .field("blob_id", &self.blob_id)
            .field("payload_len", &self.payload.len())
            .field("ttl_s", &self.ttl_s)
            .finish()
    }
}

/// Store 1..=`max_batch` blobs in one atomic step. Answered by [`PushOk`] or
/// an `Error` (then nothing of the batch is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Push {
    /// The blobs, stored in this order under consecutive cursors.
    pub items: Vec<PushItem>,
}

/// Where one pushed blob is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResult {
    /// The blob id from the request.
    pub blob_id: BlobId,
    /// The cursor the blob is stored under.
    pub cursor: u64,
    /// True when the blob id was already stored: `cursor` is the first one.
    pub duplicate: bool,
}

/// Answer to [`Push`]: one result per item, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushOk {
    /// One entry per pushed item.
    pub results: Vec<PushResult>,
    /// The group's head cursor after the commit.
    pub head: u64,
}

/// Ask for blobs with cursors greater than `after`, oldest first.
/// Answered by one or more [`PullBatch`] frames (the last has `more = false`).
/// Also acknowledges `after` (as [`Ack`] would).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pull {
    /// Exclusive lower bound of cursors to send.
    pub after: u64,
    /// Most blobs in the whole answer, 1..; the relay may cap it.
    pub limit: u32,
}

/// One stored blob in a [`PullBatch`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledBlob {
    /// The blob's cursor in its group.
    pub cursor: u64,
    /// The id it was pushed with.
    pub blob_id: BlobId,
    /// Node id of the device that pushed it (authenticated by QUIC).
    pub sender: DeviceId,
    /// When the relay stored it, Unix time in milliseconds.
    pub created_at: u64,
    /// The opaque payload exactly as pushed.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl fmt::Debug for PulledBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PulledBlob")
            .field("cursor", &self.cursor)
            .field("blob_id", &self.blob_id)
            .field("sender", &self.sender)
            .field("created_at", &self.created_at)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// One frame of the answer to [`Pull`]; each frame's body fits `max_frame`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullBatch {
    /// Blobs in increasing cursor order (may be empty in the last frame).
    pub blobs: Vec<PulledBlob>,
    /// The group's head cursor read before the blobs were selected: every
    /// blob with a cursor ≤ `head` that still exists was visible to the pull.
    pub head: u64,
    /// True when more `PullBatch` frames follow on this stream.
    pub more: bool,
}

/// The device holds every blob up to `cursor` (delivery tracking).
/// Answered by [`AckOk`]; a cursor above the head is INVALID_MESSAGE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// Highest cursor the device has durably applied.
    pub cursor: u64,
}

/// Answer to [`Ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckOk {
    /// The device's acknowledged cursor now stored (never decreases).
    pub cursor: u64,
}

/// The group's head moved; sent on the relay's unidirectional stream.
/// Coalesced: a slow reader sees the newest head, never a backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    /// The group's newest cursor.
    pub head: u64,
}

/// New blobs delivered inside the notification (protocol version 3,
/// `docs/protocol.md` "Version 3: inline delivery"); sent on the relay's
/// unidirectional stream in place of a [`Notify`].
///
/// The relay claims that `blobs` are every blob of the group with a cursor
/// in `after + 1 ..= head` that the device has not got already (its own
/// blobs are left out, the last of them sent as a marker with an empty
/// payload when the range ends with them, as in a [`PullBatch`]). The
/// device accepts it only when `after` is its own cursor, and checks the
/// blobs exactly as a pull answer's (cursors strictly increasing, above
/// `after`, at most `head`); any other `Deliver` counts as a [`Notify`] of
/// `head` and the device pulls as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// The cursor the relay believes the device holds everything up to.
    pub after: u64,
    /// The blobs, in increasing cursor order.
    pub blobs: Vec<PulledBlob>,
    /// The group's head when the blobs were taken; every blob in
    /// `after + 1 ..= head` that still exists is in `blobs` (or stood for
    /// by a marker).
    pub head: u64,
}

/// Answer to any request that failed; the stream ends after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// Wire number of an [`crate::ErrorCode`].
    pub code: u16,
    /// Human-readable explanation (UTF-8, at most
    /// [`crate::limits::MAX_ERROR_MESSAGE`] bytes); never payload or keys.
    pub message: String,
    /// For RATE_LIMITED, OVERLOADED, SHUTTING_DOWN: wait this long (ms).
    pub retry_after_ms: Option<u32>,
}

impl ErrorMsg {
    /// An error frame for `code` with a message (cut to the wire limit).
    pub fn new(code: crate::ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        if message.len() > crate::limits::MAX_ERROR_MESSAGE {
            let mut end = crate::limits::MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        ErrorMsg {
            code: code.as_u16(),
            message,
            retry_after_ms: None,
        }
    }

    /// The same error with a retry hint in milliseconds.
    pub fn with_retry_after(mut self, ms: u32) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    /// The decoded code.
    pub fn error_code(&self) -> crate::ErrorCode {
        crate::ErrorCode::from_u16(self.code)
    }
}

impl fmt::Display for ErrorMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_code(), self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry after {ms} ms)")?;
        }
        Ok(())
    }
}

/// Domain-separation prefix of the membership proof (docs/protocol.md "Blob payloads").
pub const HELLO_PROOF_CONTEXT: &[u8] = b"0k-sync/1 hello";

/// The bytes a membership proof signs:
/// `"0k-sync/1 hello" ‖ relay node id (32) ‖ device node id (32)`.
/// Binding both node ids (which QUIC authenticates) means a proof cannot be
/// replayed by another device or to another relay.
pub fn hello_proof_message(relay: &DeviceId, device: &DeviceId) -> Vec<u8> {
    let mut m = Vec::with_capacity(HELLO_PROOF_CONTEXT.len() + 64);
    m.extend_from_slice(HELLO_PROOF_CONTEXT);
    m.extend_from_slice(&relay.0);
    m.extend_from_slice(&device.0);
    m
}

/// Close the session's group (`docs/protocol.md` §CloseGroup →
/// CloseGroupOk, `docs/security.md` "What the relay must do"): from now on
/// the relay refuses every push and every session of a device not in
/// `keep` (GROUP_CLOSED); the devices in `keep` may still pull, ack and
/// push until the grace period ends (`closed_at` + the relay's longest TTL),
/// then the group's blobs are deleted and everyone gets GROUP_CLOSED.
/// Authorised by the session's `Hello` proof (possession of the group
/// signing key). The first close of a group wins; a later one changes
/// nothing and is answered with the recorded close.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseGroup {
    /// Node ids that may still pull until the grace ends (≤ 64, strictly
    /// increasing; may be empty).
    pub keep: crate::KeepList,
}

/// Answer to [`CloseGroup`]: the group's close as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloseGroupOk {
    /// When the group was closed, Unix time in milliseconds.
    pub closed_at: u64,
    /// When the grace period ends, Unix ms: from then on the listed devices
    /// get GROUP_CLOSED too, and the blobs are deleted.
    pub grace_until: u64,
    /// The keep list recorded (the first close's).
    pub keep: crate::KeepList,
    /// True when this request closed the group; false when an earlier close
    /// stands (its state is the one answered).
    pub applied: bool,
}

/// Every frame body. The variant order is the wire tag (postcard varint):
/// 0 Hello, 1 Welcome, 2 Push, 3 PushOk, 4 Pull, 5 PullBatch, 6 Ack,
/// 7 AckOk, 8 Notify, 9 Error, 10 HelloWithToken, 11 CloseGroup,
/// 12 CloseGroupOk, 13 Deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Tag 0, client → relay.
    Hello(Hello),
    /// Tag 1, relay → client.
    Welcome(Welcome),
    /// Tag 2, client → relay.
    Push(Push),
    /// Tag 3, relay → client.
    PushOk(PushOk),
    /// Tag 4, client → relay.
    Pull(Pull),
    /// Tag 5, relay → client.
    PullBatch(PullBatch),
    /// Tag 6, client → relay.
    Ack(Ack),
    /// Tag 7, relay → client.
    AckOk(AckOk),
    /// Tag 8, relay → client (uni stream).
    Notify(Notify),
    /// Tag 9, relay → client.
    Error(ErrorMsg),
    /// Tag 10, client → relay: a `Hello` with an access token.
    HelloWithToken(HelloWithToken),
    /// Tag 11, client → relay: close the session's group.
    CloseGroup(CloseGroup),
    /// Tag 12, relay → client.
    CloseGroupOk(CloseGroupOk),
    /// Tag 13, relay → client (uni stream, version 3): new blobs inline.
    Deliver(Deliver),
}

/// The kind of a [`Message`], for logs and errors ("expected X, got Y").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Hello,
    Welcome,
    Push,
    PushOk,
    Pull,
    PullBatch,
    Ack,
    AckOk,
    Notify,
    Error,
    HelloWithToken,
    CloseGroup,
    CloseGroupOk,
    Deliver,
}

impl MessageKind {
    /// Number of message kinds: tags are `0..COUNT`.
    pub const COUNT: u32 = 14;

    /// The message's name as in `docs/protocol.md`.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::Hello => "Hello",
            MessageKind::Welcome => "Welcome",
            MessageKind::Push => "Push",
            MessageKind::PushOk => "PushOk",
            MessageKind::Pull => "Pull",
            MessageKind::PullBatch => "PullBatch",
            MessageKind::Ack => "Ack",
            MessageKind::AckOk => "AckOk",
            MessageKind::Notify => "Notify",
            MessageKind::Error => "Error",
            MessageKind::HelloWithToken => "HelloWithToken",
            MessageKind::CloseGroup => "CloseGroup",
            MessageKind::CloseGroupOk => "CloseGroupOk",
            MessageKind::Deliver => "Deliver",
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Message {
    /// This message's kind.
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::Welcome(_) => MessageKind::Welcome,
            Message::Push(_) => MessageKind::Push,
            Message::PushOk(_) => MessageKind::PushOk,
            Message::Pull(_) => MessageKind::Pull,
            Message::PullBatch(_) => MessageKind::PullBatch,
            Message::Ack(_) => MessageKind::Ack,
            Message::AckOk(_) => MessageKind::AckOk,
            Message::Notify(_) => MessageKind::Notify,
            Message::Error(_) => MessageKind::Error,
            Message::HelloWithToken(_) => MessageKind::HelloWithToken,
            Message::CloseGroup(_) => MessageKind::CloseGroup,
            Message::CloseGroupOk(_) => MessageKind::CloseGroupOk,
            Message::Deliver(_) => MessageKind::Deliver,
        }
    }
}
