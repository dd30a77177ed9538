//! Pushing: application messages (batched) and files (chunked to fit the
//! relay's `max_blob_size`, a few requests in flight, memory flat in the
//! file size). File pushes from a path are resumable through a
//! [`crate::journal`]: an interrupted push continues after its last
//! acknowledged chunk, with the same blob ids and sequence numbers.

use super::SyncClient;
use crate::crypto::envelope::{BlobHeader, BlobKind, Compression, FileChunk, FileEnd, FileVersion};
use crate::crypto::{envelope, random_bytes};
use crate::error::{ClientError, Result};
use crate::journal::{JOURNAL_VERSION, Journals, PushJournal, SourceFingerprint, chunk_blob_id};
use crate::relpath::validate_path;
use crate::state::StateStore;
use crate::util::now_ms;
use crate::withheld::own_view;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;
use std::path::Path;
use sync_protocol::limits::{BATCH_OVERHEAD, PUSH_ITEM_OVERHEAD};
use sync_protocol::{BlobId, PushItem, PushOk};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Push requests kept in flight by a file push.
pub const PUSH_PIPELINE: usize = 4;
/// Acknowledged chunks between journal writes …
const JOURNAL_EVERY: u32 = 8;
/// … or this long, whichever comes first.
const JOURNAL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Options of a push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Time to live in seconds; `None` = the relay's default.
    pub ttl_s: Option<u32>,
    /// Push a file again even if it is unchanged since its last push.
    pub force: bool,
    /// This device's name, sent (encrypted) with each file version so a
    /// receiver can name a conflict copy after it (at most 32 bytes; see
    /// [`crate::crypto::envelope::validate_device_name`]; an invalid name is
    /// not sent).
    pub device_name: Option<String>,
}

/// What a file push stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PushedFile {
    /// Name as receivers will see it: the relative path they recreate
    /// under their output directory (docs/client.md "Directories").
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Blobs (chunks).
    pub blobs: u32,
    /// Blobs the relay already had (a retried or resumed push).
    pub duplicates: u32,
    /// Chunks not sent again because an earlier run had them acknowledged.
    pub resumed_chunks: u32,
    /// True when nothing was sent: the file is unchanged since its last push.
    pub unchanged: bool,
    /// Lowest cursor of the file's blobs.
    pub first_cursor: u64,
    /// Highest cursor of the file's blobs.
    pub last_cursor: u64,
    /// BLAKE3 of the content (hex).
    pub blake3: String,
}

/// One chunk of a file push that the relay acknowledged, as reported to
/// [`SyncClient::push_path_observed`]: where the relay stored it. Lets a
/// caller keep a ledger of every stored blob that survives the push being
/// cancelled or failing (e.g. tests checking that no acknowledged blob is
/// ever lost).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkAck {
    /// Chunk index in the file, from 0.
    pub index: u32,
    /// The chunk's blob id.
    pub blob_id: BlobId,
    /// Cursor the relay stored it at.
    pub cursor: u64,
    /// True when the relay already had it (a retried or resumed chunk); the
    /// cursor is then the one it was first stored at.
    pub duplicate: bool,
}

/// Sealed items of one push request being filled, and their bytes.
pub(super) struct Batch {
    pub(super) items: Vec<PushItem>,
    pub(super) bytes: usize,
}

/// Read up to `size` bytes (less only at end of input).
async fn read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    size: usize,
    name: &str,
) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(size);
    (&mut *reader)
        .take(size as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(ClientError::io(name))?;
    Ok(buf)
}

impl SyncClient {
    /// The header of this device's blob number `seq`, with its group view
    /// from `state` (docs/security.md "Withheld blobs").
    fn header(&self, state: &StateStore, kind: BlobKind, seq: u64) -> BlobHeader {
        BlobHeader {
            kind,
            sender: self.device_id(),
            seq,
            created_at_ms: now_ms(),
            compression: Compression::None,
            body_len: 0,
            view: own_view(&state.state, &self.device_id()),
        }
    }

