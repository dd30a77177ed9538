//! The blob envelope (docs/protocol.md "Blob payloads"), version 2:
//!
//! ```text
//! payload = 0x02 ‖ nonce (24) ‖ XChaCha20-Poly1305(blob key, nonce, padded(inner), ad)
//! ad      = "0k-sync/1 blob" ‖ 0x02 ‖ group id (32) ‖ blob id (16)
//! inner   = u32-BE header length ‖ header (postcard BlobHeader) ‖ body ‖ zero padding
//! ```
//!
//! `inner` is zero-padded to its Padmé length so the relay sees only a
//! bucketed size. The associated data binds the blob to its envelope
//! version, its group and its blob id, so the relay cannot move a blob
//! between groups, swap ids, or present a version-2 blob as version 1. The
//! body is compressed with zstd when that makes it smaller. The header
//! carries the sender's device id and per-sender sequence number, which let
//! receivers detect withheld (gaps) and replayed (repeats) blobs, and the
//! sender's [`GroupView`], which reveals blobs the relay withheld from this
//! receiver but delivered to others (docs/security.md).
//!
//! Version 1 (`0x01`, no version byte in `ad`, a header without a view) is
//! still opened, never sealed.

use super::group::GroupKeys;
use super::padding::padme;
use super::view::{GroupView, MAX_VIEW_LEN};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};
use sync_protocol::{BlobId, DeviceId, GroupId};

/// First byte of every envelope this client seals.
pub const ENVELOPE_VERSION: u8 = 0x02;
/// First byte of envelopes of clients before group views: still opened.
pub const ENVELOPE_V1: u8 = 0x01;
/// Bytes of the nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Envelope bytes around the padded inner plaintext: version, nonce, tag.
pub const ENVELOPE_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;
/// Upper bound of an encoded [`BlobHeader`] whose file name (a relative
/// path) is at most [`crate::relpath::MAX_PATH_LEN`] bytes: 512 bytes for
/// everything but the view and a name longer than [`MAX_NAME_LEN`], plus
/// [`MAX_VIEW_LEN`] for a full view.
pub const MAX_HEADER_LEN: usize = 512 - MAX_NAME_LEN + crate::relpath::MAX_PATH_LEN + MAX_VIEW_LEN;
/// Most bytes of a file name in a header.
pub const MAX_NAME_LEN: usize = 255;
/// Most bytes a body may decompress to (bounds memory for hostile input).
pub const MAX_BODY_LEN: usize = 32 * 1024 * 1024;

const AD_CONTEXT: &[u8] = b"0k-sync/1 blob";

/// What a blob holds.
///
/// Variants are encoded by position (postcard): new ones are only ever
/// appended, so every client reads what older clients sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    /// One chunk of a file, without history (what clients before file
    /// versions sealed; still read, no longer sealed): receivers order
    /// such files of one sender by sequence number only.
    FileChunk(FileChunk),
    /// An application message (opaque bytes, not a file).
    Message,
    /// The sender abandoned a file push: receivers drop its partial file,
    /// and sequence numbers `first_seq..=last_seq` will never be used (so
    /// they are no gap).
    Void {
        /// The abandoned file, if a file was being pushed.
        file_id: Option<[u8; 16]>,
        /// First sequence number given up.
        first_seq: u64,
        /// Last sequence number given up.
        last_seq: u64,
    },
    /// One chunk of a file, with the file version it belongs to (what
    /// this client seals). Every chunk of one file carries the same version.
    VersionedChunk {
        /// The chunk.
        chunk: FileChunk,
        /// The version of the file.
        version: FileVersion,
    },
    /// Roster entries of the group (docs/security.md "Devices, roster and
    /// key epochs", "Where entries live"): the body is one or more signed
    /// entries ([`crate::roster::SignedEntry`]), concatenated (each is
    /// self-delimiting). Tag 4. Clients before rosters report such a blob as
    /// `rejected` (unknown variant) and apply nothing: no file is lost.
    Roster,
    /// An enrolment request: the sending device asks members to add it to
    /// the roster; the body is a [`crate::roster::enrol::Enrolment`]. Tag 5.
    Enrolment,
}

impl BlobKind {
    /// The file chunk and its version (`None` for [`BlobKind::FileChunk`]),
    /// if this blob is part of a file.
    pub fn chunk(&self) -> Option<(&FileChunk, Option<&FileVersion>)> {
        match self {
            BlobKind::FileChunk(c) => Some((c, None)),
            BlobKind::VersionedChunk { chunk, version } => Some((chunk, Some(version))),
            _ => None,
        }
    }
}

/// Where a pushed file version sits in its file's history, so receivers
/// order versions by history and never by arrival (see `docs/client.md`,
/// "Conflicts"). A device that pushes a file it received, or pushed
/// before, continues that file's history: same `lineage`, `generation`
/// one higher than the version it held; a file with no known history
/// starts a new lineage at generation 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileVersion {
    /// Random id shared by every version of one file's history.
    pub lineage: [u8; 16],
    /// 1, 2, 3, … along the history.
    pub generation: u64,
    /// The pushing device's name (at most [`MAX_DEVICE_NAME_LEN`] bytes, see
    /// [`validate_device_name`]), shown in conflict copies' names.
    pub device: Option<String>,
}

