//! `Push` → `PushOk` (DESIGN §3, §5.3): validate every item against the
//! relay's limits before touching storage, store the batch atomically, then
//! publish the new head to the group's live sessions.

use crate::context::{RelayContext, now_ms};
use crate::storage::{NewBlob, PushRequest};
use sync_protocol::{DeviceId, ErrorCode, ErrorMsg, GroupId, Push, PushOk};

/// Store `push` for `sender` in `group`. Errors (nothing stored):
/// INVALID_MESSAGE (empty or oversized batch, zero TTL), BLOB_TOO_LARGE,
/// TTL_TOO_LONG, GROUP_QUOTA_EXCEEDED, INTERNAL, SHUTTING_DOWN.
pub async fn handle(
    ctx: &RelayContext,
    group: GroupId,
    sender: DeviceId,
    push: Push,
) -> Result<PushOk, ErrorMsg> {
    let limits = &ctx.limits;
    if push.items.is_empty() {
        return Err(ErrorMsg::new(
            ErrorCode::InvalidMessage,
            "push has no items",
        ));
    }
    if push.items.len() > limits.max_batch as usize {
        return Err(ErrorMsg::new(
            ErrorCode::InvalidMessage,
            format!(
                "push has {} items, at most {} allowed",
                push.items.len(),
                limits.max_batch
            ),
        ));
    }
    let now = now_ms();
    let mut items = Vec::with_capacity(push.items.len());
    for (i, item) in push.items.into_iter().enumerate() {
        if item.payload.len() > limits.max_blob_size as usize {
            return Err(ErrorMsg::new(
                ErrorCode::BlobTooLarge,
                format!(
                    "item {i} is {} bytes, max_blob_size is {} bytes",
                    item.payload.len(),
                    limits.max_blob_size
                ),
            ));
        }
        let ttl_s = item.ttl_s.unwrap_or(limits.default_ttl_s);
        if ttl_s == 0 {
            return Err(ErrorMsg::new(
                ErrorCode::InvalidMessage,
                format!("item {i} has ttl_s 0; at least 1 second is required"),
            ));
        }
        if ttl_s > limits.max_ttl_s {
            return Err(ErrorMsg::new(
                ErrorCode::TtlTooLong,
                format!(
                    "item {i} asks for a TTL of {ttl_s} s, max_ttl is {} s",
                    limits.max_ttl_s
                ),
            ));
        }
        items.push(NewBlob {
            blob_id: item.blob_id,
            payload: item.payload,
            expires_at_ms: now.saturating_add(i64::from(ttl_s) * 1000),
        });
    }
    let outcome = ctx
        .storage
        .push(PushRequest {
            group,
            sender,
            items,
            now_ms: now,
        })
        .await?;
    ctx.notify.publish(group, outcome.head);
    Ok(PushOk {
        results: outcome.results,
        head: outcome.head,
    })
}
