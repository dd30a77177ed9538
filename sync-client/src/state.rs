//! The device's local sync state, persisted atomically (write temp, fsync,
//! rename; see [`crate::util::write_atomic`]) as JSON in the device home.
//!
//! Two files, so a `push` and a running `pull --follow` never overwrite each
//! other's updates:
//! - `state.json` (pull side): the cursor, what was seen of every sender,
//!   files still being received; one puller at a time (see
//!   [`crate::home::Home::lock_pull`]);
//! - `seq.json` (push side): this device's next sequence number and the
//!   blocks of numbers processes hold, updated under an exclusive file lock
//!   so concurrent pushes never share a number ([`crate::seqs`]).

use crate::error::{ClientError, Result};
use crate::integrity::SenderTrack;
use crate::place::KnownVersion;
use crate::seqs::{PendingVoid, SeqReserver};
use crate::util::write_atomic;
use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the state file's layout written by a device that has not
/// moved to another key epoch (older clients read it).
pub const STATE_VERSION: u32 = 1;
/// Version written once the cursor belongs to another epoch's group than
/// `group.toml`'s (docs/security.md "Devices, roster and key epochs"): a
/// client from before rosters refuses it instead of pulling the wrong group
/// from the wrong cursor.
pub const STATE_VERSION_EPOCHS: u32 = 2;

/// A file whose chunks are arriving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialFile {
    /// The file's name (validated single path component).
    pub name: String,
    /// Unix permission bits to apply.
    pub mode: u32,
    /// Where the chunks are written (`.0k-sync-<file id>.part` in the
    /// output directory); renamed to `name` next to it when complete.
    pub temp_path: PathBuf,
    /// Sender's node id, hex.
    pub sender: String,
    /// Chunk numbers written, as ranges (`[first, last]` pairs; single
    /// numbers in older state files).
    #[serde(deserialize_with = "crate::integrity::ranges_or_numbers")]
    pub received: RangeInclusiveSet<u32>,
    /// Known once the last chunk arrived: chunk count, size, BLAKE3.
    pub end: Option<(u32, u64, String)>,
    /// Content bytes written so far.
    #[serde(default)]
    pub bytes: u64,
    /// The size the sender announced (progress display).
    #[serde(default)]
    pub size_hint: Option<u64>,
    /// Every chunk arrived; the file is being verified and moved into place.
    #[serde(default)]
    pub completing: bool,
    /// The file's history (hex), when its sender gave one
    /// ([`crate::crypto::FileVersion`]).
    #[serde(default)]
    pub lineage: Option<String>,
    /// Its generation in that history.
    #[serde(default)]
    pub generation: u64,
    /// The sending device's name, for a conflict copy.
    #[serde(default)]
    pub device: Option<String>,
    /// The sender's highest sequence number among the chunks so far.
    #[serde(default)]
    pub seq: u64,
}

/// Everything the device remembers between runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientState {
    /// Layout version ([`STATE_VERSION`]).
    pub version: u32,
    /// Every blob up to this cursor has been applied.
    pub cursor: u64,
    /// Per sender (node id, hex): sequence numbers seen.
    #[serde(default)]
    pub senders: BTreeMap<String, SenderTrack>,
    /// Files being received, by file id (hex).
    #[serde(default)]
    pub partials: BTreeMap<String, PartialFile>,
    /// Number of replayed blobs seen (and not applied), ever.
    #[serde(default)]
    pub replays: u64,
    /// Number of blobs that failed to decrypt or verify, ever.
    #[serde(default)]
    pub rejected: u64,
    /// The file version this device last wrote at each path (absolute):
    /// what a later version may replace (see [`crate::place`]).
    #[serde(default)]
    pub files: BTreeMap<String, KnownVersion>,
    /// The group (id, hex) `cursor` belongs to; `None`: the group of
    /// `group.toml`. Each key epoch is a group of its own at the relay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Cursors in the other groups of the roster's epochs, by group id (hex).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub cursors: BTreeMap<String, u64>,
}

impl ClientState {
    /// Make `cursor` the cursor in group `group` (hex), keeping the one of
    /// the group it belonged to; `home_group` is the group of `group.toml`
    /// (what `group: None` means).
    pub fn switch_group(&mut self, group: &str, home_group: &str) {
        let current = self.group.as_deref().unwrap_or(home_group);
        if current == group {
            return;
        }
        self.cursors.insert(current.to_string(), self.cursor);
        self.cursor = self.cursors.remove(group).unwrap_or(0);
        self.group = (group != home_group).then(|| group.to_string());
        if self.group.is_some() {
            self.version = STATE_VERSION_EPOCHS;
        }
    }

    /// The saved cursor in group `group` (hex); see [`ClientState::switch_group`].
    pub fn cursor_in(&self, group: &str, home_group: &str) -> u64 {
        if self.group.as_deref().unwrap_or(home_group) == group {
            self.cursor
        } else {
            self.cursors.get(group).copied().unwrap_or(0)
        }
    }
}

impl Default for ClientState {
    fn default() -> Self {
        ClientState {
            version: STATE_VERSION,
            cursor: 0,
            senders: BTreeMap::new(),
            partials: BTreeMap::new(),
            replays: 0,
            rejected: 0,
            files: BTreeMap::new(),
            group: None,
            cursors: BTreeMap::new(),
        }
    }
}

/// The state and the files it lives in.
#[derive(Debug)]
pub struct StateStore {
    path: PathBuf,
    seqs: SeqReserver,
    /// The current pull state; call [`StateStore::save`] to persist changes.
    pub state: ClientState,
}

