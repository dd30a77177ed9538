//! HTTP endpoints (docs/deploy.md "Prometheus") over axum. `GET /health`: 200
//! `{"status":"ok",…}` when the database answers, 503 with
//! `"status":"degraded"` when it fails or `"stopping"` during shutdown.
//!
//! Both `/health` and `/metrics` read the storage figures (groups, devices,
//! blobs, bytes) through one [`StatsCache`] in the [`RelayContext`]: one real
//! database query at most once per [`STATS_MAX_AGE`], shared by every
//! request of both endpoints (concurrent requests wait for the one refresh
//! in progress), so a flood of requests costs the database nothing more.
//! A failing database shows as a fixed message; its error goes to the log.

use crate::context::RelayContext;
use crate::storage::{Storage, StorageStats};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::warn;

/// How long `/health` and `/metrics` wait for the database.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// How long storage figures are reused before the next request refreshes
/// them: at most one database query per second, however many requests.
pub const STATS_MAX_AGE: Duration = Duration::from_secs(1);

/// `Health::db` when the database answered.
pub const DB_OK: &str = "ok";
/// `Health::db` when the database query failed (the error is logged).
pub const DB_UNAVAILABLE: &str = "database unavailable";
/// `Health::db` when the database did not answer within 2 s.
pub const DB_TIMED_OUT: &str = "database did not answer within 2 s";

/// The outcome of one storage-figures query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbStatus {
    /// The database answered with these figures.
    Ok(StorageStats),
    /// The query failed; the error was logged when it happened.
    Unavailable,
    /// No answer within 2 s.
    TimedOut,
}

impl DbStatus {
    /// The fixed text shown in `/health`'s `db` field.
    pub fn message(&self) -> &'static str {
        match self {
            DbStatus::Ok(_) => DB_OK,
            DbStatus::Unavailable => DB_UNAVAILABLE,
            DbStatus::TimedOut => DB_TIMED_OUT,
        }
    }
}

/// Storage figures refreshed at most once per `max_age`, shared by every
/// caller: the first caller after they aged runs the query while holding
/// the lock, the others wait for it and reuse its answer (failures too, so
/// a broken database is not queried more often either).
#[derive(Debug)]
pub struct StatsCache {
    max_age: Duration,
    last: Mutex<Option<(Instant, DbStatus)>>,
}

impl StatsCache {
    /// A cache that reuses an answer for `max_age` (measured from when the
    /// query finished).
    pub fn new(max_age: Duration) -> Self {
        StatsCache {
            max_age,
            last: Mutex::new(None),
        }
    }

    /// The current figures: cached, or queried from `storage` (waiting at
    /// most 2 s) when older than `max_age`.
    pub async fn get(&self, storage: &dyn Storage) -> DbStatus {
        let mut last = self.last.lock().await;
        if let Some((at, status)) = *last
            && at.elapsed() < self.max_age
        {
            return status;
        }
        let status = match tokio::time::timeout(DB_CHECK_TIMEOUT, storage.stats()).await {
            Ok(Ok(stats)) => DbStatus::Ok(stats),
            Ok(Err(err)) => {
                warn!(error = %err, "storage figures for /health and /metrics: query failed");
                DbStatus::Unavailable
            }
            Err(_) => {
                warn!("storage figures for /health and /metrics: no answer within 2 s");
                DbStatus::TimedOut
            }
        };
        *last = Some((Instant::now(), status));
        status
    }
}

