//! Churn retention: what the relay's heap keeps per session that came and
//! went (issue 10, BENCHMARKS.md "Soak"). Sessions from **fresh node ids**
//! connect, say `Hello`, push one 1 KiB blob to an existing group and leave
//! — even ones with a close, odd ones by vanishing (the endpoint dropped, so
//! the relay learns only from its idle timeout) — `concurrency` at a time.
//! After each checkpoint of N sessions in all, once the relay's live
//! sessions are back to zero, its live heap (`sync_relay_heap_allocated_bytes`,
//! jemalloc `stats.allocated`) is read: the growth over the baseline
//! (taken after a warm-up churn) divided by the sessions churned since is
//! the heap the relay retains per churned session.
//!
//! Throughout, an honest device of the same group ([`probe`]) pushes a 1 KiB
//! blob four times a second: its round trips while the churn runs, against
//! those of the quiet phases of the same run, say whether honest devices
//! keep being served (issue 10).

mod probe;

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, blob_id, load_average, metric, random};
use crate::stats::{Latency, Table, ratio};
use anyhow::{Context, Result, bail};
use futures::future::join_all;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, RelaySession};
use sync_protocol::PushItem;

/// What to run.
pub struct Churn {
    /// Sessions churned before the baseline is read (lazy caches, pools).
    pub warm_up: usize,
    /// Cumulative session counts after which the heap is read.
    pub checkpoints: Vec<usize>,
    /// Sessions at once.
    pub concurrency: usize,
    /// How long to wait, once live sessions are back to 0, before the
    /// reading: iroh 1.4 keeps a remote's state actor 60 s after its last
    /// connection (`ACTOR_MAX_IDLE_TIMEOUT`), so 65 s separates what expires
    /// from what stays.
    pub linger: Duration,
}

impl Churn {
    /// 500, 2,000 and 8,000 sessions after 200 of warm-up (`--tiny`: 20
    /// and 60 after 20).
    pub fn for_size(size: Size) -> Churn {
        Churn {
            warm_up: size.pick(200, 20),
            checkpoints: size.pick(vec![500, 2_000, 8_000], vec![20, 60]),
            concurrency: 8,
            linger: Duration::from_secs(65),
        }
    }
}

/// One heap reading after a checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Sessions churned since the baseline.
    pub sessions: usize,
    /// Seconds since the relay started, at the reading.
    pub elapsed_s: u64,
    /// The machine's 1-minute load average at the reading.
    pub load: f64,
    /// Live heap bytes (`stats.allocated`) as soon as live sessions were 0.
    pub allocated_at_zero: u64,
    /// Live heap bytes (`stats.allocated`) after the linger.
    pub allocated: u64,
    /// Resident allocator bytes (`stats.resident`).
    pub resident: u64,
    /// Process RSS, KiB.
    pub rss_kib: u64,
    /// Database and WAL file bytes (SQLite caches up to 2 MiB of its pages
    /// per connection: a bounded grower while the database grows).
    pub db_bytes: u64,
}

/// The honest device's round trips over one churn phase and the quiet
/// phase after it.
#[derive(Debug, Clone, Copy)]
pub struct Honest {
    /// Sessions churned since the baseline, at the end of the phase.
    pub sessions: usize,
    /// Sessions churned in this phase.
    pub churned: usize,
    /// How long the churn phase took.
    pub churn_time: Duration,
    /// Round trips of pushes begun while the churn ran.
    pub under_churn: Latency,
    /// Round trips of pushes begun in the quiet phase that followed.
    pub quiet: Latency,
    /// Failed or unanswered pushes and failed reconnects, both phases.
    pub errors: usize,
    /// The 1-minute load average at the end of the churn phase.
    pub load: f64,
}

