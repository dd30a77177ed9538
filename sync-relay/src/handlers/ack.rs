//! `Ack` → `AckOk`: record how far a device has applied the group's blobs.

use crate::context::{RelayContext, now_ms};
use sync_protocol::{Ack, AckOk, DeviceId, ErrorMsg, GroupId};

/// Raise `device`'s acknowledged cursor. Errors: INVALID_MESSAGE (cursor
/// beyond the head), INTERNAL, SHUTTING_DOWN.
pub async fn handle(
    ctx: &RelayContext,
    group: GroupId,
    device: DeviceId,
    ack: Ack,
) -> Result<AckOk, ErrorMsg> {
    let cursor = ctx
        .storage
        .ack(group, device, ack.cursor, now_ms())
        .await
        .map_err(super::error_msg)?;
    Ok(AckOk { cursor })
}
