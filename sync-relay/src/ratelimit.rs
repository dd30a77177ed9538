//! Rate limits (docs/protocol.md and docs/deploy.md) with `governor` (GCRA token buckets, keyed
//! state in a `DashMap`): requests per device, pushed bytes per device, new
//! connections per remote address ([`address_key`]: an IPv6 /64 is one
//! address). Over a request limit the caller answers RATE_LIMITED with the
//! wait governor computes; over the connection limit the accept loop
//! refuses the connection before its TLS handshake — nothing here sleeps or
//! drops a stream.
//! Keys that have been idle long enough to be indistinguishable from fresh
//! ones are pruned by [`RateLimits::prune`] on a timer, so memory follows
//! the number of recently active devices and addresses.

use crate::config::RateLimitsConfig;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;
use sync_protocol::DeviceId;

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Which limit was hit (also the `kind` label of `rate_limited_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    /// Requests per device.
    Requests,
    /// Pushed bytes per device.
    PushBytes,
    /// New connections per IP.
    Connections,
    /// Live sessions of one group.
    GroupSessions,
}

impl LimitKind {
    /// Label value.
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::PushBytes => "push_bytes",
            LimitKind::Connections => "connections",
            LimitKind::GroupSessions => "group_sessions",
        }
    }
}

/// Over a limit: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// The limit.
    pub kind: LimitKind,
    /// How long until the request would conform.
    pub retry_after: Duration,
}

impl Limited {
    /// `retry_after` in whole milliseconds, at least 1.
    pub fn retry_after_ms(&self) -> u32 {
        (self.retry_after.as_millis().clamp(1, u128::from(u32::MAX))) as u32
    }
}

/// The key a remote address is limited under: an IPv4 address as it is
/// (also when it arrives IPv4-mapped on an IPv6 socket), an IPv6 address as
/// its /64 network, since one subscriber usually holds a whole /64 and could
/// otherwise take a fresh address for each connection.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(std::net::Ipv6Addr::from(
            v6.to_bits() & !((1u128 << 64) - 1),
        )),
        v4 => v4,
    }
}

/// All keyed limiters of the relay.
pub struct RateLimits<C: Clock + Clone = DefaultClock> {
    requests: Keyed<DeviceId, C>,
    push_bytes: Keyed<DeviceId, C>,
    push_rate: u32,
    connections: Keyed<IpAddr, C>,
    clock: C,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits<DefaultClock> {
    /// Limiters from the config; the push-bytes burst is raised to at least
    /// `max_frame` so one full push always fits.
    pub fn new(cfg: &RateLimitsConfig, max_frame: u32) -> Self {
        Self::with_clock(cfg, max_frame, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    /// As [`RateLimits::new`] with a given clock (tests use a fake one).
    pub fn with_clock(cfg: &RateLimitsConfig, max_frame: u32, clock: C) -> Self {
        let quota = |rate: u32, burst: u32| Quota::per_second(nz(rate)).allow_burst(nz(burst));
        RateLimits {
            requests: RateLimiter::dashmap_with_clock(
                quota(cfg.requests_per_s, cfg.requests_burst),
                clock.clone(),
            ),
            push_bytes: RateLimiter::dashmap_with_clock(
                quota(cfg.push_bytes_per_s, cfg.push_bytes_burst.max(max_frame)),
                clock.clone(),
            ),
            push_rate: cfg.push_bytes_per_s.max(1),
            connections: RateLimiter::dashmap_with_clock(
                quota(cfg.connections_per_ip_per_s, cfg.connections_per_ip_burst),
                clock.clone(),
            ),
            clock,
        }
    }

    fn verdict<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &Keyed<K, C>,
        key: &K,
        n: u32,
        kind: LimitKind,
    ) -> Result<(), Limited> {
        match limiter.check_key_n(key, nz(n)) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(Limited {
                kind,
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            // More cells than the burst: can never pass at once.
            Err(_) => Err(Limited {
                kind,
                retry_after: Duration::from_secs_f64(f64::from(n) / f64::from(self.push_rate)),
            }),
        }
    }

    /// Count one request of `device`.
    pub fn check_request(&self, device: &DeviceId) -> Result<(), Limited> {
        self.verdict(&self.requests, device, 1, LimitKind::Requests)
    }

    /// Count `bytes` pushed by `device`.
    pub fn check_push_bytes(&self, device: &DeviceId, bytes: u64) -> Result<(), Limited> {
        if bytes == 0 {
            return Ok(());
        }
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.verdict(&self.push_bytes, device, n, LimitKind::PushBytes)
    }

    /// Count a new connection from `ip` (keyed by [`address_key`]).
    pub fn check_connection(&self, ip: IpAddr) -> Result<(), Limited> {
        self.verdict(
            &self.connections,
            &address_key(ip),
            1,
            LimitKind::Connections,
        )
    }

    /// Drop keys that are idle long enough to be fresh again; returns the
    /// number of keys left.
    pub fn prune(&self) -> usize {
        self.requests.retain_recent();
        self.push_bytes.retain_recent();
        self.connections.retain_recent();
        self.requests.shrink_to_fit();
        self.push_bytes.shrink_to_fit();
        self.connections.shrink_to_fit();
        self.keys()
    }

    /// Keys held across all limiters.
    pub fn keys(&self) -> usize {
        self.requests.len() + self.push_bytes.len() + self.connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn cfg() -> RateLimitsConfig {
        RateLimitsConfig {
            requests_per_s: 10,
            requests_burst: 5,
            push_bytes_per_s: 1000,
            push_bytes_burst: 2000,
            connections_per_ip_per_s: 1,
            connections_per_ip_burst: 2,
            prune_interval_s: 60,
        }
    }

    #[test]
    fn over_the_burst_is_limited_with_a_retry_after_and_others_are_not() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&cfg(), 0, clock.clone());
        let a = DeviceId([1; 32]);
        let b = DeviceId([2; 32]);
        for _ in 0..5 {
            rl.check_request(&a).unwrap();
        }
        let limited = rl.check_request(&a).unwrap_err();
        assert_eq!(limited.kind, LimitKind::Requests);
        assert_eq!(limited.retry_after, Duration::from_millis(100));
        assert_eq!(limited.retry_after_ms(), 100);
        rl.check_request(&b).unwrap();
        clock.advance(Duration::from_millis(100));
        rl.check_request(&a).unwrap();
    }

    #[test]
    fn push_bytes_are_counted_in_bytes() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&cfg(), 0, clock.clone());
        let a = DeviceId([1; 32]);
        rl.check_push_bytes(&a, 1500).unwrap();
        let limited = rl.check_push_bytes(&a, 1000).unwrap_err();
        assert_eq!(limited.kind, LimitKind::PushBytes);
        assert_eq!(limited.retry_after, Duration::from_millis(500));
        // The burst is raised to one frame, so a full frame always fits.
        let rl = RateLimits::with_clock(&cfg(), 5000, clock);
        rl.check_push_bytes(&a, 5000).unwrap();
    }

    #[test]
    fn connections_are_limited_per_ip() {
        let rl = RateLimits::with_clock(&cfg(), 0, FakeRelativeClock::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        rl.check_connection(ip).unwrap();
        rl.check_connection(ip).unwrap();
        assert_eq!(
            rl.check_connection(ip).unwrap_err().kind,
            LimitKind::Connections
        );
        rl.check_connection("192.0.2.2".parse().unwrap()).unwrap();
    }

    #[test]
    fn an_ipv6_64_is_one_address_and_mapped_ipv4_is_ipv4() {
        let rl = RateLimits::with_clock(&cfg(), 0, FakeRelativeClock::default());
        rl.check_connection("2001:db8:1:2::1".parse().unwrap())
            .unwrap();
        rl.check_connection("2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap())
            .unwrap();
        assert!(
            rl.check_connection("2001:db8:1:2:abcd::7".parse().unwrap())
                .is_err(),
            "a third address of the same /64 is over the burst of 2"
        );
        rl.check_connection("2001:db8:1:3::1".parse().unwrap())
            .unwrap();
        // IPv4 clients of a dual-stack socket are told apart by their IPv4
        // address, not lumped into ::ffff:0:0/64.
        rl.check_connection("::ffff:192.0.2.1".parse().unwrap())
            .unwrap();
        rl.check_connection("::ffff:192.0.2.2".parse().unwrap())
            .unwrap();
        rl.check_connection("::ffff:192.0.2.3".parse().unwrap())
            .unwrap();
        assert_eq!(
            address_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn idle_keys_are_pruned() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&cfg(), 0, clock.clone());
        for i in 0..100u8 {
            rl.check_request(&DeviceId([i; 32])).unwrap();
            rl.check_push_bytes(&DeviceId([i; 32]), 10).unwrap();
        }
        assert_eq!(rl.keys(), 200);
        assert_eq!(rl.prune(), 200, "recently used keys stay");
        clock.advance(Duration::from_secs(10));
        rl.check_request(&DeviceId([0; 32])).unwrap();
        assert_eq!(rl.prune(), 1, "only the key used since stays");
    }
}
