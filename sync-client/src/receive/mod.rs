//! Applying pulled blobs (docs/protocol.md "Blob payloads", docs/security.md): open each
//! envelope first, then check its sender and sequence number — "this
//! device's own blob" is decided from the sealed sender only, never from
//! the relay's label — record its sender's group view
//! ([`crate::withheld`]), and write file chunks into a temp file next
//! to the destination; when every chunk is there, verify the BLAKE3 of the
//! whole file and rename it into place. A blob that fails any check is
//! reported as [`PullEvent::Rejected`] with its cursor, never silently
//! skipped.
//!
//! Crash safety: chunk writes are idempotent (same bytes at the same
//! offset); before a completed file is renamed, the state is saved with the
//! file marked `completing`, and [`Receiver::recover`] finishes such files at
//! the next start — so a crash at any point neither loses a file nor leaves
//! a half-assembled one behind.

use crate::crypto::GroupKeys;
use crate::crypto::envelope::{self, BlobKind, FileChunk, FileVersion, validate_device_name};
use crate::error::{ClientError, Result};
use crate::integrity::{Observation, SenderTrack};
use crate::journal::Journals;
use crate::place::{
    Incoming, KnownVersion, Placed, hash_file_nofollow, nofollow, place, received_mode,
};
use crate::relpath;
use crate::state::{ClientState, PartialFile, StateStore};
use crate::util::now_ms;
use crate::withheld::absorb_view;
use serde::Serialize;
use std::collections::HashMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use sync_protocol::{DeviceId, PulledBlob};

/// Largest file offset a chunk may write at (1 TiB): bounds disk use from a
/// hostile header.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Most chunks in one file.
pub const MAX_CHUNKS: u32 = 1 << 24;
/// Most devices whose sequence numbers are tracked: a blob of one more
/// sender is rejected (bounds the state file).
pub const MAX_SENDERS: usize = 4096;
/// Most files received partly at once: the first chunk of one more file is
/// rejected (bounds the state file and the temp files in the output
/// directory). Honest senders finish a file before starting the next.
pub const MAX_PARTIAL_FILES: usize = 256;

