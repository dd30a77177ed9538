//! Stage 3: each request of an active session (docs/protocol.md "Rate
//! limits" and "Budgets"): decided after its length prefix and before a
//! byte of its body is read, so a refused request costs the relay nothing.

use crate::budget::{
    Exhausted, RELAY_BUSY_RETRY_MS, Reservation, SESSION_BUSY_RETRY_MS, SessionBudget,
};
use crate::context::RelayContext;
use crate::metrics::KindLabel;
use crate::ratelimit::Limited;
use sync_protocol::{DeviceId, ErrorCode, ErrorMsg};

/// Admit a request of `len` body bytes from `device`: it counts against the
/// device's request rate (over it: RATE_LIMITED with governor's wait), then
/// its body is reserved from the session's share of the byte budget (share
/// spent: RATE_LIMITED, retry in [`SESSION_BUSY_RETRY_MS`]) and the
/// relay-wide budget (spent: OVERLOADED, retry in [`RELAY_BUSY_RETRY_MS`]).
/// The reservation is held while the body is in memory. Refusals are
/// counted (`rate_limited_total`, `budget_refusals_total`).
pub fn admit(
    ctx: &RelayContext,
    budget: &SessionBudget,
    device: &DeviceId,
    len: usize,
) -> Result<Reservation, ErrorMsg> {
    ctx.rate_limits.check_request(device).map_err(|limited| {
        rate_limited(ctx, limited, "too many requests from this device".into())
    })?;
    budget.try_request(len).map_err(|exhausted| {
        ctx.metrics
            .budget_refusals
            .get_or_create(&KindLabel {
                kind: exhausted.name(),
            })
            .inc();
        match exhausted {
            Exhausted::Session => ErrorMsg::new(
                ErrorCode::RateLimited,
                format!(
                    "this session already has {} frames' worth of requests being read; \
                     send fewer at once",
                    ctx.limits.session_request_frames
                ),
            )
            .with_retry_after(SESSION_BUSY_RETRY_MS),
            Exhausted::Relay => ErrorMsg::new(
                ErrorCode::Overloaded,
                "the relay has too many requests in flight; try again shortly",
            )
            .with_retry_after(RELAY_BUSY_RETRY_MS),
        }
    })
}

/// Admit a push of `bytes` payload bytes from `device` against its
/// pushed-bytes rate (over it: RATE_LIMITED with the wait; counted in
/// `rate_limited_total{kind="push_bytes"}`).
pub fn push_bytes(ctx: &RelayContext, device: &DeviceId, bytes: u64) -> Result<(), ErrorMsg> {
    ctx.rate_limits
        .check_push_bytes(device, bytes)
        .map_err(|limited| {
            rate_limited(
                ctx,
                limited,
                format!(
                    "this device is pushing faster than the relay allows ({bytes} bytes in this push)"
                ),
            )
        })
}

fn rate_limited(ctx: &RelayContext, limited: Limited, message: String) -> ErrorMsg {
    ctx.metrics
        .rate_limited
        .get_or_create(&KindLabel {
            kind: limited.kind.name(),
        })
        .inc();
    ErrorMsg::new(ErrorCode::RateLimited, message).with_retry_after(limited.retry_after_ms())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::MemoryStorage;
    use std::sync::Arc;

    /// Each refusal has its code, retry hint and metric; the request rate is
    /// checked before the budget, and a refused request reserves nothing.
    #[test]
    fn requests_are_refused_by_rate_then_session_share_then_relay_budget() {
        let mut config = Config::default();
        config.rate_limits.requests_per_s = 1;
        config.rate_limits.requests_burst = 3;
        config.rate_limits.push_bytes_per_s = 1;
        config.rate_limits.push_bytes_burst = 1;
        config.limits.max_blob_size = 1024;
        let frame = sync_protocol::limits::max_frame_for_blob_size(1024) as usize;
        // Room for one session's whole share (4 frames) and one frame more.
        config.limits.max_bytes_in_flight = 5 * frame as u64;
        let storage = Arc::new(MemoryStorage::new(crate::admission::quotas(&config)));
        let ctx = RelayContext::new(&config, DeviceId([0; 32]), storage);
        let device = DeviceId([1; 32]);
        let budget = ctx.session_budget();
        let whole = admit(&ctx, &budget, &device, frame * 4).unwrap();
        let e = admit(&ctx, &budget, &device, 1).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::RateLimited);
        assert_eq!(e.retry_after_ms, Some(SESSION_BUSY_RETRY_MS));
        drop(whole);
        // The relay-wide budget, shared by another session.
        let other = ctx.session_budget();
        let held = other.try_request(frame * 4).unwrap();
        assert_eq!(ctx.budget.available(), frame);
        let e = admit(&ctx, &budget, &device, 2 * frame);
        assert_eq!(e.unwrap_err().error_code(), ErrorCode::Overloaded);
        drop(held);
        let e = admit(&ctx, &budget, &device, 1).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::RateLimited, "burst of 3 spent");
        assert!(e.message.contains("too many requests"), "{e}");
        assert_eq!(
            ctx.budget.available(),
            ctx.limits.max_bytes_in_flight as usize
        );
        let budget_refusals = |kind: &'static str| {
            ctx.metrics
                .budget_refusals
                .get_or_create(&KindLabel { kind })
                .get()
        };
        let rate_limited = |kind: &'static str| {
            ctx.metrics
                .rate_limited
                .get_or_create(&KindLabel { kind })
                .get()
        };
        assert_eq!(budget_refusals("session"), 1);
        assert_eq!(budget_refusals("relay"), 1);
        assert_eq!(rate_limited("requests"), 1);
        // Pushed bytes: the burst is raised to one frame.
        push_bytes(&ctx, &device, frame as u64).unwrap();
        let e = push_bytes(&ctx, &device, 10).unwrap_err();
        assert_eq!(e.error_code(), ErrorCode::RateLimited);
        assert!(
            e.retry_after_ms.is_some() && e.message.contains("10 bytes"),
            "{e}"
        );
        assert_eq!(rate_limited("push_bytes"), 1);
    }
}
