//! Scenario 1b: push throughput of the relay on PostgreSQL (`[storage] url =
//! "postgres://…"`) against raw sqlx-postgres transactions into the same
//! schema ([`crate::postgres_baseline`]), same payloads, batching, devices,
//! groups and pool size, in the same run. Every measurement gets a fresh
//! database of its own on the server the URL names, dropped after it.

use super::push::{GROUP_SIZE, relay_run_on};
use crate::env::{Relay, Size};
use crate::postgres_baseline::{Workload, inserts};
use crate::stats::{Table, mb_per_s, ratio};
use anyhow::{Context, Result};
use std::time::Duration;
use sync_storage_postgres::testing::TestDatabase;

/// Connections in the relay's pool (its default `storage.max_connections`),
/// and so in the baseline's.
const POOL: u32 = 16;

/// A fresh database on `server`.
async fn fresh(server: &str) -> Result<TestDatabase> {
    TestDatabase::create_on(server)
        .await
        .with_context(|| format!("creating a database on {server}"))
}

/// Blobs per second of the raw baseline on a fresh database.
async fn baseline(server: &str, w: Workload) -> Result<f64> {
    let db = fresh(server).await?;
    let connect = db.options(sync_storage::Quotas::UNLIMITED).connect;
    let (n, t) = inserts(connect, w).await?;
    drop(db);
    Ok(n as f64 / t.as_secs_f64().max(1e-9))
}

/// Run the grid on the PostgreSQL server `server` (a URL whose database is
/// only where `CREATE DATABASE` runs); one table row per configuration.
pub async fn run(size: Size, server: &str) -> Result<Table> {
    let time = size.pick(Duration::from_secs(3), Duration::from_millis(200));
    let volume_cap: u64 = size.pick(384 << 20, 4 << 20);
    let mut table = Table::new(
        "Push throughput on PostgreSQL (acknowledged blobs/s)",
        &[
            "blob",
            "devices",
            "batch",
            "relay blobs/s",
            "relay MB/s",
            "raw sqlx-pg blobs/s",
            "raw + relay-wide counter blobs/s",
            "relay ÷ raw sqlx-pg",
        ],
    );
    for payload in [1024usize, 64 * 1024] {
        for devices in size.pick(vec![1usize, 16, 64], vec![1, 4]) {
            for batch in [1usize, 64] {
                let cap = (volume_cap / payload as u64).max(batch as u64 * devices as u64);
                let what = format!("{payload} B × {devices} devices × batch {batch}");
                let db = fresh(server).await?;
                let relay = Relay::start_on_postgres(4 << 20, &db.url())?;
                let run = relay_run_on(&relay, payload, devices, batch, time, cap)
                    .await
                    .with_context(|| format!("relay on PostgreSQL, {what}"))?;
                drop(relay);
                drop(db);
                let w = Workload {
                    payload,
                    devices,
                    group_size: GROUP_SIZE,
                    batch,
                    time,
                    cap,
                    pool: POOL,
                    relay_counter: false,
                };
                let raw = baseline(server, w)
                    .await
                    .with_context(|| format!("raw sqlx-pg, {what}"))?;
                let counted = baseline(
                    server,
                    Workload {
                        relay_counter: true,
                        ..w
                    },
                )
                .await?;
                table.row(vec![
                    format!("{} KiB", payload / 1024),
                    devices.to_string(),
                    batch.to_string(),
                    format!("{:.0}", run.rate()),
                    format!("{:.1}", mb_per_s(run.blobs * payload as u64, run.elapsed)),
                    format!("{raw:.0}"),
                    format!("{counted:.0}"),
                    ratio(run.rate(), raw),
                ]);
            }
        }
    }
    table.note(format!(
        "Each row: a fresh database and relay process (storage.url = postgres://…, pool of {POOL}); devices in groups of {GROUP_SIZE}, each its own QUIC connection, pushing batches back to back for the measured time (or a volume cap). Raw sqlx-pg: the same devices, groups, batches and pool as concurrent transactions into the relay's schema on a fresh database (group row UPDATE … RETURNING, one UNNEST insert, commit), no network; \"+ relay-wide counter\" also updates the one relay_state row per transaction, as the relay did for limits.max_storage before quota shares (docs/deploy.md \"Quota shares\"). Target: relay ≥ 0.5 × raw sqlx-pg."
    ));
    Ok(table)
}
