//! `CloseGroup` → `CloseGroupOk` (docs/protocol.md §CloseGroup,
//! docs/security.md "What the relay must do"), and the check that a closed
//! group still serves a session's pulls and acks.
//!
//! Authorisation: the session's `Hello` proved possession of the group
//! signing key for this relay and this (QUIC-authenticated) device, which
//! is exactly what a signature over the close would prove; see
//! docs/protocol.md §CloseGroup for why no second signature is asked.

use crate::context::{RelayContext, now_ms};
use crate::storage::{GroupClosure, StorageError};
use std::sync::{Arc, OnceLock};
use sync_protocol::{CloseGroup, CloseGroupOk, DeviceId, ErrorMsg, GroupId};

/// Close `group` keeping `req.keep`, with a grace of the relay's longest
/// TTL (`limits.max_ttl_s`), so no blob a kept device could pull expires
/// early. The first close wins; a later one is answered with it
/// (`applied = false`). Returns the answer and the close to announce to
/// this instance's sessions ([`crate::close_feed`]) once the answer is
/// sent. Counted in `groups_closed_total` / `group_closes_refused_total`.
/// Errors: INTERNAL, STORAGE_UNAVAILABLE, SHUTTING_DOWN, NOT_IN_SESSION.
pub async fn handle(
    ctx: &RelayContext,
    group: GroupId,
    req: CloseGroup,
) -> Result<(CloseGroupOk, GroupClosure), ErrorMsg> {
    let grace_ms = i64::from(ctx.limits.max_ttl_s) * 1000;
    let out = ctx
        .storage
        .close_group(group, req.keep, now_ms(), grace_ms)
        .await
        .map_err(|err| {
            ctx.metrics.group_closes_refused.inc();
            super::error_msg(err)
        })?;
    if out.applied {
        ctx.metrics.groups_closed.inc();
    } else {
        ctx.metrics.group_closes_refused.inc();
    }
    let c = &out.closure;
    let answer = CloseGroupOk {
        closed_at: u64::try_from(c.closed_at_ms).unwrap_or(0),
        grace_until: u64::try_from(c.grace_until_ms).unwrap_or(0),
        keep: c.keep.clone(),
        applied: out.applied,
    };
    Ok((answer, out.closure))
}

/// Whether `device`'s session on `group` may still be served a pull, an
/// ack or a close: refused with GROUP_CLOSED when the group is closed and
/// its close does not keep `device` or its grace ended. `seen` caches a
/// close once known (a close never changes); until then storage is asked
/// each time, which is how a close made through another relay instance
/// reaches this one. Errors: GROUP_CLOSED; storage failures as mapped by
/// [`super::error_msg`].
pub async fn check_served(
    ctx: &RelayContext,
    group: GroupId,
    device: &DeviceId,
    seen: &OnceLock<Arc<GroupClosure>>,
) -> Result<(), ErrorMsg> {
    let closure = match seen.get() {
        Some(c) => Arc::clone(c),
        None => match ctx.storage.closure(group).await.map_err(super::error_msg)? {
            None => return Ok(()),
            Some(c) => Arc::clone(seen.get_or_init(|| Arc::new(c))),
        },
    };
    if closure.admits(device, now_ms()) {
        Ok(())
    } else {
        Err(super::error_msg(StorageError::GroupClosed))
    }
}
