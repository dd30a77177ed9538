//! What the soak watches (docs/testing.md "Load and benchmarks"): the relay
//! process's resident memory and open file descriptors (`/proc/PID`), its
//! live sessions (`GET /health`), and the row counts of its tables, read
//! from its SQLite file over a read-only connection; and the verdict "flat
//! after warm-up" on each of them.

use anyhow::{Context, Result};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Row};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Growth above which a series is not flat: 10 % of its value after
/// warm-up.
pub const MAX_GROWTH: f64 = 0.10;

/// One reading of the relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// Seconds since the load started.
    pub t: Duration,
    /// Resident memory (VmRSS), KiB.
    pub rss_kib: u64,
    /// Entries of `/proc/PID/fd`.
    pub fds: u64,
    /// Live sessions as `/health` reports them.
    pub sessions: u64,
    /// Rows of `groups`.
    pub groups: u64,
    /// Rows of `devices`.
    pub devices: u64,
    /// Rows of `blobs`.
    pub blobs: u64,
    /// Rows of `owners` (tokens and addresses that own groups).
    pub owners: u64,
    /// Rows of `tokens`.
    pub tokens: u64,
    /// Bytes of `relay.db` plus its WAL.
    pub db_bytes: u64,
}

/// The named series of a run, in table order, with how each is shown.
pub const SERIES: [&str; 9] = [
    "relay RSS MiB",
    "open fds",
    "live sessions",
    "groups",
    "devices",
    "blobs",
    "owners",
    "tokens",
    "db + WAL MiB",
];

impl Sample {
    /// The values of [`SERIES`], in order.
    pub fn values(&self) -> [f64; 9] {
        [
            self.rss_kib as f64 / 1024.0,
            self.fds as f64,
            self.sessions as f64,
            self.groups as f64,
            self.devices as f64,
            self.blobs as f64,
            self.owners as f64,
            self.tokens as f64,
            self.db_bytes as f64 / (1024.0 * 1024.0),
        ]
    }
}

/// Reads the relay: its process, its `/health` and its database.
pub struct Sampler {
    pid: u32,
    http: SocketAddr,
    db_path: PathBuf,
    db: SqliteConnection,
}

impl Sampler {
    /// A sampler of the relay process `pid` serving HTTP on `http`, with
    /// its database at `db_path` (opened read-only: the soak never writes
    /// to the relay's file).
    pub async fn new(pid: u32, http: SocketAddr, db_path: &Path) -> Result<Sampler> {
        let options = SqliteConnectOptions::new()
            .filename(db_path)
            .read_only(true);
        let db = SqliteConnection::connect_with(&options)
            .await
            .context("opening the relay's database read-only")?;
        Ok(Sampler {
            pid,
            http,
            db_path: db_path.to_path_buf(),
            db,
        })
    }

    /// Read everything; `t` is the time since the load started. The
    /// process figures (RSS, fds, sessions) are read once, now; the table
    /// sizes are read [`TABLE_READS`] times spread over `cleanup` plus one
    /// step, and kept as their [`Tables::floor`]: the state right after the
    /// last cleanup pass, whatever the phase of this sample against the
    /// relay's cleanup timer. Takes about `cleanup × 21/20`.
    pub async fn sample(&mut self, t: Duration, cleanup: Duration) -> Result<Sample> {
        let (rss_kib, _) = crate::env::proc_memory(self.pid);
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .context("reading the relay's /proc/PID/fd")?
            .count() as u64;
        let sessions = health_sessions(self.http).await?;
        let step = cleanup / (TABLE_READS as u32 - 1);
        let mut reads = Vec::with_capacity(TABLE_READS);
        for i in 0..TABLE_READS {
            if i > 0 {
                tokio::time::sleep(step).await;
            }
            reads.push(self.tables().await?);
        }
        let tables = Tables::floor(&reads).context("no table reading")?;
        Ok(Sample {
            t,
            rss_kib,
            fds,
            sessions,
            groups: tables.groups,
            devices: tables.devices,
            blobs: tables.blobs,
            owners: tables.owners,
            tokens: tables.tokens,
            db_bytes: tables.db_bytes,
        })
    }

