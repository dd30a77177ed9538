//! HTTP endpoints (DESIGN §5.7) over axum. `GET /health` runs a real database
//! query: 200 `{"status":"ok",…}` when it answers, 503 with
//! `"status":"degraded"` when it fails or `"stopping"` during shutdown.

use crate::context::RelayContext;
use axum::extract::State;
use axum::http::StatusCode;
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
}

/// The HTTP router.
pub fn router(ctx: Arc<RelayContext>) -> Router {
    Router::new().route("/health", get(health)).with_state(ctx)
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
        }),
    )
}