/// Something that happened while pulling or following.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PullEvent {
    /// A file arrived complete and verified.
    File {
        /// Its relative path under the output directory (`/`-separated,
        /// docs/client.md "Directories").
        name: String,
        /// Where it was written.
        path: PathBuf,
        /// Bytes.
        size: u64,
        /// Sender's node id (hex).
        sender: String,
        /// Cursor of its last chunk.
        cursor: u64,
    },
    /// A file arrived while a different local file has its name: the local
    /// file was kept, and the received one saved beside it (the rules are
    /// in `docs/client.md`, "Local files are never lost").
    Conflict {
        /// Its relative path under the output directory.
        name: String,
        /// Where it was saved: `NAME (conflict DEVICE DATE TIME).EXT`.
        path: PathBuf,
        /// The local file that was kept, untouched.
        kept: PathBuf,
        /// Bytes.
        size: u64,
        /// Sender's node id (hex).
        sender: String,
        /// Cursor of its last chunk.
        cursor: u64,
    },
    /// A file arrived that is older, in its history, than the version this
    /// device has: not written.
    Outdated {
        /// Its relative path under the output directory.
        name: String,
        /// The path whose newer version was kept.
        path: PathBuf,
        /// Sender's node id (hex).
        sender: String,
        /// Cursor of its last chunk.
        cursor: u64,
    },
    /// Part of a file arrived (for progress display).
    Progress {
        /// The file's relative path.
        name: String,
        /// Bytes of it received so far.
        received: u64,
        /// Its size, when the sender knew it.
        total: Option<u64>,
    },
    /// An application message arrived.
    Message {
        /// Its cursor.
        cursor: u64,
        /// Sender's node id (hex).
        sender: String,
        /// Sender's sequence number.
        seq: u64,
        /// Bytes of the message.
        len: usize,
        /// The message itself (not serialized).
        #[serde(skip)]
        data: Vec<u8>,
    },
    /// Roster entries or an enrolment request arrived (docs/security.md
    /// "Devices, roster and key epochs"): handed to the roster
    /// ([`crate::roster::local`]), which verifies and folds them. Not
    /// printed by `pull --json` (the roster's report is).
    Roster {
        /// Its cursor.
        cursor: u64,
        /// Sender's node id (hex).
        sender: String,
        /// True for an enrolment request, false for roster entries.
        enrolment: bool,
        /// The blob's body (not serialized).
        #[serde(skip)]
        data: Vec<u8>,
    },
    /// A sender abandoned a file; its partial copy was removed.
    Abandoned {
        /// The file's relative path, if a partial copy existed.
        name: Option<String>,
        /// Sender's node id (hex).
        sender: String,
    },
    /// A blob failed to decrypt or verify; it was not applied.
    Rejected {
        /// Its cursor.
        cursor: u64,
        /// Its blob id (hex).
        blob_id: String,
        /// Why.
        reason: String,
    },
    /// A blob repeated a sequence number already seen; not applied again.
    Replay {
        /// Its cursor.
        cursor: u64,
        /// Sender's node id (hex).
        sender: String,
        /// The repeated number.
        seq: u64,
    },
    /// Sequence numbers of a sender are missing although the relay has
    /// nothing more: blobs withheld or lost.
    Gap {
        /// Sender's node id (hex).
        sender: String,
        /// First missing number.
        first: u64,
        /// Last missing number.
        last: u64,
    },
    /// Another member's group view says a sender used sequence numbers
    /// above the highest this device was delivered, although the relay has
    /// nothing more: blobs the relay withheld from this device (or that
    /// expired before it pulled them). See docs/security.md.
    Withheld {
        /// The sender whose blobs are missing (node id, hex).
        sender: String,
        /// First missing number.
        first: u64,
        /// Last missing number.
        last: u64,
        /// The member whose view revealed them (node id, hex).
        claimed_by: String,
    },
    /// Caught up with the relay (following only).
    Synced {
        /// Local cursor.
        cursor: u64,
        /// Group head.
        head: u64,
    },
    /// The connection was lost; reconnecting after `delay_ms`.
    Reconnecting {
        /// Attempt number, from 1.
        attempt: u32,
        /// Wait before this attempt.
        delay_ms: u64,
        /// What went wrong.
        error: String,
    },
}

/// Applies pulled blobs for one device into one output directory.
pub struct Receiver<'a> {
    keys: &'a GroupKeys,
    me: DeviceId,
    out_dir: PathBuf,
    /// This device's next sequence number as last read from `seq.json`
    /// (0: not read yet); re-read when one of its own blobs is above it.
    own_next_seq: AtomicU64,
    /// Files this receiver wrote from their first byte on, each chunk at
    /// the end of the one before: temp path → (bytes hashed, BLAKE3 of
    /// them so far). Lets [`Receiver::finish`] verify such a file without
    /// reading it back; any other write (a gap, an overlap, chunks out of
    /// order, a file begun before this receiver) drops the entry and the
    /// file is read back and hashed as before.
    running: Mutex<HashMap<PathBuf, (u64, blake3::Hasher)>>,
}

