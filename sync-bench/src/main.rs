//! `sync-bench`: benchmarks of the relay and client against baselines
//! measured in the same run (raw iroh, raw sqlx, process start), and the
//! bounded load generator. Prints Markdown tables; `--markdown FILE` also
//! writes them with the machine's description (for BENCHMARKS.md).
//!
//! Run the release build: `cargo build --release -p sync-relay -p sync-cli
//! -p sync-bench && target/release/sync-bench all --markdown BENCHMARKS.md`.
//! `--tiny` runs every scenario at a smoke-test size (CI).

mod env;
mod measure;
mod nostr;
mod postgres_baseline;
mod raw;
mod scenarios;
mod sqlite_baseline;
mod stats;

use anyhow::Result;
use clap::{Parser, Subcommand};
use env::Size;
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Run every scenario at a tiny size (smoke test).
    #[arg(long, global = true)]
    tiny: bool,
    /// Also write the tables (with machine facts) to this Markdown file.
    #[arg(long, global = true, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// PostgreSQL server for `push-postgres` (each measurement creates a
    /// database of its own there and drops it), e.g.
    /// postgres://postgres@127.0.0.1:5432/test. Without it, `push-postgres`
    /// fails and `all` skips it, saying so.
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "SYNC_TEST_POSTGRES_URL"
    )]
    postgres_url: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Scenario {
    /// Every scenario below, in order.
    All,
    /// 1. Push throughput vs raw iroh and raw sqlx.
    Push,
    /// 1b. Push throughput of the relay on PostgreSQL vs raw sqlx-postgres
    /// (needs --postgres-url or SYNC_TEST_POSTGRES_URL).
    PushPostgres,
    /// 2. NOTIFY latency vs raw round trip.
    Notify,
    /// 2b. Cross-instance NOTIFY on PostgreSQL vs same-instance
    /// (needs SYNC_TEST_POSTGRES_URL; skipped without it).
    Cross,
    /// 3. Fan-out to 1, 100 and 1,000 sessions.
    Fanout,
    /// 4. Idle sessions: memory per session, accept rate.
    Idle {
        /// Sessions to open (default 10,000; tiny 50).
        #[arg(long)]
        sessions: Option<usize>,
        /// Client processes opening them (default 4; tiny 2).
        #[arg(long)]
        processes: Option<usize>,
        /// Dials in flight at once in each client process (default 64).
        #[arg(long)]
        in_flight: Option<usize>,
        /// Run the relay with `network.segmentation_offload = false`.
        #[arg(long)]
        no_gso: bool,
    },
    /// 5. Bulk push and pull through SyncClient vs raw stream.
    Bulk,
    /// 6. Cold start of the relay and of a CLI push.
    Cold,
    /// 7. Peers side by side: nostr-rs-relay's 1 KiB ingest beside ours.
    ///
    /// Needs its binary: `--install-peer` builds it; `all` skips this
    /// scenario, saying why, without it.
    Peer {
        /// First build nostr-rs-relay from crates.io into the target dir
        /// (minutes; needs protoc).
        #[arg(long)]
        install_peer: bool,
        /// Alternating runs a row; the table shows medians [default: 3, 1 with --tiny].
        #[arg(long)]
        rounds: Option<usize>,
    },
    /// 8. Folder sync with the real sync-cli, beside `cp -r` and `find`.
    ///
    /// Initial sync of many small files and of one large file (time, peak
    /// RSS) beside `cp -r` of the same tree, and a rescan of unchanged
    /// files beside a stat of every file.
    Folder {
        /// Small files in the initial-sync tree [default: 10,000; 20 with --tiny].
        #[arg(long)]
        files: Option<usize>,
        /// Size of the one large file in MiB [default: 1024; 2 with --tiny].
        #[arg(long)]
        large_mib: Option<u64>,
        /// Unchanged files in the rescan tree [default: 100,000; 50 with --tiny].
        #[arg(long)]
        rescan_files: Option<usize>,
    },
    /// The load generator.
    Load {
        /// Devices.
        #[arg(long)]
        devices: Option<usize>,
        /// Groups.
        #[arg(long)]
        groups: Option<usize>,
        /// Seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// The soak: honest load plus churn (sessions that vanish, groups
    /// created and abandoned, never-reading pullers) for 10 minutes; the
    /// relay's RSS, open fds, sessions and table sizes sampled every 10 s
    /// must be flat after warm-up (growth < 10 %). Not part of `all`.
    Soak {
        /// Run this many seconds instead (warm-up and windows keep their
        /// proportions: 1/5 and 1/10 of the run).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Churn retention: the relay's live heap (jemalloc `stats.allocated`)
    /// after 500, 2,000 and 8,000 sessions from fresh node ids came and
    /// went (half closed, half vanished), and the push round trips of an
    /// honest device of the group throughout. Not part of `all`.
    Churn {
        /// Sessions at once.
        #[arg(long)]
        concurrency: Option<usize>,
        /// Cumulative checkpoints instead (comma-separated session counts).
        #[arg(long, value_delimiter = ',')]
        checkpoints: Option<Vec<usize>>,
        /// Seconds to wait after live sessions are back to 0 (default 65).
        #[arg(long)]
        linger_s: Option<u64>,
    },
    /// (internal) one client process of the idle scenario.
    #[command(hide = true)]
    IdleClient {
        relay: String,
        sessions: usize,
        per_endpoint: usize,
        in_flight: usize,
    },
    /// (internal) one side of the bulk scenario, in its own process.
    #[command(hide = true)]
    BulkClient {
        mode: String,
        relay: String,
        secret: String,
        home: PathBuf,
        path: PathBuf,
    },
}

fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|k| k.parse::<u64>().ok())
        .map(|k| format!("{:.1} GiB", k as f64 / 1024.0 / 1024.0))
        .unwrap_or_default();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!("{cores} cores, {mem} memory, {profile} build, loopback")
}

