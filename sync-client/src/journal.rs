//! Push journals (resumable pushes): one JSON file per pushed file in
//! `<home>/transfers/`, written atomically before the first blob is sent and
//! updated as the relay acknowledges chunks.
//!
//! A journal pins everything a retry must repeat exactly: the file id, the
//! chunk size, the block of sequence numbers, and — derived from the file id
//! — every chunk's blob id. So a push that is interrupted (crash, kill,
//! network) and run again sends the same blobs under the same ids: the relay
//! stores each once, and the push continues after the last acknowledged
//! chunk. A journal whose source changed, or that cannot be resumed (stdin),
//! is *abandoned*: a `Void` blob tells receivers to drop the partial file and
//! that its sequence numbers will never be used.

use crate::error::{ClientError, Result};
use crate::place::KnownVersion;
use crate::util::{ensure_private_dir, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use sync_protocol::BlobId;

pub mod batch;

/// The `*.json` files in `dir` (none when `dir` does not exist), in no
/// particular order. Errors: [`ClientError::Io`].
pub(crate) fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ClientError::io(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(ClientError::io(dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
    Ok(out)
}

/// Remove the file at `path`; no error when it is gone already.
/// Errors: [`ClientError::Io`].
pub(crate) fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClientError::io(path)(e)),
    }
}

/// Layout version of journal files.
pub const JOURNAL_VERSION: u32 = 1;

/// The blob id of chunk `index` of file `file_id`:
/// `BLAKE3-derive_key("0k-sync/1 chunk blob id", file_id ‖ index)[..16]`.
/// Random-looking to the relay, identical on every retry.
pub fn chunk_blob_id(file_id: &[u8; 16], index: u32) -> BlobId {
    let mut h = blake3::Hasher::new_derive_key("0k-sync/1 chunk blob id");
    h.update(file_id);
    h.update(&index.to_be_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&h.finalize().as_bytes()[..16]);
    BlobId(id)
}

/// Where the pushed bytes come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFingerprint {
    /// Canonical path.
    pub path: PathBuf,
    /// Size in bytes when the push started.
    pub size: u64,
    /// Modification time (ns since the epoch) when the push started.
    pub mtime_ns: i128,
}

impl SourceFingerprint {
    /// Fingerprint of the file at `path` now.
    pub fn of(path: &Path) -> Result<SourceFingerprint> {
        let canonical = std::fs::canonicalize(path).map_err(ClientError::io(path))?;
        let meta = std::fs::metadata(&canonical).map_err(ClientError::io(path))?;
        Ok(SourceFingerprint::from_meta(canonical, &meta))
    }

    /// Fingerprint of the file at `canonical` (a canonical path) whose
    /// metadata is `meta`.
    pub fn from_meta(canonical: PathBuf, meta: &std::fs::Metadata) -> SourceFingerprint {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        SourceFingerprint {
            path: canonical,
            size: meta.len(),
            mtime_ns,
        }
    }
}

/// One push in progress (or done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJournal {
    /// [`JOURNAL_VERSION`].
    pub version: u32,
    /// The file (None for stdin: not resumable).
    pub source: Option<SourceFingerprint>,
    /// Name receivers see.
    pub name: String,
    /// Permission bits.
    pub mode: u32,
    /// TTL asked for.
    pub ttl_s: Option<u32>,
    /// File id (hex) shared by all chunks.
    pub file_id: String,
    /// Content bytes per chunk.
    pub chunk_size: usize,
    /// Chunk count, when known up front.
    pub chunks: Option<u32>,
    /// First sequence number of the reserved block.
    pub first_seq: u64,
    /// Last sequence number reserved so far.
    pub last_seq: u64,
    /// Chunks `0..acked` are acknowledged by the relay.
    pub acked: u32,
    /// Lowest and highest cursor of acknowledged chunks.
    pub cursors: Option<(u64, u64)>,
    /// Set when every chunk is acknowledged; with the content hash (hex).
    pub complete: Option<String>,
    /// The file history this push continues or starts (hex; see
    /// [`crate::crypto::FileVersion`]); `None` in journals of older
    /// clients, whose chunks go out without a version.
    #[serde(default)]
    pub lineage: Option<String>,
    /// The generation pushed.
    #[serde(default)]
    pub generation: u64,
    /// The pushing device's name, sent with the version.
    #[serde(default)]
    pub device: Option<String>,
    /// When the push completed, Unix ms.
    #[serde(default)]
    pub completed_at_ms: u64,
}

