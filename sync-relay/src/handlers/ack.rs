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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::{MemoryStorage, NewBlob, NewGroup, PushRequest, Quotas, Storage};
    use std::sync::Arc;
    use sync_protocol::BlobId;

    /// An ack the session already recorded is answered without storage: a
    /// group storage does not know (which storage would refuse) shows it.
    #[tokio::test]
    async fn an_ack_at_or_below_the_recorded_cursor_skips_storage() {
        let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(Quotas::UNLIMITED));
        let ctx = RelayContext::new(&Config::default(), DeviceId([0; 32]), storage);
        let (g, d) = (GroupId([1; 32]), DeviceId([2; 32]));
        ctx.storage
            .open_session(g, d, 1, NewGroup::Unowned)
            .await
            .unwrap();
        let items = (0..5u8)
            .map(|i| NewBlob {
                blob_id: BlobId([i; 16]),
                payload: vec![i; 8],
                expires_at_ms: i64::MAX,
            })
            .collect();
        let req = PushRequest {
            group: g,
            sender: d,
            items,
            now_ms: 1,
        };
        assert_eq!(ctx.storage.push(req).await.unwrap().head, 5);
        let acked = AtomicU64::new(0);
        let ok = handle(&ctx, g, d, Ack { cursor: 4 }, &acked).await.unwrap();
        assert_eq!((ok.cursor, acked.load(Ordering::Relaxed)), (4, 4));
        // Storage is asked only for a higher cursor.
        let unknown = GroupId([7; 32]);
        for cursor in [1, 4] {
            let ok = handle(&ctx, unknown, d, Ack { cursor }, &acked).await;
            assert_eq!(ok.unwrap().cursor, 4, "answered from the session");
        }
        // A higher one goes to storage, which does not know the group.
        assert!(
            handle(&ctx, unknown, d, Ack { cursor: 5 }, &acked)
                .await
                .is_err()
        );
        let ok = handle(&ctx, g, d, Ack { cursor: 5 }, &acked).await.unwrap();
        assert_eq!((ok.cursor, acked.load(Ordering::Relaxed)), (5, 5));
    }
}
