//! What the folder holds at one path: a file (content hash, size,
//! executable bit) or a directory. The same shape describes the synced
//! state (the fold of the group's records), the state this device last
//! reconciled its disk to, and what a scan found on disk.

use serde::{Deserialize, Serialize};

/// BLAKE3 of a file's content (32 bytes).
pub type Hash = [u8; 32];

/// One path's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A regular file.
    File {
        /// BLAKE3 of its content.
        hash: Hash,
        /// Bytes.
        size: u64,
        /// Any executable bit set (`mode & 0o111`).
        exec: bool,
    },
    /// A directory (kept explicitly so empty directories sync).
    Dir,
}

impl Entry {
    /// The content hash of a file; `None` for a directory.
    pub fn hash(&self) -> Option<Hash> {
        match self {
            Entry::File { hash, .. } => Some(*hash),
            Entry::Dir => None,
        }
    }

    /// True for a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self, Entry::Dir)
    }
}

/// What a scan found at one path: an entry it can sync, or something it
/// leaves alone (a symbolic link, a special file, a file being written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// A regular file or a directory.
    Entry(Entry),
    /// Not synced here (symbolic link, FIFO, device, unreadable, changing
    /// while read): neither reported as deleted nor replaced.
    Untouchable(String),
}

/// Short hex of a hash, for messages.
pub fn short(hash: &Hash) -> String {
    hex::encode(&hash[..6])
}