/// The body of `GET /health`.
#[derive(Debug, Serialize)]
pub struct Health {
    /// `ok`, `degraded` (database failing) or `stopping`.
    pub status: &'static str,
    /// The relay's version (Cargo package version).
    pub version: &'static str,
    /// The relay's node id, 64 hex characters.
    pub node_id: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Live sessions.
    pub sessions: u64,
    /// Groups stored (at most 1 s old).
    pub groups: u64,
    /// Device rows stored, one per group and device seen (at most 1 s old).
    pub devices: u64,
    /// Payload bytes stored (at most 1 s old).
    pub storage_bytes: u64,
    /// [`DB_OK`], [`DB_UNAVAILABLE`] or [`DB_TIMED_OUT`]; never the raw
    /// database error (that goes to the log).
    pub db: &'static str,
    /// The storage backend: `sqlite` or `postgres` (never its URL).
    pub backend: &'static str,
    /// Configuration problems to fix (empty when none), e.g. an announced
    /// address that only works on this host ([`crate::advertise`]). They do
    /// not make the relay unhealthy.
    pub warnings: Vec<String>,
}

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The HTTP router: `/health`, and `/metrics` when `with_metrics`.
pub fn router(ctx: Arc<RelayContext>, with_metrics: bool) -> Router {
    let r = Router::new().route("/health", get(health));
    let r = if with_metrics {
        r.route("/metrics", get(metrics))
    } else {
        r
    };
    r.with_state(ctx)
}