/// Run the scenario: the heap table (the baseline reading, then one
/// [`Point`] per checkpoint) and the honest device's table (one [`Honest`]
/// per checkpoint, after the warm-up's, whose quiet phase is the baseline).
pub async fn run(churn: Churn) -> Result<Vec<Table>> {
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    let started_at = Instant::now();
    let keys = GroupSecret::generate().keys();
    // The group exists before the churn: one device creates it, and stays
    // as the honest device.
    let honest_opts = relay.device(&keys)?;
    let first = RelaySession::connect(&honest_opts).await?;
    first.push(vec![item(0)]).await?;
    let probe = probe::Probe::start(first, honest_opts);
    let mut honest = Vec::new();
    let mut done = 0usize;
    let mut failed = 0usize;
    let mut redials = 0usize;
    probe.set_churning(true);
    churn_sessions(
        &relay,
        &keys,
        &mut done,
        churn.warm_up,
        churn.concurrency,
        &mut failed,
        &mut redials,
    )
    .await?;
    probe.set_churning(false);
    let warm_up = probe.take();
    let base = settle(&relay, 0, churn.linger, started_at).await?;
    let quiet = probe.take();
    honest.push(Honest {
        sessions: 0,
        churned: churn.warm_up,
        churn_time: Duration::ZERO,
        under_churn: Latency::of(warm_up.churn),
        quiet: Latency::of(quiet.quiet),
        errors: warm_up.errors + quiet.errors,
        load: base.load,
    });
    let mut points = Vec::new();
    let started = done;
    for &n in &churn.checkpoints {
        let from = done;
        let t = Instant::now();
        probe.set_churning(true);
        churn_sessions(
            &relay,
            &keys,
            &mut done,
            started + n,
            churn.concurrency,
            &mut failed,
            &mut redials,
        )
        .await?;
        probe.set_churning(false);
        let churn_time = t.elapsed();
        let load = load_average().unwrap_or(f64::NAN);
        let under_churn = probe.take();
        let p = settle(&relay, n, churn.linger, started_at).await?;
        let quiet = probe.take();
        let h = Honest {
            sessions: n,
            churned: done - from,
            churn_time,
            under_churn: Latency::of(under_churn.churn),
            quiet: Latency::of(quiet.quiet),
            errors: under_churn.errors + quiet.errors,
            load,
        };
        eprintln!(
            "churn: {n} sessions at {} s (load {:.1}): {:.1} sessions/s; honest push p50/p99/max {}/{}/{} ms \
             under churn, {}/{}/{} ms quiet, {} errors",
            p.elapsed_s,
            load,
            h.churned as f64 / churn_time.as_secs_f64().max(1e-9),
            ms0(h.under_churn.p50),
            ms0(h.under_churn.p99),
            ms0(h.under_churn.max),
            ms0(h.quiet.p50),
            ms0(h.quiet.p99),
            ms0(h.quiet.max),
            h.errors
        );
        honest.push(h);
        eprintln!(
            "churn: {n} sessions: heap {} -> {} bytes ({:+} over the baseline {})",
            p.allocated_at_zero,
            p.allocated,
            p.allocated as i64 - base.allocated as i64,
            base.allocated
        );
        points.push(p);
    }
    let mut table = Table::new(
        "Churn retention (fresh node ids, churned sessions back to 0)",
        &[
            "sessions churned",
            "t s",
            "load",
            "heap at 0 sessions MiB",
            "heap after linger MiB",
            "Δ allocated KiB",
            "bytes / session",
            "allocator resident MiB",
            "relay RSS MiB",
            "database + WAL MiB",
        ],
    );
    for p in std::iter::once(&base).chain(&points) {
        let delta = p.allocated as i64 - base.allocated as i64;
        table.row(vec![
            p.sessions.to_string(),
            p.elapsed_s.to_string(),
            format!("{:.1}", p.load),
            format!("{:.2}", p.allocated_at_zero as f64 / 1048576.0),
            format!("{:.2}", p.allocated as f64 / 1048576.0),
            format!("{:.1}", delta as f64 / 1024.0),
            if p.sessions == 0 {
                "-".into()
            } else {
                format!("{:.0}", delta as f64 / p.sessions as f64)
            },
            format!("{:.1}", p.resident as f64 / 1048576.0),
            format!("{:.1}", p.rss_kib as f64 / 1024.0),
            format!("{:.1}", p.db_bytes as f64 / 1048576.0),
        ]);
    }
    table.note(format!(
        "Each session: a fresh node id, Hello, one 1 KiB push to an existing group; even ones close, odd ones vanish. \
         {} at a time, after {} sessions of warm-up. Heap = jemalloc stats.allocated (lowest of 5 readings, 200 ms apart), \
         read once the relay's live sessions were back to the honest device's alone and again {} s later (iroh drops a remote's state actor 60 s \
         after its last connection); Δ and bytes/session use the later reading.",
        churn.concurrency, churn.warm_up, churn.linger.as_secs()
    ));
    table.note(format!(
        "Sessions that failed to connect (counted, not retried): {failed}. Dials abandoned unanswered \
         after {} s and made again from a fresh endpoint by RelaySession::connect: {redials}.",
        sync_client::dial_attempt_timeout(1).as_secs()
    ));
    let base_quiet = honest.first().map(|h| h.quiet).unwrap_or_default();
    let mut honest_table = Table::new(
        "Churn: the honest device (1 KiB push round trips, 4 a second)",
        &[
            "sessions churned",
            "churn phase s",
            "sessions / s",
            "load",
            "under churn p50 / p99 / max ms (n)",
            "quiet p50 / p99 / max ms (n)",
            "p99 under churn / baseline quiet p99",
            "errors",
        ],
    );
    for h in &honest {
        let fmt =
            |l: &Latency| format!("{} / {} / {} ({})", ms0(l.p50), ms0(l.p99), ms0(l.max), l.n);
        honest_table.row(vec![
            if h.sessions == 0 {
                format!("0 (warm-up: {})", h.churned)
            } else {
                h.sessions.to_string()
            },
            format!("{:.0}", h.churn_time.as_secs_f64()),
            if h.sessions == 0 {
                "-".into()
            } else {
                format!(
                    "{:.1}",
                    h.churned as f64 / h.churn_time.as_secs_f64().max(1e-9)
                )
            },
            format!("{:.1}", h.load),
            fmt(&h.under_churn),
            fmt(&h.quiet),
            if h.sessions == 0 {
                "-".into()
            } else {
                ratio(
                    h.under_churn.p99.as_secs_f64(),
                    base_quiet.p99.as_secs_f64(),
                )
            },
            h.errors.to_string(),
        ]);
    }
    honest_table.note(format!(
        "One device of the churned group, connected throughout, pushes a 1 KiB blob every {} ms and times each \
         answer; a push not answered within {} s counts as an error. \"under churn\": pushes begun while sessions \
         churned; \"quiet\": pushes begun while the relay settled and its heap was read (no churn). The baseline is \
         the quiet phase after the warm-up, in the same run.",
        probe::INTERVAL.as_millis(),
        probe::ANSWER_TIMEOUT.as_secs()
    ));
    drop(probe);
    Ok(vec![table, honest_table])
}

