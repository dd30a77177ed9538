//! Scenario 1: push throughput of the relay against (a) raw iroh
//! request/response and (b) raw sqlx inserts, same payloads, batching and
//! concurrency.

use crate::env::{Relay, Size, blob_id, random};
use crate::raw::{EchoServer, request};
use crate::sqlite_baseline::inserts;
use crate::stats::{Table, mb_per_s, ratio};
use anyhow::Result;
use futures::future::try_join_all;
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, RelaySession};
use sync_protocol::PushItem;

/// Devices per group.
pub(crate) const GROUP_SIZE: usize = 8;

/// What a push run acknowledged, and in how long.
pub(crate) struct Run {
    /// Blobs acknowledged.
    pub blobs: u64,
    /// Time from the first push to the last answer.
    pub elapsed: Duration,
}

impl Run {
    /// Acknowledged blobs per second.
    pub fn rate(&self) -> f64 {
        self.blobs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn relay_run(
    size: usize,
    devices: usize,
    batch: usize,
    time: Duration,
    cap: u64,
) -> Result<Run> {
    let relay = Relay::start(4 << 20)?;
    relay_run_on(&relay, size, devices, batch, time, cap).await
}

/// `devices` devices (in groups of [`GROUP_SIZE`], each on its own QUIC
/// connection) push batches of `batch` blobs of `size` bytes to `relay`
/// back to back, for `time` or until `cap` blobs in all.
pub(crate) async fn relay_run_on(
    relay: &Relay,
    size: usize,
    devices: usize,
    batch: usize,
    time: Duration,
    cap: u64,
) -> Result<Run> {
    let groups: Vec<_> = (0..devices.div_ceil(GROUP_SIZE))
        .map(|_| GroupSecret::generate().keys())
        .collect();
    let sessions = try_join_all((0..devices).map(|d| {
        let opts = relay.device(&groups[d / GROUP_SIZE]);
        async move {
            RelaySession::connect(&opts?)
                .await
                .map_err(anyhow::Error::from)
        }
    }))
    .await?;
    let per_device_cap = (cap / devices as u64).max(batch as u64);
    let started = Instant::now();
    let deadline = started + time;
    let counts = try_join_all(sessions.iter().enumerate().map(|(d, s)| async move {
        let body = random(size);
        let mut n = 0u64;
        while Instant::now() < deadline && n < per_device_cap {
            let items = (0..batch)
                .map(|i| PushItem {
                    blob_id: blob_id(d as u32, n + i as u64),
                    payload: body.clone(),
                    ttl_s: None,
                })
                .collect();
            s.push(items).await?;
            n += batch as u64;
        }
        anyhow::Ok(n)
    }))
    .await?;
    let elapsed = started.elapsed();
    for s in &sessions {
        s.close().await;
    }
    Ok(Run {
        blobs: counts.iter().sum(),
        elapsed,
    })
}

async fn raw_run(
    size: usize,
    devices: usize,
    batch: usize,
    time: Duration,
    cap: u64,
) -> Result<Run> {
    let server = EchoServer::start().await?;
    let conns = try_join_all((0..devices).map(|_| server.connect())).await?;
    let per_device_cap = (cap / devices as u64).max(batch as u64);
    let started = Instant::now();
    let deadline = started + time;
    let counts = try_join_all(conns.iter().map(|(_, conn)| async move {
        let body = random(size * batch);
        let mut n = 0u64;
        while Instant::now() < deadline && n < per_device_cap {
            request(conn, &body).await?;
            n += batch as u64;
        }
        anyhow::Ok(n)
    }))
    .await?;
    let elapsed = started.elapsed();
    for (ep, _) in conns {
        ep.close().await;
    }
    server.close().await;
    Ok(Run {
        blobs: counts.iter().sum(),
        elapsed,
    })
}

/// Run the grid; one table row per configuration.
pub async fn run(size: Size) -> Result<Table> {
    let time = size.pick(Duration::from_secs(3), Duration::from_millis(200));
    let volume_cap: u64 = size.pick(384 << 20, 4 << 20);
    let mut table = Table::new(
        "Push throughput (acknowledged blobs/s)",
        &[
            "blob",
            "devices",
            "batch",
            "relay blobs/s",
            "relay MB/s",
            "raw iroh blobs/s",
            "raw sqlx blobs/s",
            "relay ÷ slower baseline",
        ],
    );
    for payload in [1024usize, 64 * 1024] {
        for devices in size.pick(vec![1usize, 16, 64], vec![1, 4]) {
            for batch in [1usize, 64] {
                let cap = (volume_cap / payload as u64).max(batch as u64 * devices as u64);
                let relay = relay_run(payload, devices, batch, time, cap).await?;
                let raw = raw_run(payload, devices, batch, time, cap).await?;
                let sqlx_blobs = (relay.blobs as usize).clamp(batch, size.pick(50_000, 2_000));
                let (n, t) = inserts(payload, batch, sqlx_blobs).await?;
                let sqlx_rate = n as f64 / t.as_secs_f64();
                let slower = raw.rate().min(sqlx_rate);
                table.row(vec![
                    format!("{} KiB", payload / 1024),
                    devices.to_string(),
                    batch.to_string(),
                    format!("{:.0}", relay.rate()),
                    format!(
                        "{:.1}",
                        mb_per_s(relay.blobs * payload as u64, relay.elapsed)
                    ),
                    format!("{:.0}", raw.rate()),
                    format!("{:.0}", sqlx_rate),
                    ratio(relay.rate(), slower),
                ]);
            }
        }
    }
    table.note("Each row: a fresh relay process; devices in groups of 8, each its own QUIC connection, pushing batches back to back for the measured time (or a volume cap). Raw iroh: the same request sizes on a bi stream per request, no storage. Raw sqlx: one transaction per batch into the same schema with the same pragmas, no network.");
    Ok(table)
}
