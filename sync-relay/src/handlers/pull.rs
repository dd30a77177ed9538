//! `Pull` → one or more `PullBatch` frames (DESIGN §3): the answer is read
//! from storage one page at a time, each page sized to fit one frame, so the
//! relay never holds more than a frame of blobs for a pull however large the
//! backlog, and holds no database transaction while the client reads.

use crate::context::{RelayContext, now_ms};
use sync_protocol::limits::{BATCH_OVERHEAD, PULLED_BLOB_OVERHEAD};
use sync_protocol::{
    DeviceId, ErrorCode, ErrorMsg, FrameError, GroupId, Message, Pull, PullBatch, write_message,
};
use tokio::io::AsyncWrite;

/// Most blobs in one `PullBatch` frame.
pub const MAX_BLOBS_PER_FRAME: u32 = 256;

/// Why a pull stopped.
#[derive(Debug)]
pub enum PullError {
    /// Answer the client with this error frame.
    Reply(ErrorMsg),
    /// The stream broke while writing; nothing more can be sent.
    Stream(FrameError),
}

impl From<ErrorMsg> for PullError {
    fn from(e: ErrorMsg) -> Self {
        PullError::Reply(e)
    }
}

impl From<crate::storage::StorageError> for PullError {
    fn from(e: crate::storage::StorageError) -> Self {
        PullError::Reply(e.into())
    }
}

/// Stream blobs with cursor > `pull.after` (at most `pull.limit`, capped by
/// `max_pull_limit`) to `out`, and acknowledge `pull.after` for `device`.
/// Errors: INVALID_MESSAGE (limit 0, cursor beyond head), INTERNAL.
pub async fn handle<W: AsyncWrite + Unpin>(
    ctx: &RelayContext,
    group: GroupId,
    device: DeviceId,
    pull: Pull,
    out: &mut W,
) -> Result<(), PullError> {
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
    if pull.after > 0 {
        ctx.storage.ack(group, device, pull.after, now_ms()).await?;
    }
    let max_frame = ctx.max_frame();
    let byte_budget = (max_frame as usize)
        .saturating_sub(BATCH_OVERHEAD + MAX_BLOBS_PER_FRAME as usize * PULLED_BLOB_OVERHEAD);
    let mut remaining = pull.limit.min(ctx.limits.max_pull_limit);
    let mut after = pull.after;
    loop {
        let page = ctx
            .storage
            .pull_page(
                group,
                after,
                remaining.min(MAX_BLOBS_PER_FRAME),
                byte_budget,
                now_ms(),
            )
            .await?;
        remaining -= page.blobs.len() as u32;
        ctx.metrics.blobs_delivered.inc_by(page.blobs.len() as u64);
        if let Some(last) = page.blobs.last() {
            after = last.cursor;
        }
        let more = !page.complete && remaining > 0 && !page.blobs.is_empty();
        let frame = Message::PullBatch(PullBatch {
            blobs: page.blobs,
            head,
            more,
        });
        write_message(out, &frame, max_frame)
            .await
            .map_err(PullError::Stream)?;
        if !more {
            ctx.metrics.pulls.inc();
            return Ok(());
        }
    }
}
