//! `Pull` → one or more `PullBatch` frames (docs/protocol.md): the answer is read
//! from storage one page at a time, each page sized to fit one frame, so the
//! relay never holds more than a frame of blobs for a pull however large the
//! backlog, and holds no database transaction while the client reads.
//!
//! Each page is paid for from the session's response budget
//! ([`crate::budget`]) before it is read from storage ([`PROBE_FRAME`] for
//! the first, `max_frame` for later ones; cut down to the encoded frame once
//! it is built) and given back once the device has taken the frame, which it
//! must do within the frame's write deadline. The one page that can exceed
//! its reservation (a single blob larger than the probe) exists unpaid only
//! while storage reads it and until the check right after (no wait in
//! between): at most one per read connection of the database (2) and per
//! worker thread at a time — storage holds the read connection until the
//! page's payloads are in, those kept in files included
//! ([`sync_storage::Storage::pull_page`]). Without that bound, pulls that
//! wait for budget each held an unpaid page: 20 never-reading sessions made
//! the relay read hundreds of 1 MiB payloads at once.
//!
//! **No echo** (protocol version 2, docs/protocol.md "Version 2: no echo"):
//! a session's own blobs (stored with its device as sender) are left out of
//! its answers; when a page ends with one, that last one goes as a marker
//! with an empty payload, so the device's cursor can move past its own
//! blobs without downloading them. Storage still reads the page as for
//! everyone (the storage trait is shared by every backend); the saving is
//! the transfer, the client's decryption and its work.

use crate::budget::{RELAY_BUSY_RETRY_MS, SessionBudget, WriteError, write_frame_segments};
use crate::context::{RelayContext, now_ms};
use sync_protocol::limits::{BATCH_OVERHEAD, PULLED_BLOB_OVERHEAD};
use sync_protocol::{
    DeviceId, ErrorCode, ErrorMsg, GroupId, Message, Pull, PullBatch, PulledBlob,
    encode_frame_segments,
};
use tokio::io::AsyncWrite;

/// Most blobs in one `PullBatch` frame.
pub const MAX_BLOBS_PER_FRAME: u32 = 256;

/// Bytes reserved for the first frame of an answer, 64 KiB: a pull of a
/// few messages needs no more, so it is not held up while the relay-wide
/// budget has less than a whole `max_frame` left. A page that turns out
/// larger (storage always returns at least one blob) is paid for in full
/// before it is sent — or dropped and read again once a whole frame is
/// reserved — and later pages of that answer reserve a whole frame first.
pub const PROBE_FRAME: usize = 64 * 1024;

/// Why a pull stopped.
#[derive(Debug)]
pub enum PullError {
    /// Answer the client with this error frame.
    Reply(ErrorMsg),
    /// The stream broke, or the device did not take a frame in time;
    /// nothing more can be sent.
    Stream(WriteError),
}

impl From<ErrorMsg> for PullError {
    fn from(e: ErrorMsg) -> Self {
        PullError::Reply(e)
    }
}

impl From<crate::storage::StorageError> for PullError {
    fn from(e: crate::storage::StorageError) -> Self {
        PullError::Reply(super::error_msg(e))
    }
}

