//! Stage 2: a `Hello` whose membership proof verified ([`crate::auth`])
//! becomes a session, or is refused (docs/protocol.md "Hello", docs/deploy.md
//! §Access). In order, each check holding what it granted while the next
//! runs, and giving it all back on a refusal:
//!
//! 1. live sessions on the relay under `limits.max_sessions` (else
//!    OVERLOADED, retry in [`OVERLOADED_RETRY_MS`]);
//! 2. live sessions of the group under `limits.max_group_sessions` (else
//!    RATE_LIMITED, retry in [`GROUP_FULL_RETRY_MS`]); the subscription to
//!    the group's NOTIFY channel is what counts it;
//! 3. the group opened in storage: an existing group for anyone who proved
//!    membership, a new one as the access mode decides
//!    ([`super::Admission::new_group`]), token and address limits checked in
//!    the storage transaction (refusals mapped by `crate::handlers`);
//! 4. in open mode, live sessions on the groups of the owning address under
//!    `access.max_sessions_per_address` (else RATE_LIMITED).

use super::OwnerSessionGuard;
use crate::context::{RelayContext, now_ms};
use crate::metrics::KindLabel;
use crate::notify::Subscription;
use crate::ratelimit::LimitKind;
use std::net::IpAddr;
use std::sync::Arc;
use sync_protocol::{AccessToken, CloseCode, DeviceId, ErrorCode, ErrorMsg, GroupId};

/// Retry hint (ms) when a group, or the groups of an address, are at their
/// session cap.
pub const GROUP_FULL_RETRY_MS: u32 = 5_000;
/// Retry hint (ms) when the relay is at its session capacity.
pub const OVERLOADED_RETRY_MS: u32 = 10_000;

/// What an admitted session holds; each part gives its place back on drop.
pub struct Granted {
    /// The group's head when it was opened.
    pub head: u64,
    /// The group's NOTIFY channel (also its live-session count, and what
    /// keeps the cleanup from pruning the group).
    pub subscription: Subscription,
    /// The session's place among the relay's live sessions.
    pub live: SessionGuard,
    /// Its place among the sessions of its owning address (open mode).
    pub owner: Option<OwnerSessionGuard>,
}

/// Why a `Hello` was not admitted.
#[derive(Debug)]
pub enum Refusal {
    /// A limit or the access mode: answer with this error (its code,
    /// message and retry hint) and close the connection.
    Refused(ErrorMsg),
    /// Storage failed (INTERNAL) or is shutting down (SHUTTING_DOWN):
    /// answer with this error and close with this code.
    Failed(ErrorMsg, CloseCode),
}

/// Admit a session of `device` on `group` from `remote` (`None`: no IP),
/// presenting `token` or none. Refusals are counted in
/// `rate_limited_total` (`group_sessions`, `owner_sessions`).
pub async fn admit(
    ctx: &Arc<RelayContext>,
    group: GroupId,
    device: DeviceId,
    remote: Option<IpAddr>,
    token: Option<&AccessToken>,
) -> Result<Granted, Refusal> {
    let Some(live) = SessionGuard::try_new(ctx) else {
        return Err(Refusal::Refused(
            ErrorMsg::new(
                ErrorCode::Overloaded,
                "the relay is at its session capacity",
            )
            .with_retry_after(OVERLOADED_RETRY_MS),
        ));
    };
    let Some(subscription) =
        ctx.notify
            .try_subscribe(group, device, ctx.limits.max_group_sessions as usize)
    else {
        count(ctx, LimitKind::GroupSessions.name());
        return Err(Refusal::Refused(
            ErrorMsg::new(
                ErrorCode::RateLimited,
                format!(
                    "the group already has {} live sessions, the most this relay allows",
                    ctx.limits.max_group_sessions
                ),
            )
            .with_retry_after(GROUP_FULL_RETRY_MS),
        ));
    };
    let new_group = ctx.admission.new_group(token, remote);
    let opened = match ctx
        .storage
        .open_session(group, device, now_ms(), new_group)
        .await
    {
        Ok(opened) => opened,
        Err(err) if err.is_refusal() => {
            return Err(Refusal::Refused(crate::handlers::error_msg(err)));
        }
        Err(err) => {
            let reply = crate::handlers::error_msg(err);
            let close = if reply.error_code() == ErrorCode::ShuttingDown {
                CloseCode::ShuttingDown
            } else {
                CloseCode::Internal
            };
            return Err(Refusal::Failed(reply, close));
        }
    };
    let owner = ctx.admission.owner_session(opened.owner).map_err(|limit| {
        count(ctx, "owner_sessions");
        Refusal::Refused(
            ErrorMsg::new(
                ErrorCode::RateLimited,
                format!(
                    "the groups created from this group's address already have {limit} live \
                     sessions, the most this relay allows"
                ),
            )
            .with_retry_after(GROUP_FULL_RETRY_MS),
        )
    })?;
    Ok(Granted {
        head: opened.head,
        subscription,
        live,
        owner,
    })
}

