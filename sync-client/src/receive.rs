//! Applying pulled blobs (DESIGN §4.4, §6): open each envelope, check its
//! sender and sequence number, and write file chunks into a temp file next
//! to the destination; when every chunk is there, verify the BLAKE3 of the
//! whole file and rename it into place. A blob that fails any check is
//! reported as [`PullEvent::Rejected`] with its cursor, never silently
//! skipped.

use crate::crypto::GroupKeys;
use crate::crypto::envelope::{self, BlobKind, FileChunk};
use crate::error::{ClientError, Result};
use crate::integrity::Observation;
use crate::state::{ClientState, PartialFile};
use crate::util::sync_dir;
use serde::Serialize;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use sync_protocol::{BlobId, DeviceId, PulledBlob};

/// Largest file offset a chunk may write at (1 TiB): bounds disk use from a
/// hostile header.
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Most chunks in one file.
pub const MAX_CHUNKS: u32 = 1 << 24;

/// Something that happened while pulling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

    /// Apply one blob, updating `state` (not saving it) and reporting what
    /// happened through `events`. Only local I/O failures are errors;
    /// anything wrong with the blob is an event.
    pub fn apply(
        &self,
        blob: &PulledBlob,
        state: &mut ClientState,
        events: &mut dyn FnMut(PullEvent),
    ) -> Result<()> {
        if blob.sender == self.me {
            // Our own blob coming back: we have its content already.
            return Ok(());
        }
        let reject =
            |state: &mut ClientState, events: &mut dyn FnMut(PullEvent), reason: String| {
                state.rejected += 1;
                events(PullEvent::Rejected {
                    cursor: blob.cursor,
                    blob_id: hex::encode(blob.blob_id.0),
                    reason,
                });
            };
        let opened = match envelope::open(self.keys, &blob.blob_id, &blob.payload) {
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
        let track = state.senders.entry(sender.clone()).or_default();
        if track.observe(header.seq) == Observation::Replay {
            state.replays += 1;
            events(PullEvent::Replay {
                cursor: blob.cursor,
                sender,
                seq: header.seq,
            });
            return Ok(());
        }
        match header.kind {
            BlobKind::Message => {
                events(PullEvent::Message {
                    cursor: blob.cursor,
                    sender,
                    seq: header.seq,
                    len: opened.body.len(),
                    data: opened.body,
                });
                Ok(())
            }
            BlobKind::FileChunk(chunk) => {
                match self.apply_chunk(&chunk, &opened.body, &sender, blob.cursor, state)? {
                    Ok(Some(event)) => events(event),
                    Ok(None) => {}
                    Err(reason) => reject(state, events, reason),
                }
                Ok(())
            }
        }
    }

    /// `Ok(Ok(Some(File)))` when the file completed, `Ok(Err(reason))` when
    /// the chunk (or the file) is rejected, `Err` for local I/O failures.
    fn apply_chunk(
        &self,
        chunk: &FileChunk,
        body: &[u8],
        sender: &str,
        cursor: u64,
        state: &mut ClientState,
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
        fs::create_dir_all(&self.out_dir).map_err(ClientError::io(&self.out_dir))?;
        let partial = state
            .partials
            .entry(key.clone())
            .or_insert_with(|| PartialFile {
                name: chunk.name.clone(),
                mode: chunk.mode & 0o777,
                temp_path: self.out_dir.join(format!(".0k-sync-{key}.part")),
                sender: sender.to_string(),
                received: Default::default(),
                end: None,
            });
        if partial.name != chunk.name || partial.sender != sender {
            return Ok(Err(format!(
                "chunk {} claims file {:?} from another name or sender",
                chunk.index, chunk.name
            )));
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
        partial.received.insert(chunk.index);
        if let Some(e) = &chunk.end {
            partial.end = Some((e.chunks, e.size, hex::encode(e.blake3)));
        }
        let Some((chunks, size, hash)) = partial.end.clone() else {
            return Ok(Ok(None));
        };
        if partial.received.len() < chunks as usize {
            return Ok(Ok(None));
        }
        // Every chunk is here: verify and move into place.
        let partial = state.partials.remove(&key).expect("present");
        f.set_len(size)
            .and_then(|_| f.sync_all())
            .map_err(ClientError::io(&temp))?;
        drop(f);
        let actual = hash_file(&temp)?;
        if hex::encode(actual.as_bytes()) != hash {
            let _ = fs::remove_file(&temp);
            return Ok(Err(format!(
                "file {:?} failed its BLAKE3 check; discarded",
                partial.name
            )));
        }
        fs::set_permissions(&temp, fs::Permissions::from_mode(partial.mode))
            .map_err(ClientError::io(&temp))?;
        let dest = temp.parent().unwrap_or(Path::new(".")).join(&partial.name);
        fs::rename(&temp, &dest).map_err(ClientError::io(&dest))?;
        sync_dir(dest.parent().unwrap_or(Path::new(".")))?;
        Ok(Ok(Some(PullEvent::File {
            name: partial.name,
            path: dest,
            size,
            sender: sender.to_string(),
            cursor,
        })))
    }
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

/// The blob id of `blob` as hex (for reports).
pub fn blob_id_hex(id: &BlobId) -> String {
    hex::encode(id.0)
}