/// `sync-bench soak`: print (and write) its tables, then fail if the relay
/// did not stay flat or an honest client saw an error.
async fn soak(size: Size, seconds: Option<u64>, markdown: Option<&std::path::Path>) -> Result<()> {
    let mut soak = scenarios::soak::Soak::for_size(size);
    if let Some(s) = seconds {
        soak.duration = std::time::Duration::from_secs(s);
        soak.warm_up = soak.duration / 5;
        soak.window = soak.duration / 10;
    }
    let report = scenarios::soak::run(soak).await?;
    let mut out = format!("Machine: {}.\n\n", machine());
    for table in &report.tables {
        let md = table.markdown();
        println!("{md}");
        out.push_str(&md);
        out.push('\n');
    }
    if let Some(path) = markdown {
        std::fs::write(path, out)?;
    }
    if !report.problems.is_empty() {
        anyhow::bail!("soak failed: {}", report.problems.join(" | "));
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Scenario::BulkClient {
        mode,
        relay,
        secret,
        home,
        path,
    } = &args.scenario
    {
        return scenarios::bulk::client(mode, relay, secret, home, path).await;
    }
    if let Scenario::IdleClient {
        relay,
        sessions,
        per_endpoint,
        in_flight,
    } = &args.scenario
    {
        return scenarios::idle::client(relay, *sessions, *per_endpoint, *in_flight).await;
    }
    let size = Size { tiny: args.tiny };
    if let Scenario::Soak { seconds } = &args.scenario {
        return soak(size, *seconds, args.markdown.as_deref()).await;
    }
    let all = args.scenario == Scenario::All;
    let mut out = format!("Machine: {}.\n\n", machine());
    let mut emit = |table: stats::Table| {
        let md = table.markdown();
        println!("{md}");
        out.push_str(&md);
        out.push('\n');
    };
    if all || args.scenario == Scenario::Push {
        emit(scenarios::push::run(size).await?);
    }
    if all || args.scenario == Scenario::PushPostgres {
        match &args.postgres_url {
            Some(url) => emit(scenarios::push_postgres::run(size, url).await?),
            None if all => eprintln!(
                "SKIPPED: push-postgres (no --postgres-url and SYNC_TEST_POSTGRES_URL not set)"
            ),
            None => anyhow::bail!(
                "push-postgres needs a PostgreSQL server: --postgres-url URL or SYNC_TEST_POSTGRES_URL"
            ),
        }
    }
    if all || args.scenario == Scenario::Notify {
        emit(scenarios::notify::run(size).await?);
    }
    if all || args.scenario == Scenario::Cross {
        emit(scenarios::cross::run(size).await?);
    }
    if all || args.scenario == Scenario::Fanout {
        emit(scenarios::fanout::run(size).await?);
    }
    if let Scenario::Idle {
        sessions,
        processes,
        in_flight,
        no_gso,
    } = &args.scenario
    {
        let mut idle = scenarios::idle::Idle::for_size(size);
        idle.sessions = sessions.unwrap_or(idle.sessions).max(1);
        idle.processes = processes.unwrap_or(idle.processes).max(1);
        idle.in_flight = in_flight.unwrap_or(idle.in_flight).max(1);
        idle.segmentation_offload = !no_gso;
        emit(scenarios::idle::run(idle).await?);
    } else if all {
        emit(scenarios::idle::run(scenarios::idle::Idle::for_size(size)).await?);
    }
    if all || args.scenario == Scenario::Bulk {
        emit(scenarios::bulk::run(size).await?);
    }
    if all || args.scenario == Scenario::Cold {
        emit(scenarios::cold::run(size).await?);
    }
    if let Scenario::Peer {
        install_peer,
        rounds,
    } = &args.scenario
    {
        let bin = if *install_peer {
            nostr::relay::install()?
        } else {
            nostr::relay::binary()?
        };
        emit(scenarios::peer::run(size, &bin, rounds.unwrap_or(size.pick(3, 1))).await?);
    } else if all {
        match nostr::relay::binary() {
            Ok(bin) => emit(scenarios::peer::run(size, &bin, size.pick(3, 1)).await?),
            Err(e) => eprintln!("SKIPPED: peer ({e:#})"),
        }
    }
    if let Scenario::Folder {
        files,
        large_mib,
        rescan_files,
    } = &args.scenario
    {
        let mut folder = scenarios::folder::Folder::for_size(size);
        folder.files = files.unwrap_or(folder.files);
        folder.large_bytes = large_mib.map(|m| m << 20).unwrap_or(folder.large_bytes);
        folder.rescan_files = rescan_files.unwrap_or(folder.rescan_files);
        emit(scenarios::folder::run(folder).await?);
    } else if all {
        emit(scenarios::folder::run(scenarios::folder::Folder::for_size(size)).await?);
    }
    if let Scenario::Churn {
        concurrency,
        checkpoints,
        linger_s,
    } = &args.scenario
    {
        let mut churn = scenarios::churn::Churn::for_size(size);
        churn.concurrency = concurrency.unwrap_or(churn.concurrency).max(1);
        if let Some(l) = linger_s {
            churn.linger = std::time::Duration::from_secs(*l);
        }
        if let Some(c) = checkpoints {
            churn.checkpoints = c.clone();
        }
        for table in scenarios::churn::run(churn).await? {
            emit(table);
        }
    }
    if let Scenario::Load {
        devices,
        groups,
        seconds,
    } = &args.scenario
    {
        let mut load = scenarios::load::Load::for_size(size);
        load.devices = devices.unwrap_or(load.devices);
        load.groups = groups.unwrap_or(load.groups).max(1);
        load.duration = seconds
            .map(std::time::Duration::from_secs)
            .unwrap_or(load.duration);
        emit(scenarios::load::run(load).await?);
    } else if all {
        emit(scenarios::load::run(scenarios::load::Load::for_size(size)).await?);
    }
    if let Some(path) = &args.markdown {
        std::fs::write(path, out)?;
    }
    Ok(())
}
