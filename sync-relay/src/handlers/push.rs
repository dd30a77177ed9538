//! `Push` → `PushOk` (docs/protocol.md, §5.3): validate every item against the
//! relay's limits before touching storage, store the batch atomically, then
//! publish the new head to the group's live sessions.

use crate::context::{RelayContext, now_ms};
use crate::metrics::{KindLabel, ResultLabel};
use crate::recent::{CachedBlob, cached};
use crate::storage::{NewBlob, PushRequest, StorageError};
use sync_protocol::limits::INLINE_MAX_BLOB;
use sync_protocol::{DeviceId, ErrorCode, ErrorMsg, GroupId, Push, PushOk};

/// Store `push` for `sender` in `group`. Errors (nothing stored):
/// INVALID_MESSAGE (empty or oversized batch, zero TTL), RATE_LIMITED (push
/// bytes per second), BLOB_TOO_LARGE, TTL_TOO_LONG, GROUP_QUOTA_EXCEEDED
/// (bytes or blobs), ACCESS_TOKEN_INVALID (the group's token was revoked),
/// OWNER_QUOTA_EXCEEDED (the budget of the group's token or address),
/// OVERLOADED (relay storage full), INTERNAL, SHUTTING_DOWN.
pub async fn handle(
    ctx: &RelayContext,
    group: GroupId,
    sender: DeviceId,
    push: Push,
) -> Result<PushOk, ErrorMsg> {
    let result = store(ctx, group, sender, push).await;
    let label = match &result {
        Ok(_) => "ok",
        Err(e) if e.error_code().is_client_error() => "rejected",
        Err(_) => "error",
    };
    ctx.metrics
        .pushes
        .get_or_create(&ResultLabel { result: label })
        .inc();
    result
}

fn quota_rejected(ctx: &RelayContext, kind: &'static str) {
    ctx.metrics
        .quota_rejections
        .get_or_create(&KindLabel { kind })
        .inc();
}

async fn store(
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
            quota_rejected(ctx, "blob_size");
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
            quota_rejected(ctx, "ttl");
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
    let bytes: u64 = items.iter().map(|i| i.payload.len() as u64).sum();
    crate::admission::request::push_bytes(ctx, &sender, bytes)?;
    let sizes: Vec<u64> = items.iter().map(|i| i.payload.len() as u64).collect();
    // Copies of the small payloads, kept for inline delivery to the
    // group's live sessions once the push has committed (docs/protocol.md
    // "Version 3: inline delivery"); nothing is copied for a group nobody
    // follows here.
    let small: Vec<Option<(Vec<u8>, i64)>> = if ctx.notify.is_live(group) {
        items
            .iter()
            .map(|i| {
                (i.payload.len() <= INLINE_MAX_BLOB).then(|| (i.payload.clone(), i.expires_at_ms))
            })
            .collect()
    } else {
        Vec::new()
    };
    let outcome = ctx
        .storage
        .push(PushRequest {
            group,
            sender,
            items,
            now_ms: now,
        })
        .await
        .inspect_err(|e| match e {
            StorageError::GroupQuotaExceeded { .. } => quota_rejected(ctx, "group_storage"),
            StorageError::GroupBlobsExceeded { .. } => quota_rejected(ctx, "group_blobs"),
            StorageError::OwnerQuotaExceeded { .. } => quota_rejected(ctx, "owner_storage"),
            StorageError::RelayStorageFull { .. } => quota_rejected(ctx, "relay_storage"),
            _ => {}
        })
        .map_err(super::error_msg)?;
    let stored: u64 = outcome
        .results
        .iter()
        .zip(&sizes)
        .filter(|(r, _)| !r.duplicate)
        .map(|(_, size)| size)
        .sum();
    ctx.metrics.push_bytes.inc_by(stored);
    // The new cursors are consecutive (one transaction): tell the hub they
    // are this device's, before the head is published (docs/protocol.md
    // "Version 2: no echo").
    let new: Vec<u64> = outcome
        .results
        .iter()
        .filter(|r| !r.duplicate)
        .map(|r| r.cursor)
        .collect();
    if let (Some(&first), Some(&last)) = (new.iter().min(), new.iter().max())
        && last - first + 1 == new.len() as u64
    {
        ctx.notify.pushed(group, sender, first, last);
    }
    // Committed: the new small blobs may now go inline (a duplicate has no
    // new cursor and is not sent again).
    let fresh: Vec<CachedBlob> = outcome
        .results
        .iter()
        .zip(small)
        .filter(|(r, _)| !r.duplicate)
        .filter_map(|(r, kept)| {
            let (payload, expires_at_ms) = kept?;
            Some(cached(
                r.cursor,
                r.blob_id,
                sender,
                u64::try_from(now).unwrap_or(0),
                payload,
                expires_at_ms,
            ))
        })
        .collect();
    if !fresh.is_empty() {
        ctx.notify.remember(group, fresh);
    }
    ctx.notify.publish(group, outcome.head);
    Ok(PushOk {
        results: outcome.results,
        head: outcome.head,
    })
}
