//! The cleanup task (docs/protocol.md and docs/deploy.md): on every `cleanup.interval_s` it deletes
//! expired blobs — and, with `cleanup.delete_acked`, blobs every recently
//! seen device of their group has acknowledged — then prunes devices not
//! seen for `cleanup.idle_group_days` (never one with a live session, but
//! also from groups that stay) and the groups they leave empty
//! ([`crate::storage::Storage::prune_idle`]: no blob, no device, not active
//! since; never a group with a live session), all in batches of
//! `cleanup.batch_size`, each its own short write transaction, so pushes are
//! never held up behind one long delete. Counters stay exact (the storage
//! subtracts what each batch deleted). Every `maintenance_interval_s` it
//! checkpoints the WAL (TRUNCATE) and runs `PRAGMA optimize`.
//!
//! Pruning keeps the `groups` and `devices` tables bounded by what is in use:
//! a stranger's thousand throwaway groups (one `Hello` each) are gone after
//! the idle window. A pruned group gives its place back to its owner (a token
//! may create another), and owner rows left with nothing go too. A pruned
//! group that comes back is a new group to admission (in token mode it needs
//! a token again) and starts at the relay's head floor (at least its old
//! head), so devices' saved cursors stay valid.

use crate::config::CleanupConfig;
use crate::context::{RelayContext, now_ms};
use crate::storage::{Deleted, LiveGroups, Pruned, StorageError};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

/// What one cleanup run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Expired blobs deleted.
    pub expired: Deleted,
    /// Acknowledged blobs deleted.
    pub acked: Deleted,
    /// Idle devices, groups and owner rows pruned.
    pub pruned: Pruned,
    /// Write transactions used.
    pub batches: u32,
}

/// Milliseconds a device or group must be idle before it is pruned:
/// `idle_group_days`, and with `delete_acked` at least
/// `acked_device_window_days` (a device that still holds blobs back is kept).
pub fn idle_window_ms(cfg: &CleanupConfig) -> i64 {
    let days = if cfg.delete_acked {
        cfg.idle_group_days.max(cfg.acked_device_window_days)
    } else {
        cfg.idle_group_days
    };
    i64::from(days) * 86_400_000
}

/// Run one cleanup pass now.
pub async fn run_once(
    ctx: &RelayContext,
    cfg: &CleanupConfig,
) -> Result<CleanupReport, StorageError> {
    let mut report = CleanupReport::default();
    let now = now_ms();
    loop {
        let d = ctx.storage.delete_expired(now, cfg.batch_size).await?;
        report.batches += 1;
        add(&mut report.expired, d);
        ctx.metrics.cleanup_deleted.inc_by(d.blobs);
        if d.blobs < u64::from(cfg.batch_size) {
            break;
        }
        tokio::task::yield_now().await;
    }
    if cfg.delete_acked {
        let window = i64::from(cfg.acked_device_window_days) * 86_400_000;
        loop {
            let d = ctx
                .storage
                .delete_acked(now.saturating_sub(window), cfg.batch_size)
                .await?;
            report.batches += 1;
            add(&mut report.acked, d);
            ctx.metrics.cleanup_deleted.inc_by(d.blobs);
            if d.blobs < u64::from(cfg.batch_size) {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    // The cutoff is taken before the live groups are asked for (inside each
    // prune's transaction): a session that subscribed after that answer
    // opens its group after the prune, re-creating it at the head floor
    // (through admission, like any new group). A session stays subscribed
    // until it ends, so its group is never pruned under it.
    let idle_before = now.saturating_sub(idle_window_ms(cfg));
    let notify = Arc::clone(&ctx.notify);
    let live: LiveGroups = Arc::new(move || notify.live_sessions());
    loop {
        let p = ctx
            .storage
            .prune_idle(idle_before, cfg.batch_size, Arc::clone(&live))
            .await?;
        report.batches += 1;
        report.pruned.groups += p.groups;
        report.pruned.devices += p.devices;
        report.pruned.owners += p.owners;
        let full = u64::from(cfg.batch_size);
        if p.groups < full && p.devices < full && p.owners < full {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(report)
}

fn add(total: &mut Deleted, d: Deleted) {
    total.blobs += d.blobs;
    total.bytes += d.bytes;
}

/// Run cleanup and maintenance on their intervals until shutdown.
pub async fn run(ctx: Arc<RelayContext>, cfg: CleanupConfig) {
    let mut cleanup = tokio::time::interval(Duration::from_secs(u64::from(cfg.interval_s)));
    cleanup.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let maintenance_every = Duration::from_secs(u64::from(cfg.maintenance_interval_s));
    let mut next_maintenance = Instant::now() + maintenance_every;
    loop {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = cleanup.tick() => {}
        }
        match run_once(&ctx, &cfg).await {
            Ok(r) => {
                if r.expired.blobs + r.acked.blobs > 0 {
                    info!(
                        expired_blobs = r.expired.blobs,
                        expired_bytes = r.expired.bytes,
                        acked_blobs = r.acked.blobs,
                        acked_bytes = r.acked.bytes,
                        transactions = r.batches,
                        "cleanup deleted blobs"
                    );
                }
                if r.pruned.groups + r.pruned.devices + r.pruned.owners > 0 {
                    info!(
                        groups = r.pruned.groups,
                        devices = r.pruned.devices,
                        owners = r.pruned.owners,
                        transactions = r.batches,
                        "cleanup pruned idle devices and groups"
                    );
                }
            }
            Err(StorageError::Closed) => return,
            Err(err) => warn!(error = %err, "cleanup failed"),
        }
        if Instant::now() >= next_maintenance {
            next_maintenance = Instant::now() + maintenance_every;
            let started = Instant::now();
            match ctx.storage.maintenance().await {
                Ok(()) => info!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "WAL checkpoint and optimize done"
                ),
                Err(StorageError::Closed) => return,
                Err(err) => warn!(error = %err, "database maintenance failed"),
            }
        }
    }
}

#[cfg(test)]
#[path = "cleanup_batches_test.rs"]
mod batches_test;