    /// The table sizes now.
    async fn tables(&mut self) -> Result<Tables> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM groups), (SELECT count(*) FROM devices), \
             (SELECT count(*) FROM blobs), (SELECT count(*) FROM owners), \
             (SELECT count(*) FROM tokens)",
        )
        .fetch_one(&mut self.db)
        .await
        .context("counting the relay's rows")?;
        let count = |i: usize| row.get::<i64, _>(i).max(0) as u64;
        let file = |suffix: &str| {
            let mut p = self.db_path.clone().into_os_string();
            p.push(suffix);
            std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
        };
        Ok(Tables {
            groups: count(0),
            devices: count(1),
            blobs: count(2),
            owners: count(3),
            tokens: count(4),
            db_bytes: file("") + file("-wal"),
        })
    }
}

/// Table readings per sample, evenly spread over one cleanup period plus
/// one step (so at least one reading falls after a pass has finished, if
/// passes keep to their period): the floor found is at most one step (a
/// twentieth of the period, so a twentieth of the tooth) above the level
/// right after the pass.
pub const TABLE_READS: usize = 21;

/// Row counts of the relay's tables and the size of its database at one
/// moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tables {
    /// Rows of `groups`.
    pub groups: u64,
    /// Rows of `devices`.
    pub devices: u64,
    /// Rows of `blobs`.
    pub blobs: u64,
    /// Rows of `owners`.
    pub owners: u64,
    /// Rows of `tokens`.
    pub tokens: u64,
    /// Bytes of `relay.db` plus its WAL.
    pub db_bytes: u64,
}

impl Tables {
    /// Each table's lowest reading among `reads` (`None` when empty).
    ///
    /// Why (the soak's verdict is phase-aligned through this): between two
    /// cleanup passes the tables only grow (rows are added by the load and
    /// removed only by a pass), so over readings that span a full cleanup
    /// period the lowest is the one right after a pass — the level a leak
    /// raises (rows the pass should remove and does not) and that a load
    /// with the cleanup keeping up leaves flat. A single reading instead
    /// lands anywhere on the saw-tooth: the 20-minute soak of 27 Nov 2026
    /// read devices at 67 just after passes for 10 minutes and at ~140 just
    /// before them for the next 9 (the cleanup timer's phase drifts against
    /// the sampler's each time a pass overruns its period), which a
    /// comparison of single readings took for +75 % growth.
    pub fn floor(reads: &[Tables]) -> Option<Tables> {
        let min = |f: fn(&Tables) -> u64| reads.iter().map(f).min();
        Some(Tables {
            groups: min(|t| t.groups)?,
            devices: min(|t| t.devices)?,
            blobs: min(|t| t.blobs)?,
            owners: min(|t| t.owners)?,
            tokens: min(|t| t.tokens)?,
            db_bytes: min(|t| t.db_bytes)?,
        })
    }
}

/// `sessions` of the relay's `GET /health` (HTTP/1.0, one request per
/// connection: the relay's own endpoint, nothing to pool).
async fn health_sessions(http: SocketAddr) -> Result<u64> {
    let mut stream = tokio::net::TcpStream::connect(http).await?;
    stream
        .write_all(b"GET /health HTTP/1.0\r\nHost: relay\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.take(64 << 10).read_to_end(&mut response),
    )
    .await
    .context("/health did not answer within 10 s")??;
    let text = String::from_utf8_lossy(&response);
    let body = text.split("\r\n\r\n").nth(1).context("/health: no body")?;
    let health: serde_json::Value = serde_json::from_str(body).context("/health: not JSON")?;
    health["sessions"]
        .as_u64()
        .context("/health: no sessions figure")
}

/// How one series moved after warm-up.
#[derive(Debug, Clone)]
pub struct Growth {
    /// The series' name (from [`SERIES`]).
    pub name: &'static str,
    /// Lowest sample of the first window after warm-up (its floor).
    pub after_warm_up: f64,
    /// Lowest sample of the last window of the run.
    pub end: f64,
    /// Mean over the first window after warm-up (shown, not judged).
    pub mean_after_warm_up: f64,
    /// Mean over the last window (shown, not judged).
    pub mean_end: f64,
    /// Highest sample after warm-up.
    pub peak: f64,
    /// `(end - after_warm_up) / after_warm_up`: growth of the floor (0 when
    /// both are 0).
    pub growth: f64,
}