    pub(super) fn seal(
        &self,
        state: &StateStore,
        blob_id: BlobId,
        kind: BlobKind,
        seq: u64,
        body: &[u8],
        ttl_s: Option<u32>,
    ) -> Result<PushItem> {
        let payload = envelope::seal(
            self.keys(),
            &blob_id,
            self.header(state, kind, seq),
            body,
            self.max_blob_size(),
        )?;
        Ok(PushItem {
            blob_id,
            payload,
            ttl_s,
        })
    }

    /// Whether `item` may join `batch` in one push request (the relay's
    /// `max_batch` and `max_frame`).
    pub(super) fn batch_fits(&self, batch: &Batch, item: &PushItem) -> bool {
        let session = self.session();
        let w = session.welcome();
        batch.items.len() < w.max_batch as usize
            && BATCH_OVERHEAD + batch.bytes + PUSH_ITEM_OVERHEAD + item.payload.len()
                <= w.max_frame as usize
    }

    /// Push sealed items: reconnects, stalls and RATE_LIMITED are handled by
    /// [`SyncClient::call`]; the same blob ids are sent again, so a retry
    /// never stores anything twice.
    pub async fn push_items(&self, items: Vec<PushItem>) -> Result<PushOk> {
        let items = &items;
        self.call(|s| async move { s.push_slice(items).await })
            .await
    }

    /// Seal and push application messages (each at most
    /// [`SyncClient::chunk_size`] bytes), batched. Returns one `PushOk` per
    /// batch. Errors: [`ClientError::InvalidInput`] (message too large),
    /// [`ClientError::Relay`], [`ClientError::GaveUp`].
    pub async fn push_messages(
        &self,
        state: &mut StateStore,
        messages: &[Vec<u8>],
        opts: &PushOptions,
    ) -> Result<Vec<PushOk>> {
        self.push_bodies(state, BlobKind::Message, messages, opts)
            .await
    }

