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

    /// Read everything now; `t` is the time since the load started.
    pub async fn sample(&mut self, t: Duration) -> Result<Sample> {
        let (rss_kib, _) = crate::env::proc_memory(self.pid);
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .context("reading the relay's /proc/PID/fd")?
            .count() as u64;
        let sessions = health_sessions(self.http).await?;
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
        Ok(Sample {
            t,
            rss_kib,
            fds,
            sessions,
            groups: count(0),
            devices: count(1),
            blobs: count(2),
            owners: count(3),
            tokens: count(4),
            db_bytes: file("") + file("-wal"),
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