/// Most bytes of [`FileVersion::device`].
pub const MAX_DEVICE_NAME_LEN: usize = 32;

/// Where a chunk belongs in its file (docs/client.md "Large data").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChunk {
    /// Random id shared by every chunk of one pushed file.
    pub file_id: [u8; 16],
    /// The file's relative path: `/`-separated components, checked by
    /// [`crate::relpath::validate_path`] (docs/client.md "Directories").
    pub name: String,
    /// Unix permission bits (`mode & 0o777`).
    pub mode: u32,
    /// 0-based chunk number.
    pub index: u32,
    /// Byte offset of this chunk in the file.
    pub offset: u64,
    /// The file's size when known before sending (progress display only;
    /// the authoritative size is in `end`).
    pub size_hint: Option<u64>,
    /// Present on the last chunk only.
    pub end: Option<FileEnd>,
}

/// What the last chunk says about the whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEnd {
    /// Number of chunks.
    pub chunks: u32,
    /// File size in bytes.
    pub size: u64,
    /// BLAKE3 of the whole file.
    pub blake3: [u8; 32],
}

/// How the body is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compression {
    /// As is.
    None,
    /// zstd frame; `raw_len` is the decompressed length.
    Zstd {
        /// Decompressed length in bytes.
        raw_len: u32,
    },
}

/// The authenticated header inside every envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHeader {
    /// What the body is.
    pub kind: BlobKind,
    /// The pushing device's node id (must match the relay's `sender`).
    pub sender: DeviceId,
    /// The sender's sequence number, 1, 2, 3, … with no gaps.
    pub seq: u64,
    /// When the sender sealed it, Unix ms.
    pub created_at_ms: u64,
    /// How the body is stored.
    pub compression: Compression,
    /// Stored body length in bytes (after compression).
    pub body_len: u32,
    /// The sender's view of the group when it sealed the blob (empty in
    /// version-1 envelopes).
    pub view: GroupView,
}

/// The header of a version-1 envelope (no view).
#[derive(Deserialize)]
struct BlobHeaderV1 {
    kind: BlobKind,
    sender: DeviceId,
    seq: u64,
    created_at_ms: u64,
    compression: Compression,
    body_len: u32,
}

impl From<BlobHeaderV1> for BlobHeader {
    fn from(h: BlobHeaderV1) -> BlobHeader {
        BlobHeader {
            kind: h.kind,
            sender: h.sender,
            seq: h.seq,
            created_at_ms: h.created_at_ms,
            compression: h.compression,
            body_len: h.body_len,
            view: GroupView::default(),
        }
    }
}

/// A decrypted, verified blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenedBlob {
    /// The header.
    pub header: BlobHeader,
    /// The body, decompressed.
    pub body: Body,
}

/// A decrypted body: a range of the buffer it was decrypted in (no copy),
/// or a fresh buffer when it was decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Body {
    buf: Vec<u8>,
    range: std::ops::Range<usize>,
}