fn count(ctx: &RelayContext, kind: &'static str) {
    ctx.metrics
        .rate_limited
        .get_or_create(&KindLabel { kind })
        .inc();
}

/// A session counted among the relay's live sessions (the `sessions`
/// gauge, which is also the count `limits.max_sessions` caps) until it
/// drops.
pub struct SessionGuard(Arc<RelayContext>);

impl SessionGuard {
    /// Count a session, unless the relay already holds `max_sessions`.
    pub fn try_new(ctx: &Arc<RelayContext>) -> Option<SessionGuard> {
        let before = ctx.metrics.sessions.inc();
        let guard = SessionGuard(Arc::clone(ctx));
        if before >= i64::from(ctx.limits.max_sessions) {
            return None; // the guard's drop undoes the increment
        }
        Some(guard)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.metrics.sessions.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccessMode, Config};
    use crate::storage::MemoryStorage;

    fn ctx(f: impl FnOnce(&mut Config)) -> Arc<RelayContext> {
        let mut config = Config::default();
        f(&mut config);
        let storage = Arc::new(MemoryStorage::new(crate::admission::quotas(&config)));
        RelayContext::new(&config, DeviceId([0; 32]), storage)
    }

    fn code(r: Result<Granted, Refusal>) -> (ErrorCode, Option<u32>) {
        match r {
            Err(Refusal::Refused(e)) => (e.error_code(), e.retry_after_ms),
            Err(Refusal::Failed(e, _)) => panic!("failed: {e}"),
            Ok(_) => panic!("admitted"),
        }
    }

    /// The relay cap, then the group cap, then the access mode, then the
    /// address cap, each with its code and retry hint; a refusal holds no
    /// place anywhere.
    #[tokio::test]
    async fn each_cap_refuses_with_its_code_and_gives_everything_back() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let token = AccessToken([5; 32]);
        let (g1, g2, d) = (GroupId([1; 32]), GroupId([2; 32]), DeviceId([3; 32]));

        let c = ctx(|c| {
            c.limits.max_sessions = 2;
            c.limits.max_group_sessions = 1;
        });
        // Token mode: no token, no new group.
        let (e, _) = code(admit(&c, g1, d, Some(ip), None).await);
        assert_eq!(e, ErrorCode::AccessTokenRequired);
        assert_eq!((c.sessions(), c.notify.live_groups()), (0, 0));
        let token_hash = crate::storage::TokenHash::of(&token);
        c.storage
            .create_token(crate::storage::NewToken {
                hash: token_hash,
                label: None,
                max_groups: 10,
                max_storage: 1 << 20,
                created_at_ms: 0,
            })
            .await
            .unwrap();
        let a = admit(&c, g1, d, Some(ip), Some(&token)).await.unwrap();
        assert_eq!(
            code(admit(&c, g1, d, Some(ip), None).await),
            (ErrorCode::RateLimited, Some(GROUP_FULL_RETRY_MS)),
            "one session per group"
        );
        let b = admit(&c, g2, d, Some(ip), Some(&token)).await.unwrap();
        assert_eq!(
            code(admit(&c, g2, d, Some(ip), None).await),
            (ErrorCode::Overloaded, Some(OVERLOADED_RETRY_MS)),
            "two on the relay"
        );
        assert_eq!(c.sessions(), 2);
        drop((a, b));
        assert_eq!((c.sessions(), c.notify.live_groups()), (0, 0));

        // Open mode: the address's groups hold one session.
        let c = ctx(|c| {
            c.access.mode = AccessMode::Open;
            c.access.max_sessions_per_address = 1;
        });
        let a = admit(&c, g1, d, Some(ip), None).await.unwrap();
        assert_eq!(
            code(admit(&c, g2, d, Some(ip), None).await),
            (ErrorCode::RateLimited, Some(GROUP_FULL_RETRY_MS))
        );
        assert_eq!((c.sessions(), c.notify.live_groups()), (1, 1));
        let rate_limited = |kind: &'static str| {
            c.metrics
                .rate_limited
                .get_or_create(&KindLabel { kind })
                .get()
        };
        assert_eq!(rate_limited("owner_sessions"), 1);
        drop(a);
        assert!(admit(&c, g2, d, Some(ip), None).await.is_ok());
    }
}
