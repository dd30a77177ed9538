//! Scenario 5: bulk. Push and pull one large file through `SyncClient`
//! (chunked, encrypted), each in its own process so its peak memory is its
//! own; throughput and peak RSS of client and relay. Baseline: raw iroh
//! single-stream throughput of the same volume in the same run.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, proc_memory, random};
use crate::raw::{EchoServer, bulk};
use crate::stats::{Table, mb_per_s, ratio};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};
use sync_client::{ConnectOptions, GroupSecret, PushOptions, RelayAddr, StateStore, SyncClient};

/// What a client process reports: bytes, seconds, peak RSS KiB.
fn parse_report(out: &str) -> Result<(u64, f64, u64)> {
    let line = out
        .lines()
        .find(|l| l.starts_with("BULK "))
        .context("no BULK line")?;
    let f: Vec<&str> = line.split_whitespace().collect();
    Ok((f[1].parse()?, f[2].parse()?, f[3].parse()?))
}

/// The client side, run as `sync-bench bulk-client MODE RELAY SECRET HOME PATH`.
pub async fn client(
    mode: &str,
    relay: &str,
    secret_hex: &str,
    home: &Path,
    path: &Path,
) -> Result<()> {
    let secret: [u8; 32] = hex_decode(secret_hex)?;
    let relay: RelayAddr = relay.parse()?;
    let opts = ConnectOptions {
        relay,
        keys: GroupSecret::from_bytes(secret).keys(),
        device_key: iroh::SecretKey::generate(),
        device_name: None,
        connect_timeout: Duration::from_secs(30),
        access_token: None,
    };
    std::fs::create_dir_all(home)?;
    let mut state = StateStore::open(home.join("state.json"))?;
    let client = SyncClient::connect(&opts).await?;
    let started = Instant::now();
    let bytes = match mode {
        "push" => {
            client
                .push_path(
                    &mut state,
                    path,
                    None,
                    &PushOptions::default(),
                    &mut |_, _| {},
                )
                .await?
                .size
        }
        "pull" => {
            let mut size = 0;
            client
                .pull(&mut state, path, &mut |e| {
                    if let sync_client::PullEvent::File { size: s, .. } = e {
                        size = s
                    }
                })
                .await?;
            size
        }
        other => bail!("unknown mode {other}"),
    };
    let secs = started.elapsed().as_secs_f64();
    client.close().await;
    let (_, hwm) = proc_memory(std::process::id());
    println!("BULK {bytes} {secs} {hwm}");
    std::io::stdout().flush()?;
    Ok(())
}

fn hex_decode(s: &str) -> Result<[u8; 32]> {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<_, _>>()?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("secret must be 32 bytes"))
}

fn spawn_client(
    mode: &str,
    relay: &Relay,
    secret: &str,
    home: &Path,
    path: &Path,
) -> Result<(u64, f64, u64)> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["bulk-client", mode, &relay.address, secret])
        .arg(home)
        .arg(path)
        .output()?;
    if !out.status.success() {
        bail!(
            "bulk {mode} client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    parse_report(&String::from_utf8_lossy(&out.stdout))
}

/// Run the scenario.
pub async fn run(size: Size) -> Result<Table> {
    let bytes: usize = size.pick(1 << 30, 8 << 20);
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bulk.bin");
    {
        let mut f = std::fs::File::create(&file)?;
        // Fresh random bytes for every MiB: a repeated block would let zstd
        // shrink chunks larger than the block and inflate the figures.
        for _ in 0..bytes >> 20 {
            f.write_all(&random(1 << 20))?;
        }
    }
    // The relay's default 1 MiB blobs; quotas and rate limits out of the way.
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    let secret = random(32);
    let secret_hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    let (pushed, push_s, push_hwm) =
        spawn_client("push", &relay, &secret_hex, &dir.path().join("a"), &file)?;
    let (pulled, pull_s, pull_hwm) = spawn_client(
        "pull",
        &relay,
        &secret_hex,
        &dir.path().join("b"),
        &dir.path().join("out"),
    )?;
    if pushed != bytes as u64 || pulled != bytes as u64 {
        bail!("bulk transfer incomplete: pushed {pushed}, pulled {pulled} of {bytes}");
    }
    let (_, relay_hwm) = relay.memory_kib();
    drop(relay);
    // Baseline: one raw stream of the same volume.
    let server = EchoServer::start().await?;
    let (ep, conn) = server.connect().await?;
    let chunk = random(1 << 20);
    let started = Instant::now();
    bulk(&conn, bytes as u64, &chunk).await?;
    let raw = started.elapsed();
    ep.close().await;
    server.close().await;
    let raw_mbps = mb_per_s(bytes as u64, raw);
    // Disk baseline: the pull writes the whole file from memory with
    // `write` and syncs it before the rename; doing just that is its floor.
    // (Not `fs::copy`: `copy_file_range` copies inside the kernel, which the
    // pull cannot.)
    let started = Instant::now();
    let copy = dir.path().join("copy.bin");
    {
        let mut f = std::fs::File::create(&copy)?;
        for _ in 0..bytes / chunk.len() {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let disk_mbps = mb_per_s(bytes as u64, started.elapsed());
    let push_mbps = bytes as f64 / 1e6 / push_s;
    let pull_mbps = bytes as f64 / 1e6 / pull_s;
    let mut table = Table::new(
        &format!("Bulk transfer of {} MiB through SyncClient", bytes >> 20),
        &[
            "",
            "MB/s",
            "÷ raw stream",
            "client peak RSS MiB",
            "relay peak RSS MiB",
        ],
    );
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    table.row(vec![
        "push (seal + send)".into(),
        format!("{push_mbps:.0}"),
        ratio(push_mbps, raw_mbps),
        mib(push_hwm),
        mib(relay_hwm),
    ]);
    table.row(vec![
        "pull (receive + open + write)".into(),
        format!("{pull_mbps:.0}"),
        ratio(pull_mbps, raw_mbps),
        mib(pull_hwm),
        "(same run)".into(),
    ]);
    table.row(vec![
        "raw iroh, one stream".into(),
        format!("{raw_mbps:.0}"),
        "1.00".into(),
        "–".into(),
        "–".into(),
    ]);
    table.row(vec![
        "disk: write the file + fsync".into(),
        format!("{disk_mbps:.0}"),
        ratio(disk_mbps, raw_mbps),
        "–".into(),
        "–".into(),
    ]);
    table.note(format!(
        "Targets: bulk at least 50 % of raw single-stream throughput, client and relay under 64 MiB. \
         The pull writes and fsyncs the file before renaming it: against the disk baseline it runs at {}.",
        ratio(pull_mbps, disk_mbps)
    ));
    Ok(table)
}
