//! Pushing many small files together (docs/client.md "Batched small
//! files"; folder sync's uploads): every file whose content fits one chunk
//! is one blob, and up to [`BATCH_FILES`] of them share one reservation of
//! sequence numbers and one [`crate::journal::batch`] journal, and go out
//! in as few push requests as the relay's `max_batch` and `max_frame`
//! allow ([`PUSH_PIPELINE`] in flight) — instead of a journal, a
//! reservation and a round trip per file.
//!
//! Same semantics as a file push: chunk blob ids derived from the file id,
//! the version sent with each file, and an interrupted batch resumed by
//! the next call — a file still unchanged and pushed under the same name
//! goes out with its journaled ids and number (the relay stores it once);
//! the numbers of the others are voided.

use super::SyncClient;
use super::push::{
    Batch, PUSH_PIPELINE, PushOptions, PushedFile, device_name, next_version, version_of,
};
use crate::crypto::envelope::{BlobKind, FileChunk, FileEnd};
use crate::crypto::random_bytes;
use crate::error::{ClientError, Result};
use crate::journal::batch::{BatchJournal, BatchJournals};
use crate::journal::{JOURNAL_VERSION, PushJournal, SourceFingerprint, chunk_blob_id};
use crate::relpath::validate_path;
use crate::state::StateStore;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use std::collections::HashSet;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use sync_protocol::{BlobId, PushItem, PushResult};

/// Most files in one batch (one reservation, one journal).
pub const BATCH_FILES: usize = 1024;
/// Most content bytes of one batch held in memory (a batch closes once it
/// reaches this).
pub const BATCH_BYTES: u64 = 32 << 20;

/// One file for [`SyncClient::push_small_files`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmallFile {
    /// Where the file is.
    pub path: PathBuf,
    /// The name receivers see: a relative path they recreate under their
    /// output directory (docs/client.md "Directories").
    pub name: String,
}

/// A file read and journaled, ready to seal.
struct Ready {
    /// Its position in the caller's list.
    index: usize,
    journal: PushJournal,
    content: Vec<u8>,
}

impl SyncClient {
    /// Push `files`, each at most [`SyncClient::chunk_size`] bytes, in
    /// batches (see the module docs), always sending (as
    /// [`PushOptions::force`]). `on_file(i, result)` is called once for
    /// each `files[i]`: `Ok` once the relay stored it, or the file's own
    /// error — [`ClientError::InvalidInput`] (a bad name, larger than one
    /// chunk, not a regular file, changed while being read),
    /// [`ClientError::Io`] (cannot be read). First, for the files of an
    /// interrupted batch, the journaled ids are reused; afterwards the
    /// numbers of files of such batches that this call did not push are
    /// voided. Errors (the call stops; files not reported were not
    /// pushed, an unfinished batch is resumed by the next call):
    /// [`ClientError::Relay`], [`ClientError::GaveUp`],
    /// [`ClientError::Protocol`], local state ([`ClientError::Io`],
    /// [`ClientError::Home`]).
    pub async fn push_small_files(
        &self,
        state: &mut StateStore,
        files: &[SmallFile],
        opts: &PushOptions,
        on_file: &mut (dyn FnMut(usize, Result<PushedFile>) + Send),
    ) -> Result<()> {
        let batches = BatchJournals::in_transfers(&state.dir().join("transfers"));
        let leftovers = batches.list()?;
        let mut old: Vec<PushJournal> = leftovers
            .iter()
            .flat_map(|b| b.files.iter().cloned())
            .collect();
        let chunk_size = self.chunk_size();
        let mut next = 0;
        while next < files.len() {
            let mut ready = Vec::new();
            let mut bytes = 0u64;
            while next < files.len() && ready.len() < BATCH_FILES && bytes < BATCH_BYTES {
                match self.ready(state, &files[next], chunk_size, opts, &mut old) {
                    Ok((journal, content)) => {
                        bytes += content.len() as u64;
                        ready.push(Ready {
                            index: next,
                            journal,
                            content,
                        });
                    }
                    Err(e) => on_file(next, Err(e)),
                }
                next += 1;
            }
            if !ready.is_empty() {
                self.push_batch(state, &batches, ready, on_file).await?;
            }
        }
        self.void_unfinished(state, &old).await?;
        for b in &leftovers {
            batches.remove(&b.id)?;
        }
        self.push_voids_after_push(state).await;
        Ok(())
    }

