//! Scenario 6: cold start. Relay process start → first accepted HELLO; and
//! a CLI `push` of a 1 KiB file end to end. Baselines: starting the same
//! binaries with `--version` (process start and exit, nothing else).

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, random, sibling};
use crate::stats::{Latency, Table, ms, ratio};
use anyhow::{Result, bail};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, Home, RelaySession};

fn time_command(cmd: &mut Command) -> Result<Duration> {
    let started = Instant::now();
    let out = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed())
}

/// Run the scenario.
pub async fn run(size: Size) -> Result<Table> {
    let runs = size.pick(7, 2);
    let mut relay_start = Vec::new();
    let mut relay_version = Vec::new();
    let keys = GroupSecret::generate().keys();
    for _ in 0..runs {
        relay_version.push(time_command(
            Command::new(sibling("sync-relay")?).arg("--version"),
        )?);
        let started = Instant::now();
        let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
        let mut opts = relay.device(&keys)?;
        opts.connect_timeout = Duration::from_millis(500);
        loop {
            if let Ok(s) = RelaySession::connect(&opts).await {
                relay_start.push(started.elapsed());
                s.close().await;
                break;
            }
        }
    }
    // CLI push of 1 KiB against a running relay.
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    let dir = tempfile::tempdir()?;
    let home = Home::at(dir.path().join("home"));
    home.create(
        &sync_client::RelayList::one(relay.address.parse()?),
        &GroupSecret::generate(),
        None,
    )?;
    let mut cli_push = Vec::new();
    let mut cli_version = Vec::new();
    for i in 0..runs {
        let file = dir.path().join(format!("f{i}.bin"));
        std::fs::write(&file, random(1024))?;
        cli_version.push(time_command(
            Command::new(sibling("sync-cli")?).arg("--version"),
        )?);
        cli_push.push(time_command(
            Command::new(sibling("sync-cli")?)
                .arg("--home")
                .arg(home.dir())
                .arg("push")
                .arg(&file),
        )?);
    }
    let (rs, rv, cp, cv) = (
        Latency::of(relay_start),
        Latency::of(relay_version),
        Latency::of(cli_push),
        Latency::of(cli_version),
    );
    let mut table = Table::new(
        "Cold start",
        &["", "p50 ms", "max ms", "baseline p50 ms", "÷ baseline"],
    );
    table.row(vec![
        "relay: spawn → first Welcome".into(),
        ms(rs.p50),
        ms(rs.max),
        ms(rv.p50),
        ratio(rs.p50.as_secs_f64(), rv.p50.as_secs_f64()),
    ]);
    table.row(vec![
        "sync-cli push 1 KiB, end to end".into(),
        ms(cp.p50),
        ms(cp.max),
        ms(cv.p50),
        ratio(cp.p50.as_secs_f64(), cv.p50.as_secs_f64()),
    ]);
    table.note("Baselines: the same binary run with --version (process start and exit). The relay's start includes opening SQLite and running migrations; the push includes a QUIC handshake, Hello/Welcome and one push.");
    Ok(table)
}
