//! Stage 1: an incoming connection, decided before its TLS handshake
//! (docs/protocol.md "Early refusal", docs/deploy.md "What one peer can
//! cost the relay"). The accept loop ([`crate::server`]) carries out the
//! verdict.

use crate::budget::PendingHello;
use crate::context::RelayContext;
use crate::metrics::{KindLabel, ReasonLabel};
use std::net::IpAddr;
use tracing::debug;

/// What to do with an incoming connection.
#[derive(Debug)]
pub enum Verdict {
    /// Its source address is not proven: send a QUIC Retry (only a peer
    /// that receives at that address comes back) and count it nowhere, so
    /// nobody can spend another address's allowance.
    Validate,
    /// Refuse it before the TLS handshake; `reason` is the `reason` label of
    /// `connections_refused_total` ([`crate::metrics::REFUSAL_REASONS`]).
    Refuse {
        /// Why.
        reason: &'static str,
    },
    /// Let the handshake run; the connection counts against
    /// `limits.max_connections_awaiting_hello` until the guard drops (when
    /// its `Hello` is answered).
    Accept(PendingHello),
}

/// Decide on a connection from `ip` (`None`: no IP, e.g. through an iroh
/// relay server) whose address is `validated` or not, in this order:
///
/// 1. an unproven IP address → [`Verdict::Validate`];
/// 2. `limits.max_connections_awaiting_hello` connections already waiting
///    for their `Hello` → refused (`awaiting_hello`);
/// 3. over the per-address connection rate
///    (`rate_limits.connections_per_ip_*`, an IPv6 /64 counting as one
///    address) → refused (`per_ip_rate`, also counted in
///    `rate_limited_total{kind="connections"}`).
///
/// Counts `address_validations_total` and `connections_refused_total`.
pub fn decide(ctx: &RelayContext, ip: Option<IpAddr>, validated: bool) -> Verdict {
    if ip.is_some() && !validated {
        ctx.metrics.address_validations.inc();
        return Verdict::Validate;
    }
    let Some(pending) = ctx.awaiting_hello.try_enter() else {
        debug!(remote = ?ip, "refused: too many connections awaiting their Hello");
        return refuse(ctx, "awaiting_hello");
    };
    if let Some(ip) = ip
        && let Err(limited) = ctx.rate_limits.check_connection(ip)
    {
        ctx.metrics
            .rate_limited
            .get_or_create(&KindLabel {
                kind: limited.kind.name(),
            })
            .inc();
        debug!(remote = %ip, "refused: too many new connections from this address");
        return refuse(ctx, "per_ip_rate");
    }
    Verdict::Accept(pending)
}

fn refuse(ctx: &RelayContext, reason: &'static str) -> Verdict {
    ctx.metrics
        .connections_refused
        .get_or_create(&ReasonLabel { reason })
        .inc();
    Verdict::Refuse { reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::MemoryStorage;
    use std::sync::Arc;
    use sync_protocol::DeviceId;

    fn ctx(awaiting: u32, burst: u32) -> Arc<RelayContext> {
        let mut config = Config::default();
        config.limits.max_connections_awaiting_hello = awaiting;
        config.rate_limits.connections_per_ip_burst = burst;
        config.rate_limits.connections_per_ip_per_s = 1;
        let storage = Arc::new(MemoryStorage::new(crate::admission::quotas(&config)));
        RelayContext::new(&config, DeviceId([0; 32]), storage)
    }

    /// Unproven addresses are validated first and cost nothing; then the
    /// awaiting-Hello cap, then the per-address rate (an IPv6 /64 is one
    /// address); a refused connection holds no place; each refusal is
    /// counted under its reason.
    #[test]
    fn connections_are_validated_then_capped_then_rate_limited() {
        let c = ctx(3, 2);
        let accepted = |v: Verdict| match v {
            Verdict::Accept(g) => g,
            other => panic!("expected Accept, got {other:?}"),
        };
        let refused = |v: Verdict| match v {
            Verdict::Refuse { reason } => reason,
            other => panic!("expected Refuse, got {other:?}"),
        };
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(matches!(decide(&c, Some(v4), false), Verdict::Validate));
        assert_eq!(c.awaiting_hello.count(), 0, "a Retry holds no place");
        let g1 = accepted(decide(&c, Some(v4), true));
        let g2 = accepted(decide(&c, Some(v4), true));
        assert_eq!(refused(decide(&c, Some(v4), true)), "per_ip_rate");
        assert_eq!(
            c.awaiting_hello.count(),
            2,
            "a refused connection holds no place"
        );
        let g3 = accepted(decide(&c, v6("2001:db8::1"), true));
        assert_eq!(
            refused(decide(&c, v6("2001:db8::2"), true)),
            "awaiting_hello"
        );
        drop(g1);
        let g4 = accepted(decide(&c, v6("2001:db8::3"), true));
        drop(g4);
        assert_eq!(
            refused(decide(&c, v6("2001:db8:0:0:ffff::4"), true)),
            "per_ip_rate",
            "the third connection of one /64"
        );
        let count = |reason: &'static str| {
            c.metrics
                .connections_refused
                .get_or_create(&ReasonLabel { reason })
                .get()
        };
        assert_eq!(count("per_ip_rate"), 2);
        assert_eq!(count("awaiting_hello"), 1);
        assert_eq!(c.metrics.address_validations.get(), 1);
        // Without an IP (relayed) only the awaiting-Hello cap applies.
        drop((g2, g3));
        drop(accepted(decide(&c, None, false)));
    }
}
