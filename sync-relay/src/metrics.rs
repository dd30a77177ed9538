//! Prometheus/OpenMetrics metrics (docs/deploy.md "Prometheus"), one typed, documented field
//! per metric, encoded by `prometheus-client`. Names are prefixed
//! `sync_relay_`; counters get `_total`. **No label ever carries a group or
//! device id**: labels are small fixed sets (result, kind, code, op).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use sync_protocol::ErrorCode;

/// `result` label: `ok`, `rejected` (client error), `error` (relay error).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// The outcome.
    pub result: &'static str,
}

/// `kind` label of limit and quota counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// Which limit.
    pub kind: &'static str,
}

/// `code` label: an error code name such as `RATE_LIMITED`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code's name.
    pub code: &'static str,
}

/// `reason` label of `connections_refused_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why.
    pub reason: &'static str,
}

/// `reason` values of `connections_refused_total`: over the per-address
/// connection rate, and over `limits.max_connections_awaiting_hello`.
pub const REFUSAL_REASONS: [&str; 2] = ["per_ip_rate", "awaiting_hello"];

/// `op` label: `hello`, `push`, `pull`, `ack`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    /// The request.
    pub op: &'static str,
}

/// `kind` values of `quota_rejections_total`.
pub const QUOTA_KINDS: [&str; 6] = [
    "blob_size",
    "ttl",
    "group_storage",
    "group_blobs",
    "owner_storage",
    "relay_storage",
];

/// Why a version-3 session got a bare `Notify` instead of a `Deliver`:
/// `position` (the device's cursor is unknown here), `not_cached` (a blob
/// in the range is large, evicted, expired or pushed through another
/// instance), `budget` (the session's inline bytes in flight),
/// `relay_budget` (the relay-wide byte budget).
pub const INLINE_FALLBACK_REASONS: [&str; 4] = ["position", "not_cached", "budget", "relay_budget"];

/// Every metric of the relay.
pub struct Metrics {
    registry: Registry,
    /// Live sessions (gauge).
    pub sessions: Gauge,
    /// Connections accepted (QUIC handshake done).
    pub connections: Counter,
    /// Push requests by result.
    pub pushes: Family<ResultLabel, Counter>,
    /// Payload bytes of new (non-duplicate) blobs stored.
    pub push_bytes: Counter,
    /// Pull requests answered.
    pub pulls: Counter,
    /// Blobs sent in `PullBatch` frames.
    pub blobs_delivered: Counter,
    /// `Notify` frames written.
    pub notifications_sent: Counter,
    /// `Deliver` frames written: new blobs sent inline in place of a
    /// `Notify` (docs/protocol.md "Version 3: inline delivery").
    pub inline_deliveries: Counter,
    /// Version-3 `Notify`s sent bare instead of a `Deliver`, by reason
    /// ([`INLINE_FALLBACK_REASONS`]).
    pub inline_fallbacks: Family<ReasonLabel, Counter>,
    /// Wake-ups from other relay instances (PostgreSQL `LISTEN`) and the
    /// fallback poll ([`crate::head_feed`]).
    pub head_feed: crate::head_feed::FeedMetrics,
    /// Requests or connections refused by a rate limit, by kind.
    pub rate_limited: Family<KindLabel, Counter>,
    /// Pushes refused by a quota, by kind.
    pub quota_rejections: Family<KindLabel, Counter>,
    /// Blobs deleted by the cleanup task (expired or acknowledged).
    pub cleanup_deleted: Counter,
    /// Groups closed by a `CloseGroup` served here (the first close of
    /// each group).
    pub groups_closed: Counter,
    /// `CloseGroup` requests that closed nothing: the group was closed
    /// already (answered with that close), or the request failed.
    pub group_closes_refused: Counter,
    /// Payload bytes stored (refreshed at each scrape).
    pub storage_bytes: Gauge,
    /// Blobs stored (refreshed at each scrape).
    pub storage_blobs: Gauge,
    /// Groups stored (refreshed at each scrape).
    pub groups: Gauge,
    /// Device rows stored, one per group and device seen (refreshed at
    /// each scrape).
    pub devices: Gauge,
    /// Owners stored: tokens and addresses that own groups, and addresses
    /// whose new-group window is still open (refreshed at each scrape).
    pub owners: Gauge,
    /// Error frames sent, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Time to serve a request, by op, in seconds.
    pub request_duration: Family<OpLabel, Histogram>,
    /// Incoming connections refused before their TLS handshake, by reason
    /// ([`REFUSAL_REASONS`]).
    pub connections_refused: Family<ReasonLabel, Counter>,
    /// Incoming connections sent a QUIC Retry to prove their address
    /// before they are counted against it.
    pub address_validations: Counter,
    /// Bytes of request bodies and response frames reserved right now
    /// ([`crate::budget`]).
    pub bytes_in_flight: Gauge,
    /// Requests refused because a byte budget was spent, by `kind`
    /// (`session`, `relay`).
    pub budget_refusals: Family<KindLabel, Counter>,
    /// Sessions closed because the device did not take an answer within
    /// its write deadline (close code 8, TOO_SLOW).
    pub slow_readers: Counter,
    /// The storage backend: database reachable, connection pool
    /// ([`crate::db_metrics`]).
    pub db: crate::db_metrics::DbMetrics,
    /// The process heap, read from jemalloc ([`crate::heap_metrics`]).
    pub heap: crate::heap_metrics::HeapMetrics,
}

