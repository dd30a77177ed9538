//! `SyncClient` (DESIGN §6): a relay session plus the group's keys — seals
//! what it pushes, opens what it pulls.
//!
//! - [`SyncClient::push_file`] splits a stream into chunks that fit the
//!   relay's `max_blob_size`, seals each as one blob, and keeps a few push
//!   requests in flight; memory stays flat in the file size.
//! - [`SyncClient::pull`] fetches everything after the local cursor, applies
//!   it through [`Receiver`], persists the state after every frame, and
//!   acknowledges the new cursor to the relay.
//! - [`SyncClient::subscribe`] yields the group's head as NOTIFY reports it.

use crate::crypto::envelope::{self, BlobHeader, BlobKind, Compression, FileChunk, FileEnd};
use crate::crypto::{GroupKeys, random_bytes};
use crate::error::{ClientError, Result};
use crate::receive::{PullEvent, Receiver, gap_events};
use crate::session::{ConnectOptions, RelaySession};
use crate::state::StateStore;
use crate::util::now_ms;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use serde::Serialize;
use std::path::Path;
use sync_protocol::limits::{BATCH_OVERHEAD, PUSH_ITEM_OVERHEAD};
use sync_protocol::{BlobId, DeviceId, PushItem, PushOk};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Push requests kept in flight by `push_file`.
pub const PUSH_PIPELINE: usize = 4;
/// Blobs asked for per pull request.
pub const PULL_LIMIT: u32 = 1000;

/// Longest total wait for RATE_LIMITED answers of one request before the
/// error is returned.
pub const MAX_RATE_LIMIT_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Run `request` again after the relay's `retry_after_ms` while it answers
/// RATE_LIMITED (the request had no effect, so repeating it is safe), for at
/// most [`MAX_RATE_LIMIT_WAIT`] in total.
pub async fn retry_rate_limited<T, F, Fut>(mut request: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut waited = std::time::Duration::ZERO;
    loop {
        match request().await {
            Err(ClientError::Relay(e))
                if e.error_code() == sync_protocol::ErrorCode::RateLimited
                    && waited < MAX_RATE_LIMIT_WAIT =>
            {
                let wait = std::time::Duration::from_millis(u64::from(
                    e.retry_after_ms.unwrap_or(1000).max(1),
                ));
                tracing::debug!(
                    wait_ms = wait.as_millis() as u64,
                    "rate limited by the relay; waiting"
                );
                tokio::time::sleep(wait).await;
                waited += wait;
            }
            other => return other,
        }
    }
}

/// Options of a push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Time to live in seconds; `None` = the relay's default.
    pub ttl_s: Option<u32>,
}

/// What `push_file` stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PushedFile {
    /// File name as receivers will see it.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Blobs (chunks).
    pub blobs: u32,
    /// Blobs the relay already had (a retried push).
    pub duplicates: u32,
    /// Lowest cursor of the file's blobs.
    pub first_cursor: u64,
    /// Highest cursor of the file's blobs.
    pub last_cursor: u64,
    /// BLAKE3 of the content (hex).
    pub blake3: String,
}

/// What a `pull` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullSummary {
    /// Local cursor after the pull.
    pub cursor: u64,
    /// Group head reported by the relay.
    pub head: u64,
    /// Blobs received (including this device's own, which are skipped).
    pub blobs: u64,
    /// Files completed.
    pub files: u64,
    /// Blobs rejected.
    pub rejected: u64,
}

/// A connected device.
#[derive(Debug)]
pub struct SyncClient {
    session: RelaySession,
    keys: GroupKeys,
}

struct Batch {
    items: Vec<PushItem>,
    bytes: usize,
}

impl SyncClient {
    /// Connect and authenticate. Errors: as [`RelaySession::connect`].
    pub async fn connect(opts: &ConnectOptions) -> Result<SyncClient> {
        Ok(SyncClient {
            session: RelaySession::connect(opts).await?,
            keys: opts.keys.clone(),
        })
    }

    /// The underlying session (limits, raw requests).
    pub fn session(&self) -> &RelaySession {
        &self.session
    }

