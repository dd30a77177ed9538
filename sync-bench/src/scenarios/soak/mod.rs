//! The soak (issue 10; docs/testing.md "Load and benchmarks"): honest
//! load plus churn against one relay process for a long time — 10 minutes
//! at full size — with the relay's RSS, open file descriptors, live
//! sessions and table sizes sampled every 10 s, and the verdict "flat
//! after warm-up": every series' floor (its lowest sample in a minute)
//! grows less than 10 % from the first minute after warm-up to the last
//! minute of the run. The table sizes are phase-aligned with the relay's
//! cleanup: each sample's are the lowest of six readings spread over one
//! cleanup period, i.e. the level right after a pass ([`sample::Tables::floor`]
//! says why), so a rising level is rows the cleanup does not remove.
//!
//! The relay runs in the default access mode (**token**): new groups need
//! the operator's token, joining devices none. Open mode is not soaked
//! because its per-address owner rows are kept for the hour of their
//! new-group window by design, so over 10 minutes they grow with the
//! addresses seen — bounded, but not flat on this time scale.
//!
//! Its config is the embedded default except what makes ten minutes show
//! what thirty days would: blobs live `ttl_s` (30 s), the cleanup runs every
//! 5 s and prunes idle devices and empty groups at once
//! (`idle_group_days = 0`), and a write deadline of 10 s plus 64 KiB/s
//! (`request_timeout_s`, `min_transfer_rate`) so never-reading pullers are
//! cut off and come back every ~14 s. Rate limits are the defaults: the
//! churning clients dial from many loopback addresses.

mod sample;
mod workload;

use crate::env::{Relay, Size};
use crate::stats::{Latency, Table, ms};
use anyhow::{Context, Result};
use futures::future::join_all;
use iroh::SecretKey;
use sample::{SERIES, Sample, Sampler};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_client::{GroupKeys, GroupSecret, RelaySession};
use sync_protocol::PushItem;
use tokio::time::Instant;
use workload::World;

/// Soak parameters.
#[derive(Debug, Clone, Copy)]
pub struct Soak {
    /// How long the load runs.
    pub duration: Duration,
    /// Time between samples.
    pub sample_every: Duration,
    /// Samples before this are warm-up (not judged).
    pub warm_up: Duration,
    /// Width of the windows whose floors are compared.
    pub window: Duration,
    /// Long-lived groups of the steady devices.
    pub groups: usize,
    /// Steady devices.
    pub devices: usize,
    /// Most operations per second per steady device.
    pub rate: u32,
    /// Session churn workers (about 4 sessions a second each).
    pub session_churn: usize,
    /// Group churn workers (about 1 group a second each).
    pub group_churn: usize,
    /// Never-reading pullers.
    pub pullers: usize,
    /// TTL of honest blobs, seconds.
    pub ttl_s: u32,
    /// Relay `cleanup.interval_s`.
    pub cleanup_s: u32,
    /// Relay `limits.request_timeout_s`.
    pub request_timeout_s: u32,
    /// Whether "not flat" is an error (a tiny run is too short to judge).
    pub judge: bool,
}

impl Soak {
    /// Full: 10 minutes, samples every 10 s, 2 minutes of warm-up, 1-minute
    /// windows; 32 steady devices in 8 groups at 10 ops/s, 8 session churn
    /// and 4 group churn workers, 4 pullers. Tiny (CI): 16 s, samples every
    /// second, not judged.
    pub fn for_size(size: Size) -> Soak {
        Soak {
            duration: size.pick(Duration::from_secs(600), Duration::from_secs(16)),
            sample_every: size.pick(Duration::from_secs(10), Duration::from_secs(1)),
            warm_up: size.pick(Duration::from_secs(120), Duration::from_secs(4)),
            window: size.pick(Duration::from_secs(60), Duration::from_secs(4)),
            groups: size.pick(8, 2),
            devices: size.pick(32, 4),
            rate: 10,
            session_churn: size.pick(8, 2),
            group_churn: size.pick(4, 1),
            pullers: size.pick(4, 1),
            ttl_s: size.pick(30, 3),
            cleanup_s: size.pick(5, 1),
            request_timeout_s: size.pick(10, 3),
            judge: !size.tiny,
        }
    }

    fn relay_config(&self) -> String {
        format!(
            "[limits]\nrequest_timeout_s = {}\nmin_transfer_rate = 65536\n\
             [cleanup]\ninterval_s = {}\nidle_group_days = 0\n\
             [log]\nlevel = \"warn,sync_relay::server=info\"\n",
            self.request_timeout_s, self.cleanup_s
        )
    }
}

