//! Metrics of the storage backend (docs/deploy.md "Prometheus"): whether the database answered
//! the last figures query, and its connection pool, refreshed at each scrape from the
//! backend-neutral [`PoolStats`]. Labels: `backend` (`sqlite`, `postgres`) and `state`
//! (`idle`, `busy`), never a URL.

use crate::storage::PoolStats;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// `backend` label: the storage backend's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabel {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
}

/// `backend` and `state` labels of the pool's connections.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// `idle` or `busy` (in use by a call).
    pub state: &'static str,
}

/// The storage backend's metrics (`sync_relay_db_…`).
#[derive(Default)]
pub struct DbMetrics {
    /// 1 when the database answered the last figures query (`/health`'s
    /// `db` is `ok`), 0 when it failed or did not answer within 2 s.
    pub up: Family<BackendLabel, Gauge>,
    /// Connections open in the pool, by state.
    pub pool_connections: Family<PoolLabel, Gauge>,
    /// The most connections the pool opens (`storage.max_connections`
    /// on PostgreSQL).
    pub pool_max: Family<BackendLabel, Gauge>,
    /// Calls that got no connection within the acquire timeout.
    pub acquire_timeouts: Family<BackendLabel, Counter>,
}

impl DbMetrics {
    /// Register every metric in `registry` (prefix `sync_relay` comes from
    /// the registry).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "db_up",
            "1 when the database answered the last storage-figures query, 0 otherwise",
            self.up.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Connections open in the storage backend's pool, by state (idle, busy)",
            self.pool_connections.clone(),
        );
        registry.register(
            "db_pool_max_connections",
            "Most connections the storage backend's pool opens",
            self.pool_max.clone(),
        );
        registry.register(
            "db_pool_acquire_timeouts",
            "Storage calls that got no database connection within the acquire timeout",
            self.acquire_timeouts.clone(),
        );
    }

    /// Refresh from `backend`'s pool and whether the database answered.
    pub fn update(&self, backend: &'static str, pool: PoolStats, up: bool) {
        let label = BackendLabel { backend };
        self.up.get_or_create(&label).set(i64::from(up));
        let idle = pool.idle.min(pool.size);
        for (state, n) in [("idle", idle), ("busy", pool.size - idle)] {
            self.pool_connections
                .get_or_create(&PoolLabel { backend, state })
                .set(i64::from(n));
        }
        self.pool_max.get_or_create(&label).set(i64::from(pool.max));
        let counter = self.acquire_timeouts.get_or_create(&label);
        counter.inc_by(pool.acquire_timeouts.saturating_sub(counter.get()));
    }
}