    /// Seal application messages without pushing them: one sequence number
    /// each (reserved and persisted first, as for every push) and a random
    /// blob id, each body at most [`SyncClient::chunk_size`] bytes. A caller
    /// that must survive a crash between sealing and the relay's answer
    /// stores the items and pushes the *same* items again
    /// ([`SyncClient::push_items`]): the relay answers a repeated blob id with
    /// its first cursor, and receivers see each sequence number once
    /// (folder sync's outbox, docs/client.md "Folder sync").
    /// Errors: [`ClientError::InvalidInput`] (body too large), local I/O.
    pub fn seal_messages(
        &self,
        state: &mut StateStore,
        bodies: &[Vec<u8>],
        ttl_s: Option<u32>,
    ) -> Result<Vec<PushItem>> {
        let max = self.chunk_size();
        if let Some(big) = bodies.iter().find(|m| m.len() > max) {
            return Err(ClientError::InvalidInput(format!(
                "message of {} bytes exceeds the {max} bytes that fit one blob",
                big.len()
            )));
        }
        let first_seq = state.reserve_seqs(bodies.len() as u64)?;
        bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                self.seal(
                    state,
                    BlobId(random_bytes()),
                    BlobKind::Message,
                    first_seq + i as u64,
                    body,
                    ttl_s,
                )
            })
            .collect()
    }

    /// Seal and push roster blobs (`BlobKind::Roster` or
    /// `BlobKind::Enrolment`, docs/security.md "Devices, roster and key
    /// epochs"), each body at most [`SyncClient::chunk_size`] bytes.
    /// Errors: those of [`SyncClient::push_messages`].
    pub async fn push_roster(
        &self,
        state: &mut StateStore,
        kind: BlobKind,
        bodies: &[Vec<u8>],
    ) -> Result<Vec<PushOk>> {
        if !matches!(kind, BlobKind::Roster | BlobKind::Enrolment) {
            return Err(ClientError::InvalidInput(
                "push_roster pushes roster blobs only".into(),
            ));
        }
        self.push_bodies(state, kind, bodies, &PushOptions::default())
            .await
    }

    async fn push_bodies(
        &self,
        state: &mut StateStore,
        kind: BlobKind,
        messages: &[Vec<u8>],
        opts: &PushOptions,
    ) -> Result<Vec<PushOk>> {
        let max = self.chunk_size();
        if let Some(big) = messages.iter().find(|m| m.len() > max) {
            return Err(ClientError::InvalidInput(format!(
                "message of {} bytes exceeds the {max} bytes that fit one blob",
                big.len()
            )));
        }
        let mut results = Vec::new();
        let mut batch = Batch {
            items: Vec::new(),
            bytes: 0,
        };
        // Sequence numbers are reserved (and persisted) before sealing, so a
        // number is never used twice.
        let first_seq = state.reserve_seqs(messages.len() as u64)?;
        for (i, msg) in messages.iter().enumerate() {
            let item = self.seal(
                state,
                BlobId(random_bytes()),
                kind.clone(),
                first_seq + i as u64,
                msg,
                opts.ttl_s,
            )?;
            if !batch.items.is_empty() && !self.batch_fits(&batch, &item) {
                let full = std::mem::replace(
                    &mut batch,
                    Batch {
                        items: Vec::new(),
                        bytes: 0,
                    },
                );
                results.push(self.push_items(full.items).await?);
            }
            batch.bytes += PUSH_ITEM_OVERHEAD + item.payload.len();
            batch.items.push(item);
        }
        if !batch.items.is_empty() {
            results.push(self.push_items(batch.items).await?);
        }
        self.push_voids_after_push(state).await;
        Ok(results)
    }

    fn journals(state: &StateStore) -> Journals {
        Journals::at(state.dir().join("transfers"))
    }

    /// Push the file at `path` (as `name`, a relative path receivers
    /// recreate under their output directory — see [`crate::relpath`] —
    /// default its file name),
    /// resuming an interrupted push of the same unchanged file, and skipping
    /// a file unchanged since its last complete push (unless `opts.force`).
    /// `progress(bytes_done, total)` is called as chunks are read.
    /// Errors: [`ClientError::InvalidInput`] (bad name, file changed while
    /// pushing), [`ClientError::Io`], [`ClientError::Relay`],
    /// [`ClientError::GaveUp`].
    pub async fn push_path(
        &self,
        state: &mut StateStore,
        path: &Path,
        name: Option<&str>,
        opts: &PushOptions,
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<PushedFile> {
        self.push_path_observed(state, path, name, opts, progress, &mut |_| {})
            .await
    }

    /// As [`SyncClient::push_path`], also calling `on_ack` for every chunk
    /// as the relay acknowledges it (in chunk order, before the call
    /// returns). Chunks that an earlier, interrupted run had acknowledged
    /// and recorded in the journal are not sent, so not reported again; a
    /// chunk re-sent after an interruption is reported with
    /// `duplicate: true` and its first cursor.
    pub async fn push_path_observed(
        &self,
        state: &mut StateStore,
        path: &Path,
        name: Option<&str>,
        opts: &PushOptions,
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
        on_ack: &mut (dyn FnMut(ChunkAck) + Send),
    ) -> Result<PushedFile> {
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .and_then(|n| n.to_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    ClientError::InvalidInput(format!(
                        "{}: no usable file name; give one",
                        path.display()
                    ))
                })?,
        };
        validate_path(&name)
            .map_err(|why| ClientError::InvalidInput(format!("cannot push {name:?}: {why}")))?;
        let fingerprint = SourceFingerprint::of(path)?;
        let journals = Self::journals(state);
        let chunk_size = self.chunk_size();
        let previous = journals.find(path)?;
        let (lineage, generation) = next_version(state, &fingerprint.path, previous.as_ref());
        let mut journal = match previous {
            Some(j) if j.source.as_ref() == Some(&fingerprint) && j.name == name => {
                if let Some(hash) = &j.complete {
                    if !opts.force {
                        let (first, last) = j.cursors.unwrap_or((0, 0));
                        return Ok(PushedFile {
                            name,
                            size: fingerprint.size,
                            blobs: j.chunks.unwrap_or(0),
                            duplicates: 0,
                            resumed_chunks: 0,
                            unchanged: true,
                            first_cursor: first,
                            last_cursor: last,
                            blake3: hash.clone(),
                        });
                    }
                    journals.remove(&j)?;
                    None
                } else if j.chunk_size == chunk_size {
                    Some(j)
                } else {
                    self.abandon(state, &journals, &j).await?;
                    None
                }
            }
            Some(j) => {
                if j.complete.is_none() {
                    self.abandon(state, &journals, &j).await?;
                } else {
                    journals.remove(&j)?;
                }
                None
            }
            None => None,
        };
        if journal.is_none() {
            let mode = {
                use std::os::unix::fs::PermissionsExt;
                std::fs::metadata(&fingerprint.path)
                    .map_err(ClientError::io(path))?
                    .permissions()
                    .mode()
                    & 0o777
            };
            let chunks = fingerprint.size.div_ceil(chunk_size as u64).max(1);
            let chunks = u32::try_from(chunks)
                .map_err(|_| ClientError::InvalidInput(format!("{name:?} is too large")))?;
            let mut j = PushJournal {
                version: JOURNAL_VERSION,
                source: Some(fingerprint.clone()),
                name: name.clone(),
                mode,
                ttl_s: opts.ttl_s,
                file_id: hex::encode(random_bytes::<16>()),
                chunk_size,
                chunks: Some(chunks),
                first_seq: 0,
                last_seq: 0,
                acked: 0,
                cursors: None,
                complete: None,
                lineage: Some(lineage),
                generation,
                device: device_name(opts),
                completed_at_ms: 0,
            };
            // The counter moves past the numbers, then the journal names
            // them, under one lock (see `StateStore::reserve_seqs_then`).
            let journal_file = journals.path_for(&j);
            state.reserve_seqs_then(u64::from(chunks), &journal_file, |first| {
                j.first_seq = first;
                j.last_seq = first + u64::from(chunks) - 1;
                journals.save(&j)
            })?;
            journal = Some(j);
        }
        let mut journal = journal.expect("set above");
        let file = tokio::fs::File::open(&fingerprint.path)
            .await
            .map_err(ClientError::io(path))?;
        let reader = file.take(fingerprint.size);
        let report = self
            .send_chunks(state, reader, &mut journal, &journals, progress, on_ack)
            .await?;
        self.push_voids_after_push(state).await;
        Ok(report)
    }

    /// Push the content of `reader` (e.g. stdin) as file `name` with
    /// permission bits `mode`. Not resumable: if interrupted, the next push
    /// abandons it (receivers drop the partial copy). `progress(bytes, None)`.
    /// Errors: as [`SyncClient::push_path`].
    pub async fn push_file<R: AsyncRead + Unpin>(
        &self,
        state: &mut StateStore,
        reader: R,
        name: &str,
        mode: u32,
        opts: &PushOptions,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<PushedFile> {
        validate_path(name)
            .map_err(|why| ClientError::InvalidInput(format!("cannot push {name:?}: {why}")))?;
        let journals = Self::journals(state);
        let mut journal = PushJournal {
            version: JOURNAL_VERSION,
            source: None,
            name: name.to_string(),
            mode: mode & 0o777,
            ttl_s: opts.ttl_s,
            file_id: hex::encode(random_bytes::<16>()),
            chunk_size: self.chunk_size(),
            chunks: None,
            first_seq: 0,
            last_seq: 0,
            acked: 0,
            cursors: None,
            complete: None,
            lineage: Some(hex::encode(random_bytes::<16>())),
            generation: 1,
            device: device_name(opts),
            completed_at_ms: 0,
        };
        let report = self
            .send_chunks(
                state,
                reader,
                &mut journal,
                &journals,
                &mut |done, _| progress(done),
                &mut |_| {},
            )
            .await?;
        journals.remove(&journal)?;
        self.push_voids_after_push(state).await;
        Ok(report)
    }

    /// Give up an unfinished push: tell receivers (a `Void` blob) to drop
    /// the partial file and that its sequence numbers will not be used,
    /// then forget the journal.
    async fn abandon(
        &self,
        state: &mut StateStore,
        journals: &Journals,
        j: &PushJournal,
    ) -> Result<()> {
        if j.first_seq > 0 {
            let file_id = j.file_id_bytes()?;
            let seq = state.reserve_seqs(1)?;
            let kind = BlobKind::Void {
                file_id: Some(file_id),
                first_seq: j.first_seq,
                last_seq: j.last_seq,
            };
            let item = self.seal(
                state,
                chunk_blob_id(&file_id, u32::MAX),
                kind,
                seq,
                &[],
                None,
            )?;
            self.push_items(vec![item]).await?;
        }
        tracing::info!(name = %j.name, "abandoned an unfinished push");
        journals.remove(j)
    }

    /// Abandon every unfinished push that cannot be resumed: stdin pushes,
    /// and files that changed or vanished since. Returns their names.
    pub async fn abandon_stale_pushes(&self, state: &mut StateStore) -> Result<Vec<String>> {
        let journals = Self::journals(state);
        let mut names = Vec::new();
        for j in journals.list()? {
            if j.complete.is_some() {
                continue;
            }
            let stale = match &j.source {
                None => true,
                Some(src) => SourceFingerprint::of(&src.path).ok().as_ref() != Some(src),
            };
            if stale {
                self.abandon(state, &journals, &j).await?;
                names.push(j.name.clone());
            }
        }
        Ok(names)
    }

    /// The chunk loop shared by path and reader pushes: read, hash, seal
    /// and send chunk by chunk with [`PUSH_PIPELINE`] requests in flight,
    /// skipping chunks the journal has acknowledged, recording progress in
    /// the journal and reporting each acknowledged chunk to `on_ack`.
    async fn send_chunks<R: AsyncRead + Unpin>(
        &self,
        state: &mut StateStore,
        mut reader: R,
        journal: &mut PushJournal,
        journals: &Journals,
        progress: &mut (dyn FnMut(u64, Option<u64>) + Send),
        on_ack: &mut (dyn FnMut(ChunkAck) + Send),
    ) -> Result<PushedFile> {
        let chunk_size = journal.chunk_size;
        let file_id = journal.file_id_bytes()?;
        let version = version_of(journal)?;
        let total = journal.source.as_ref().map(|s| s.size);
        let mut hasher = blake3::Hasher::new();
        let mut in_flight = FuturesOrdered::new();
        let mut report = PushedFile {
            name: journal.name.clone(),
            size: 0,
            blobs: 0,
            duplicates: 0,
            resumed_chunks: journal.acked,
            unchanged: false,
            first_cursor: journal.cursors.map(|c| c.0).unwrap_or(u64::MAX),
            last_cursor: journal.cursors.map(|c| c.1).unwrap_or(0),
            blake3: String::new(),
        };
        let mut current = read_chunk(&mut reader, chunk_size, &journal.name).await?;
        let mut index: u32 = 0;
        let mut since_save = 0;
        let mut saved_at = std::time::Instant::now();
        loop {
            let next = if current.len() == chunk_size {
                read_chunk(&mut reader, chunk_size, &journal.name).await?
            } else {
                Vec::new()
            };
            hasher.update(&current);
            let offset = report.size;
            report.size += current.len() as u64;
            progress(report.size, total);
            let last = next.is_empty();
            if let Some(expected) = journal.chunks
                && (last != (index + 1 == expected) || index >= expected)
            {
                return Err(ClientError::InvalidInput(format!(
                    "{:?} changed while it was being pushed; push it again",
                    journal.name
                )));
            }
            if index >= journal.acked {
                let seq = if journal.chunks.is_some() {
                    journal.first_seq + u64::from(index)
                } else {
                    // Unknown length: reserve as we go, recording each
                    // number in the journal before it is used.
                    let journal_file = journals.path_for(journal);
                    state.reserve_seqs_then(1, &journal_file, |seq| {
                        if journal.first_seq == 0 {
                            journal.first_seq = seq;
                        }
                        journal.last_seq = seq;
                        journals.save(journal)
                    })?
                };
                let chunk = FileChunk {
                    file_id,
                    name: journal.name.clone(),
                    mode: journal.mode,
                    index,
                    offset,
                    size_hint: total,
                    end: last.then(|| FileEnd {
                        chunks: index + 1,
                        size: report.size,
                        blake3: *hasher.finalize().as_bytes(),
                    }),
                };
                let kind = match &version {
                    Some(version) => BlobKind::VersionedChunk {
                        chunk,
                        version: version.clone(),
                    },
                    None => BlobKind::FileChunk(chunk),
                };
                let item = self.seal(
                    state,
                    chunk_blob_id(&file_id, index),
                    kind,
                    seq,
                    &current,
                    journal.ttl_s,
                )?;
                if in_flight.len() >= PUSH_PIPELINE
                    && let Some(done) = in_flight.next().await
                {
                    acked(&mut report, journal, done?, on_ack);
                    since_save += 1;
                    if (since_save >= JOURNAL_EVERY || saved_at.elapsed() >= JOURNAL_INTERVAL)
                        && journal.source.is_some()
                    {
                        journals.save(journal)?;
                        since_save = 0;
                        saved_at = std::time::Instant::now();
                    }
                }
                in_flight.push_back(self.push_items(vec![item]));
            }
            if last {
                break;
            }
            current = next;
            index += 1;
        }
        while let Some(done) = in_flight.next().await {
            acked(&mut report, journal, done?, on_ack);
        }
        report.blake3 = hasher.finalize().to_hex().to_string();
        journal.complete = Some(report.blake3.clone());
        journal.completed_at_ms = now_ms();
        if journal.source.is_some() {
            journals.save(journal)?;
        }
        if report.first_cursor == u64::MAX {
            report.first_cursor = 0;
        }
        Ok(report)
    }
}