/// The soak's tables, and what went wrong (empty when the relay stayed
/// flat and no honest client saw an error).
pub struct SoakReport {
    /// Summary, samples, workload.
    pub tables: Vec<Table>,
    /// Each failed check, in words.
    pub problems: Vec<String>,
}

/// Request streams a never-reading puller opens: the relay's default
/// `limits.max_requests_in_flight`.
const PULLER_STREAMS: usize = 16;

/// Run the soak.
pub async fn run(soak: Soak) -> Result<SoakReport> {
    let relay = Relay::start_with(&soak.relay_config())?;
    let token = relay.create_token(1_000_000)?;
    let relay_addr: sync_client::RelayAddr = relay.address.parse()?;
    let groups: Vec<GroupKeys> = (0..soak.groups)
        .map(|_| GroupSecret::generate().keys())
        .collect();
    let pulled_group = GroupSecret::generate().keys();
    seed_pulled_group(&relay, &pulled_group, token).await?;

    let started = Instant::now();
    let world = Arc::new(World {
        relay: relay_addr,
        quic: relay.quic,
        token,
        deadline: started + soak.duration,
        ttl_s: soak.ttl_s,
        report: Mutex::new(workload::Report::default()),
    });
    let groups = Arc::new(groups);
    let mut tasks = Vec::new();
    let mut ready = Vec::new();
    for d in 0..soak.devices {
        let keys = groups[d % groups.len()].clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        ready.push(rx);
        tasks.push(tokio::spawn(workload::steady(
            Arc::clone(&world),
            keys,
            d,
            soak.rate,
            tx,
        )));
    }
    // The steady devices create their groups before anyone joins them.
    for rx in ready {
        rx.await.context("a steady device never connected")?;
    }
    for w in 0..soak.session_churn {
        tasks.push(tokio::spawn(workload::session_churn(
            Arc::clone(&world),
            Arc::clone(&groups),
            w,
        )));
    }
    for w in 0..soak.group_churn {
        tasks.push(tokio::spawn(workload::group_churn(Arc::clone(&world), w)));
    }
    for w in 0..soak.pullers {
        tasks.push(tokio::spawn(workload::puller(
            Arc::clone(&world),
            pulled_group.clone(),
            w,
            PULLER_STREAMS,
        )));
    }

    let mut sampler = Sampler::new(relay.pid(), relay.http, &relay.db_path()).await?;
    let mut samples = Vec::new();
    let cleanup = Duration::from_secs(u64::from(soak.cleanup_s));
    // A sample's table readings span a cleanup period and a step: the last
    // sample ends before the load stops (readings of a relay left idle
    // would flatter the end window).
    let span = cleanup + cleanup / (sample::TABLE_READS as u32 - 1);
    let mut next = started;
    while next + span <= world.deadline {
        tokio::time::sleep_until(next).await;
        let s = sampler.sample(started.elapsed(), cleanup).await?;
        eprintln!(
            "soak {:>4.0} s: RSS {:.1} MiB, {} fds, {} sessions, {} groups, {} devices, {} blobs",
            s.t.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.sessions,
            s.groups,
            s.devices,
            s.blobs
        );
        samples.push(s);
        next += soak.sample_every;
    }
    join_all(tasks).await;
    let report = std::mem::take(&mut *world.report.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(tables(&soak, &samples, &report))
}

/// One 256 KiB-blob group for the pullers: four blobs that outlive the run.
async fn seed_pulled_group(
    relay: &Relay,
    keys: &GroupKeys,
    token: sync_protocol::AccessToken,
) -> Result<()> {
    let ep = workload::endpoint(Ipv4Addr::new(127, 0, 0, 1), SecretKey::generate(), None).await?;
    let mut opts = relay.device(keys)?;
    opts.access_token = Some(token);
    let s = RelaySession::connect_on(&ep, &opts)
        .await
        .context("creating the pullers' group")?
        .owning(ep);
    let items = (0..4)
        .map(|n| PushItem {
            blob_id: crate::env::blob_id(3 << 20, n),
            payload: crate::env::random(256 << 10),
            ttl_s: Some(86_400),
        })
        .collect();
    s.push(items).await.context("seeding the pullers' group")?;
    s.close().await;
    Ok(())
}

fn tables(soak: &Soak, samples: &[Sample], r: &workload::Report) -> SoakReport {
    let mut problems = Vec::new();
    let title = format!(
        "Soak: {:.0} s of load and churn, sampled every {:.0} s",
        soak.duration.as_secs_f64(),
        soak.sample_every.as_secs_f64()
    );
    let mut summary = Table::new(
        &title,
        &[
            "series",
            "floor after warm-up",
            "floor at end",
            "mean after warm-up",
            "mean at end",
            "peak after warm-up",
            "floor growth %",
            "flat",
        ],
    );
    match sample::growth(samples, soak.warm_up, soak.window) {
        Some(growth) => {
            for g in &growth {
                summary.row(vec![
                    g.name.to_string(),
                    format!("{:.1}", g.after_warm_up),
                    format!("{:.1}", g.end),
                    format!("{:.1}", g.mean_after_warm_up),
                    format!("{:.1}", g.mean_end),
                    format!("{:.1}", g.peak),
                    format!("{:+.1}", g.growth * 100.0),
                    if g.flat() { "yes" } else { "**no**" }.into(),
                ]);
            }
            let grown: Vec<&str> = growth
                .iter()
                .filter(|g| !g.flat())
                .map(|g| g.name)
                .collect();
            if grown.is_empty() {
                summary.note(format!(
                    "Verdict: flat after warm-up (growth < {:.0} %).",
                    sample::MAX_GROWTH * 100.0
                ));
            } else {
                let v = format!(
                    "Verdict: NOT flat after warm-up: {} grew by {:.0} % or more.",
                    grown.join(", "),
                    sample::MAX_GROWTH * 100.0
                );
                summary.note(v.clone());
                if soak.judge {
                    problems.push(v);
                }
            }
        }
        None => summary.note("Verdict: run too short to judge flatness."),
    }
    summary.note(format!(
        "Warm-up: the first {:.0} s. \"after warm-up\": the samples in the {:.0} s after it; \
         \"end\": those of the last {:.0} s. Judged: the floor (lowest sample) of each window. \
         Table sizes are phase-aligned with the cleanup: each sample's is the lowest of {} \
         readings spread over one cleanup period ({} s), the level right after a pass.",
        soak.warm_up.as_secs_f64(),
        soak.window.as_secs_f64(),
        soak.window.as_secs_f64(),
        sample::TABLE_READS,
        soak.cleanup_s
    ));

    let mut header = vec!["t s"];
    header.extend(SERIES);
    let mut all = Table::new("Soak samples", &header);
    for s in samples {
        let mut row = vec![format!("{:.0}", s.t.as_secs_f64())];
        row.extend(s.values().iter().enumerate().map(|(i, v)| {
            if i == 0 || i == 8 {
                format!("{v:.1}")
            } else {
                format!("{v:.0}")
            }
        }));
        all.row(row);
    }

    let mut work = Table::new(
        "Soak workload",
        &[
            "pushes",
            "push p50 ms",
            "push p99 ms",
            "pulls",
            "pull p99 ms",
            "churn sessions (closed / vanished)",
            "connect p50 ms",
            "connect p99 ms",
            "connect max ms",
            "redials",
            "groups created",
            "puller sessions",
            "cut off TOO_SLOW",
            "honest errors",
        ],
    );
    let (push, pull, connect) = (
        Latency::of(r.push.clone()),
        Latency::of(r.pull.clone()),
        Latency::of(r.connect.clone()),
    );
    work.row(vec![
        push.n.to_string(),
        ms(push.p50),
        ms(push.p99),
        pull.n.to_string(),
        ms(pull.p99),
        format!("{} / {}", r.closed, r.vanished),
        ms(connect.p50),
        ms(connect.p99),
        ms(connect.max),
        r.redials.to_string(),
        r.groups_created.to_string(),
        r.pullers.to_string(),
        r.pullers_cut_off.to_string(),
        r.errors.to_string(),
    ]);
    work.note(format!(
        "{} steady devices in {} groups (≤ {} ops/s each, 1 KiB blobs, TTL {} s), {} session churn \
         and {} group churn workers, {} never-reading pullers × {PULLER_STREAMS} streams of 256 KiB \
         blobs. Access mode: token. Churn clients dial as devices do: an unanswered dial \
         is made again from a fresh endpoint after 5 s, then 10 s (\"redials\"); an error is \
         a refusal or no answer after the redials.",
        soak.devices,
        soak.groups,
        soak.rate,
        soak.ttl_s,
        soak.session_churn,
        soak.group_churn,
        soak.pullers
    ));
    if r.errors > 0 {
        problems.push(format!(
            "{} errors of honest clients, first: {}",
            r.errors,
            r.first_errors.join("; ")
        ));
    }
    for e in &r.first_errors {
        work.note(format!("error: {e}"));
    }
    if r.pullers > 0 && r.pullers_cut_off == 0 && soak.judge {
        problems.push("no never-reading puller was cut off".into());
    }
    SoakReport {
        tables: vec![summary, work, all],
        problems,
    }
}