impl StateStore {
    /// Load the pull state from `path` (fresh if missing); sequence numbers
    /// live in `seq.json` next to it.
    /// Errors: [`ClientError::Io`], [`ClientError::Home`] (corrupt file).
    pub fn open(path: impl Into<PathBuf>) -> Result<StateStore> {
        let path: PathBuf = path.into();
        let seqs = SeqReserver::new(path.parent().unwrap_or(Path::new(".")));
        let state = match std::fs::read(&path) {
            Ok(bytes) => {
                let state: ClientState = serde_json::from_slice(&bytes).map_err(|e| {
                    ClientError::Home(format!("{}: corrupt state file: {e}", path.display()))
                })?;
                if state.version != STATE_VERSION && state.version != STATE_VERSION_EPOCHS {
                    return Err(ClientError::Home(format!(
                        "{}: state version {} is not supported (expected {STATE_VERSION})",
                        path.display(),
                        state.version
                    )));
                }
                state
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClientState::default(),
            Err(e) => return Err(ClientError::io(&path)(e)),
        };
        Ok(StateStore { path, seqs, state })
    }

    /// Persist atomically. Errors: [`ClientError::Io`].
    pub fn save(&self) -> Result<()> {
        let json = serde_json::to_vec_pretty(&self.state)
            .map_err(|e| ClientError::Home(format!("cannot encode state: {e}")))?;
        write_atomic(&self.path, &json)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding the state files (the device home).
    pub fn dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }

    /// Reserve `n` sequence numbers for this device's next blobs and persist
    /// the reservation before they are used (under an exclusive lock of
    /// `seq.lock`), so a number is never used twice, even by two processes
    /// or after a crash mid-push. Returns the first. In block mode
    /// ([`StateStore::use_seq_blocks`]) most calls take the numbers from the
    /// block held in memory and write nothing.
    pub fn reserve_seqs(&mut self, n: u64) -> Result<u64> {
        self.seqs.reserve_then(n, None, |_| Ok(()))
    }

    /// As [`StateStore::reserve_seqs`], running `record(first)` — saving
    /// the push journal at `journal` (in `<home>/transfers/`) that names
    /// the numbers — before they count as handed out (under the lock, once
    /// the counter has moved past them). Numbers named by a push journal
    /// are never handed out again nor voided; numbers whose journal was
    /// never written (a crash, a failed write) are voided by the next
    /// locked reservation ([`crate::seqs`]). Errors: as
    /// [`StateStore::reserve_seqs`], or `record`'s.
    pub fn reserve_seqs_then(
        &mut self,
        n: u64,
        journal: &Path,
        record: impl FnOnce(u64) -> Result<()>,
    ) -> Result<u64> {
        self.seqs.reserve_then(n, Some(journal), record)
    }

    /// Reserve exactly `n` numbers under the lock, with one durable write,
    /// whatever the mode (never from or as a block). Errors: as
    /// [`StateStore::reserve_seqs`].
    pub fn reserve_seqs_exact(&mut self, n: u64) -> Result<u64> {
        self.seqs.reserve_exact(n)
    }

    /// Reserve sequence numbers in blocks from now on (a long-lived client:
    /// [`crate::seqs`]). Before dropping the store, call
    /// [`crate::SyncClient::release_seqs`] so the block's unused numbers are
    /// voided now rather than by the next process.
    pub fn use_seq_blocks(&mut self) {
        self.seqs.use_blocks();
    }

    /// Give up the current block of sequence numbers (see
    /// [`crate::seqs::SeqReserver::release`]).
    pub fn release_seqs(&mut self) -> Result<()> {
        self.seqs.release()
    }

    /// Unused numbers of given-up blocks to push `Void`s for
    /// ([`crate::seqs::SeqReserver::take_voids`]).
    pub fn pending_voids(&self) -> Result<Vec<PendingVoid>> {
        self.seqs.take_voids()
    }

    /// The `Void`s of blocks `ids` are acknowledged: forget the blocks.
    pub fn voided(&mut self, ids: &[String]) -> Result<()> {
        self.seqs.voided(ids)
    }

    /// The sequence number the next reservation starts at or above: every
    /// number below it is used, held in a block, or voided.
    pub fn next_seq(&self) -> Result<u64> {
        self.seqs.next_seq()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        let mut s = StateStore::open(&p).unwrap();
        assert_eq!(s.state, ClientState::default());
        s.state.cursor = 42;
        assert_eq!(s.reserve_seqs(3).unwrap(), 1);
        assert_eq!(s.reserve_seqs(1).unwrap(), 4);
        s.save().unwrap();
        let again = StateStore::open(&p).unwrap();
        assert_eq!(again.state.cursor, 42);
        assert_eq!(again.next_seq().unwrap(), 5);
    }

    #[test]
    fn each_epoch_group_keeps_its_own_cursor() {
        let mut s = ClientState {
            cursor: 7,
            ..ClientState::default()
        };
        s.switch_group("g1", "g0");
        assert_eq!((s.cursor, s.version), (0, STATE_VERSION_EPOCHS));
        s.cursor = 3;
        assert_eq!(s.cursor_in("g0", "g0"), 7);
        s.switch_group("g0", "g0");
        assert_eq!((s.cursor, s.group.as_deref()), (7, None));
        assert_eq!(s.cursor_in("g1", "g0"), 3);
        s.switch_group("g1", "g0");
        assert_eq!(s.cursor, 3);
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        std::fs::write(&p, b"{not json").unwrap();
        assert!(matches!(StateStore::open(&p), Err(ClientError::Home(_))));
    }
}
