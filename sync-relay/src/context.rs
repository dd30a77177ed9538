//! State shared by every session and the HTTP server.

use crate::admission::Admission;
use crate::budget::{PendingHellos, RelayBudget, SessionBudget};
use crate::close_feed::CloseFeed;
use crate::config::{Config, LimitsConfig};
use crate::http::{STATS_MAX_AGE, StatsCache};
use crate::metrics::Metrics;
use crate::notify::NotifyHub;
use crate::ratelimit::RateLimits;
use crate::storage::Storage;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use sync_protocol::limits::max_frame_for_blob_size;
use sync_protocol::{DeviceId, Welcome};
use tokio_util::sync::CancellationToken;

/// What every session and handler needs.
pub struct RelayContext {
    /// Limits from the configuration.
    pub limits: LimitsConfig,
    /// The relay's node id.
    pub relay_id: DeviceId,
    /// The blob store.
    pub storage: Arc<dyn Storage>,
    /// Per-group NOTIFY channels.
    pub notify: Arc<NotifyHub>,
    /// Closes committed here, announced to live sessions.
    pub closes: CloseFeed,
    /// Cancelled when the relay begins shutting down.
    pub shutdown: CancellationToken,
    /// When the relay started.
    pub started: Instant,
    /// Metrics (also the live-session count).
    pub metrics: Metrics,
    /// Rate limiters.
    pub rate_limits: RateLimits,
    /// The relay-wide byte budget of request bodies and response frames.
    pub budget: RelayBudget,
    /// Connections whose `Hello` is not answered yet, capped.
    pub awaiting_hello: Arc<PendingHellos>,
    /// Who may create groups and hold sessions (`[access]`).
    pub admission: Arc<Admission>,
    /// Configuration problems found at start that an operator should fix,
    /// reported in `/health` (e.g. no usable announced address,
    /// [`crate::advertise`]).
    pub warnings: Vec<String>,
    /// Storage figures for `/health` and `/metrics`, queried at most once
    /// a second whatever the request rate.
    pub storage_figures: StatsCache,
}

impl RelayContext {
    /// A context with no live sessions and no warnings.
    pub fn new(config: &Config, relay_id: DeviceId, storage: Arc<dyn Storage>) -> Arc<Self> {
        Self::with_warnings(config, relay_id, storage, Vec::new())
    }

    /// A context with no live sessions that reports `warnings` in `/health`.
    pub fn with_warnings(
        config: &Config,
        relay_id: DeviceId,
        storage: Arc<dyn Storage>,
        warnings: Vec<String>,
    ) -> Arc<Self> {
        let max_frame = max_frame_for_blob_size(config.limits.max_blob_size);
        let metrics = Metrics::new();
        let budget = RelayBudget::new(config.limits.max_bytes_in_flight, &metrics);
        Arc::new(RelayContext {
            limits: config.limits.clone(),
            relay_id,
            storage,
            notify: NotifyHub::new(),
            closes: CloseFeed::default(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            metrics,
            rate_limits: RateLimits::new(&config.rate_limits, max_frame),
            budget,
            awaiting_hello: PendingHellos::new(
                config.limits.max_connections_awaiting_hello as usize,
            ),
            admission: Admission::new(config),
            warnings,
            storage_figures: StatsCache::new(STATS_MAX_AGE),
        })
    }

    /// Largest frame body (bytes) read or written in an active session.
    pub fn max_frame(&self) -> u32 {
        max_frame_for_blob_size(self.limits.max_blob_size)
    }

    /// A new session's shares of the byte budget
    /// (`limits.session_request_frames` and `session_response_frames`
    /// largest frames).
    pub fn session_budget(&self) -> SessionBudget {
        let frame = self.max_frame() as usize;
        SessionBudget::new(
            &self.budget,
            self.limits.session_request_frames as usize * frame,
            self.limits.session_response_frames as usize * frame,
        )
    }

    /// How long a frame of `len` bytes may take to arrive or to be taken by
    /// the device: `request_timeout_s + len / min_transfer_rate` seconds.
    pub fn transfer_deadline(&self, len: usize) -> Duration {
        Self::secs(self.limits.request_timeout_s)
            + Duration::from_secs_f64(len as f64 / f64::from(self.limits.min_transfer_rate.max(1)))
    }

    /// The `Welcome` for a session speaking protocol `version` (that of
    /// its accepted `Hello`) on a group whose head is `head`.
    pub fn welcome(&self, head: u64, version: u16) -> Welcome {
        Welcome {
            version,
            relay_id: self.relay_id,
            head_cursor: head,
            max_blob_size: self.limits.max_blob_size,
            max_frame: self.max_frame(),
            max_batch: self.limits.max_batch,
            default_ttl_s: self.limits.default_ttl_s,
            max_ttl_s: self.limits.max_ttl_s,
        }
    }

    /// Seconds to a `Duration`.
    pub fn secs(s: u32) -> Duration {
        Duration::from_secs(u64::from(s))
    }

    /// Live (active) sessions.
    pub fn sessions(&self) -> u64 {
        self.metrics.sessions.get().max(0) as u64
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