/// Stream blobs with cursor > `pull.after` (at most `pull.limit`, capped by
/// `max_pull_limit`) to `out`, and acknowledge `pull.after` for `device`
/// (no storage write when the session's `acked` is already there:
/// [`super::ack`]).
/// With `no_echo` (a version-2 session) `device`'s own blobs are left out
/// ([`without_echo`]). Each frame is reserved from `budget` before its page
/// is read.
/// Returns the cursor the answer ended at (its last blob's, or
/// `pull.after` when it had none): where the device will be once it has
/// applied the answer. `ending(cursor)` is called with that cursor just
/// **before** the answer's last frame is written, so whoever tracks the
/// device's position (the session's inline delivery) has it before the
/// device can act on the answer (a push it makes on seeing it would
/// otherwise race the update).
/// Errors: INVALID_MESSAGE (limit 0, cursor beyond head), OVERLOADED (the
/// relay-wide budget stayed spent for `request_timeout_s`), INTERNAL;
/// [`PullError::Stream`] when a frame was not taken within its deadline.
pub async fn handle<W: AsyncWrite + Unpin>(
    ctx: &RelayContext,
    group: GroupId,
    device: DeviceId,
    no_echo: bool,
    pull: Pull,
    (budget, acked, ending): (
        &SessionBudget,
        &std::sync::atomic::AtomicU64,
        &(dyn Fn(u64) + Sync),
    ),
    out: &mut W,
) -> Result<u64, PullError> {
    if pull.limit == 0 {
        return Err(
            ErrorMsg::new(ErrorCode::InvalidMessage, "pull limit must be at least 1").into(),
        );
    }
    let head = ctx.storage.head(group).await?;
    if pull.after > head {
        return Err(ErrorMsg::new(
            ErrorCode::InvalidMessage,
            format!(
                "cursor {} is beyond the group's head {head}; the device's state belongs to another relay or group",
                pull.after
            ),
        )
        .into());
    }
    if pull.after > acked.load(std::sync::atomic::Ordering::Relaxed) {
        super::ack::record(ctx, group, device, pull.after, acked)
            .await
            .map_err(PullError::Reply)?;
    }
    let max_frame = ctx.max_frame();
    // Payload bytes of a page that fits in `frame` bytes with its overheads.
    let page_bytes = |frame: usize| {
        frame.saturating_sub(BATCH_OVERHEAD + MAX_BLOBS_PER_FRAME as usize * PULLED_BLOB_OVERHEAD)
    };
    let mut remaining = pull.limit.min(ctx.limits.max_pull_limit);
    let mut after = pull.after;
    let relay_wait = RelayContext::secs(ctx.limits.request_timeout_s);
    let busy = || {
        PullError::Reply(
            ErrorMsg::new(
                ErrorCode::Overloaded,
                "the relay has too many answers in flight; try again shortly",
            )
            .with_retry_after(RELAY_BUSY_RETRY_MS),
        )
    };
    // The first page is read with a small reservation; pages after one
    // that did not fit it get a whole frame.
    let mut want = PROBE_FRAME.min(max_frame as usize);
    loop {
        let mut reserved = budget
            .response(want, relay_wait)
            .await
            .map_err(|_| busy())?;
        let page = ctx
            .storage
            .pull_page(
                group,
                after,
                remaining.min(MAX_BLOBS_PER_FRAME),
                page_bytes(want),
                now_ms(),
            )
            .await?;
        // Storage returns one blob even when it is over the byte limit:
        // such a page must be paid for in full before it is sent.
        let cut = !page.complete && (page.blobs.len() as u32) < remaining.min(MAX_BLOBS_PER_FRAME);
        let count = page.blobs.len() as u32;
        let last = page.blobs.last().map(|b| b.cursor);
        let more = !page.complete && remaining > count && count > 0;
        let blobs = if no_echo {
            without_echo(page.blobs, device)
        } else {
            page.blobs
        };
        let sent = blobs.iter().filter(|b| !b.payload.is_empty()).count() as u64;
        // Encoded with the payloads borrowed, not copied into one buffer:
        // each goes to the stream straight from the page.
        let msg = Message::PullBatch(PullBatch { blobs, head, more });
        let frame = encode_frame_segments(&msg);
        if frame.len() > reserved.bytes() && !budget.try_grow(&mut reserved, frame.len()) {
            // Not enough budget for it right now: drop it, wait for a whole
            // frame, and read the page again.
            drop(frame);
            drop(msg);
            want = max_frame as usize;
            continue;
        }
        if cut {
            want = max_frame as usize;
        }
        remaining -= count;
        ctx.metrics.blobs_delivered.inc_by(sent);
        if let Some(last) = last {
            after = last;
        }
        reserved.shrink_to(frame.len());
        if !more {
            ending(after);
        }
        write_frame_segments(out, &frame, max_frame, ctx.transfer_deadline(frame.len()))
            .await
            .map_err(PullError::Stream)?;
        drop(reserved);
        if !more {
            ctx.metrics.pulls.inc();
            return Ok(after);
        }
    }
}

/// `page` without the blobs `device` pushed (docs/protocol.md "Version 2: no
/// echo"), except that when the page ends with one of them, that last one
/// stays as a marker with an empty payload: the device's cursor moves only
/// to a cursor it was sent, and the page's last cursor is where the next
/// page (or the device's next `Pull`) starts. An honest relay never stores an
/// empty payload (a sealed envelope is never empty), so the marker cannot be
/// mistaken for a blob.
pub fn without_echo(page: Vec<PulledBlob>, device: DeviceId) -> Vec<PulledBlob> {
    let ends_with_own = page.last().is_some_and(|b| b.sender == device);
    let last = page.len();
    page.into_iter()
        .enumerate()
        .filter_map(|(i, mut blob)| {
            if blob.sender != device {
                Some(blob)
            } else if ends_with_own && i + 1 == last {
                blob.payload = Vec::new();
                Some(blob)
            } else {
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_protocol::BlobId;

    fn blob(cursor: u64, sender: u8) -> PulledBlob {
        PulledBlob {
            cursor,
            blob_id: BlobId([cursor as u8; 16]),
            sender: DeviceId([sender; 32]),
            created_at: 0,
            payload: vec![1; 40],
        }
    }

    fn shape(page: &[PulledBlob]) -> Vec<(u64, u8, usize)> {
        page.iter()
            .map(|b| (b.cursor, b.sender.0[0], b.payload.len()))
            .collect()
    }

    #[test]
    fn own_blobs_are_left_out_and_a_trailing_one_becomes_a_marker() {
        let me = DeviceId([1; 32]);
        let page = vec![blob(1, 1), blob(2, 2), blob(3, 1), blob(4, 1)];
        assert_eq!(
            shape(&without_echo(page, me)),
            vec![(2, 2, 40), (4, 1, 0)],
            "others' blobs whole, own ones gone but the last, which has no payload"
        );
        let page = vec![blob(1, 1), blob(2, 2)];
        assert_eq!(shape(&without_echo(page, me)), vec![(2, 2, 40)]);
        assert_eq!(shape(&without_echo(vec![blob(7, 1)], me)), vec![(7, 1, 0)]);
        assert!(without_echo(Vec::new(), me).is_empty());
        let others = vec![blob(1, 2), blob(2, 3)];
        assert_eq!(
            shape(&without_echo(others, me)),
            vec![(1, 2, 40), (2, 3, 40)]
        );
    }
}