impl Growth {
    /// True when the series' floor grew less than [`MAX_GROWTH`].
    pub fn flat(&self) -> bool {
        self.growth < MAX_GROWTH
    }
}

/// Growth of every series: the **floor** (lowest sample) of the samples
/// taken in `[warm_up, warm_up + window)` against the floor of those in the
/// last `window` of the run. Floors, not means or single samples, because
/// the tables are a saw-tooth: rows pile up between two runs of the cleanup
/// and drop when it runs (`devices` swings between ~70 and ~137 in the
/// 10-minute soak), so a minute's mean depends on how many of its six
/// samples land on a tooth; what a leak or a cleanup falling behind leaves
/// is a rising floor. `None` when the run is too short for two windows
/// after warm-up, or a window holds no sample.
pub fn growth(samples: &[Sample], warm_up: Duration, window: Duration) -> Option<Vec<Growth>> {
    let last = samples.last()?.t;
    if last < warm_up + 2 * window {
        return None;
    }
    let first: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= warm_up && s.t < warm_up + window)
        .collect();
    let end: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t >= warm_up && s.t + window > last)
        .collect();
    if first.is_empty() || end.is_empty() {
        return None;
    }
    let mean = |set: &[&Sample], i: usize| {
        set.iter().map(|s| s.values()[i]).sum::<f64>() / set.len() as f64
    };
    let floor = |set: &[&Sample], i: usize| {
        set.iter()
            .map(|s| s.values()[i])
            .fold(f64::INFINITY, f64::min)
    };
    Some(
        SERIES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let (a, b) = (floor(&first, i), floor(&end, i));
                let peak = samples
                    .iter()
                    .filter(|s| s.t >= warm_up)
                    .map(|s| s.values()[i])
                    .fold(0.0, f64::max);
                let growth = if a == 0.0 {
                    if b == 0.0 { 0.0 } else { f64::INFINITY }
                } else {
                    (b - a) / a
                };
                Growth {
                    name,
                    after_warm_up: a,
                    end: b,
                    mean_after_warm_up: mean(&first, i),
                    mean_end: mean(&end, i),
                    peak,
                    growth,
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: u64, rss_mib: u64, blobs: u64) -> Sample {
        Sample {
            t: Duration::from_secs(t),
            rss_kib: rss_mib * 1024,
            blobs,
            tokens: 1,
            ..Sample::default()
        }
    }

    #[test]
    fn growth_compares_the_window_after_warm_up_with_the_last_one() {
        // Warm-up to 20 s, windows of 20 s: [20, 40) against (40, 60].
        let samples: Vec<Sample> = (0..=6)
            .map(|i| at(i * 10, [10, 30, 40, 40, 43, 44, 44][i as usize], 100))
            .collect();
        let g = growth(&samples, Duration::from_secs(20), Duration::from_secs(20)).unwrap();
        let rss = &g[0];
        assert_eq!(rss.after_warm_up, 40.0);
        assert_eq!(rss.end, 44.0);
        assert_eq!(rss.mean_end, 44.0);
        assert_eq!(rss.peak, 44.0);
        assert!((rss.growth - 0.10).abs() < 1e-9);
        assert!(!rss.flat(), "10 % is not below 10 %");
        assert!(g[5].flat() && g[5].growth == 0.0, "blobs unchanged");
        assert!(g[2].flat(), "a series that stays 0 is flat");
        // Shrinking is flat.
        let samples: Vec<Sample> = (0..=6).map(|i| at(i * 10, 50 - i, 100)).collect();
        let g = growth(&samples, Duration::from_secs(20), Duration::from_secs(20)).unwrap();
        assert!(g.iter().all(Growth::flat));
        // Too short to judge.
        assert!(
            growth(
                &samples[..3],
                Duration::from_secs(20),
                Duration::from_secs(20)
            )
            .is_none()
        );
    }

    /// Devices as a relay with a 5 s cleanup holds them at `ms`: 70 rows
    /// right after a pass, 14 more each second until the next (a tooth of
    /// 70 → 140), passes at `phase_ms` + multiples of 5 s; with `leak`, 1
    /// row in 5 s that no pass removes.
    fn devices_at(ms: u64, phase_ms: u64, leak: bool) -> Tables {
        let since_pass = (ms + 5_000 - phase_ms % 5_000) % 5_000;
        let leaked = if leak { ms / 5_000 } else { 0 };
        Tables {
            devices: 70 + 14 * since_pass / 1_000 + leaked,
            ..Tables::default()
        }
    }

    /// Samples every 10 s over 120 s, each from [`TABLE_READS`] readings
    /// over one 5 s cleanup period ([`Tables::floor`]), or from the first
    /// reading alone (`aligned` false: the old, phase-blind sampling). The
    /// cleanup's phase against the sampler drifts from 0 to 0.1 s at 60 s
    /// (the worst case: each sample's first reading 0.1 s before a pass).
    fn sawtooth(leak: bool, aligned: bool) -> Vec<Sample> {
        let step = 5_000 / (TABLE_READS as u64 - 1);
        (0..12)
            .map(|i| {
                let t = i * 10_000;
                let phase = if t < 60_000 { 0 } else { 100 };
                let reads: Vec<Tables> = (0..TABLE_READS as u64)
                    .map(|r| devices_at(t + r * step, phase, leak))
                    .collect();
                let tables = if aligned {
                    Tables::floor(&reads).unwrap()
                } else {
                    reads[0]
                };
                Sample {
                    t: Duration::from_millis(t),
                    devices: tables.devices,
                    ..Sample::default()
                }
            })
            .collect()
    }

    /// The soak's table verdict is phase-aligned: a saw-tooth whose
    /// readings drift from "just after a pass" to "just before one" is
    /// flat (a phase-blind reading called it +98 %); the same saw-tooth on
    /// a rising floor (a leak: 1 row in 5 s the cleanup never removes,
    /// +20 % over the run) is not.
    #[test]
    fn table_floors_are_read_right_after_the_cleanup_whatever_its_phase() {
        let judge = |samples: &[Sample]| {
            growth(samples, Duration::from_secs(20), Duration::from_secs(30)).unwrap()[4].clone()
        };
        let blind = judge(&sawtooth(false, false));
        assert_eq!((blind.after_warm_up, blind.end), (70.0, 138.0));
        assert!(!blind.flat(), "phase-blind readings see the tooth");
        let flat = judge(&sawtooth(false, true));
        assert_eq!(flat.after_warm_up, 70.0);
        assert!(
            flat.end <= 70.0 + 14.0 / 4.0,
            "within one step: {}",
            flat.end
        );
        assert!(flat.flat(), "a saw-tooth on a flat floor: {flat:?}");
        let leak = judge(&sawtooth(true, true));
        assert!(!leak.flat(), "a rising floor is growth: {leak:?}");
        assert!(leak.growth > 0.15, "{leak:?}");
        assert_eq!(Tables::floor(&[]), None);
    }

    /// A saw-tooth whose teeth land in the last window but whose floor
    /// stays put is flat (its mean grew 50 %); the same saw-tooth on a
    /// rising floor is not.
    #[test]
    fn growth_judges_the_floor_of_a_saw_tooth_not_its_mean() {
        // Warm-up to 20 s, windows of 20 s: [20, 40) against (40, 60].
        let blobs = [0, 70, 70, 70, 70, 140, 70];
        let samples: Vec<Sample> = (0..=6).map(|i| at(i * 10, 40, blobs[i as usize])).collect();
        let g = growth(&samples, Duration::from_secs(20), Duration::from_secs(20)).unwrap();
        let b = &g[5];
        assert_eq!((b.after_warm_up, b.end), (70.0, 70.0));
        assert_eq!((b.mean_after_warm_up, b.mean_end), (70.0, 105.0));
        assert_eq!(b.peak, 140.0);
        assert!(b.flat(), "the floor did not move");
        let blobs = [0, 70, 70, 70, 77, 140, 77];
        let samples: Vec<Sample> = (0..=6).map(|i| at(i * 10, 40, blobs[i as usize])).collect();
        let g = growth(&samples, Duration::from_secs(20), Duration::from_secs(20)).unwrap();
        assert_eq!(g[5].end, 77.0);
        assert!(!g[5].flat(), "a floor 10 % higher is growth");
    }
}
