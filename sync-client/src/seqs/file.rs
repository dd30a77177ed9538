//! `seq.json`, the counter of a device home's sequence numbers, and what
//! it records besides the counter (docs/client.md "Sequence numbers").

use crate::error::{ClientError, Result};
use crate::util::write_atomic;
use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `seq.json`: the next number no one has reserved, the blocks that
/// processes hold or held (not yet voided), and the last reservation made
/// for a push journal.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct SeqFile {
    pub(super) next_seq: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) blocks: Vec<BlockEntry>,
    /// The numbers of the last exact reservation made for a push journal,
    /// written (with the counter past them) *before* the journal: the next
    /// locked operation settles it ([`Recording::unnamed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) recording: Option<Recording>,
    /// Every push journal's numbers are below `next_seq`. Clients that
    /// write this move the counter before they write a journal; the
    /// journals of a client before them (which wrote the journal first)
    /// are counted once, by listing them, when it is missing.
    #[serde(default)]
    pub(super) journals_counted: bool,
}

/// One reserved block in `seq.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BlockEntry {
    /// Random id (hex); names the block's lock file.
    pub(super) id: String,
    /// First number not known to be used (the block's first, or where the
    /// unused rest of a given-up block starts).
    pub(super) first: u64,
    /// Last number of the block.
    pub(super) last: u64,
}

/// An exact reservation for a push journal, recorded in `seq.json` before
/// the journal is written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Recording {
    /// First number reserved.
    pub(super) first: u64,
    /// Last number reserved.
    pub(super) last: u64,
    /// The journal's path relative to `<home>/transfers/` (a push
    /// journal's file name, or `batches/<id>.json`).
    pub(super) journal: String,
}

impl Recording {
    /// The ranges of this reservation that its journal does not name
    /// (`named`: the range the journal names, read after its writer
    /// finished or died; `None` when there is no journal). Those were
    /// never used — the writer died or failed before the journal existed —
    /// or were used by a push that has finished or been abandoned since
    /// (stored before, so a void follows them): they can be voided.
    /// Numbers the journal names belong to its push (resumed with them,
    /// or abandoned with its own `Void`).
    pub(super) fn unnamed(&self, named: Option<(u64, u64)>) -> Vec<(u64, u64)> {
        let mut set = RangeInclusiveSet::new();
        if let Some((first, last)) = named {
            set.insert(first..=last);
        }
        set.gaps(&(self.first..=self.last))
            .map(|r| (*r.start(), *r.end()))
            .collect()
    }
}

/// Read `seq.json` (a missing file is a fresh counter at 1). Errors:
/// [`ClientError::Io`], [`ClientError::Home`] (corrupt).
pub(super) fn read_seq_file(path: &Path) -> Result<SeqFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<SeqFile>(&bytes).map_err(|e| {
            ClientError::Home(format!("{}: corrupt sequence file: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SeqFile {
            next_seq: 1,
            ..SeqFile::default()
        }),
        Err(e) => Err(ClientError::io(path)(e)),
    }
}

/// Write `seq.json` durably (temp file, fsync, rename, fsync of the
/// directory). Errors: [`ClientError::Io`].
pub(super) fn write_seq_file(path: &Path, file: &SeqFile) -> Result<()> {
    let json = serde_json::to_vec(file)
        .map_err(|e| ClientError::Home(format!("cannot encode sequence file: {e}")))?;
    write_atomic(path, &json)
}