impl Body {
    fn whole(buf: Vec<u8>) -> Body {
        let range = 0..buf.len();
        Body { buf, range }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The bytes as an owned vector (copies only when they are part of a
    /// larger buffer).
    pub fn into_vec(self) -> Vec<u8> {
        if self.range == (0..self.buf.len()) {
            self.buf
        } else {
            self.buf[self.range].to_vec()
        }
    }
}

impl PartialEq<[u8]> for Body {
    fn eq(&self, other: &[u8]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<u8>> for Body {
    fn eq(&self, other: &Vec<u8>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// Why an envelope cannot be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// Shorter than the fixed overhead.
    #[error("envelope of {0} bytes is too short")]
    TooShort(usize),
    /// Unknown first byte.
    #[error("unsupported envelope version {0:#04x}")]
    UnsupportedVersion(u8),
    /// AEAD authentication failed: wrong group key, or the bytes (or their
    /// group or blob id) were altered.
    #[error("blob failed authentication (altered, or sealed for another group or blob id)")]
    Authentication,
    /// The plaintext does not parse.
    #[error("malformed blob contents: {0}")]
    Malformed(String),
    /// The sealed blob would exceed the size limit.
    #[error("sealed blob of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Envelope size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// `"0k-sync/1 blob" ‖ version ‖ group id ‖ blob id`; version 1 had no
/// version byte.
fn associated_data(version: u8, group: &GroupId, blob_id: &BlobId) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_CONTEXT.len() + 49);
    ad.extend_from_slice(AD_CONTEXT);
    if version != ENVELOPE_V1 {
        ad.push(version);
    }
    ad.extend_from_slice(&group.0);
    ad.extend_from_slice(&blob_id.0);
    ad
}

/// Size of the envelope for an inner plaintext of `inner_len` bytes.
pub fn sealed_len(inner_len: usize) -> usize {
    padme(inner_len as u64) as usize + ENVELOPE_OVERHEAD
}

/// The largest body (bytes) whose envelope fits `max_blob_size`, for any
/// header up to [`MAX_HEADER_LEN`] bytes. 0 if nothing fits.
pub fn max_body_for(max_blob_size: usize) -> usize {
    let fits = |body: usize| sealed_len(4 + MAX_HEADER_LEN + body) <= max_blob_size;
    let (mut lo, mut hi) = (0usize, max_blob_size);
    if !fits(0) {
        return 0;
    }
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if fits(mid) { lo = mid } else { hi = mid - 1 }
    }
    lo
}

/// Bodies up to this many bytes are always tried with zstd.
const PROBE_ABOVE: usize = 64 * 1024;
/// Slices of a larger body compressed as a sample, and each slice's bytes.
const PROBE_SLICES: usize = 8;
const PROBE_SLICE_LEN: usize = 4096;

/// Whether zstd could make `body` smaller. Bodies over 64 KiB are sampled
/// first: 8 slices of 4 KiB spread over the body are compressed, and the
/// body is tried whole only when the sample shrinks by at least 3 %.
/// Already-compressed or encrypted data (media, archives) then costs 32 KiB
/// of zstd work instead of a whole pass (about 5 % of a bulk push's CPU).
fn worth_compressing(body: &[u8]) -> bool {
    if body.len() <= PROBE_ABOVE {
        return true;
    }
    let step = body.len() / PROBE_SLICES;
    let mut sample = Vec::with_capacity(PROBE_SLICES * PROBE_SLICE_LEN);
    for i in 0..PROBE_SLICES {
        let start = i * step;
        sample.extend_from_slice(&body[start..(start + PROBE_SLICE_LEN).min(body.len())]);
    }
    match zstd::bulk::compress(&sample, 3) {
        Ok(c) => c.len() * 100 < sample.len() * 97,
        Err(_) => false,
    }
}

/// Seal `body` (compressing it when smaller) under `header` for `blob_id`.
/// `header.compression` and `header.body_len` are filled in here. Errors:
/// [`EnvelopeError::TooLarge`] when the result exceeds `max_blob_size`.
pub fn seal(
    keys: &GroupKeys,
    blob_id: &BlobId,
    header: BlobHeader,
    body: &[u8],
    max_blob_size: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    seal_with_nonce(
        keys,
        blob_id,
        header,
        body,
        max_blob_size,
        super::random_bytes(),
    )
}

/// [`seal`] with a given nonce: for golden vectors only (a nonce must
/// never be used twice with one key; [`seal`] draws a random one).
#[doc(hidden)]
pub fn seal_with_nonce(
    keys: &GroupKeys,
    blob_id: &BlobId,
    mut header: BlobHeader,
    body: &[u8],
    max_blob_size: usize,
    nonce_bytes: [u8; NONCE_LEN],
) -> Result<Vec<u8>, EnvelopeError> {
    let compressed = worth_compressing(body)
        .then(|| zstd::bulk::compress(body, 3))
        .and_then(Result::ok)
        .filter(|c| c.len() < body.len());
    let stored: &[u8] = match &compressed {
        Some(c) => {
            header.compression = Compression::Zstd {
                raw_len: body.len() as u32,
            };
            c
        }
        None => {
            header.compression = Compression::None;
            body
        }
    };
    header.body_len = stored.len() as u32;
    let header_bytes =
        postcard::to_allocvec(&header).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    let inner_len = 4 + header_bytes.len() + stored.len();
    let padded_len = padme(inner_len as u64) as usize;
    let size = padded_len + ENVELOPE_OVERHEAD;
    if size > max_blob_size {
        return Err(EnvelopeError::TooLarge {
            size,
            limit: max_blob_size,
        });
    }
    // One buffer, encrypted in place: version ‖ nonce ‖ padded inner, then
    // the tag appended (the body is copied once, into its place).
    let mut out = Vec::with_capacity(size);
    out.push(ENVELOPE_VERSION);
    out.extend_from_slice(&nonce_bytes);
    let inner_at = out.len();
    out.extend_from_slice(&(header_bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(&header_bytes);
    out.extend_from_slice(stored);
    out.resize(inner_at + padded_len, 0);
    let cipher = XChaCha20Poly1305::new(keys.blob_key().into());
    let nonce = XNonce::from(nonce_bytes);
    let tag = cipher
        .encrypt_inout_detached(
            &nonce,
            &associated_data(ENVELOPE_VERSION, &keys.group_id(), blob_id),
            (&mut out[inner_at..]).into(),
        )
        .map_err(|_| EnvelopeError::Malformed("encryption failed".into()))?;
    out.extend_from_slice(&tag);
    debug_assert_eq!(out.len(), size);
    Ok(out)
}

/// Decrypt and verify `payload` stored under `blob_id` (envelope version
/// 2, or 1 with an empty view). Errors:
/// [`EnvelopeError::TooShort`], [`EnvelopeError::UnsupportedVersion`],
/// [`EnvelopeError::Authentication`], [`EnvelopeError::Malformed`].
pub fn open(
    keys: &GroupKeys,
    blob_id: &BlobId,
    payload: &[u8],
) -> Result<OpenedBlob, EnvelopeError> {
    open_owned(keys, blob_id, payload.to_vec())
}

/// As [`open`], decrypting in place in `payload` (no copy of the body; the
/// pull path hands over the buffer it received).
pub fn open_owned(
    keys: &GroupKeys,
    blob_id: &BlobId,
    mut payload: Vec<u8>,
) -> Result<OpenedBlob, EnvelopeError> {
    if payload.len() < ENVELOPE_OVERHEAD {
        return Err(EnvelopeError::TooShort(payload.len()));
    }
    let version = payload[0];
    if version != ENVELOPE_VERSION && version != ENVELOPE_V1 {
        return Err(EnvelopeError::UnsupportedVersion(version));
    }
    let nonce_bytes: [u8; NONCE_LEN] = payload[1..1 + NONCE_LEN]
        .try_into()
        .map_err(|_| EnvelopeError::TooShort(payload.len()))?;
    let tag_at = payload.len() - TAG_LEN;
    let tag: [u8; TAG_LEN] = payload[tag_at..]
        .try_into()
        .map_err(|_| EnvelopeError::TooShort(tag_at))?;
    let cipher = XChaCha20Poly1305::new(keys.blob_key().into());
    let inner = &mut payload[1 + NONCE_LEN..tag_at];
    cipher
        .decrypt_inout_detached(
            &XNonce::from(nonce_bytes),
            &associated_data(version, &keys.group_id(), blob_id),
            inner.into(),
            &tag.into(),
        )
        .map_err(|_| EnvelopeError::Authentication)?;
    let (header, body) = parse_inner(version, &payload[1 + NONCE_LEN..tag_at])?;
    let body = match body {
        InnerBody::Stored(range) => Body {
            buf: payload,
            range: 1 + NONCE_LEN + range.start..1 + NONCE_LEN + range.end,
        },
        InnerBody::Decompressed(buf) => Body::whole(buf),
    };
    Ok(OpenedBlob { header, body })
}

enum InnerBody {
    /// The body is this range of the inner plaintext.
    Stored(std::ops::Range<usize>),
    /// The body had to be decompressed.
    Decompressed(Vec<u8>),
}

/// Decode a decrypted inner plaintext of the current envelope version
/// (`u32 header length ‖ header ‖ body ‖ zero padding`), checking every
/// length against the buffer, bounding the view (see
/// [`crate::crypto::view`]) and decompression to [`MAX_BODY_LEN`]. [`open`]
/// does the same after the AEAD check; exposed for fuzzing. Errors:
/// [`EnvelopeError::Malformed`].
pub fn decode_inner(inner: &[u8]) -> Result<OpenedBlob, EnvelopeError> {
    let (header, body) = parse_inner(ENVELOPE_VERSION, inner)?;
    let body = match body {
        InnerBody::Stored(range) => Body::whole(inner[range].to_vec()),
        InnerBody::Decompressed(buf) => Body::whole(buf),
    };
    Ok(OpenedBlob { header, body })
}

fn parse_inner(version: u8, inner: &[u8]) -> Result<(BlobHeader, InnerBody), EnvelopeError> {
    let malformed = |m: &str| EnvelopeError::Malformed(m.to_string());
    let header_len = inner
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| malformed("no header length"))?;
    let header_bytes = inner
        .get(4..4usize.saturating_add(header_len))
        .ok_or_else(|| malformed("header length beyond the blob"))?;
    let (header, rest) = match version {
        ENVELOPE_VERSION => postcard::take_from_bytes::<BlobHeader>(header_bytes),
        ENVELOPE_V1 => postcard::take_from_bytes::<BlobHeaderV1>(header_bytes)
            .map(|(h, rest)| (BlobHeader::from(h), rest)),
        _ => return Err(malformed("unknown envelope version")),
    }
    .map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the header"));
    }
    let start = 4 + header_len;
    let stored = inner
        .get(start..start.saturating_add(header.body_len as usize))
        .ok_or_else(|| malformed("body length beyond the blob"))?;
    if inner[start + stored.len()..].iter().any(|&b| b != 0) {
        return Err(malformed("non-zero padding"));
    }
    if let Some((chunk, version)) = header.kind.chunk() {
        crate::relpath::validate_path(&chunk.name)
            .map_err(|m| EnvelopeError::Malformed(m.to_string()))?;
        if let Some(device) = version.and_then(|v| v.device.as_deref()) {
            validate_device_name(device).map_err(|m| EnvelopeError::Malformed(m.to_string()))?;
        }
    }
    let body = match header.compression {
        Compression::None => InnerBody::Stored(start..start + stored.len()),
        Compression::Zstd { raw_len } => {
            let raw_len = raw_len as usize;
            if stored.is_empty() {
                // Not a zstd frame (the decompressor would read it as one).
                return Err(malformed("empty zstd body"));
            }
            if raw_len > MAX_BODY_LEN {
                return Err(malformed("declared body size over the limit"));
            }
            let body = zstd::bulk::decompress(stored, raw_len)
                .map_err(|e| EnvelopeError::Malformed(format!("zstd: {e}")))?;
            if body.len() != raw_len {
                return Err(malformed("body size differs from the declared size"));
            }
            InnerBody::Decompressed(body)
        }
    };
    Ok((header, body))
}

/// Prefix of the names this client uses for files being received
/// (`.0k-sync-<file id>.part`): a received file may not take it.
pub const RESERVED_PREFIX: &str = ".0k-sync-";

/// A file name is one path component: non-empty, at most 255 bytes, no `/`,
/// no NUL, not `.` or `..`, no control character (C0, DEL, C1: terminal
/// escape sequences) and no Unicode bidirectional override (names that
/// display as something else), and not starting with [`RESERVED_PREFIX`].
/// Received names are checked so a group member cannot write outside the
/// output directory, over this client's own temp files, or to the terminal.
pub fn validate_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty file name");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("file name longer than 255 bytes");
    }
    if name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err("file name is not a single path component");
    }
    if name.chars().any(is_unsafe_char) {
        return Err("file name contains a control or bidirectional-override character");
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err("file name starts with .0k-sync-, reserved for files being received");
    }
    Ok(())
}

