//! Folder records: what one device tells the group about its changes to the
//! folder (docs/client.md "Folder sync"). A record is the body of one
//! `Message` blob: the 8 bytes [`MAGIC`] (`0kfold` then the format
//! version, 0x00 0x01), then `postcard(Record)`. Content travels apart, as
//! an ordinary chunked file transfer named by the hex BLAKE3 of the
//! content; a record names content by that hash only.
//!
//! Every field a member controls is checked on decoding ([`decode`]):
//! at most [`MAX_OPS`] operations, each path a valid relative path
//! (`sync_client::relpath::validate_path`, the rules `pull` applies to
//! names) that does not start with `.0k-sync-`, sizes at most
//! `sync_client::receive::MAX_FILE_SIZE`, a device name of at most 32 bytes.

use crate::entry::Hash;
use serde::{Deserialize, Serialize};
use sync_client::crypto::envelope::{RESERVED_PREFIX, validate_device_name};
use sync_client::receive::MAX_FILE_SIZE;
use sync_client::relpath::validate_path;

/// Start of every record body: `0kfold`, then version 0x00 0x01.
pub const MAGIC: &[u8; 8] = b"0kfold\x00\x01";
/// Most operations in one record: a record with more is refused whole.
pub const MAX_OPS: usize = 1024;
/// Operations a device puts in one record (records stay far below one
/// blob: an operation is at most about 2.1 KiB).
pub const OPS_PER_RECORD: usize = 256;

/// One change to the folder. `base` is the content hash the sending device
/// held at the path in its synced state when it made the change (`None`:
/// nothing there): a receiver whose synced state differs treats the change
/// as concurrent (docs/client.md "Folder sync", the fold rules).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// The file at `path` now has content `hash` (created or changed).
    Put {
        /// Relative path.
        path: String,
        /// Content hash the sender replaced, if any.
        base: Option<Hash>,
        /// New content hash.
        hash: Hash,
        /// Bytes.
        size: u64,
        /// Executable bit.
        exec: bool,
    },
    /// The file at `path`, with content `base`, was deleted.
    Delete {
        /// Relative path.
        path: String,
        /// Content hash the sender deleted.
        base: Hash,
    },
    /// The file `from` (content `hash`) moved to `to`; no content is sent.
    Rename {
        /// Old relative path.
        from: String,
        /// New relative path.
        to: String,
        /// Content hash.
        hash: Hash,
        /// Bytes.
        size: u64,
        /// Executable bit.
        exec: bool,
    },
    /// A directory was created at `path`.
    Mkdir {
        /// Relative path.
        path: String,
    },
    /// The directory at `path` was removed.
    Rmdir {
        /// Relative path.
        path: String,
    },
}

impl Op {
    /// The paths the operation names.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Op::Put { path, .. }
            | Op::Delete { path, .. }
            | Op::Mkdir { path }
            | Op::Rmdir { path } => vec![path],
            Op::Rename { from, to, .. } => vec![from, to],
        }
    }
}

/// A batch of operations from one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The sender's device name (names its conflict copies), 1..=32 bytes.
    pub device: String,
    /// When the sender made the record (ms since the Unix epoch, its
    /// clock): dates conflict copies, the same on every device.
    pub at_ms: u64,
    /// The operations, applied in order.
    pub ops: Vec<Op>,
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Not a folder record (another application's message).
    #[error("not a folder record")]
    NotARecord,
    /// A folder record of a newer format version.
    #[error("folder record of unknown version {0}")]
    Version(u8),
    /// Malformed, or beyond a limit.
    #[error("malformed folder record: {0}")]
    Malformed(String),
}

/// Encode a record: [`MAGIC`] then postcard.
pub fn encode(record: &Record) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    // Infallible: postcard encodes every value of these types into a Vec.
    out.extend(postcard::to_allocvec(record).unwrap_or_default());
    out
}

/// A path as a record may name it.
pub fn check_path(path: &str) -> Result<(), String> {
    validate_path(path).map_err(|why| format!("path {path:?}: {why}"))?;
    if path
        .split('/')
        .any(|c| c.starts_with(RESERVED_PREFIX) || c == crate::STAGING_DIR)
    {
        return Err(format!("path {path:?} uses a reserved name"));
    }
    Ok(())
}