    /// This device's node id.
    pub fn device_id(&self) -> DeviceId {
        self.session.device_id()
    }

    /// Bytes of file content per chunk: the most whose envelope fits the
    /// relay's `max_blob_size`.
    pub fn chunk_size(&self) -> usize {
        envelope::max_body_for(self.session.welcome().max_blob_size as usize).max(1)
    }

    /// The group's head as NOTIFY reports it; `changed()` fails when the
    /// connection is gone.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.session.heads()
    }

    fn header(&self, kind: BlobKind, seq: u64) -> BlobHeader {
        BlobHeader {
            kind,
            sender: self.device_id(),
            seq,
            created_at_ms: now_ms(),
            compression: Compression::None,
            body_len: 0,
        }
    }

    fn seal(&self, kind: BlobKind, seq: u64, body: &[u8], ttl_s: Option<u32>) -> Result<PushItem> {
        let blob_id = BlobId(random_bytes());
        let payload = envelope::seal(
            &self.keys,
            &blob_id,
            self.header(kind, seq),
            body,
            self.session.welcome().max_blob_size as usize,
        )?;
        Ok(PushItem {
            blob_id,
            payload,
            ttl_s,
        })
    }

    fn batch_fits(&self, batch: &Batch, item: &PushItem) -> bool {
        let w = self.session.welcome();
        batch.items.len() < w.max_batch as usize
            && BATCH_OVERHEAD + batch.bytes + PUSH_ITEM_OVERHEAD + item.payload.len()
                <= w.max_frame as usize
    }

    /// Seal and push application messages (each at most
    /// [`SyncClient::chunk_size`] bytes), batched. Returns one `PushOk` per
    /// batch. Errors: [`ClientError::InvalidInput`] (message too large),
    /// [`ClientError::Relay`], [`ClientError::ConnectionLost`].
    pub async fn push_messages(
        &self,
        state: &mut StateStore,
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
        // Sequence numbers are reserved before sealing (one reservation for
        // all messages), so a number is never used twice.
        let first_seq = state.reserve_seqs(messages.len() as u64)?;
        for (i, msg) in messages.iter().enumerate() {
            let item = self.seal(BlobKind::Message, first_seq + i as u64, msg, opts.ttl_s)?;
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
        Ok(results)
    }

    /// Push sealed items, waiting out RATE_LIMITED answers (the same blob
    /// ids are sent again, so a retry can never store anything twice).
    pub async fn push_items(&self, items: Vec<PushItem>) -> Result<PushOk> {
        retry_rate_limited(|| self.session.push(items.clone())).await
    }

    /// Push the content of `reader` as file `name` with permission bits
    /// `mode`, in chunks of [`SyncClient::chunk_size`] bytes (the last chunk
    /// carries the BLAKE3 of the whole content). `progress` gets the bytes
    /// read so far. Memory: at most [`PUSH_PIPELINE`] + 2 chunks.
    /// Errors: [`ClientError::InvalidInput`] (bad name), [`ClientError::Io`],
    /// [`ClientError::Relay`], [`ClientError::ConnectionLost`].
    pub async fn push_file<R: AsyncRead + Unpin>(
        &self,
        state: &mut StateStore,
        mut reader: R,
        name: &str,
        mode: u32,
        opts: &PushOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<PushedFile> {
        envelope::validate_name(name)
            .map_err(|why| ClientError::InvalidInput(format!("cannot push {name:?}: {why}")))?;
        let chunk_size = self.chunk_size();
        let file_id: [u8; 16] = random_bytes();
        let mut hasher = blake3::Hasher::new();
        let mut in_flight = FuturesOrdered::new();
        let mut report = PushedFile {
            name: name.to_string(),
            size: 0,
            blobs: 0,
            duplicates: 0,
            first_cursor: u64::MAX,
            last_cursor: 0,
            blake3: String::new(),
        };
        let mut current = read_chunk(&mut reader, chunk_size, name).await?;
        let mut index: u32 = 0;
        loop {
            let next = if current.len() == chunk_size {
                read_chunk(&mut reader, chunk_size, name).await?
            } else {
                Vec::new()
            };
            hasher.update(&current);
            let offset = report.size;
            report.size += current.len() as u64;
            progress(report.size);
            let last = next.is_empty();
            let chunk = FileChunk {
                file_id,
                name: name.to_string(),
                mode: mode & 0o777,
                index,
                offset,
                end: last.then(|| FileEnd {
                    chunks: index + 1,
                    size: report.size,
                    blake3: *hasher.finalize().as_bytes(),
                }),
            };
            let seq = state.reserve_seqs(1)?;
            let item = self.seal(BlobKind::FileChunk(chunk), seq, &current, opts.ttl_s)?;
            if in_flight.len() >= PUSH_PIPELINE
                && let Some(done) = in_flight.next().await
            {
                tally(&mut report, done?);
            }
            in_flight.push_back(self.push_items(vec![item]));
            if last {
                break;
            }
            current = next;
            index += 1;
        }
        while let Some(done) = in_flight.next().await {
            tally(&mut report, done?);
        }
        report.blake3 = hasher.finalize().to_hex().to_string();
        Ok(report)
    }

    /// Pull everything after the local cursor, applying it into `out_dir`,
    /// until the relay has nothing more; then report sequence gaps and
    /// acknowledge the cursor. State is saved after every frame.
    /// Errors: [`ClientError::Relay`], [`ClientError::ConnectionLost`],
    /// [`ClientError::Protocol`], [`ClientError::Io`] (local writes).
    pub async fn pull(
        &self,
        state: &mut StateStore,
        out_dir: &Path,
        events: &mut dyn FnMut(PullEvent),
    ) -> Result<PullSummary> {
        let receiver = Receiver::new(&self.keys, self.device_id(), out_dir);
        let mut summary = PullSummary::default();
        let mut count_events = |e: PullEvent, summary: &mut PullSummary| {
            match &e {
                PullEvent::File { .. } => summary.files += 1,
                PullEvent::Rejected { .. } => summary.rejected += 1,
                _ => {}
            }
            events(e);
        };
        loop {
            let cursor = state.state.cursor;
            let mut response = self.session.pull(cursor, PULL_LIMIT).await?;
            let mut received = 0u64;
            let mut first = true;
            loop {
                let batch = match response.next_batch().await {
                    // Refused before any frame: wait and ask again.
                    Err(ClientError::Relay(e))
                        if first && e.error_code() == sync_protocol::ErrorCode::RateLimited =>
                    {
                        let wait = u64::from(e.retry_after_ms.unwrap_or(1000).max(1));
                        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                        response = self.session.pull(cursor, PULL_LIMIT).await?;
                        continue;
                    }
                    other => other?,
                };
                first = false;
                let Some(batch) = batch else { break };
                summary.head = summary.head.max(batch.head);
                for blob in &batch.blobs {
                    received += 1;
                    let mut sink = |e| count_events(e, &mut summary);
                    receiver.apply(blob, &mut state.state, &mut sink)?;
                    state.state.cursor = state.state.cursor.max(blob.cursor);
                }
                state.save()?;
            }
            summary.blobs += received;
            if received == 0 {
                // Everything up to `head` that still exists was visible.
                state.state.cursor = state.state.cursor.max(summary.head);
                state.save()?;
                break;
            }
        }
        for gap in gap_events(&state.state) {
            count_events(gap, &mut summary);
        }
        if state.state.cursor > 0 {
            let cursor = state.state.cursor;
            retry_rate_limited(|| self.session.ack(cursor)).await?;
        }
        summary.cursor = state.state.cursor;
        Ok(summary)
    }

    /// Close the session cleanly.
    pub async fn close(self) {
        self.session.close().await;
    }
}

fn tally(report: &mut PushedFile, ok: PushOk) {
    for r in ok.results {
        report.blobs += 1;
        report.duplicates += u32::from(r.duplicate);
        report.first_cursor = report.first_cursor.min(r.cursor);
        report.last_cursor = report.last_cursor.max(r.cursor);
    }
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