    /// Read `f` and make its journal: the one of an interrupted batch
    /// (taken out of `old`) when the file is unchanged since, else a new
    /// one (numbers not yet reserved: `first_seq` 0).
    fn ready(
        &self,
        state: &StateStore,
        f: &SmallFile,
        chunk_size: usize,
        opts: &PushOptions,
        old: &mut Vec<PushJournal>,
    ) -> Result<(PushJournal, Vec<u8>)> {
        validate_path(&f.name)
            .map_err(|why| ClientError::InvalidInput(format!("cannot push {:?}: {why}", f.name)))?;
        let canonical = std::fs::canonicalize(&f.path).map_err(ClientError::io(&f.path))?;
        let meta = std::fs::metadata(&canonical).map_err(ClientError::io(&f.path))?;
        if !meta.is_file() {
            return Err(ClientError::InvalidInput(format!(
                "{}: not a regular file",
                f.path.display()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        let source = SourceFingerprint::from_meta(canonical, &meta);
        if source.size > chunk_size as u64 {
            return Err(ClientError::InvalidInput(format!(
                "{}: {} bytes do not fit one chunk of {chunk_size}; push it as a file",
                f.path.display(),
                source.size
            )));
        }
        let mut content = Vec::with_capacity(source.size as usize);
        std::fs::File::open(&source.path)
            .and_then(|file| file.take(chunk_size as u64 + 1).read_to_end(&mut content))
            .map_err(ClientError::io(&f.path))?;
        if content.len() as u64 != source.size {
            return Err(ClientError::InvalidInput(format!(
                "{:?} changed while it was being pushed; push it again",
                f.name
            )));
        }
        let resumed = old.iter().position(|j| {
            j.source.as_ref() == Some(&source)
                && j.name == f.name
                && j.mode == mode
                && j.chunk_size == chunk_size
                && j.chunks == Some(1)
                && j.first_seq > 0
        });
        if let Some(pos) = resumed {
            let journal = old.remove(pos);
            // The same file may be in several interrupted batches (one
            // resumed it and was interrupted too): all are this one.
            old.retain(|j| j.file_id != journal.file_id);
            return Ok((journal, content));
        }
        let (lineage, generation) = next_version(state, &source.path, None);
        let journal = PushJournal {
            version: JOURNAL_VERSION,
            source: Some(source),
            name: f.name.clone(),
            mode,
            ttl_s: opts.ttl_s,
            file_id: hex::encode(random_bytes::<16>()),
            chunk_size,
            chunks: Some(1),
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
        Ok((journal, content))
    }

    /// Journal `ready` as one batch (reserving numbers for its new files
    /// first), seal and push it, report each file, forget the journal.
    async fn push_batch(
        &self,
        state: &mut StateStore,
        batches: &BatchJournals,
        mut ready: Vec<Ready>,
        on_file: &mut (dyn FnMut(usize, Result<PushedFile>) + Send),
    ) -> Result<()> {
        let id = hex::encode(random_bytes::<8>());
        let fresh: Vec<usize> = (0..ready.len())
            .filter(|&i| ready[i].journal.first_seq == 0)
            .collect();
        let mut batch = BatchJournal::new(
            id.clone(),
            ready.iter().map(|r| r.journal.clone()).collect(),
        );
        if fresh.is_empty() {
            batches.save(&batch)?;
        } else {
            let file = batches.path_for(&id);
            state.reserve_seqs_then(fresh.len() as u64, &file, |first| {
                for (k, &i) in fresh.iter().enumerate() {
                    batch.files[i].first_seq = first + k as u64;
                    batch.files[i].last_seq = first + k as u64;
                }
                batch.set_range();
                batches.save(&batch)
            })?;
            for (r, j) in ready.iter_mut().zip(&batch.files) {
                r.journal = j.clone();
            }
        }
        let mut requests = Vec::new();
        let mut request = Batch {
            items: Vec::new(),
            bytes: 0,
        };
        let mut hashes = Vec::with_capacity(ready.len());
        for r in &mut ready {
            let content = std::mem::take(&mut r.content);
            let hash = blake3::hash(&content);
            let item = self.seal_small(state, &r.journal, &content, hash)?;
            hashes.push((hash, content.len() as u64));
            if !request.items.is_empty() && !self.batch_fits(&request, &item) {
                requests.push(std::mem::take(&mut request.items));
                request.bytes = 0;
            }
            request.bytes += sync_protocol::limits::PUSH_ITEM_OVERHEAD + item.payload.len();
            request.items.push(item);
        }
        if !request.items.is_empty() {
            requests.push(request.items);
        }
        let mut results: Vec<PushResult> = Vec::with_capacity(ready.len());
        let mut in_flight = FuturesOrdered::new();
        for items in requests {
            if in_flight.len() >= PUSH_PIPELINE
                && let Some(ok) = in_flight.next().await
            {
                let ok: sync_protocol::PushOk = ok?;
                results.extend(ok.results);
            }
            in_flight.push_back(self.push_items(items));
        }
        while let Some(ok) = in_flight.next().await {
            results.extend(ok?.results);
        }
        if results.len() != ready.len() {
            return Err(ClientError::Protocol(format!(
                "the relay answered {} results for {} blobs",
                results.len(),
                ready.len()
            )));
        }
        batches.remove(&id)?;
        for ((r, res), (hash, size)) in ready.iter().zip(results).zip(hashes) {
            on_file(
                r.index,
                Ok(PushedFile {
                    name: r.journal.name.clone(),
                    size,
                    blobs: 1,
                    duplicates: u32::from(res.duplicate),
                    resumed_chunks: 0,
                    unchanged: false,
                    first_cursor: res.cursor,
                    last_cursor: res.cursor,
                    blake3: hash.to_hex().to_string(),
                }),
            );
        }
        Ok(())
    }

    /// The one blob of a one-chunk file.
    fn seal_small(
        &self,
        state: &StateStore,
        journal: &PushJournal,
        content: &[u8],
        hash: blake3::Hash,
    ) -> Result<PushItem> {
        let file_id = journal.file_id_bytes()?;
        let chunk = FileChunk {
            file_id,
            name: journal.name.clone(),
            mode: journal.mode,
            index: 0,
            offset: 0,
            size_hint: Some(content.len() as u64),
            end: Some(FileEnd {
                chunks: 1,
                size: content.len() as u64,
                blake3: *hash.as_bytes(),
            }),
        };
        let kind = match version_of(journal)? {
            Some(version) => BlobKind::VersionedChunk { chunk, version },
            None => BlobKind::FileChunk(chunk),
        };
        self.seal(
            state,
            chunk_blob_id(&file_id, 0),
            kind,
            journal.first_seq,
            content,
            journal.ttl_s,
        )
    }

    /// Give up the files of interrupted batches that were not pushed
    /// again: a `Void` of their numbers (in cursor order after any of
    /// them the relay stored before the interruption).
    async fn void_unfinished(&self, state: &mut StateStore, old: &[PushJournal]) -> Result<()> {
        let mut seen = HashSet::new();
        let mut seqs: Vec<(u64, u64)> = old
            .iter()
            .filter(|j| j.first_seq > 0 && j.last_seq >= j.first_seq)
            .filter(|j| seen.insert(j.file_id.clone()))
            .map(|j| (j.first_seq, j.last_seq))
            .collect();
        if seqs.is_empty() {
            return Ok(());
        }
        seqs.sort_unstable();
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (first, last) in seqs {
            match ranges.last_mut() {
                Some(r) if first <= r.1.saturating_add(1) => r.1 = r.1.max(last),
                _ => ranges.push((first, last)),
            }
        }
        let first = state.reserve_seqs(ranges.len() as u64)?;
        let mut request = Batch {
            items: Vec::new(),
            bytes: 0,
        };
        for (i, &(first_seq, last_seq)) in ranges.iter().enumerate() {
            let kind = BlobKind::Void {
                file_id: None,
                first_seq,
                last_seq,
            };
            let item = self.seal(
                state,
                BlobId(random_bytes()),
                kind,
                first + i as u64,
                &[],
                None,
            )?;
            if !request.items.is_empty() && !self.batch_fits(&request, &item) {
                self.push_items(std::mem::take(&mut request.items)).await?;
                request.bytes = 0;
            }
            request.bytes += sync_protocol::limits::PUSH_ITEM_OVERHEAD + item.payload.len();
            request.items.push(item);
        }
        if !request.items.is_empty() {
            self.push_items(request.items).await?;
        }
        tracing::info!(
            ranges = ranges.len(),
            "gave up the unsent files of an interrupted batch"
        );
        Ok(())
    }
}
