//! Scenario 4: idle sessions. Open as many authenticated sessions as
//! possible, up to 10,000, across client endpoints of 100 sessions each and
//! groups of 200; relay memory per session and the time to accept them.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size};
use crate::stats::Table;
use anyhow::Result;
use futures::future::join_all;
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, RelaySession};

/// Run the scenario.
pub async fn run(size: Size) -> Result<Table> {
    let target = size.pick(10_000usize, 50);
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_before, _) = relay.memory_kib();
    let groups: Vec<_> = (0..target.div_ceil(200))
        .map(|_| GroupSecret::generate().keys())
        .collect();
    let started = Instant::now();
    let mut endpoints = Vec::new();
    let mut open = Vec::new();
    let mut failed = 0usize;
    for chunk in 0..target.div_ceil(100) {
        let keys = &groups[chunk * 100 / 200];
        let opts = relay.device(keys)?;
        let ep = sync_client::endpoint::bind(iroh::SecretKey::generate(), relay.quic).await?;
        let count = (target - chunk * 100).min(100);
        for r in join_all((0..count).map(|_| RelaySession::connect_on(&ep, &opts))).await {
            match r {
                Ok(s) => open.push(s),
                Err(_) => failed += 1,
            }
        }
        endpoints.push(ep);
    }
    let accept = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after, hwm) = relay.memory_kib();
    let per_session = (rss_after.saturating_sub(rss_before)) as f64 / open.len().max(1) as f64;
    let mut table = Table::new(
        "Idle sessions",
        &[
            "sessions open",
            "failed",
            "accept time s",
            "sessions/s",
            "relay RSS before MiB",
            "relay RSS after MiB",
            "per session KiB",
            "relay peak MiB",
        ],
    );
    table.row(vec![
        open.len().to_string(),
        failed.to_string(),
        format!("{:.2}", accept.as_secs_f64()),
        format!("{:.0}", open.len() as f64 / accept.as_secs_f64()),
        format!("{:.1}", rss_before as f64 / 1024.0),
        format!("{:.1}", rss_after as f64 / 1024.0),
        format!("{per_session:.1}"),
        format!("{:.1}", hwm as f64 / 1024.0),
    ]);
    table.note("Target: 10,000 idle sessions under 1 GiB relay RSS. Sessions are opened 100 at a time per client endpoint (one UDP socket), in groups of 200.");
    for s in &open {
        s.close().await;
    }
    for ep in endpoints {
        ep.close().await;
    }
    Ok(table)
}