/// Milliseconds with one decimal.
fn ms0(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn item(i: u64) -> PushItem {
    PushItem {
        blob_id: blob_id(7, i),
        payload: random(1024),
        ttl_s: Some(3600),
    }
}

/// Churn sessions until `done` reaches `until`, `concurrency` at a time.
async fn churn_sessions(
    relay: &Relay,
    keys: &sync_client::GroupKeys,
    done: &mut usize,
    until: usize,
    concurrency: usize,
    failed: &mut usize,
    redials: &mut usize,
) -> Result<()> {
    while *done < until {
        let batch = (until - *done).min(concurrency);
        let results = join_all((0..batch).map(|j| one(relay, keys, (*done + j) as u64))).await;
        for r in results {
            match r {
                Ok(dials) => *redials += dials.saturating_sub(1) as usize,
                Err(e) => {
                    eprintln!("churn: {e:#}");
                    *failed += 1;
                    if *failed > 10 + until / 100 {
                        bail!("too many failed sessions ({failed}); last: {e:#}");
                    }
                }
            }
        }
        *done += batch;
    }
    Ok(())
}

/// One session from a fresh node id on an endpoint of its own; the
/// number of dials it took (more than 1 when a dial went unanswered and
/// was made again, docs/deploy.md "Unanswered dials").
async fn one(relay: &Relay, keys: &sync_client::GroupKeys, i: u64) -> Result<u32> {
    let opts = relay.device(keys)?; // a fresh device key: a fresh node id
    let s = RelaySession::connect(&opts)
        .await
        .with_context(|| format!("session {i}"))?;
    let dials = s.dials();
    s.push(vec![item(i + 1)]).await?;
    if i.is_multiple_of(2) {
        s.close().await;
    } else {
        drop(s); // vanish, endpoint and all: no CONNECTION_CLOSE leaves
    }
    Ok(dials)
}

/// Wait (up to 120 s) until the relay's only live session is the honest
/// device's, read its heap, wait `linger` and read it again.
async fn settle(
    relay: &Relay,
    sessions: usize,
    linger: Duration,
    started_at: Instant,
) -> Result<Point> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = scrape(relay.http).await?;
        if metric(&m, "sync_relay_sessions").is_some_and(|n| n <= 1) {
            break;
        }
        if Instant::now() > deadline {
            bail!("live sessions not back to the honest device's alone within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let at_zero = read_heap(relay, sessions, 0, started_at).await?;
    tokio::time::sleep(linger).await;
    read_heap(relay, sessions, at_zero.allocated, started_at).await
}

/// The lowest of 5 heap readings, 200 ms apart.
async fn read_heap(
    relay: &Relay,
    sessions: usize,
    allocated_at_zero: u64,
    started_at: Instant,
) -> Result<Point> {
    let mut best: Option<Point> = None;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let m = scrape(relay.http).await?;
        let p = Point {
            sessions,
            elapsed_s: started_at.elapsed().as_secs(),
            load: load_average().unwrap_or(f64::NAN),
            allocated_at_zero,
            allocated: metric(&m, "sync_relay_heap_allocated_bytes")
                .context("no sync_relay_heap_allocated_bytes (relay built without jemalloc?)")?,
            resident: metric(&m, "sync_relay_heap_resident_bytes").unwrap_or(0),
            rss_kib: relay.memory_kib().0,
            db_bytes: db_bytes(relay),
        };
        if best.is_none_or(|b| p.allocated < b.allocated) {
            best = Some(p);
        }
    }
    best.context("no reading")
}

/// Bytes of the relay's database file and its WAL.
fn db_bytes(relay: &Relay) -> u64 {
    let db = relay.db_path();
    let wal = db.with_extension("db-wal");
    [db, wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// `GET /metrics` (HTTP/1.0, one request per connection).
async fn scrape(http: SocketAddr) -> Result<String> {
    crate::env::scrape_metrics(http).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_reads_an_unlabelled_value_not_a_longer_name() {
        let text = "# HELP x\nsync_relay_sessions_total 9\nsync_relay_sessions 3\n";
        assert_eq!(metric(text, "sync_relay_sessions"), Some(3));
        assert_eq!(metric(text, "sync_relay_nope"), None);
    }
}
