//! `Ack` → `AckOk`: record how far a device has applied the group's blobs.
//!
//! Each session remembers the highest cursor storage recorded as acked
//! through it (by an `Ack` or a `Pull`'s `after`, which acks too): an ack
//! or pull at or below it is answered without a storage write — the write
//! would change nothing, as storage never lowers an acked cursor. A client
//! pulling until the relay has nothing more and then acking (every
//! `SyncClient::pull`) so costs one ack write per new cursor, not three.

use crate::context::{RelayContext, now_ms};
use std::sync::atomic::{AtomicU64, Ordering};
use sync_protocol::{Ack, AckOk, DeviceId, ErrorMsg, GroupId};

/// Raise `device`'s acknowledged cursor; `acked` is the session's highest
/// cursor already recorded (see the module docs). Answers with the
/// recorded cursor (at least `ack.cursor`). Errors: INVALID_MESSAGE
/// (cursor beyond the head), INTERNAL, SHUTTING_DOWN.
pub async fn handle(
    ctx: &RelayContext,
    group: GroupId,
    device: DeviceId,
    ack: Ack,
    acked: &AtomicU64,
) -> Result<AckOk, ErrorMsg> {
    let known = acked.load(Ordering::Relaxed);
    if ack.cursor <= known {
        return Ok(AckOk { cursor: known });
    }
    let cursor = record(ctx, group, device, ack.cursor, acked).await?;
    Ok(AckOk { cursor })
}

/// Write the ack of `cursor` to storage and remember it in `acked`.
/// Returns the recorded cursor. Errors: those of `Storage::ack`.
pub async fn record(
    ctx: &RelayContext,
    group: GroupId,
    device: DeviceId,
    cursor: u64,
    acked: &AtomicU64,
) -> Result<u64, ErrorMsg> {
    let recorded = ctx
        .storage
        .ack(group, device, cursor, now_ms())
        .await
        .map_err(super::error_msg)?;
    acked.fetch_max(recorded, Ordering::Relaxed);
    Ok(recorded)
}