impl PushJournal {
    /// The version this complete push sent from its source path, as a
    /// record of what this device (node id `me`, hex) holds there.
    pub fn known_version(&self, me: &str) -> Option<KnownVersion> {
        Some(KnownVersion {
            lineage: self.lineage.clone(),
            generation: self.generation,
            sender: me.to_string(),
            seq: self.last_seq,
            blake3: self.complete.clone()?,
            at_ms: self.completed_at_ms,
        })
    }

    /// The file id as bytes.
    pub fn file_id_bytes(&self) -> Result<[u8; 16]> {
        hex::decode(&self.file_id)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                ClientError::Home(format!("journal of {:?} has a bad file id", self.name))
            })
    }
}

/// The journal directory of a home.
#[derive(Debug, Clone)]
pub struct Journals {
    dir: PathBuf,
}

impl Journals {
    /// Journals in `dir` (created 0700 on first write).
    pub fn at(dir: impl Into<PathBuf>) -> Journals {
        Journals { dir: dir.into() }
    }

    /// Journal file for a source (by path) or a stdin push (by file id).
    pub fn path_for(&self, journal: &PushJournal) -> PathBuf {
        match &journal.source {
            Some(src) => self.path_of_source(&src.path),
            None => self
                .dir
                .join(format!("push-stdin-{}.json", journal.file_id)),
        }
    }

    /// Journal file of the source at `canonical` (a canonical path):
    /// `push-<first 24 hex digits of BLAKE3(path bytes)>.json`.
    pub fn path_of_source(&self, canonical: &Path) -> PathBuf {
        let hash = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex();
        self.dir.join(format!("push-{}.json", &hash[..24]))
    }

    /// Persist atomically.
    pub fn save(&self, journal: &PushJournal) -> Result<()> {
        ensure_private_dir(&self.dir)?;
        let json = serde_json::to_vec_pretty(journal)
            .map_err(|e| ClientError::Home(format!("cannot encode journal: {e}")))?;
        write_atomic(&self.path_for(journal), &json)
    }

    /// Forget a journal.
    pub fn remove(&self, journal: &PushJournal) -> Result<()> {
        remove_if_present(&self.path_for(journal))
    }

    /// Every journal (unreadable files are reported as errors).
    pub fn list(&self) -> Result<Vec<PushJournal>> {
        let mut out = Vec::new();
        for path in json_files(&self.dir)? {
            // A journal removed since the listing (a push that finished
            // in another process) is no longer there to report.
            if let Some(j) = read_journal_if_any(&path)? {
                out.push(j);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The highest sequence number any journal names, batch journals
    /// included (0 when none). Lists every journal: O(journals).
    pub fn max_reserved_seq(&self) -> Result<u64> {
        Ok(self.named_ranges()?.iter().map(|r| r.1).max().unwrap_or(0))
    }

    /// The ranges `(first, last)` of sequence numbers that journals name:
    /// every push journal's and every file's of every batch journal
    /// ([`batch`]). Lists every journal: O(journals). Errors:
    /// [`ClientError::Io`], [`ClientError::Home`] (corrupt).
    pub fn named_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let batches = batch::BatchJournals::in_transfers(&self.dir).list()?;
        Ok(self
            .list()?
            .iter()
            .chain(batches.iter().flat_map(|b| &b.files))
            .filter(|j| j.first_seq > 0 && j.last_seq >= j.first_seq)
            .map(|j| (j.first_seq, j.last_seq))
            .collect())
    }

    /// The range `(first_seq, last_seq)` the journal file at `relative`
    /// (a push journal, or a batch journal under `batches/`) names; `None`
    /// when there is no such file, it names none, or `relative` is not a
    /// plain relative path (it names no journal of this home). Errors:
    /// [`ClientError::Io`], [`ClientError::Home`] (corrupt).
    pub fn named_by(&self, relative: &Path) -> Result<Option<(u64, u64)>> {
        let plain = relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || relative.as_os_str().is_empty() {
            return Ok(None);
        }
        /// The fields both kinds of journal have.
        #[derive(Deserialize)]
        struct Named {
            first_seq: u64,
            last_seq: u64,
        }
        let path = self.dir.join(relative);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ClientError::io(&path)(e)),
        };
        let n: Named = serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::Home(format!("{}: corrupt push journal: {e}", path.display()))
        })?;
        Ok((n.first_seq > 0 && n.last_seq >= n.first_seq).then_some((n.first_seq, n.last_seq)))
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal of the file at `path`, if any: one read of the file
    /// its canonical path names ([`Journals::path_of_source`]), never a
    /// listing. Errors: [`ClientError::Io`] (`path` or the journal cannot
    /// be read), [`ClientError::Home`] (a corrupt journal).
    pub fn find(&self, path: &Path) -> Result<Option<PushJournal>> {
        let canonical = std::fs::canonicalize(path).map_err(ClientError::io(path))?;
        let Some(journal) = read_journal_if_any(&self.path_of_source(&canonical))? else {
            return Ok(None);
        };
        // A journal of another path under this name (a hash collision, or
        // a file moved here by hand) is not this path's.
        Ok(journal
            .source
            .as_ref()
            .is_some_and(|s| s.path == canonical)
            .then_some(journal))
    }
}

