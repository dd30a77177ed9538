//! The 0k-sync wire protocol (`docs/protocol.md`, docs/protocol.md).
//!
//! This crate is the single place where the bytes on the wire are defined: the
//! [`Message`] types, the length-prefixed [`frame`] format, the [`ErrorCode`]s
//! carried in `Error` frames, the QUIC application [`CloseCode`]s, and the
//! [`limits`] both sides check before allocating anything a peer claims.
//!
//! It holds no I/O policy: it reads and writes frames on any
//! `tokio::io::AsyncRead`/`AsyncWrite` it is given, and leaves timeouts,
//! sessions and storage to the relay and the client.

#![forbid(unsafe_code)]

pub mod close;
pub mod codec;
pub mod codes;
pub mod frame;
pub mod limits;
pub mod message;
pub mod segments;

pub use close::{KeepList, KeepListError, MAX_KEEP_LIST};
pub use codec::{DecodeError, decode_body, encode_body, encode_frame};
pub use codes::{CloseCode, ErrorCode};
pub use frame::{
    FrameError, read_frame, read_frame_body, read_frame_header, read_frame_into, read_message,
    write_message, write_push, write_segments,
};
pub use message::{
    ACCESS_TOKEN_PREFIX, AccessToken, Ack, AckOk, BlobId, CloseGroup, CloseGroupOk, Deliver,
    DeviceId, ErrorMsg, GroupId, HELLO_PROOF_CONTEXT, Hello, HelloWithToken, Message, MessageKind,
    Notify, ParseTokenError, Proof, Pull, PullBatch, PulledBlob, Push, PushItem, PushOk,
    PushResult, Welcome, hello_proof_message,
};
pub use segments::{FrameSegments, Part, encode_frame_segments, encode_push_segments};

/// QUIC ALPN of protocol version 1: `/0k-sync/1`.
pub const ALPN: &[u8] = b"/0k-sync/1";

/// Protocol version this code speaks, carried in `Hello` and `Welcome`
/// (docs/protocol.md "Hello → Welcome", "Version 2: no echo"). Version 2
/// adds one behaviour and no message: the relay does not send a device its
/// own blobs back on `Pull` (only an empty-payload marker when an answer's
/// page ends with one), nor a `Notify` for a head that only its own push
/// moved. Version 3 lets the relay send new small blobs inside the
/// notification ([`Deliver`], tag 13; docs/protocol.md "Version 3: inline
/// delivery"), sparing the device its pull round trip.
pub const PROTOCOL_VERSION: u16 = 3;

/// First protocol version whose sessions may get [`Deliver`] frames on the
/// notification stream.
pub const INLINE_PROTOCOL_VERSION: u16 = 3;

/// The version a client falls back to when a relay from before version 3
/// answers its `Hello` with UNSUPPORTED_VERSION (docs/protocol.md
/// "Version 3: inline delivery").
pub const FALLBACK_PROTOCOL_VERSION: u16 = 2;

/// Oldest protocol version a relay still serves. A relay answers a `Hello`
/// with a version in `MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION` with a
/// `Welcome` of the same version, and any other with
/// [`ErrorCode::UnsupportedVersion`]. Version 1 sessions get every blob
/// of the group, their own included, as before.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
