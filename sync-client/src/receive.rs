//! Applying pulled blobs (DESIGN §4.4, §6): open each envelope, check its
//! sender and sequence number, and write file chunks into a temp file next
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
use crate::crypto::envelope::{self, BlobKind, FileChunk};
use crate::error::{ClientError, Result};
use crate::integrity::Observation;
use crate::state::{ClientState, PartialFile, StateStore};
use crate::util::sync_dir;
use serde::Serialize;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
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
        /// Its name.
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
    /// Part of a file arrived (for progress display).
    Progress {
        /// The file's name.
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
    /// A sender abandoned a file; its partial copy was removed.
    Abandoned {
        /// The file's name, if a partial copy existed.
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
}

impl<'a> Receiver<'a> {
    /// Files land in `out_dir` (created if missing).
    pub fn new(keys: &'a GroupKeys, me: DeviceId, out_dir: impl Into<PathBuf>) -> Self {
        Receiver {
            keys,
            me,
            out_dir: out_dir.into(),
        }
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
            match finish(&partial, cursor)? {
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
    /// an event. Moves the cursor to the blob's.
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
        if blob.sender == self.me {
            // Our own blob coming back: we have its content already.
            return Ok(());
        }
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
        let sender = hex::encode(blob.sender.0);
        if !state.senders.contains_key(&sender) && state.senders.len() >= MAX_SENDERS {
            reject(
                state,
                events,
                format!("more than {MAX_SENDERS} devices sent blobs; {sender} is not tracked"),
            );
            return Ok(());
        }
        let track = state.senders.entry(sender.clone()).or_default();
        match track.observe(header.seq) {
            Observation::New => {}
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
                reject(
                    state,
                    events,
                    format!("sequence number {}: {why}", header.seq),
                );
                return Ok(());
            }
        }
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
            BlobKind::Void {
                file_id,
                first_seq,
                last_seq,
            } => {
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
            BlobKind::FileChunk(chunk) => {
                match self.apply_chunk(
                    &chunk,
                    opened.body.as_slice(),
                    &sender,
                    blob.cursor,
                    store,
                    events,
                )? {
                    Ok(Some(event)) => events(event),
                    Ok(None) => {}
                    Err(reason) => reject(&mut store.state, events, reason),
                }
            }
        }
        Ok(())
    }

    /// `Ok(Ok(Some(File)))` when the file completed, `Ok(Err(reason))` when
    /// the chunk (or the file) is rejected, `Err` for local I/O failures.
    fn apply_chunk(
        &self,
        chunk: &FileChunk,
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
            });
        if partial.name != chunk.name || partial.sender != sender {
            return Ok(Err(format!(
                "chunk {} claims file {:?} from another name or sender",
                chunk.index, chunk.name
            )));
        }
        if partial.completing || partial.received.contains(&chunk.index) {
            return Ok(Ok(None)); // already written
        }
        let temp = partial.temp_path.clone();
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .mode(0o600)
            .open(&temp)
            .map_err(ClientError::io(&temp))?;
        f.seek(SeekFrom::Start(chunk.offset))
            .and_then(|_| f.write_all(body))
            .map_err(ClientError::io(&temp))?;
        drop(f);
        partial.received.insert(chunk.index..=chunk.index);
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
        // Every chunk is here. Record that before touching the files, with
        // the cursor of this last chunk, so a crash from here on is
        // finished by `recover` instead of waiting for chunks that will
        // never be sent again.
        partial.completing = true;
        store.state.cursor = store.state.cursor.max(cursor);
        store.save()?;
        let partial = store.state.partials.remove(&key).expect("present");
        let outcome = finish(&partial, cursor)?;
        store.save()?;
        Ok(outcome.map(Some))
    }
}