/// A device name for conflict copies: non-empty, at most
/// [`MAX_DEVICE_NAME_LEN`] bytes, no `/`, no control or bidirectional
/// override character, not starting with `.`.
pub fn validate_device_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_DEVICE_NAME_LEN {
        return Err("device name must be 1 to 32 bytes");
    }
    if name.contains('/') || name.starts_with('.') || name.chars().any(is_unsafe_char) {
        return Err("device name contains a character not allowed in file names");
    }
    Ok(())
}

/// Control characters (C0, DEL, C1) and the Unicode bidirectional
/// embedding, override and isolate characters.
fn is_unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::GroupSecret;
    use crate::crypto::view::{MAX_VIEW_ENTRIES, ViewEntry};

    fn header(kind: BlobKind) -> BlobHeader {
        BlobHeader {
            kind,
            sender: DeviceId([5; 32]),
            seq: 7,
            created_at_ms: 1_700_000_000_000,
            compression: Compression::None,
            body_len: 0,
            view: Default::default(),
        }
    }

    fn chunk(name: &str) -> BlobKind {
        BlobKind::FileChunk(FileChunk {
            file_id: [1; 16],
            name: name.into(),
            mode: 0o644,
            index: 0,
            offset: 0,
            size_hint: Some(5),
            end: Some(FileEnd {
                chunks: 1,
                size: 5,
                blake3: [2; 32],
            }),
        })
    }

    #[test]
    fn seal_open_round_trip_compressed_and_not() {
        let keys = GroupSecret::generate().keys();
        let id = BlobId([3; 16]);
        for body in [
            vec![],
            b"hello".to_vec(),
            vec![b'a'; 100_000],
            crate::crypto::random_bytes::<4096>().to_vec(),
        ] {
            let sealed = seal(&keys, &id, header(chunk("f.txt")), &body, 1 << 20).unwrap();
            assert_eq!(sealed.len(), sealed_len(sealed.len() - ENVELOPE_OVERHEAD));
            let opened = open(&keys, &id, &sealed).unwrap();
            assert_eq!(opened.body, body);
            assert_eq!(opened.header.seq, 7);
        }
    }

    #[test]
    fn compressible_bodies_are_compressed() {
        let keys = GroupSecret::generate().keys();
        let sealed = seal(
            &keys,
            &BlobId([3; 16]),
            header(BlobKind::Message),
            &[b'x'; 50_000],
            1 << 20,
        )
        .unwrap();
        assert!(sealed.len() < 1000);
        let opened = open(&keys, &BlobId([3; 16]), &sealed).unwrap();
        assert!(matches!(
            opened.header.compression,
            Compression::Zstd { raw_len: 50_000 }
        ));
    }

    #[test]
    fn large_bodies_are_sampled_before_compressing() {
        let random = |n: usize| {
            let mut v = vec![0u8; n];
            getrandom::fill(&mut v).unwrap();
            v
        };
        // Small bodies are always tried.
        assert!(worth_compressing(&random(PROBE_ABOVE)));
        // Incompressible: skipped without a whole pass.
        assert!(!worth_compressing(&random(1 << 20)));
        // Compressible text anywhere in the body (here: the second half) is
        // caught by the spread-out sample.
        let mut mixed = random(512 * 1024);
        mixed.extend(b"all work and no play ".repeat(25_000));
        assert!(worth_compressing(&mixed));
        let keys = GroupSecret::generate().keys();
        let id = BlobId([3; 16]);
        let sealed = seal(&keys, &id, header(BlobKind::Message), &mixed, 1 << 20).unwrap();
        let opened = open(&keys, &id, &sealed).unwrap();
        assert!(matches!(
            opened.header.compression,
            Compression::Zstd { .. }
        ));
        assert_eq!(opened.body, mixed);
        let noise = random(1 << 19);
        let sealed = seal(&keys, &id, header(BlobKind::Message), &noise, 1 << 20).unwrap();
        let opened = open(&keys, &id, &sealed).unwrap();
        assert_eq!(opened.header.compression, Compression::None);
        assert_eq!(opened.body, noise);
    }

    #[test]
    fn every_flipped_bit_fails() {
        // A small envelope (a `Message` header and a 17-byte body: about
        // 100 bytes), so each of its bits is flipped in turn.
        let keys = GroupSecret::generate().keys();
        let id = BlobId([3; 16]);
        let sealed = seal(
            &keys,
            &id,
            header(BlobKind::Message),
            b"some secret bytes",
            1 << 20,
        )
        .unwrap();
        assert!(sealed.len() <= 160, "{} bytes", sealed.len());
        open(&keys, &id, &sealed).expect("the untouched envelope opens");
        for i in 0..sealed.len() {
            for bit in 0..8 {
                let mut t = sealed.clone();
                t[i] ^= 1 << bit;
                // The version byte is checked as such; every other byte is
                // covered by the AEAD tag.
                let expected = if i == 0 {
                    EnvelopeError::UnsupportedVersion(t[0])
                } else {
                    EnvelopeError::Authentication
                };
                assert_eq!(
                    open(&keys, &id, &t).err(),
                    Some(expected),
                    "flip of byte {i} bit {bit} of {}",
                    sealed.len()
                );
            }
        }
        // Truncation and extension fail too.
        assert!(open(&keys, &id, &sealed[..sealed.len() - 1]).is_err());
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&keys, &id, &longer).is_err());
    }

    #[test]
    fn wrong_group_or_blob_id_fails() {
        let keys = GroupSecret::generate().keys();
        let other = GroupSecret::generate().keys();
        let sealed = seal(
            &keys,
            &BlobId([3; 16]),
            header(BlobKind::Message),
            b"x",
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            open(&other, &BlobId([3; 16]), &sealed),
            Err(EnvelopeError::Authentication)
        );
        assert_eq!(
            open(&keys, &BlobId([4; 16]), &sealed),
            Err(EnvelopeError::Authentication)
        );
    }

    #[test]
    fn sizes_are_padded_to_padme_buckets() {
        let keys = GroupSecret::generate().keys();
        let id = BlobId([3; 16]);
        let random: Vec<u8> = (0..3)
            .flat_map(|_| crate::crypto::random_bytes::<4096>())
            .collect();
        let a = seal(
            &keys,
            &id,
            header(BlobKind::Message),
            &random[..10_000],
            1 << 20,
        )
        .unwrap();
        let b = seal(
            &keys,
            &id,
            header(BlobKind::Message),
            &random[..10_100],
            1 << 20,
        )
        .unwrap();
        assert_eq!(a.len(), b.len(), "nearby sizes share a bucket");
        assert_eq!(
            a.len() - ENVELOPE_OVERHEAD,
            padme((a.len() - ENVELOPE_OVERHEAD) as u64) as usize
        );
    }

    #[test]
    fn max_body_fits_exactly() {
        for max in [1 << 16, 1 << 20, 3 << 20, 1000] {
            let body = max_body_for(max);
            let keys = GroupSecret::generate().keys();
            let random: Vec<u8> = (0..body.div_ceil(4096))
                .flat_map(|_| crate::crypto::random_bytes::<4096>())
                .take(body)
                .collect();
            let sealed = seal(
                &keys,
                &BlobId([3; 16]),
                header(chunk(&"n".repeat(255))),
                &random,
                max,
            )
            .unwrap();
            assert!(sealed.len() <= max, "{max}");
            assert!(sealed_len(4 + MAX_HEADER_LEN + body + 1) > max || body == max);
        }
    }

    #[test]
    fn hostile_names_are_rejected() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a\0b",
            "\x1b]0;owned\x07.txt",
            "a\x1b[2Jb",
            "line\nbreak",
            "tab\there",
            "del\x7f",
            "c1\u{9b}31m",
            "evil\u{202E}txt.exe",
            ".0k-sync-00112233445566778899aabbccddeeff.part",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("report (1).pdf").unwrap();
        validate_name(".bashrc").unwrap();
        validate_name("café ünïcode 日本.txt").unwrap();
        for bad in ["", ".hidden", "a/b", "x\x1b", &"d".repeat(33)] {
            assert!(validate_device_name(bad).is_err(), "{bad:?}");
        }
        validate_device_name("laptop").unwrap();
        let keys = GroupSecret::generate().keys();
        let sealed = seal(
            &keys,
            &BlobId([3; 16]),
            header(chunk("../../etc/passwd")),
            b"x",
            1 << 20,
        )
        .unwrap();
        assert!(matches!(
            open(&keys, &BlobId([3; 16]), &sealed),
            Err(EnvelopeError::Malformed(_))
        ));
    }

    /// Golden bytes of headers (postcard): version-1 headers (what clients
    /// before group views sealed) still decode the same, and the layout of
    /// a version-2 header with a view is pinned (docs/protocol.md, "Blob
    /// payloads").
    #[test]
    fn header_bytes_are_stable() {
        let chunk = FileChunk {
            file_id: [1; 16],
            name: "a.txt".into(),
            mode: 0o644,
            index: 2,
            offset: 300,
            size_hint: Some(5),
            end: None,
        };
        let legacy = header(BlobKind::FileChunk(chunk.clone()));
        let versioned = header(BlobKind::VersionedChunk {
            chunk,
            version: FileVersion {
                lineage: [3; 16],
                generation: 2,
                device: Some("pc".into()),
            },
        });
        for (h, golden) in [(&legacy, LEGACY_HEADER), (&versioned, VERSIONED_HEADER)] {
            let bytes = hex::decode(golden).unwrap();
            let (v1, rest) = postcard::take_from_bytes::<BlobHeaderV1>(&bytes).unwrap();
            assert!(rest.is_empty());
            assert_eq!(&BlobHeader::from(v1), h);
        }
        let mut with_view = versioned;
        with_view.view = GroupView::new(vec![
            ViewEntry {
                device: DeviceId([0xaa; 32]),
                seq: 300,
            },
            ViewEntry {
                device: DeviceId([0xbb; 32]),
                seq: 1,
            },
        ])
        .unwrap();
        let bytes = postcard::to_allocvec(&with_view).unwrap();
        assert_eq!(hex::encode(&bytes), V2_HEADER);
        assert_eq!(
            postcard::from_bytes::<BlobHeader>(&bytes).unwrap(),
            with_view
        );
    }

    /// Version-1 headers (no view).
    const LEGACY_HEADER: &str = "000101010101010101010101010101010105612e747874a40302ac0201050005050505050505050505050505050505050505050505050505050505050505050780d095ffbc310000";
    const VERSIONED_HEADER: &str = "030101010101010101010101010101010105612e747874a40302ac0201050003030303030303030303030303030303020102706305050505050505050505050505050505050505050505050505050505050505050780d095ffbc310000";
    /// A version-2 header: `VERSIONED_HEADER` followed by a view of two
    /// entries (0xaa… at 300, 0xbb… at 1).
    const V2_HEADER: &str = "030101010101010101010101010101010105612e747874a40302ac0201050003030303030303030303030303030303020102706305050505050505050505050505050505050505050505050505050505050505050780d095ffbc31000002aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac02bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb01";

    /// The chunk of the golden envelopes: `a.txt`, "hello", sealed with
    /// group secret `[7; 32]`, blob id `[4; 16]` and nonce `[9; 24]`.
    fn golden_header() -> BlobHeader {
        let mut h = header(BlobKind::VersionedChunk {
            chunk: FileChunk {
                file_id: [1; 16],
                name: "a.txt".into(),
                mode: 0o644,
                index: 0,
                offset: 0,
                size_hint: Some(5),
                end: Some(FileEnd {
                    chunks: 1,
                    size: 5,
                    blake3: *blake3::hash(b"hello").as_bytes(),
                }),
            },
            version: FileVersion {
                lineage: [3; 16],
                generation: 2,
                device: Some("pc".into()),
            },
        });
        h.body_len = 5; // as `seal` fills it in
        h
    }

    /// Whole envelopes, byte for byte: one sealed by the client before
    /// group views (version 1, generated with that code) still opens, and
    /// a version-2 envelope is pinned (docs/protocol.md "Blob payloads").
    #[test]
    fn golden_envelopes_open_and_seal_byte_for_byte() {
        let keys = GroupSecret::from_bytes([7; 32]).keys();
        let id = BlobId([4; 16]);
        let v1 = hex::decode(V1_ENVELOPE).unwrap();
        let opened = open(&keys, &id, &v1).unwrap();
        assert_eq!(opened.header, golden_header());
        assert!(opened.header.view.is_empty());
        assert_eq!(opened.body, b"hello".to_vec());

        let mut h = golden_header();
        h.view = GroupView::new(vec![ViewEntry {
            device: DeviceId([0xaa; 32]),
            seq: 300,
        }])
        .unwrap();
        let v2 = seal_with_nonce(&keys, &id, h.clone(), b"hello", 1 << 20, [9; NONCE_LEN]).unwrap();
        assert_eq!(hex::encode(&v2), V2_ENVELOPE);
        let opened = open(&keys, &id, &v2).unwrap();
        assert_eq!(opened.header, h);
        assert_eq!(opened.body, b"hello".to_vec());
    }

    /// The roster kinds are tags 4 and 5, after every older kind, so older
    /// headers decode unchanged (docs/protocol.md "Blob payloads").
    #[test]
    fn roster_kind_header_bytes_are_stable() {
        for (kind, golden) in [
            (BlobKind::Roster, ROSTER_HEADER),
            (BlobKind::Enrolment, ENROLMENT_HEADER),
        ] {
            let h = header(kind);
            let bytes = postcard::to_allocvec(&h).unwrap();
            assert_eq!(hex::encode(&bytes), golden);
            assert_eq!(postcard::from_bytes::<BlobHeader>(&bytes).unwrap(), h);
        }
    }

    const ROSTER_HEADER: &str =
        "0405050505050505050505050505050505050505050505050505050505050505050780d095ffbc31000000";
    const ENROLMENT_HEADER: &str =
        "0505050505050505050505050505050505050505050505050505050505050505050780d095ffbc31000000";

    /// A header length that covers more than the header: the extra bytes
    /// are refused, not ignored (one encoding per header).
    #[test]
    fn bytes_after_the_header_are_malformed() {
        let mut h = header(BlobKind::Message);
        h.body_len = 0;
        let bytes = postcard::to_allocvec(&h).unwrap();
        let mut inner = ((bytes.len() + 1) as u32).to_be_bytes().to_vec();
        inner.extend_from_slice(&bytes);
        inner.push(0);
        assert_eq!(
            decode_inner(&inner).err(),
            Some(EnvelopeError::Malformed("bytes after the header".into()))
        );
        let mut exact = (bytes.len() as u32).to_be_bytes().to_vec();
        exact.extend_from_slice(&bytes);
        assert_eq!(decode_inner(&exact).unwrap().header, h);
    }

    /// The version byte is bound into the associated data: a version-2
    /// envelope relabelled as version 1 (which the client still opens)
    /// fails authentication instead of being read the old way.
    #[test]
    fn a_relabelled_version_fails_authentication() {
        let keys = GroupSecret::from_bytes([7; 32]).keys();
        let id = BlobId([4; 16]);
        let mut v2 = hex::decode(V2_ENVELOPE).unwrap();
        v2[0] = ENVELOPE_V1;
        assert_eq!(open(&keys, &id, &v2), Err(EnvelopeError::Authentication));
        let mut v1 = hex::decode(V1_ENVELOPE).unwrap();
        v1[0] = ENVELOPE_VERSION;
        assert_eq!(open(&keys, &id, &v1), Err(EnvelopeError::Authentication));
        for unknown in [0x00, 0x03, 0xff] {
            v1[0] = unknown;
            assert_eq!(
                open(&keys, &id, &v1),
                Err(EnvelopeError::UnsupportedVersion(unknown))
            );
        }
    }

    /// Sealed by the version-1 code (commit 74662b6) with a fixed nonce.
    const V1_ENVELOPE: &str = "01090909090909090909090909090909090909090909090909da90c4482c8e5526ec10312dda753d91477abfb238b903f72b375599f106f6c3b15a420398aea7e9aa27790284c779ceed0d0712c3c7627dddf40df93c8d675389dcb96567beae722ec2d17f19c64145a83eccbbb47d88c07b17c8bcb51448f7756f1bba17405eb17fff99fbef010d86615f3d2246c565a9e259c3e27d0d36a82b40935f0221da03aedb339ea57bb501925468c23f6d067af553314c1645af8d";
    const V2_ENVELOPE: &str = "02090909090909090909090909090909090909090909090909da90c4972c8e5526ec10312dda753d91477abfb238b903f72b375599f106f6c3b15a420398aea7e9aa27790284c779ceed0d0712c3c7627dddf40df93c8d675389dcb96567beae722ec2d17f19c64145a83eccbbb47d88c07b17c8bcb51448f7756f1bba17405eb17fff99fbef010d86615f3d2246c565a9e259c3e27d0d36a82b40fa90c4e71fa9047199340fd11fabf03ba47b0f2851cf5f7166aa2885288a58b908d3c5c8000506fd2701ef8255db6a03e5a4f1d4624889eaa0b3942b3565";

    #[test]
    fn header_of_max_name_fits_the_bound() {
        let longest_path = format!(
            "{}/m/{}",
            vec!["n".repeat(MAX_NAME_LEN); 3].join("/"),
            "o".repeat(crate::relpath::MAX_PATH_LEN - 3 * (MAX_NAME_LEN + 1) - 2)
        );
        assert_eq!(longest_path.len(), crate::relpath::MAX_PATH_LEN);
        crate::relpath::validate_path(&longest_path).unwrap();
        let BlobKind::FileChunk(c) = chunk(&longest_path) else {
            unreachable!()
        };
        let mut h = header(BlobKind::VersionedChunk {
            chunk: c,
            version: FileVersion {
                lineage: [0xff; 16],
                generation: u64::MAX,
                device: Some("d".repeat(MAX_DEVICE_NAME_LEN)),
            },
        });
        h.seq = u64::MAX;
        h.created_at_ms = u64::MAX;
        h.compression = Compression::Zstd { raw_len: u32::MAX };
        h.body_len = u32::MAX;
        if let BlobKind::VersionedChunk { chunk: c, .. } = &mut h.kind {
            c.mode = u32::MAX;
            c.index = u32::MAX;
            c.offset = u64::MAX;
            c.size_hint = Some(u64::MAX);
            c.end = Some(FileEnd {
                chunks: u32::MAX,
                size: u64::MAX,
                blake3: [0xff; 32],
            });
        }
        h.view = GroupView::new(
            (0..MAX_VIEW_ENTRIES as u8)
                .map(|i| ViewEntry {
                    device: DeviceId([i; 32]),
                    seq: crate::integrity::MAX_SEQ,
                })
                .collect(),
        )
        .unwrap();
        assert!(postcard::to_allocvec(&h).unwrap().len() <= MAX_HEADER_LEN);
    }
}