impl<'a> Receiver<'a> {
    /// Files land in `out_dir` (created if missing).
    pub fn new(keys: &'a GroupKeys, me: DeviceId, out_dir: impl Into<PathBuf>) -> Self {
        Receiver {
            keys,
            me,
            out_dir: out_dir.into(),
            own_next_seq: AtomicU64::new(0),
            running: Mutex::new(HashMap::new()),
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (u64, blake3::Hasher)>> {
        // Every update is one insert, remove or hasher update: a panic
        // cannot leave an entry half-written, so a poisoned lock is usable.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record that `body` was written to `temp` at `offset` (see
    /// [`Receiver::running`]).
    fn hash_written(&self, temp: &Path, first: bool, offset: u64, body: &[u8]) {
        let mut running = self.running();
        if first && offset == 0 {
            let mut hasher = blake3::Hasher::new();
            hasher.update(body);
            running.insert(temp.to_path_buf(), (body.len() as u64, hasher));
            return;
        }
        match running.get_mut(temp) {
            Some((hashed, hasher)) if *hashed == offset => {
                hasher.update(body);
                *hashed += body.len() as u64;
            }
            Some(_) => {
                running.remove(temp);
            }
            None => {}
        }
    }

    /// The BLAKE3 of the first `size` bytes of `temp` when this receiver
    /// wrote exactly those, in order, and nothing else; `None` otherwise.
    fn hash_of_written(&self, temp: &Path, size: u64) -> Option<blake3::Hash> {
        match self.running().remove(temp) {
            Some((hashed, hasher)) if hashed == size => Some(hasher.finalize()),
            _ => None,
        }
    }

    /// This device's node id (the one its own blobs are sealed with).
    pub fn me(&self) -> DeviceId {
        self.me
    }

    /// Finish files a crash left `completing`: verify and move them into
    /// place (or confirm they already are). Call before pulling.
    pub fn recover(
        &self,
        store: &mut StateStore,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let keys: Vec<String> = store
            .state
            .partials
            .iter()
            .filter(|(_, p)| p.completing)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let partial = store.state.partials.remove(&key).expect("listed");
            let cursor = store.state.cursor;
            match self.finish_or_keep(key, partial, cursor, store)? {
                Ok(event) => events(event),
                Err(reason) => {
                    store.state.rejected += 1;
                    events(PullEvent::Rejected {
                        cursor,
                        blob_id: String::new(),
                        reason,
                    });
                }
            }
            store.save()?;
        }
        Ok(())
    }

    /// Apply one blob, updating `store.state` (saving it only around a
    /// file's completion) and reporting what happened through `events`.
    /// Only local I/O failures are errors; anything wrong with the blob is
    /// an event. Moves the cursor to the blob's (the cursor only ever
    /// moves to that of a blob the relay delivered).
    pub fn apply(
        &self,
        blob: PulledBlob,
        store: &mut StateStore,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let cursor = blob.cursor;
        self.apply_inner(blob, store, events)?;
        store.state.cursor = store.state.cursor.max(cursor);
        Ok(())
    }

    fn apply_inner(
        &self,
        mut blob: PulledBlob,
        store: &mut StateStore,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let state = &mut store.state;
        let reject = |state: &mut ClientState,
                      events: &mut (dyn FnMut(PullEvent) + Send),
                      reason: String| {
            state.rejected += 1;
            events(PullEvent::Rejected {
                cursor: blob.cursor,
                blob_id: hex::encode(blob.blob_id.0),
                reason,
            });
        };
        let payload = std::mem::take(&mut blob.payload);
        let opened = match envelope::open_owned(self.keys, &blob.blob_id, payload) {
            Ok(o) => o,
            Err(e) => {
                reject(state, events, e.to_string());
                return Ok(());
            }
        };
        let header = opened.header;
        if header.sender != blob.sender {
            let reason = format!(
                "blob claims sender {} but the relay says {}",
                header.sender, blob.sender
            );
            reject(state, events, reason);
            return Ok(());
        }
        if header.sender == self.me {
            // This device's own blob coming back (by its sealed sender, which
            // the relay cannot forge): its content is here already. A number
            // this device never used means a member sealed it in this
            // device's name.
            if header.seq == 0 || !self.used_own_seq(store, header.seq)? {
                let reason = format!(
                    "blob claims to be this device's sequence number {}, which this device never used",
                    header.seq
                );
                reject(&mut store.state, events, reason);
            }
            return Ok(());
        }
        let sender = hex::encode(blob.sender.0);
        let tracked = state
            .senders
            .get(&sender)
            .is_some_and(|t| !t.is_claim_only());
        if !tracked
            && state
                .senders
                .values()
                .filter(|t| !t.is_claim_only())
                .count()
                >= MAX_SENDERS
        {
            reject(
                state,
                events,
                format!("more than {MAX_SENDERS} devices sent blobs; {sender} is not tracked"),
            );
            return Ok(());
        }
        // A file chunk that a local I/O error stops before it is written
        // must come back as new when the relay serves it again (the
        // cursor does not move past it): its number is taken back then.
        let before = matches!(
            header.kind,
            BlobKind::FileChunk(_) | BlobKind::VersionedChunk { .. }
        )
        .then(|| state.senders.get(&sender).cloned());
        let track = state.senders.entry(sender.clone()).or_default();
        match track.observe(header.seq) {
            Observation::New => track.last_cursor = blob.cursor,
            Observation::Replay => {
                state.replays += 1;
                events(PullEvent::Replay {
                    cursor: blob.cursor,
                    sender,
                    seq: header.seq,
                });
                return Ok(());
            }
            Observation::Refused(why) => {
                // A record made for this blob alone would be empty: drop it,
                // so refused blobs of new senders leave nothing behind.
                if *track == SenderTrack::default() {
                    state.senders.remove(&sender);
                }
                reject(
                    state,
                    events,
                    format!("sequence number {}: {why}", header.seq),
                );
                return Ok(());
            }
        }
        absorb_view(state, &header.sender, &self.me, &header.view);
        match header.kind {
            BlobKind::Message => {
                events(PullEvent::Message {
                    cursor: blob.cursor,
                    sender,
                    seq: header.seq,
                    len: opened.body.len(),
                    data: opened.body.into_vec(),
                });
            }
            BlobKind::Roster | BlobKind::Enrolment => {
                events(PullEvent::Roster {
                    cursor: blob.cursor,
                    sender,
                    enrolment: matches!(header.kind, BlobKind::Enrolment),
                    data: opened.body.into_vec(),
                });
            }
            BlobKind::Void {
                file_id,
                first_seq,
                last_seq,
            } => {
                let track = state.senders.entry(sender.clone()).or_default();
                if let Err(why) = track.void(first_seq, last_seq) {
                    reject(
                        state,
                        events,
                        format!("abandoned sequence numbers {first_seq}..={last_seq}: {why}"),
                    );
                    return Ok(());
                }
                let name = file_id.and_then(|id| {
                    let p = state.partials.remove(&hex::encode(id))?;
                    let _ = fs::remove_file(&p.temp_path);
                    Some(p.name)
                });
                events(PullEvent::Abandoned { name, sender });
            }
            BlobKind::FileChunk(_) | BlobKind::VersionedChunk { .. } => {
                let (chunk, version) = header.kind.chunk().expect("a file chunk");
                let applied = self.apply_chunk(
                    chunk,
                    version,
                    header.seq,
                    opened.body.as_slice(),
                    &sender,
                    blob.cursor,
                    store,
                    events,
                );
                let applied = match applied {
                    Ok(applied) => applied,
                    Err(e) => {
                        // A chunk that did not reach its temp file: the
                        // save that follows a failed round must not record
                        // its number as seen, or the blob served again
                        // would be taken for a replay and the file never
                        // written. One that did (written, or its file
                        // completing or completed: the cursor moved to it)
                        // keeps its number.
                        let reached_disk =
                            match store.state.partials.get(&hex::encode(chunk.file_id)) {
                                Some(p) => p.completing || p.received.contains(&chunk.index),
                                None => store.state.cursor >= blob.cursor,
                            };
                        if !reached_disk && let Some(before) = before {
                            match before {
                                Some(track) => store.state.senders.insert(sender, track),
                                None => store.state.senders.remove(&sender),
                            };
                        }
                        return Err(e);
                    }
                };
                match applied {
                    Ok(Some(event)) => events(event),
                    Ok(None) => {}
                    Err(reason) => reject(&mut store.state, events, reason),
                }
            }
        }
        Ok(())
    }

    /// Whether this device has used sequence number `seq`: below its next
    /// number in `seq.json` (read again only when `seq` is not below the
    /// value last read, as pushes move it on).
    fn used_own_seq(&self, store: &StateStore, seq: u64) -> Result<bool> {
        if seq < self.own_next_seq.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let next = store.next_seq()?;
        self.own_next_seq.store(next, Ordering::Relaxed);
        Ok(seq < next)
    }

    /// `Ok(Ok(Some(File)))` when the file completed, `Ok(Err(reason))` when
    /// the chunk (or the file) is rejected, `Err` for local I/O failures.
    #[allow(clippy::too_many_arguments)]
    fn apply_chunk(
        &self,
        chunk: &FileChunk,
        version: Option<&FileVersion>,
        seq: u64,
        body: &[u8],
        sender: &str,
        cursor: u64,
        store: &mut StateStore,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<std::result::Result<Option<PullEvent>, String>> {
        let end = chunk.offset.checked_add(body.len() as u64);
        if end.is_none_or(|e| e > MAX_FILE_SIZE) || chunk.index >= MAX_CHUNKS {
            return Ok(Err(format!(
                "chunk {} of {:?} is out of range",
                chunk.index, chunk.name
            )));
        }
        if let Some(e) = &chunk.end
            && (e.chunks == 0
                || e.chunks > MAX_CHUNKS
                || chunk.index + 1 != e.chunks
                || e.size > MAX_FILE_SIZE)
        {
            return Ok(Err(format!(
                "last chunk of {:?} has an inconsistent end record",
                chunk.name
            )));
        }
        let key = hex::encode(chunk.file_id);
        if !store.state.partials.contains_key(&key)
            && store.state.partials.len() >= MAX_PARTIAL_FILES
        {
            return Ok(Err(format!(
                "{MAX_PARTIAL_FILES} files are already being received; {:?} is not started",
                chunk.name
            )));
        }
        fs::create_dir_all(&self.out_dir).map_err(ClientError::io(&self.out_dir))?;
        let partial = store
            .state
            .partials
            .entry(key.clone())
            .or_insert_with(|| PartialFile {
                name: chunk.name.clone(),
                mode: chunk.mode & 0o777,
                temp_path: self.out_dir.join(format!(".0k-sync-{key}.part")),
                sender: sender.to_string(),
                received: Default::default(),
                end: None,
                bytes: 0,
                size_hint: chunk.size_hint,
                completing: false,
                lineage: version.map(|v| hex::encode(v.lineage)),
                generation: version.map_or(0, |v| v.generation),
                device: version.and_then(|v| v.device.clone()),
                seq: 0,
            });
        let same_version = partial.lineage == version.map(|v| hex::encode(v.lineage))
            && partial.generation == version.map_or(0, |v| v.generation);
        if partial.name != chunk.name || partial.sender != sender || !same_version {
            return Ok(Err(format!(
                "chunk {} claims file {:?} from another name, sender or version",
                chunk.index, chunk.name
            )));
        }
        if partial.completing || partial.received.contains(&chunk.index) {
            return Ok(Ok(None)); // already written
        }
        let temp = partial.temp_path.clone();
        let first = partial.received.is_empty();
        let opened = if first {
            // A new temp file: whatever is at its name (a stale copy, or a
            // symlink someone planted) is removed, not followed, and the
            // file is created exclusively.
            match fs::remove_file(&temp) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ClientError::io(&temp)(e));
                }
                _ => {}
            }
            nofollow()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
        } else {
            nofollow().write(true).open(&temp)
        };
        let mut f = match opened {
            Ok(f) => f,
            Err(e) if !first && e.kind() == std::io::ErrorKind::NotFound => {
                let name = partial.name.clone();
                store.state.partials.remove(&key);
                return Ok(Err(format!(
                    "the partial copy of {name:?} was removed from the output directory; the file is skipped"
                )));
            }
            Err(e) => return Err(ClientError::io(&temp)(e)),
        };
        if let Err(e) = f
            .seek(SeekFrom::Start(chunk.offset))
            .and_then(|_| f.write_all(body))
        {
            self.running().remove(&temp);
            return Err(ClientError::io(&temp)(e));
        }
        drop(f);
        self.hash_written(&temp, first, chunk.offset, body);
        partial.received.insert(chunk.index..=chunk.index);
        partial.seq = partial.seq.max(seq);
        partial.bytes += body.len() as u64;
        if let Some(e) = &chunk.end {
            partial.end = Some((e.chunks, e.size, hex::encode(e.blake3)));
        }
        events(PullEvent::Progress {
            name: partial.name.clone(),
            received: partial.bytes,
            total: partial.end.as_ref().map(|e| e.1).or(partial.size_hint),
        });
        let Some((chunks, _, _)) = partial.end.clone() else {
            return Ok(Ok(None));
        };
        let have: u64 = partial
            .received
            .iter()
            .map(|r| u64::from(r.end() - r.start()) + 1)
            .sum();
        if have < u64::from(chunks) {
            return Ok(Ok(None));
        }
        if first && chunks == 1 {
            // The whole file came in this one blob, so no saved state
            // names it. When it lands at a name this device had written
            // nothing at, a crash before the pull's next save (a round's
            // end, or every few frames: `client::pull`) pulls the blob
            // again, and finishing it again finds the same content in
            // place (`Placed::Same`): no save of its own, then. Two
            // rewrites of the state, each with two fsyncs, for every
            // small file made a folder of n files cost O(n²) bytes
            // written (docs/client.md "Receiving many small files").
            // A file that replaced a version this device wrote, a
            // conflict copy and a refusal are saved at once: the same
            // blob applied again after a crash would meet what it left
            // on disk as a stranger's file and make a conflict copy.
            store.state.cursor = store.state.cursor.max(cursor);
            let Some(partial) = store.state.partials.remove(&key) else {
                return Ok(Ok(None));
            };
            let root = partial.temp_path.parent().unwrap_or(Path::new("."));
            let known_before = store
                .state
                .files
                .contains_key(&Self::dest_key(root, &partial.name));
            let outcome = self.finish_or_keep(key, partial, cursor, store)?;
            if known_before || !matches!(outcome, Ok(PullEvent::File { .. })) {
                store.save()?;
            }
            return Ok(outcome.map(Some));
        }
        // Every chunk is here. Record that before touching the files, with
        // the cursor of this last chunk, so a crash from here on is
        // finished by `recover` instead of waiting for chunks that will
        // never be sent again.
        partial.completing = true;
        store.state.cursor = store.state.cursor.max(cursor);
        store.save()?;
        let partial = store.state.partials.remove(&key).expect("present");
        let outcome = self.finish_or_keep(key, partial, cursor, store)?;
        store.save()?;
        Ok(outcome.map(Some))
    }

