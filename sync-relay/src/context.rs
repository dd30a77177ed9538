//! State shared by every session and the HTTP server.

use crate::config::LimitsConfig;
use crate::notify::NotifyHub;
use crate::storage::Storage;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use sync_protocol::limits::max_frame_for_blob_size;
use sync_protocol::{DeviceId, PROTOCOL_VERSION, Welcome};
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
    /// Cancelled when the relay begins shutting down.
    pub shutdown: CancellationToken,
    /// When the relay started.
    pub started: Instant,
    sessions: AtomicU64,
}

impl RelayContext {
    /// A context with no live sessions.
    pub fn new(limits: LimitsConfig, relay_id: DeviceId, storage: Arc<dyn Storage>) -> Arc<Self> {
        Arc::new(RelayContext {
            limits,
            relay_id,
            storage,
            notify: NotifyHub::new(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
            sessions: AtomicU64::new(0),
        })
    }

    /// Largest frame body (bytes) read or written in an active session.
    pub fn max_frame(&self) -> u32 {
        max_frame_for_blob_size(self.limits.max_blob_size)
    }

    /// The `Welcome` for a session on a group whose head is `head`.
    pub fn welcome(&self, head: u64) -> Welcome {
        Welcome {
            version: PROTOCOL_VERSION,
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
        self.sessions.load(Ordering::Relaxed)
    }

    /// Count a session as live until the guard drops.
    pub fn session_guard(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::Relaxed);
        SessionGuard(Arc::clone(self))
    }
}

/// Decrements the live-session count on drop.
pub struct SessionGuard(Arc<RelayContext>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Now as Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
