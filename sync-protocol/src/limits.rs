//! Size limits of the wire protocol (`docs/protocol.md` §Limits).
//!
//! Every length a peer sends is checked against one of these (or the smaller
//! value a relay announces in `Welcome`) before anything is allocated for it.

/// Bytes of the frame header: a `u32` big-endian body length.
pub const FRAME_HEADER_LEN: usize = 4;

/// Largest frame body (bytes) either side ever accepts, whatever a relay is
/// configured with: 32 MiB. A relay's own `max_frame` is at most this.
pub const MAX_FRAME_CEILING: u32 = 32 * 1024 * 1024;

/// Largest body (bytes) of the first frame of a session (the `Hello`) and of
/// the relay's `Welcome`: 4 KiB. A `Hello` is about 110 bytes plus the name.
pub const HANDSHAKE_MAX_FRAME: u32 = 4 * 1024;

/// Most bytes of a `Hello::device_name` (UTF-8): 64.
pub const MAX_DEVICE_NAME: usize = 64;

/// Most bytes of an `Error::message` a relay sends (UTF-8): 1 KiB.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// Default largest blob payload (bytes) a relay accepts: 1 MiB.
pub const DEFAULT_MAX_BLOB_SIZE: u32 = 1024 * 1024;

/// Default most items in one `Push` batch: 256.
pub const DEFAULT_MAX_BATCH: u32 = 256;

/// Room a frame needs beyond its payload bytes, so that one blob of
/// `max_blob_size` always fits in a `Push` or a `PullBatch`: 64 KiB.
pub const FRAME_SLACK: u32 = 64 * 1024;

/// Upper bound (bytes) of the encoding of one [`crate::PushItem`] beyond its
/// payload: blob id 17, payload length varint ≤ 5, TTL option ≤ 6.
pub const PUSH_ITEM_OVERHEAD: usize = 32;

/// Upper bound (bytes) of the encoding of one [`crate::PulledBlob`] beyond
/// its payload: cursor ≤ 10, blob id 17, sender 33, created_at ≤ 10,
/// payload length ≤ 5.
pub const PULLED_BLOB_OVERHEAD: usize = 80;

/// Upper bound (bytes) of a `Push` or `PullBatch` body beyond its items:
/// tag, item count, head, flag.
pub const BATCH_OVERHEAD: usize = 32;

/// The `max_frame` a relay announces for a given `max_blob_size`:
/// `max_blob_size + FRAME_SLACK`, capped at [`MAX_FRAME_CEILING`].
pub fn max_frame_for_blob_size(max_blob_size: u32) -> u32 {
    max_blob_size
        .saturating_add(FRAME_SLACK)
        .min(MAX_FRAME_CEILING)
}

/// QUIC per-stream receive window (bytes) both the relay and the device
/// announce, at most: 1 MiB (`docs/protocol.md` §Transport).
///
/// Why a cap: noq-proto 1.4 (iroh's QUIC) closes the whole connection with
/// `INTERNAL_ERROR "too many gaps in stream buffer"` when a stream's
/// reassembly buffer holds more than `MAX_CHUNKS` = 1024 separate pieces
/// after defragmenting (`noq-proto-1.4.0/src/connection/assembler.rs`,
/// `Assembler::insert`; raised in `connection/streams/recv.rs`). A peer can
/// only send stream data inside the window, and an honest sender fills each
/// packet (≥ 1,200 bytes, QUIC's minimum MTU, about 1,150 of stream data);
/// two pieces need a missing packet between them, so a window of `W` bytes
/// holds at most about `W / 2,300` pieces: 456 for 1 MiB, under half the
/// limit even if every other packet is lost. A window of one whole
/// largest frame (several MiB for a large `max_blob_size`) let a 4 MiB push
/// on a lossy link exceed it. Flow control still passes frames larger than
/// the window: the window moves on as the receiver reads, and both sides
/// read a frame's body as it arrives.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;

/// Largest payload (bytes) of a blob the relay sends inline in a
/// [`crate::Deliver`]: 16 KiB. A larger blob is announced with a `Notify`
/// and pulled (docs/protocol.md "Version 3: inline delivery").
pub const INLINE_MAX_BLOB: usize = 16 * 1024;

/// Most payload bytes (bytes) of inline blobs a session may have in flight:
/// sent in `Deliver` frames and not yet acknowledged (by an `Ack` or
/// `Pull` at or past them): 64 KiB. Over it the relay sends a bare
/// `Notify`.
pub const INLINE_BUDGET: usize = 64 * 1024;

/// Largest frame body (bytes) on the notification stream of a version-3
/// session: one `Deliver` of [`INLINE_BUDGET`] payload bytes in blobs of
/// at least one byte is at most this. Version-1 and 2 sessions use
/// [`HANDSHAKE_MAX_FRAME`] there.
pub const NOTIFY_MAX_FRAME: u32 =
    (INLINE_BUDGET + BATCH_OVERHEAD + INLINE_MAX_BLOBS * PULLED_BLOB_OVERHEAD) as u32;

/// Most blobs in one [`crate::Deliver`]: 64 (markers included).
pub const INLINE_MAX_BLOBS: usize = 64;

/// Most `Deliver` frames a session may have in flight (sent and not yet
/// acknowledged by an `Ack` or `Pull` at or past their last cursor): 16.
/// Within this and [`INLINE_BUDGET`] the relay sends the next `Deliver`
/// without waiting for a request of the device; a client holds up to this
/// many unread (docs/protocol.md "Version 3: inline delivery", pacing).
pub const INLINE_MAX_FRAMES: usize = 16;