/// The version a new push of the file at `canonical` gets: the next
/// generation of the history this device last wrote there (pull, in
/// `state.json`) or pushed from there (its push journal, `previous`),
/// whichever is more recent; a new history (random lineage, generation 1)
/// when there is none. Returns (lineage hex, generation).
pub(super) fn next_version(
    state: &StateStore,
    canonical: &Path,
    previous: Option<&PushJournal>,
) -> (String, u64) {
    let pulled = state
        .state
        .files
        .get(canonical.to_string_lossy().as_ref())
        .and_then(|k| Some((k.lineage.clone()?, k.generation, k.at_ms)));
    let pushed = previous.and_then(|j| Some((j.lineage.clone()?, j.generation, j.completed_at_ms)));
    let latest = match (pulled, pushed) {
        (Some(a), Some(b)) if a.0 == b.0 => Some((a.0, a.1.max(b.1), 0)),
        (Some(a), Some(b)) => Some(if a.2 >= b.2 { a } else { b }),
        (a, b) => a.or(b),
    };
    match latest {
        Some((lineage, generation, _)) => (lineage, generation.saturating_add(1)),
        None => (hex::encode(random_bytes::<16>()), 1),
    }
}

/// The version a journal's chunks carry (`None` for journals of older
/// clients). Errors: [`ClientError::Home`] (a bad lineage).
pub(super) fn version_of(journal: &PushJournal) -> Result<Option<FileVersion>> {
    let Some(l) = &journal.lineage else {
        return Ok(None);
    };
    let lineage = hex::decode(l)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| {
            ClientError::Home(format!("journal of {:?} has a bad lineage", journal.name))
        })?;
    Ok(Some(FileVersion {
        lineage,
        generation: journal.generation,
        device: journal.device.clone(),
    }))
}

/// The device name to send: `opts.device_name` when valid.
pub(super) fn device_name(opts: &PushOptions) -> Option<String> {
    opts.device_name
        .clone()
        .filter(|n| envelope::validate_device_name(n).is_ok())
}

/// Count an acknowledged chunk (they arrive in order, so its index is the
/// number of chunks acknowledged before it) and report it to `on_ack`.
fn acked(
    report: &mut PushedFile,
    journal: &mut PushJournal,
    ok: PushOk,
    on_ack: &mut (dyn FnMut(ChunkAck) + Send),
) {
    for r in ok.results {
        on_ack(ChunkAck {
            index: journal.acked,
            blob_id: r.blob_id,
            cursor: r.cursor,
            duplicate: r.duplicate,
        });
        report.blobs += 1;
        report.duplicates += u32::from(r.duplicate);
        report.first_cursor = report.first_cursor.min(r.cursor);
        report.last_cursor = report.last_cursor.max(r.cursor);
    }
    journal.acked += 1;
    journal.cursors = Some((report.first_cursor, report.last_cursor));
}