    /// [`Receiver::finish`] `partial` (whose record was taken out of the
    /// state under `key`). When a local I/O error stops it, the record goes
    /// back, marked `completing`, before the error is returned: the save
    /// that follows a failed round then keeps it, and [`Receiver::recover`]
    /// finishes the file on the next pull (its cursor may already be
    /// saved, so the relay would not serve it again).
    fn finish_or_keep(
        &self,
        key: String,
        mut partial: PartialFile,
        cursor: u64,
        store: &mut StateStore,
    ) -> Result<std::result::Result<PullEvent, String>> {
        match self.finish(&partial, cursor, store) {
            Err(e) => {
                partial.completing = true;
                store.state.partials.insert(key, partial);
                Err(e)
            }
            done => done,
        }
    }

    /// The absolute path a file named `name` lands at (the record key of
    /// [`ClientState::files`] and of push journals).
    fn dest_key(dir: &Path, name: &str) -> String {
        let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        dir.join(name).to_string_lossy().into_owned()
    }

    /// What this device knows it wrote (pull) or pushed (push journals) at
    /// `key`.
    fn known_at(&self, store: &StateStore, key: &str) -> Result<Vec<KnownVersion>> {
        let mut known: Vec<KnownVersion> =
            store.state.files.get(key).cloned().into_iter().collect();
        let me = hex::encode(self.me.0);
        known.extend(
            Journals::at(store.dir().join("transfers"))
                .list()?
                .iter()
                .filter(|j| j.source.as_ref().is_some_and(|s| s.path.as_os_str() == key))
                .filter_map(|j| j.known_version(&me)),
        );
        Ok(known)
    }