/// Read and parse the journal file at `path`; `None` when there is none.
/// Errors: [`ClientError::Io`], [`ClientError::Home`] (corrupt).
fn read_journal_if_any(path: &Path) -> Result<Option<PushJournal>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::io(path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| ClientError::Home(format!("{}: corrupt push journal: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_blob_ids_are_stable_and_distinct() {
        let f = [1u8; 16];
        assert_eq!(chunk_blob_id(&f, 0), chunk_blob_id(&f, 0));
        assert_ne!(chunk_blob_id(&f, 0), chunk_blob_id(&f, 1));
        assert_ne!(chunk_blob_id(&f, 0), chunk_blob_id(&[2u8; 16], 0));
    }

    #[test]
    fn journals_round_trip_and_are_found_by_path() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data.bin");
        std::fs::write(&file, b"hello").unwrap();
        let journals = Journals::at(tmp.path().join("transfers"));
        assert!(journals.list().unwrap().is_empty());
        let j = PushJournal {
            version: JOURNAL_VERSION,
            source: Some(SourceFingerprint::of(&file).unwrap()),
            name: "data.bin".into(),
            mode: 0o644,
            ttl_s: None,
            file_id: hex::encode([3u8; 16]),
            chunk_size: 1000,
            chunks: Some(1),
            first_seq: 5,
            last_seq: 5,
            acked: 0,
            cursors: None,
            complete: None,
            lineage: None,
            generation: 0,
            device: None,
            completed_at_ms: 0,
        };
        journals.save(&j).unwrap();
        assert_eq!(journals.find(&file).unwrap(), Some(j.clone()));
        assert_eq!(journals.list().unwrap().len(), 1);
        journals.remove(&j).unwrap();
        assert_eq!(journals.find(&file).unwrap(), None);
    }

    /// `find` reads the one file its path names, and takes it only when
    /// that journal is of this path (not a journal of another path put
    /// under the name, e.g. by hand); other journals are not its concern.
    #[test]
    fn find_takes_only_the_journal_of_its_own_path() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::write(&a, b"a").unwrap();
        std::fs::write(&b, b"b").unwrap();
        let journals = Journals::at(tmp.path().join("transfers"));
        let journal_of = |path: &Path, id: u8| PushJournal {
            version: JOURNAL_VERSION,
            source: Some(SourceFingerprint::of(path).unwrap()),
            name: "x".into(),
            mode: 0o644,
            ttl_s: None,
            file_id: hex::encode([id; 16]),
            chunk_size: 1000,
            chunks: Some(1),
            first_seq: 1,
            last_seq: 1,
            acked: 0,
            cursors: None,
            complete: None,
            lineage: None,
            generation: 0,
            device: None,
            completed_at_ms: 0,
        };
        let jb = journal_of(&b, 2);
        journals.save(&jb).unwrap();
        assert_eq!(journals.find(&a).unwrap(), None);
        assert_eq!(journals.find(&b).unwrap(), Some(jb.clone()));
        // b's journal copied under a's name: still not a's.
        let canonical_a = std::fs::canonicalize(&a).unwrap();
        std::fs::copy(
            journals.path_for(&jb),
            journals.path_of_source(&canonical_a),
        )
        .unwrap();
        assert_eq!(journals.find(&a).unwrap(), None);
    }
}
