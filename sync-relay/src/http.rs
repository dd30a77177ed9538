//! HTTP endpoints (DESIGN §5.7) over axum. `GET /health` runs a real database
//! query: 200 `{"status":"ok",…}` when it answers, 503 with
//! `"status":"degraded"` when it fails or `"stopping"` during shutdown.

use crate::context::RelayContext;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

/// How long `/health` waits for the database.
const DB_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Groups stored.
    pub groups: u64,
    /// Payload bytes stored.
    pub storage_bytes: u64,
    /// `ok`, or the database error.
    pub db: String,
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
    if let Ok(Ok(stats)) = tokio::time::timeout(DB_CHECK_TIMEOUT, ctx.storage.stats()).await {
        ctx.metrics.storage_bytes.set(stats.bytes as i64);
        ctx.metrics.storage_blobs.set(stats.blobs as i64);
        ctx.metrics.groups.set(stats.groups as i64);
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], ctx.metrics.encode())
}

async fn health(State(ctx): State<Arc<RelayContext>>) -> (StatusCode, Json<Health>) {
    let stats = tokio::time::timeout(DB_CHECK_TIMEOUT, ctx.storage.stats()).await;
    let (db, stats) = match stats {
        Ok(Ok(stats)) => ("ok".to_string(), stats),
        Ok(Err(err)) => (err.to_string(), Default::default()),
        Err(_) => (
            "database did not answer within 2 s".to_string(),
            Default::default(),
        ),
    };
    let status = if ctx.shutdown.is_cancelled() {
        "stopping"
    } else if db != "ok" {
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
            storage_bytes: stats.bytes,
            db,
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
        StorageError::Database(sqlx::Error::PoolClosed)
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
        async fn stats(&self) -> Result<StorageStats, StorageError> {
            Err(broken())
        }
        async fn delete_expired(&self, _: i64, _: u32) -> Result<Deleted, StorageError> {
            Err(broken())
        }
        async fn delete_acked(&self, _: i64, _: u32) -> Result<Deleted, StorageError> {
            Err(broken())
        }
        async fn maintenance(&self) -> Result<(), StorageError> {
            Err(broken())
        }
        async fn audit(&self) -> Result<CounterAudit, StorageError> {
            Err(broken())
        }
        async fn close(&self) {}
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
        assert_eq!(v["node_id"], "05".repeat(32));
        for key in ["version", "uptime_s", "sessions", "groups", "storage_bytes"] {
            assert!(v.get(key).is_some(), "missing {key}: {body}");
        }
    }

    #[tokio::test]
    async fn health_is_503_degraded_when_the_database_fails() {
        let ctx = RelayContext::new(
            &Config::default(),
            DeviceId([5; 32]),
            Arc::new(BrokenStorage),
        );
        let (status, body, _) = get(router(Arc::clone(&ctx), true), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "degraded");
        assert_ne!(v["db"], "ok");
        ctx.shutdown.cancel();
        let (status, body, _) = get(router(ctx, true), "/health").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("\"stopping\""));
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
}