/// Verify a complete temp file and rename it into place. If the temp file
/// is gone, the rename already happened: check the destination instead.
fn finish(partial: &PartialFile, cursor: u64) -> Result<std::result::Result<PullEvent, String>> {
    let Some((_, size, hash)) = &partial.end else {
        return Ok(Err(format!("{:?} has no end record", partial.name)));
    };
    let temp = &partial.temp_path;
    let dir = temp.parent().unwrap_or(Path::new(".")).to_path_buf();
    let dest = dir.join(&partial.name);
    let done = |dest: PathBuf| PullEvent::File {
        name: partial.name.clone(),
        path: dest,
        size: *size,
        sender: partial.sender.clone(),
        cursor,
    };
    if !temp.exists() {
        return match hash_file(&dest) {
            Ok(h) if h.to_hex().as_str() == hash.as_str() => Ok(Ok(done(dest))),
            _ => Ok(Err(format!(
                "{:?} was interrupted while being moved into place and is missing",
                partial.name
            ))),
        };
    }
    let f = fs::OpenOptions::new()
        .write(true)
        .open(temp)
        .map_err(ClientError::io(temp))?;
    f.set_len(*size)
        .and_then(|_| f.sync_all())
        .map_err(ClientError::io(temp))?;
    drop(f);
    let actual = hash_file(temp)?;
    if actual.to_hex().as_str() != hash.as_str() {
        let _ = fs::remove_file(temp);
        return Ok(Err(format!(
            "file {:?} failed its BLAKE3 check; discarded",
            partial.name
        )));
    }
    fs::set_permissions(temp, fs::Permissions::from_mode(partial.mode))
        .map_err(ClientError::io(temp))?;
    fs::rename(temp, &dest).map_err(ClientError::io(&dest))?;
    sync_dir(&dir)?;
    Ok(Ok(done(dest)))
}