/// The router for a separate metrics listener: `/metrics` only.
pub fn metrics_router(ctx: Arc<RelayContext>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

async fn metrics(State(ctx): State<Arc<RelayContext>>) -> impl IntoResponse {
    let db = ctx.storage_figures.get(&*ctx.storage).await;
    ctx.metrics.db.update(
        ctx.storage.backend(),
        ctx.storage.pool_stats(),
        matches!(db, DbStatus::Ok(_)),
    );
    if let DbStatus::Ok(stats) = db {
        ctx.metrics.storage_bytes.set(stats.bytes as i64);
        ctx.metrics.storage_blobs.set(stats.blobs as i64);
        ctx.metrics.groups.set(stats.groups as i64);
        ctx.metrics.devices.set(stats.devices as i64);
        ctx.metrics.owners.set(stats.owners as i64);
    }
    ctx.metrics.heap.update();
    ([(header::CONTENT_TYPE, OPENMETRICS)], ctx.metrics.encode())
}

async fn health(State(ctx): State<Arc<RelayContext>>) -> (StatusCode, Json<Health>) {
    let db = ctx.storage_figures.get(&*ctx.storage).await;
    let stats = match db {
        DbStatus::Ok(stats) => stats,
        _ => StorageStats::default(),
    };
    let status = if ctx.shutdown.is_cancelled() {
        "stopping"
    } else if !matches!(db, DbStatus::Ok(_)) {
        "degraded"
    } else {
        "ok"
    };
    let code = if status == "ok" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            node_id: ctx.relay_id.to_string(),
            uptime_s: ctx.started.elapsed().as_secs(),
            sessions: ctx.sessions(),
            groups: stats.groups,
            devices: stats.devices,
            storage_bytes: stats.bytes,
            db: db.message(),
            backend: ctx.storage.backend(),
            warnings: ctx.warnings.clone(),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::storage::*;
    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use sync_protocol::{DeviceId, GroupId};
    use tower::ServiceExt;

    /// A storage whose database is gone: every call fails.
    struct BrokenStorage;

    fn broken() -> StorageError {
        StorageError::database("pool closed")
    }

    #[async_trait]
    impl Storage for BrokenStorage {
        async fn open_session(
            &self,
            _: GroupId,
            _: DeviceId,
            _: i64,
            _: NewGroup,
        ) -> Result<OpenedSession, StorageError> {
            Err(broken())
        }
        async fn create_token(&self, _: NewToken) -> Result<TokenInfo, StorageError> {
            Err(broken())
        }
        async fn revoke_token(&self, _: &str, _: i64) -> Result<TokenInfo, StorageError> {
            Err(broken())
        }
        async fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError> {
            Err(broken())
        }
        async fn push(&self, _: PushRequest) -> Result<PushOutcome, StorageError> {
            Err(broken())
        }
        async fn head(&self, _: GroupId) -> Result<u64, StorageError> {
            Err(broken())
        }
        async fn pull_page(
            &self,
            _: GroupId,
            _: u64,
            _: u32,
            _: usize,
            _: i64,
        ) -> Result<PullPage, StorageError> {
            Err(broken())
        }
        async fn ack(&self, _: GroupId, _: DeviceId, _: u64, _: i64) -> Result<u64, StorageError> {
            Err(broken())
        }
        async fn close_group(
            &self,
            _: GroupId,
            _: sync_protocol::KeepList,
            _: i64,
            _: i64,
        ) -> Result<sync_storage::CloseOutcome, StorageError> {
            Err(broken())
        }
        async fn closure(
            &self,
            _: GroupId,
        ) -> Result<Option<sync_storage::GroupClosure>, StorageError> {
            Err(broken())
        }
        async fn stats(&self) -> Result<StorageStats, StorageError> {
            Err(broken())
        }
        async fn delete_expired(&self, _: i64, _: u32) -> Result<Deleted, StorageError> {
            Err(broken())
        }
        async fn delete_acked(&self, _: i64, _: u32) -> Result<Deleted, StorageError> {
            Err(broken())
        }
        async fn prune_idle(&self, _: i64, _: u32, _: LiveGroups) -> Result<Pruned, StorageError> {
            Err(broken())
        }
        async fn maintenance(&self) -> Result<(), StorageError> {
            Err(broken())
        }
        async fn audit(&self) -> Result<CounterAudit, StorageError> {
            Err(broken())
        }
        async fn close(&self) {}
        fn backend(&self) -> &'static str {
            "postgres"
        }
        fn pool_stats(&self) -> PoolStats {
            PoolStats {
                size: 0,
                idle: 0,
                max: 16,
                acquire_timeouts: 3,
            }
        }
    }

    async fn get(app: Router, path: &str) -> (StatusCode, String, Option<String>) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ctype = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string());
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap(), ctype)
    }

    async fn sqlite_ctx() -> (tempfile::TempDir, Arc<RelayContext>) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(SqliteStorageOptions::new(
            dir.path().join("t.db"),
            Quotas::UNLIMITED,
        ))
        .await
        .unwrap();
        (
            dir,
            RelayContext::new(&Config::default(), DeviceId([5; 32]), Arc::new(s)),
        )
    }

    #[tokio::test]
    async fn health_is_ok_with_a_working_database() {
        let (_d, ctx) = sqlite_ctx().await;
        let (status, body, _) = get(router(ctx, true), "/health").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "ok");
        assert_eq!(v["db"], "ok");
        assert_eq!(v["backend"], "sqlite");
        assert_eq!(v["node_id"], "05".repeat(32));
        for key in ["version", "uptime_s", "sessions", "groups", "storage_bytes"] {
            assert!(v.get(key).is_some(), "missing {key}: {body}");
        }
    }

    #[tokio::test]
    async fn health_is_503_degraded_when_the_database_fails_and_never_shows_its_error() {
        let ctx = RelayContext::new(
            &Config::default(),
            DeviceId([5; 32]),
            Arc::new(BrokenStorage),
        );
        let (status, body, _) = get(router(Arc::clone(&ctx), true), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "degraded");
        assert_eq!(v["db"], DB_UNAVAILABLE);
        assert_eq!(v["backend"], "postgres");
        // Neither the error's text nor any part of it reaches the body.
        let raw = broken().to_string();
        assert!(!body.contains(&raw), "raw error shown: {body}");
        for word in ["closed pool", "database error", "sqlx", "attempted"] {
            assert!(!body.to_lowercase().contains(word), "{word:?} in {body}");
        }
        ctx.shutdown.cancel();
        let (status, body, _) = get(router(ctx, true), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"stopping\""));
    }

    /// A memory storage whose `stats` (the only query `/health` and
    /// `/metrics` make) is counted and takes 100 ms, so that concurrent
    /// requests overlap a refresh — or, with `hang`, never answers.
    struct CountingStorage {
        inner: MemoryStorage,
        stats_calls: std::sync::atomic::AtomicU64,
        hang: bool,
    }

    impl CountingStorage {
        fn new(hang: bool) -> Arc<Self> {
            Arc::new(CountingStorage {
                inner: MemoryStorage::new(Quotas::UNLIMITED),
                stats_calls: Default::default(),
                hang,
            })
        }
    }

    #[async_trait]
    impl Storage for CountingStorage {
        async fn open_session(
            &self,
            g: GroupId,
            d: DeviceId,
            now: i64,
            new_group: NewGroup,
        ) -> Result<OpenedSession, StorageError> {
            self.inner.open_session(g, d, now, new_group).await
        }
        async fn create_token(&self, t: NewToken) -> Result<TokenInfo, StorageError> {
            self.inner.create_token(t).await
        }
        async fn revoke_token(&self, id: &str, now: i64) -> Result<TokenInfo, StorageError> {
            self.inner.revoke_token(id, now).await
        }
        async fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError> {
            self.inner.tokens().await
        }
        async fn push(&self, r: PushRequest) -> Result<PushOutcome, StorageError> {
            self.inner.push(r).await
        }
        async fn head(&self, g: GroupId) -> Result<u64, StorageError> {
            self.inner.head(g).await
        }
        async fn close_group(
            &self,
            g: GroupId,
            keep: sync_protocol::KeepList,
            now: i64,
            grace: i64,
        ) -> Result<sync_storage::CloseOutcome, StorageError> {
            self.inner.close_group(g, keep, now, grace).await
        }
        async fn closure(
            &self,
            g: GroupId,
        ) -> Result<Option<sync_storage::GroupClosure>, StorageError> {
            self.inner.closure(g).await
        }
        async fn pull_page(
            &self,
            g: GroupId,
            after: u64,
            rows: u32,
            bytes: usize,
            now: i64,
        ) -> Result<PullPage, StorageError> {
            self.inner.pull_page(g, after, rows, bytes, now).await
        }
        async fn ack(
            &self,
            g: GroupId,
            d: DeviceId,
            c: u64,
            now: i64,
        ) -> Result<u64, StorageError> {
            self.inner.ack(g, d, c, now).await
        }
        async fn stats(&self) -> Result<StorageStats, StorageError> {
            self.stats_calls
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.hang {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.inner.stats().await
        }
        async fn delete_expired(&self, now: i64, n: u32) -> Result<Deleted, StorageError> {
            self.inner.delete_expired(now, n).await
        }
        async fn delete_acked(&self, s: i64, n: u32) -> Result<Deleted, StorageError> {
            self.inner.delete_acked(s, n).await
        }
        async fn prune_idle(&self, b: i64, n: u32, l: LiveGroups) -> Result<Pruned, StorageError> {
            self.inner.prune_idle(b, n, l).await
        }
        async fn maintenance(&self) -> Result<(), StorageError> {
            self.inner.maintenance().await
        }
        async fn audit(&self) -> Result<CounterAudit, StorageError> {
            self.inner.audit().await
        }
        async fn close(&self) {
            self.inner.close().await
        }
        fn backend(&self) -> &'static str {
            self.inner.backend()
        }
        fn pool_stats(&self) -> PoolStats {
            self.inner.pool_stats()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn health_reports_a_database_that_does_not_answer_without_waiting_again() {
        let ctx = RelayContext::new(
            &Config::default(),
            DeviceId([5; 32]),
            CountingStorage::new(true),
        );
        let (status, body, _) = get(router(Arc::clone(&ctx), true), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["db"], DB_TIMED_OUT);
        // Within the next second the answer is reused: no second 2 s wait.
        let started = tokio::time::Instant::now();
        let (status, _, _) = get(router(ctx, true), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// 1,000 requests of `/health` and `/metrics` (both routers, as with a
    /// separate metrics listener) at once, then 1,000 more spread over one
    /// second: the database is asked at most once per second, concurrent
    /// requests share one refresh, and the figures do follow the storage.
    /// Time is tokio's paused clock, so nothing depends on machine speed.
    #[tokio::test(start_paused = true)]
    async fn a_thousand_health_requests_a_second_cost_one_database_query_a_second() {
        use std::sync::atomic::Ordering::SeqCst;
        let storage = CountingStorage::new(false);
        let ctx = RelayContext::new(&Config::default(), DeviceId([5; 32]), storage.clone());
        let (main, separate) = (
            router(Arc::clone(&ctx), true),
            metrics_router(Arc::clone(&ctx)),
        );
        let app = |i: usize| match i % 4 {
            0 | 1 => (main.clone(), "/health"),
            2 => (main.clone(), "/metrics"),
            _ => (separate.clone(), "/metrics"),
        };
        let burst = futures::future::join_all((0..1000).map(|i| {
            let (app, path) = app(i);
            async move { get(app, path).await.0 }
        }))
        .await;
        assert!(burst.iter().all(|s| *s == StatusCode::OK));
        assert_eq!(
            storage.stats_calls.load(SeqCst),
            1,
            "1,000 concurrent requests share one refresh"
        );

        // One group appears; 1,000 requests over the next second.
        storage
            .open_session(GroupId([1; 32]), DeviceId([2; 32]), 1, NewGroup::Unowned)
            .await
            .unwrap();
        let mut seen = Vec::new();
        for i in 0..1000 {
            let (app, path) = app(i);
            let (status, body, _) = get(app, path).await;
            assert_eq!(status, StatusCode::OK);
            if path == "/health" {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                seen.push(v["groups"].as_u64().unwrap());
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let calls = storage.stats_calls.load(SeqCst);
        assert!(
            calls <= 2,
            "{calls} database queries for 1,000 requests in 1 s"
        );
        // The figures are at most a second old: the new group shows up.
        tokio::time::advance(STATS_MAX_AGE).await;
        let (_, body, _) = get(main.clone(), "/health").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (v["groups"].as_u64(), v["devices"].as_u64()),
            (Some(1), Some(1))
        );
        assert_eq!(storage.stats_calls.load(SeqCst), calls + 1);
        assert!(
            seen.first() == Some(&0),
            "cached at first: {:?}",
            &seen[..3]
        );
    }

    #[tokio::test]
    async fn metrics_are_valid_openmetrics_without_ids_in_labels() {
        let (_d, ctx) = sqlite_ctx().await;
        ctx.metrics
            .pushes
            .get_or_create(&crate::metrics::ResultLabel { result: "ok" })
            .inc();
        ctx.metrics
            .error_sent(sync_protocol::ErrorCode::RateLimited);
        ctx.metrics.observe("push", std::time::Instant::now());
        let (status, body, ctype) = get(router(Arc::clone(&ctx), true), "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(ctype.as_deref(), Some(OPENMETRICS));
        let parsed = openmetrics_parser::openmetrics::parse_openmetrics(&body)
            .unwrap_or_else(|e| panic!("invalid OpenMetrics ({e:?}):\n{body}"));
        for name in [
            "sync_relay_sessions",
            "sync_relay_connections",
            "sync_relay_pushes",
            "sync_relay_push_bytes",
            "sync_relay_pulls",
            "sync_relay_blobs_delivered",
            "sync_relay_notifications_sent",
            "sync_relay_rate_limited",
            "sync_relay_quota_rejections",
            "sync_relay_cleanup_deleted",
            "sync_relay_storage_bytes",
            "sync_relay_storage_blobs",
            "sync_relay_groups",
            "sync_relay_devices",
            "sync_relay_owners",
            "sync_relay_errors",
            "sync_relay_request_duration_seconds",
            "sync_relay_build",
        ] {
            let family = parsed
                .families
                .get(name)
                .unwrap_or_else(|| panic!("no family {name}:\n{body}"));
            assert!(!family.help.is_empty(), "{name} has no help text");
        }
        // The heap figures, where the relay can read them (feature jemalloc).
        if crate::heap_metrics::read().is_some() {
            for name in [
                "sync_relay_heap_allocated_bytes",
                "sync_relay_heap_resident_bytes",
            ] {
                let family = parsed
                    .families
                    .get(name)
                    .unwrap_or_else(|| panic!("no family {name}:\n{body}"));
                assert!(!family.help.is_empty(), "{name} has no help text");
            }
            assert!(
                body.lines()
                    .any(|l| l.starts_with("sync_relay_heap_resident_bytes ")
                        && l.split(' ').nth(1).is_some_and(|v| v != "0")),
                "resident heap not refreshed at the scrape:\n{body}"
            );
        }
        // No label value is 64 hex characters (a group or device id).
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            assert!(!line.contains(&"05".repeat(32)), "{line}");
        }
        // A separate metrics router serves only /metrics.
        let (status, _, _) = get(metrics_router(Arc::clone(&ctx)), "/health").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _, _) = get(router(ctx, false), "/metrics").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    /// `/metrics` carries the cached storage figures: groups, device rows
    /// and owners, each from its own table.
    #[tokio::test]
    async fn metrics_show_groups_devices_and_owners() {
        use crate::storage::{AddressKey, NewGroup};
        let (_d, ctx) = sqlite_ctx().await;
        let owner = NewGroup::Address(AddressKey::of("192.0.2.1".parse().unwrap()));
        for (group, device) in [(1, 1), (1, 2), (2, 3)] {
            ctx.storage
                .open_session(GroupId([group; 32]), DeviceId([device; 32]), 0, owner)
                .await
                .unwrap();
        }
        let (_, body, _) = get(router(Arc::clone(&ctx), true), "/metrics").await;
        let value = |name: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name}:\n{body}"))
                .to_string()
        };
        assert_eq!(value("sync_relay_groups"), "2");
        assert_eq!(value("sync_relay_devices"), "3");
        assert_eq!(value("sync_relay_owners"), "1");
    }

    /// The pool metrics follow the backend: a working SQLite shows `db_up`
    /// 1 and its reader pool; a failing database shows `db_up` 0 and the
    /// backend's acquire timeouts, which stay the backend's count however
    /// often they are scraped.
    #[tokio::test]
    async fn metrics_show_the_database_and_its_pool() {
        let line = |body: &str, prefix: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix}:\n{body}"))
                .trim()
                .to_string()
        };
        let (_d, ctx) = sqlite_ctx().await;
        let (_, body, _) = get(router(Arc::clone(&ctx), true), "/metrics").await;
        assert_eq!(line(&body, "sync_relay_db_up{backend=\"sqlite\"}"), "1");
        assert_eq!(
            line(
                &body,
                "sync_relay_db_pool_max_connections{backend=\"sqlite\"}"
            ),
            "2"
        );
        let open: i64 = ["idle", "busy"]
            .iter()
            .map(|state| {
                line(
                    &body,
                    &format!(
                        "sync_relay_db_pool_connections{{backend=\"sqlite\",state=\"{state}\"}}"
                    ),
                )
                .parse::<i64>()
                .unwrap()
            })
            .sum();
        assert!(
            (1..=2).contains(&open),
            "{open} reader connections:\n{body}"
        );

        let ctx = RelayContext::new(
            &Config::default(),
            DeviceId([5; 32]),
            Arc::new(BrokenStorage),
        );
        for _ in 0..2 {
            let (_, body, _) = get(router(Arc::clone(&ctx), true), "/metrics").await;
            openmetrics_parser::openmetrics::parse_openmetrics(&body)
                .unwrap_or_else(|e| panic!("invalid OpenMetrics ({e:?}):\n{body}"));
            assert_eq!(line(&body, "sync_relay_db_up{backend=\"postgres\"}"), "0");
            assert_eq!(
                line(
                    &body,
                    "sync_relay_db_pool_acquire_timeouts_total{backend=\"postgres\"}"
                ),
                "3"
            );
            assert!(!body.contains("pool closed"), "{body}");
        }
    }
}
