//! Batch journals (docs/client.md "Files", "Batched small files"): one
//! JSON file per batch of small files pushed together
//! ([`crate::SyncClient::push_small_files`]), in `<home>/transfers/batches/`,
//! written atomically before the batch is sent and removed once the relay
//! acknowledged it.
//!
//! A batch journal holds one [`PushJournal`] per file (each file one chunk,
//! one sequence number) and, at the top level, the range of sequence
//! numbers its files use, like a push journal's `first_seq`/`last_seq` (so
//! [`crate::seqs`] reads either kind the same way). A batch interrupted by
//! a crash is resumed by the next batched push: a file still unchanged and
//! pushed under the same name goes out again with its journaled file id,
//! blob id and sequence number (the relay stores it once); the others are
//! given up with a `Void` of their numbers.

use super::{JOURNAL_VERSION, PushJournal};
use crate::error::{ClientError, Result};
use crate::util::{ensure_private_dir, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Layout version of batch journal files.
pub const BATCH_JOURNAL_VERSION: u32 = 1;

/// The directory of batch journals under a home's `transfers/`.
pub const BATCHES_DIR: &str = "batches";

/// One batch of small files in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchJournal {
    /// [`BATCH_JOURNAL_VERSION`].
    pub version: u32,
    /// Random id (hex); names the file.
    pub id: String,
    /// Lowest sequence number the files use (0: none).
    pub first_seq: u64,
    /// Highest sequence number the files use (0: none).
    pub last_seq: u64,
    /// The files, each a complete one-chunk push journal (version
    /// [`JOURNAL_VERSION`], `chunks: Some(1)`, `first_seq == last_seq`).
    pub files: Vec<PushJournal>,
}

impl BatchJournal {
    /// A batch of `files` with a new random id; the range is set from the
    /// files' numbers.
    pub fn new(id: String, files: Vec<PushJournal>) -> BatchJournal {
        let mut b = BatchJournal {
            version: BATCH_JOURNAL_VERSION,
            id,
            first_seq: 0,
            last_seq: 0,
            files,
        };
        b.set_range();
        b
    }

    /// Set `first_seq`/`last_seq` from the files' numbers.
    pub fn set_range(&mut self) {
        let seqs = self
            .files
            .iter()
            .filter(|f| f.first_seq > 0)
            .map(|f| f.first_seq);
        self.first_seq = seqs.clone().min().unwrap_or(0);
        self.last_seq = seqs.max().unwrap_or(0);
    }
}

/// The batch journal directory of a home (`<home>/transfers/batches`).
#[derive(Debug, Clone)]
pub struct BatchJournals {
    dir: PathBuf,
}

impl BatchJournals {
    /// Batch journals of the home whose journals are in `transfers`.
    pub fn in_transfers(transfers: &Path) -> BatchJournals {
        BatchJournals {
            dir: transfers.join(BATCHES_DIR),
        }
    }

    /// The file of batch `id`.
    pub fn path_for(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Persist atomically (the directory created 0700 on first write).
    /// Errors: [`ClientError::Io`].
    pub fn save(&self, batch: &BatchJournal) -> Result<()> {
        ensure_private_dir(&self.dir)?;
        let json = serde_json::to_vec(batch)
            .map_err(|e| ClientError::Home(format!("cannot encode batch journal: {e}")))?;
        write_atomic(&self.path_for(&batch.id), &json)
    }

    /// Forget batch `id` (no error when it is gone). Errors:
    /// [`ClientError::Io`].
    pub fn remove(&self, id: &str) -> Result<()> {
        super::remove_if_present(&self.path_for(id))
    }

    /// Every batch journal left (by a crash: a finished batch removes its
    /// own). Errors: [`ClientError::Io`], [`ClientError::Home`] (corrupt,
    /// or of a later version).
    pub fn list(&self) -> Result<Vec<BatchJournal>> {
        let mut out = Vec::new();
        for path in super::json_files(&self.dir)? {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ClientError::io(&path)(e)),
            };
            let batch: BatchJournal = serde_json::from_slice(&bytes).map_err(|e| {
                ClientError::Home(format!("{}: corrupt batch journal: {e}", path.display()))
            })?;
            if batch.version > BATCH_JOURNAL_VERSION
                || batch.files.iter().any(|f| f.version > JOURNAL_VERSION)
            {
                return Err(ClientError::Home(format!(
                    "{}: batch journal of a later client (version {})",
                    path.display(),
                    batch.version
                )));
            }
            out.push(batch);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }
}