/// BLAKE3 of a file, read in 64 KiB pieces (constant memory).
pub fn hash_file(path: &Path) -> Result<blake3::Hash> {
    let mut f = fs::File::open(path).map_err(ClientError::io(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(ClientError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
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
mod tests {
    use super::*;
    use crate::crypto::GroupSecret;
    use crate::crypto::envelope::{BlobHeader, Compression, FileEnd, seal};
    use sync_protocol::BlobId;

    struct Fixture {
        keys: GroupKeys,
        store: StateStore,
        dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            keys: GroupSecret::from_bytes([1; 32]).keys(),
            store: StateStore::open(dir.path().join("state.json")).unwrap(),
            dir,
        }
    }

    const SENDER: DeviceId = DeviceId([9; 32]);

    fn blob(f: &Fixture, cursor: u64, id: u8, seq: u64, kind: BlobKind, body: &[u8]) -> PulledBlob {
        let header = BlobHeader {
            kind,
            sender: SENDER,
            seq,
            created_at_ms: 1,
            compression: Compression::None,
            body_len: 0,
        };
        PulledBlob {
            cursor,
            blob_id: BlobId([id; 16]),
            sender: SENDER,
            created_at: 1,
            payload: seal(&f.keys, &BlobId([id; 16]), header, body, 1 << 20).unwrap(),
        }
    }

    fn apply_all(f: &mut Fixture, blobs: &[PulledBlob]) -> Vec<PullEvent> {
        let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), f.dir.path().join("out"));
        let mut events = Vec::new();
        for b in blobs {
            receiver
                .apply(b.clone(), &mut f.store, &mut |e| events.push(e))
                .unwrap();
        }
        events
    }

    #[test]
    fn a_replayed_blob_is_reported_and_not_applied_twice() {
        let mut f = fixture();
        let m = blob(&f, 1, 1, 1, BlobKind::Message, b"hello");
        let mut again = m.clone();
        again.cursor = 2; // the relay serves the same blob again
        let events = apply_all(&mut f, &[m, again]);
        assert!(matches!(events[0], PullEvent::Message { seq: 1, .. }));
        assert!(
            matches!(
                events[1],
                PullEvent::Replay {
                    cursor: 2,
                    seq: 1,
                    ..
                }
            ),
            "{events:?}"
        );
        assert_eq!(events.len(), 2);
        assert_eq!(f.store.state.replays, 1);
        assert_eq!(f.store.state.cursor, 2);
    }

    #[test]
    fn a_withheld_blob_shows_as_a_gap() {
        let mut f = fixture();
        let blobs = [
            blob(&f, 1, 1, 1, BlobKind::Message, b"one"),
            blob(&f, 3, 3, 3, BlobKind::Message, b"three"),
        ];
        apply_all(&mut f, &blobs);
        let gaps = gap_events(&f.store.state);
        assert_eq!(gaps.len(), 1);
        assert!(matches!(
            &gaps[0],
            PullEvent::Gap {
                first: 2,
                last: 2,
                ..
            }
        ));
    }

    #[test]
    fn a_blob_with_a_forged_sender_is_rejected() {
        let mut f = fixture();
        let mut b = blob(&f, 1, 1, 1, BlobKind::Message, b"x");
        b.sender = DeviceId([7; 32]);
        let events = apply_all(&mut f, &[b]);
        assert!(
            matches!(&events[0], PullEvent::Rejected { cursor: 1, reason, .. } if reason.contains("claims sender"))
        );
    }

    fn chunk(index: u32, offset: u64, end: Option<FileEnd>) -> BlobKind {
        BlobKind::FileChunk(FileChunk {
            file_id: [4; 16],
            name: "f.bin".into(),
            mode: 0o640,
            index,
            offset,
            size_hint: Some(6),
            end,
        })
    }

    #[test]
    fn a_file_survives_a_crash_between_verification_and_rename() {
        let mut f = fixture();
        let end = FileEnd {
            chunks: 2,
            size: 6,
            blake3: *blake3::hash(b"abcdef").as_bytes(),
        };
        let c0 = blob(&f, 1, 1, 1, chunk(0, 0, None), b"abc");
        let c1 = blob(&f, 2, 2, 2, chunk(1, 3, Some(end)), b"def");
        apply_all(&mut f, &[c0]);
        // Simulate the crash: the last chunk was written and the state says
        // `completing` (with its sequence number seen and the cursor at it,
        // as `apply_chunk` saves them), but the rename never happened.
        let key = hex::encode([4u8; 16]);
        f.store
            .state
            .senders
            .get_mut(&hex::encode(SENDER.0))
            .unwrap()
            .observe(2);
        f.store.state.cursor = 2;
        {
            let p = f.store.state.partials.get_mut(&key).unwrap();
            p.end = Some((2, 6, blake3::hash(b"abcdef").to_hex().to_string()));
            p.completing = true;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .open(&p.temp_path)
                .unwrap();
            file.seek(SeekFrom::Start(3)).unwrap();
            file.write_all(b"def").unwrap();
        }
        f.store.save().unwrap();
        let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), f.dir.path().join("out"));
        let mut events = Vec::new();
        receiver
            .recover(&mut f.store, &mut |e| events.push(e))
            .unwrap();
        assert!(
            matches!(&events[0], PullEvent::File { size: 6, .. }),
            "{events:?}"
        );
        assert_eq!(
            std::fs::read(f.dir.path().join("out/f.bin")).unwrap(),
            b"abcdef"
        );
        assert!(f.store.state.partials.is_empty());
        // The last chunk served again afterwards is a replay, not a new file.
        let events = apply_all(&mut f, &[c1]);
        assert!(
            matches!(events[..], [PullEvent::Replay { seq: 2, .. }]),
            "{events:?}"
        );
        assert!(f.store.state.partials.is_empty(), "no stuck partial");
    }

    #[test]
    fn an_abandoned_file_is_removed_and_its_numbers_are_no_gap() {
        let mut f = fixture();
        let c0 = blob(&f, 1, 1, 1, chunk(0, 0, None), b"abc");
        let void = blob(
            &f,
            2,
            2,
            5,
            BlobKind::Void {
                file_id: Some([4; 16]),
                first_seq: 1,
                last_seq: 4,
            },
            b"",
        );
        let events = apply_all(&mut f, &[c0, void]);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PullEvent::Abandoned { name: Some(n), .. } if n == "f.bin"))
        );
        assert!(f.store.state.partials.is_empty());
        assert!(gap_events(&f.store.state).is_empty());
        let left: Vec<_> = std::fs::read_dir(f.dir.path().join("out"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "partial file removed");
    }
}
