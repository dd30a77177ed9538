//! The bounded load generator (issue: proof under faults): D devices in G
//! groups push and pull for a fixed time, each at most `rate` operations a
//! second; reports throughput, latency percentiles, errors and relay memory.
//! Small in CI (`--tiny`), full size in the benchmarks.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, blob_id, random};
use crate::stats::{Latency, Table, ms};
use anyhow::Result;
use futures::future::join_all;
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, RelaySession};
use sync_protocol::PushItem;

/// Load parameters.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Devices (connections).
    pub devices: usize,
    /// Groups they are spread over.
    pub groups: usize,
    /// How long to run.
    pub duration: Duration,
    /// Most operations per second per device.
    pub rate: u32,
}

impl Load {
    /// 200 devices in 20 groups for 30 s at 20 ops/s each; tiny: 20 in 4 for 3 s.
    pub fn for_size(size: Size) -> Load {
        Load {
            devices: size.pick(200, 20),
            groups: size.pick(20, 4),
            duration: size.pick(Duration::from_secs(30), Duration::from_secs(3)),
            rate: 20,
        }
    }
}

#[derive(Default)]
struct DeviceReport {
    push: Vec<Duration>,
    pull: Vec<Duration>,
    errors: Vec<String>,
    pulled_blobs: u64,
}

/// Run the load and return its report table (panics on nothing: errors are counted).
pub async fn run(load: Load) -> Result<Table> {
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    let groups: Vec<_> = (0..load.groups)
        .map(|_| GroupSecret::generate().keys())
        .collect();
    let mut opts = Vec::new();
    for d in 0..load.devices {
        opts.push(relay.device(&groups[d % load.groups])?);
    }
    let sessions: Vec<_> = join_all(opts.iter().map(RelaySession::connect)).await;
    let started = Instant::now();
    let deadline = started + load.duration;
    let interval = Duration::from_secs_f64(1.0 / f64::from(load.rate.max(1)));
    let body = random(1024);
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let pid = relay.pid();
    let sampler = {
        let peak = std::sync::Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                let (rss, _) = crate::env::proc_memory(pid);
                peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let reports = join_all(sessions.into_iter().enumerate().map(|(d, s)| {
        let body = body.clone();
        async move {
            let mut r = DeviceReport::default();
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    r.errors.push(format!("connect: {e}"));
                    return r;
                }
            };
            let mut cursor = 0;
            let mut k = 0u64;
            let mut next = Instant::now();
            while Instant::now() < deadline {
                let t = Instant::now();
                if k % 4 == 3 {
                    match s.pull(cursor, 1000).await {
                        Ok(mut resp) => {
                            loop {
                                match resp.next_batch().await {
                                    Ok(Some(b)) => {
                                        r.pulled_blobs += b.blobs.len() as u64;
                                        if let Some(last) = b.blobs.last() {
                                            cursor = last.cursor;
                                        }
                                    }
                                    Ok(None) => break,
                                    Err(e) => {
                                        r.errors.push(format!("pull: {e}"));
                                        break;
                                    }
                                }
                            }
                            r.pull.push(t.elapsed());
                        }
                        Err(e) => r.errors.push(format!("pull: {e}")),
                    }
                } else {
                    let item = PushItem {
                        blob_id: blob_id(d as u32, k),
                        payload: body.clone(),
                        ttl_s: None,
                    };
                    match s.push(vec![item]).await {
                        Ok(_) => r.push.push(t.elapsed()),
                        Err(e) => r.errors.push(format!("push: {e}")),
                    }
                }
                k += 1;
                next += interval;
                tokio::time::sleep_until(next.into()).await;
            }
            s.close().await;
            r
        }
    }))
    .await;
    let elapsed = started.elapsed();
    sampler.abort();
    let (rss_end, hwm) = relay.memory_kib();
    let mut push = Vec::new();
    let mut pull = Vec::new();
    let mut errors = Vec::new();
    let mut pulled = 0;
    for r in reports {
        push.extend(r.push);
        pull.extend(r.pull);
        errors.extend(r.errors);
        pulled += r.pulled_blobs;
    }
    let ops = push.len() + pull.len();
    let (pu, pl) = (Latency::of(push), Latency::of(pull));
    let mut table = Table::new(
        &format!(
            "Load: {} devices in {} groups for {:.0} s (≤ {} ops/s each)",
            load.devices,
            load.groups,
            load.duration.as_secs_f64(),
            load.rate
        ),
        &[
            "ops/s",
            "pushes",
            "push p50 ms",
            "push p99 ms",
            "push max ms",
            "pulls",
            "pull p50 ms",
            "pull p99 ms",
            "blobs pulled",
            "errors",
            "relay RSS peak MiB",
        ],
    );
    table.row(vec![
        format!("{:.0}", ops as f64 / elapsed.as_secs_f64()),
        pu.n.to_string(),
        ms(pu.p50),
        ms(pu.p99),
        ms(pu.max),
        pl.n.to_string(),
        ms(pl.p50),
        ms(pl.p99),
        pulled.to_string(),
        errors.len().to_string(),
        format!(
            "{:.1}",
            peak.load(std::sync::atomic::Ordering::Relaxed).max(rss_end) as f64 / 1024.0
        ),
    ]);
    if let Some(e) = errors.first() {
        table.note(format!("first error: {e}"));
    }
    table.note(format!(
        "Relay VmHWM over the whole run: {:.1} MiB.",
        hwm as f64 / 1024.0
    ));
    Ok(table)
}