impl Metrics {
    /// All metrics, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sync_relay");
        let m = Metrics {
            sessions: Gauge::default(),
            connections: Counter::default(),
            pushes: Family::default(),
            push_bytes: Counter::default(),
            pulls: Counter::default(),
            blobs_delivered: Counter::default(),
            notifications_sent: Counter::default(),
            inline_deliveries: Counter::default(),
            inline_fallbacks: Family::default(),
            head_feed: Default::default(),
            rate_limited: Family::default(),
            quota_rejections: Family::default(),
            cleanup_deleted: Counter::default(),
            groups_closed: Counter::default(),
            group_closes_refused: Counter::default(),
            storage_bytes: Gauge::default(),
            storage_blobs: Gauge::default(),
            groups: Gauge::default(),
            devices: Gauge::default(),
            owners: Gauge::default(),
            errors: Family::default(),
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
            }),
            connections_refused: Family::default(),
            address_validations: Counter::default(),
            bytes_in_flight: Gauge::default(),
            budget_refusals: Family::default(),
            slow_readers: Counter::default(),
            db: Default::default(),
            heap: Default::default(),
            registry: Registry::default(),
        };
        registry.register("sessions", "Live sessions", m.sessions.clone());
        registry.register(
            "connections",
            "QUIC connections accepted",
            m.connections.clone(),
        );
        registry.register(
            "pushes",
            "Push requests by result (ok, rejected, error)",
            m.pushes.clone(),
        );
        registry.register_with_unit(
            "push",
            "Payload bytes of new blobs stored",
            Unit::Bytes,
            m.push_bytes.clone(),
        );
        registry.register("pulls", "Pull requests answered", m.pulls.clone());
        registry.register(
            "blobs_delivered",
            "Blobs sent to devices in PullBatch frames",
            m.blobs_delivered.clone(),
        );
        registry.register(
            "notifications_sent",
            "Notify frames written to sessions",
            m.notifications_sent.clone(),
        );
        registry.register(
            "inline_deliveries",
            "Deliver frames written to version-3 sessions (new blobs inline)",
            m.inline_deliveries.clone(),
        );
        registry.register(
            "inline_fallbacks",
            "Bare Notify frames sent to version-3 sessions instead of a Deliver, by reason",
            m.inline_fallbacks.clone(),
        );
        m.head_feed.register(&mut registry);
        registry.register(
            "rate_limited",
            "Requests or connections refused by a rate limit, by kind",
            m.rate_limited.clone(),
        );
        registry.register(
            "quota_rejections",
            "Pushes refused by a quota, by kind",
            m.quota_rejections.clone(),
        );
        registry.register(
            "cleanup_deleted",
            "Blobs deleted by the cleanup task",
            m.cleanup_deleted.clone(),
        );
        registry.register(
            "groups_closed",
            "Groups closed by a CloseGroup request served here",
            m.groups_closed.clone(),
        );
        registry.register(
            "group_closes_refused",
            "CloseGroup requests that closed nothing (closed already, or failed)",
            m.group_closes_refused.clone(),
        );
        registry.register_with_unit(
            "storage",
            "Payload bytes stored",
            Unit::Bytes,
            m.storage_bytes.clone(),
        );
        registry.register("storage_blobs", "Blobs stored", m.storage_blobs.clone());
        registry.register("groups", "Groups stored", m.groups.clone());
        registry.register(
            "devices",
            "Device rows stored (one per group and device seen)",
            m.devices.clone(),
        );
        registry.register(
            "owners",
            "Owners stored (tokens and addresses that own groups or created one this hour)",
            m.owners.clone(),
        );
        registry.register("errors", "Error frames sent, by code", m.errors.clone());
        // No UNIT metadata on the histogram: strict OpenMetrics parsers
        // reject it there; the name carries the unit.
        registry.register(
            "request_duration_seconds",
            "Time to serve a request in seconds, by op",
            m.request_duration.clone(),
        );
        registry.register(
            "connections_refused",
            "Incoming connections refused before the TLS handshake, by reason",
            m.connections_refused.clone(),
        );
        registry.register(
            "address_validations",
            "Incoming connections sent a QUIC Retry to prove their address",
            m.address_validations.clone(),
        );
        registry.register_with_unit(
            "in_flight",
            "Bytes of request bodies and response frames reserved",
            Unit::Bytes,
            m.bytes_in_flight.clone(),
        );
        registry.register(
            "budget_refusals",
            "Requests refused because a byte budget was spent, by kind",
            m.budget_refusals.clone(),
        );
        registry.register(
            "slow_readers",
            "Sessions closed for not taking an answer within its write deadline",
            m.slow_readers.clone(),
        );
        m.db.register(&mut registry);
        m.heap.register(&mut registry);
        registry.register(
            "build",
            "Relay build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Known label values start at zero, so every series exists from the
        // first scrape (rates and alerts need no special cases).
        for result in ["ok", "rejected", "error"] {
            let _ = m.pushes.get_or_create(&ResultLabel { result });
        }
        for kind in [
            "requests",
            "push_bytes",
            "connections",
            "group_sessions",
            "owner_sessions",
        ] {
            let _ = m.rate_limited.get_or_create(&KindLabel { kind });
        }
        for kind in QUOTA_KINDS {
            let _ = m.quota_rejections.get_or_create(&KindLabel { kind });
        }
        for code in [
            ErrorCode::InvalidMessage,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Unauthorized,
            ErrorCode::NotInSession,
            ErrorCode::AccessTokenRequired,
            ErrorCode::AccessTokenInvalid,
            ErrorCode::RateLimited,
            ErrorCode::BlobTooLarge,
            ErrorCode::GroupQuotaExceeded,
            ErrorCode::TtlTooLong,
            ErrorCode::OwnerQuotaExceeded,
            ErrorCode::GroupLimitReached,
            ErrorCode::Overloaded,
            ErrorCode::ShuttingDown,
            ErrorCode::Internal,
            ErrorCode::StorageUnavailable,
        ] {
            let _ = m.errors.get_or_create(&CodeLabel { code: code.name() });
        }
        for reason in REFUSAL_REASONS {
            let _ = m.connections_refused.get_or_create(&ReasonLabel { reason });
        }
        for reason in INLINE_FALLBACK_REASONS {
            let _ = m.inline_fallbacks.get_or_create(&ReasonLabel { reason });
        }
        for kind in ["session", "relay"] {
            let _ = m.budget_refusals.get_or_create(&KindLabel { kind });
        }
        for op in ["push", "pull", "ack"] {
            let _ = m.request_duration.get_or_create(&OpLabel { op });
        }
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Count one Error frame.
    pub fn error_sent(&self, code: sync_protocol::ErrorCode) {
        self.errors
            .get_or_create(&CodeLabel { code: code.name() })
            .inc();
    }

    /// Record a request's duration.
    pub fn observe(&self, op: &'static str, started: std::time::Instant) {
        self.request_duration
            .get_or_create(&OpLabel { op })
            .observe(started.elapsed().as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