    /// Verify a complete temp file and put it in place ([`crate::place`]),
    /// recording the version written. If the temp file is gone, a crash
    /// interrupted this after the move: check the destination instead.
    fn finish(
        &self,
        partial: &PartialFile,
        cursor: u64,
        store: &mut StateStore,
    ) -> Result<std::result::Result<PullEvent, String>> {
        let Some((_, size, hash)) = &partial.end else {
            return Ok(Err(format!("{:?} has no end record", partial.name)));
        };
        let temp = &partial.temp_path;
        // Temp files live at the top of the output directory; the file's
        // relative path is resolved under it (crate::relpath).
        let root = temp.parent().unwrap_or(Path::new(".")).to_path_buf();
        let key = Self::dest_key(&root, &partial.name);
        let version = KnownVersion {
            lineage: partial.lineage.clone(),
            generation: partial.generation,
            sender: partial.sender.clone(),
            seq: partial.seq,
            blake3: hash.clone(),
            at_ms: now_ms(),
        };
        let file = |path: PathBuf| PullEvent::File {
            name: partial.name.clone(),
            path,
            size: *size,
            sender: partial.sender.clone(),
            cursor,
        };
        if fs::symlink_metadata(temp).is_err() {
            let dest = match relpath::resolve(&root, &partial.name, false)? {
                Ok((dir, leaf)) => Some(dir.join(leaf)),
                Err(_) => None,
            };
            return match dest.as_deref().map(hash_file_nofollow) {
                Some(Ok(h)) if h.to_hex().as_str() == hash.as_str() => {
                    let dest = dest.expect("matched Some");
                    store.state.files.insert(key, version);
                    Ok(Ok(file(dest)))
                }
                _ => Ok(Err(format!(
                    "{:?} was interrupted while being moved into place; look for a conflict copy of it",
                    partial.name
                ))),
            };
        }
        let f = nofollow()
            .write(true)
            .open(temp)
            .map_err(ClientError::io(temp))?;
        f.set_len(*size)
            .and_then(|_| f.sync_all())
            .map_err(ClientError::io(temp))?;
        // Written here in order from the first byte: hashed as it was
        // written; otherwise read back.
        let actual = match self.hash_of_written(temp, *size) {
            Some(hash) => hash,
            None => hash_file_nofollow(temp)?,
        };
        if actual.to_hex().as_str() != hash.as_str() {
            drop(f);
            let _ = fs::remove_file(temp);
            return Ok(Err(format!(
                "file {:?} failed its BLAKE3 check; discarded",
                partial.name
            )));
        }
        f.set_permissions(fs::Permissions::from_mode(received_mode(partial.mode)))
            .map_err(ClientError::io(temp))?;
        drop(f);
        // Its directories, made one component at a time, never through a
        // symlink or out of the output directory; a path that cannot be
        // made there is refused (the verified copy is discarded).
        let (dir, leaf) = match relpath::resolve(&root, &partial.name, true)? {
            Ok(found) => found,
            Err(why) => {
                let _ = fs::remove_file(temp);
                return Ok(Err(format!("{:?} not written: {why}", partial.name)));
            }
        };
        let device_label = partial
            .device
            .clone()
            .filter(|d| validate_device_name(d).is_ok())
            .unwrap_or_else(|| partial.sender.chars().take(8).collect());
        let known = self.known_at(store, &key)?;
        let incoming = Incoming {
            name: &leaf,
            temp,
            version: &version,
            device_label: &device_label,
        };
        Ok(Ok(match place(&dir, &incoming, &known)? {
            Placed::Written(path) | Placed::Same(path) => {
                store.state.files.insert(key, version);
                file(path)
            }
            Placed::Conflict { kept, saved } => PullEvent::Conflict {
                name: partial.name.clone(),
                path: saved,
                kept,
                size: *size,
                sender: partial.sender.clone(),
                cursor,
            },
            Placed::Outdated(path) => PullEvent::Outdated {
                name: partial.name.clone(),
                path,
                sender: partial.sender.clone(),
                cursor,
            },
        }))
    }
}

/// BLAKE3 of a file, read in 64 KiB pieces (constant memory), without
/// following a symlink.
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    hash_file_nofollow(path)
}

/// Numbers of every sender that another member's view revealed and the
/// relay never delivered, as [`PullEvent::Withheld`]s. Call once the relay
/// has nothing more (docs/security.md "Withheld blobs").
pub fn withheld_events(state: &ClientState) -> Vec<PullEvent> {
    state
        .senders
        .iter()
        .filter_map(|(sender, track)| {
            let (first, last) = track.withheld()?;
            Some(PullEvent::Withheld {
                sender: sender.clone(),
                first,
                last,
                claimed_by: track.claimed_by.clone().unwrap_or_default(),
            })
        })
        .collect()
}

/// Turn unfilled gaps of every sender into [`PullEvent::Gap`]s.
pub fn gap_events(state: &ClientState) -> Vec<PullEvent> {
    state
        .senders
        .iter()
        .flat_map(|(sender, track)| {
            track
                .gaps()
                .into_iter()
                .map(move |(first, last)| PullEvent::Gap {
                    sender: sender.clone(),
                    first,
                    last,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests;