/// Decode and check a record body (see the module doc for the checks).
pub fn decode(body: &[u8]) -> Result<Record, RecordError> {
    if body.len() < MAGIC.len() || body[..6] != MAGIC[..6] {
        return Err(RecordError::NotARecord);
    }
    if body[6..8] != MAGIC[6..8] {
        return Err(RecordError::Version(body[7]));
    }
    let record: Record = postcard::from_bytes(&body[MAGIC.len()..])
        .map_err(|e| RecordError::Malformed(e.to_string()))?;
    if record.ops.len() > MAX_OPS {
        return Err(RecordError::Malformed(format!(
            "{} operations, more than {MAX_OPS}",
            record.ops.len()
        )));
    }
    validate_device_name(&record.device)
        .map_err(|e| RecordError::Malformed(format!("device name: {e}")))?;
    for op in &record.ops {
        for p in op.paths() {
            check_path(p).map_err(RecordError::Malformed)?;
        }
        if let Op::Put { size, .. } | Op::Rename { size, .. } = op
            && *size > MAX_FILE_SIZE
        {
            return Err(RecordError::Malformed(format!("size {size} over 1 TiB")));
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            device: "laptop".into(),
            at_ms: 1_700_000_000_000,
            ops: vec![
                Op::Put {
                    path: "a/b.txt".into(),
                    base: None,
                    hash: [1; 32],
                    size: 3,
                    exec: true,
                },
                Op::Delete {
                    path: "c".into(),
                    base: [2; 32],
                },
                Op::Rename {
                    from: "d".into(),
                    to: "e/d".into(),
                    hash: [3; 32],
                    size: 9,
                    exec: false,
                },
                Op::Mkdir { path: "f".into() },
                Op::Rmdir { path: "g".into() },
            ],
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        assert_eq!(decode(&encode(&r)).unwrap(), r);
    }

    /// Golden bytes of the version-1 encoding (docs/client.md "Folder
    /// sync"): a change of the format must change the version.
    #[test]
    fn golden() {
        let r = Record {
            device: "pc".into(),
            at_ms: 1,
            ops: vec![
                Op::Mkdir { path: "d".into() },
                Op::Delete {
                    path: "x".into(),
                    base: [0xab; 32],
                },
            ],
        };
        let hex = hex::encode(encode(&r));
        assert_eq!(
            hex,
            format!(
                "306b666f6c640001 02 7063 01 02 03 0164 01 0178 {}",
                "ab".repeat(32)
            )
            .replace(' ', "")
        );
    }

    #[test]
    fn refuses_hostile_records() {
        let mut r = sample();
        r.ops.push(Op::Mkdir {
            path: "../etc".into(),
        });
        assert!(matches!(
            decode(&encode(&r)),
            Err(RecordError::Malformed(_))
        ));
        let mut r = sample();
        r.ops = vec![Op::Mkdir { path: "x".into() }; MAX_OPS + 1];
        assert!(matches!(
            decode(&encode(&r)),
            Err(RecordError::Malformed(_))
        ));
        let mut r = sample();
        r.ops = vec![Op::Mkdir {
            path: ".0k-sync-folder/x".into(),
        }];
        assert!(matches!(
            decode(&encode(&r)),
            Err(RecordError::Malformed(_))
        ));
        let mut r = sample();
        r.ops = vec![Op::Put {
            path: "big".into(),
            base: None,
            hash: [0; 32],
            size: MAX_FILE_SIZE + 1,
            exec: false,
        }];
        assert!(matches!(
            decode(&encode(&r)),
            Err(RecordError::Malformed(_))
        ));
        assert_eq!(decode(b"hello"), Err(RecordError::NotARecord));
        assert_eq!(decode(b"0kfold\x00\x09"), Err(RecordError::Version(9)));
        assert!(decode(b"0kfold\x00\x01\xff\xff\xff\xff\xff").is_err());
    }
}
