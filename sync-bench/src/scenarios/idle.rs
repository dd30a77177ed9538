//! Scenario 4: idle sessions. Open `sessions` authenticated sessions (10,000
//! by default) from `processes` client processes (4 by default: on two
//! cores the client side is part of what limits the accept rate), each
//! process with client endpoints of `per_endpoint` sessions (one UDP socket
//! each) and groups of 200; relay memory per session (RSS and jemalloc's
//! live heap) and the rate at which the relay accepted them.
//!
//! A client process is `sync-bench idle-client RELAY SESSIONS PER_ENDPOINT
//! IN_FLIGHT`: it binds its endpoints, prints `READY`, waits for a line on
//! stdin, opens its sessions (at most `IN_FLIGHT` dials at once), prints
//! `OPEN <open> <failed> <seconds> <client RSS KiB>`, keeps them open until
//! stdin closes, then closes them.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, bench_config_sessions, proc_memory};
use crate::stats::Table;
use anyhow::{Context, Result, bail};
use futures::StreamExt;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, RelaySession};

/// Sessions in one group.
const GROUP_SIZE: usize = 200;

/// What to run.
#[derive(Debug, Clone)]
pub struct Idle {
    /// Sessions to open in all.
    pub sessions: usize,
    /// Client processes sharing them.
    pub processes: usize,
    /// Sessions per client endpoint (UDP socket).
    pub per_endpoint: usize,
    /// Dials in flight at once in each client process.
    pub in_flight: usize,
    /// The relay's `network.segmentation_offload`.
    pub segmentation_offload: bool,
}

impl Idle {
    /// 10,000 sessions from 4 processes (tiny: 50 from 2).
    pub fn for_size(size: Size) -> Idle {
        Idle {
            sessions: size.pick(10_000, 50),
            processes: size.pick(4, 2),
            per_endpoint: 100,
            in_flight: 64,
            segmentation_offload: true,
        }
    }
}

/// The client side, run as `sync-bench idle-client RELAY SESSIONS
/// PER_ENDPOINT IN_FLIGHT`.
pub async fn client(
    relay: &str,
    sessions: usize,
    per_endpoint: usize,
    in_flight: usize,
) -> Result<()> {
    let addr: sync_client::RelayAddr = relay.parse()?;
    let per_endpoint = per_endpoint.max(1);
    let quic = *addr
        .resolve()
        .await?
        .first()
        .context("the relay address resolves to nothing")?;
    let mut endpoints = Vec::new();
    for _ in 0..sessions.div_ceil(per_endpoint) {
        endpoints.push(sync_client::endpoint::bind(iroh::SecretKey::generate(), quic).await?);
    }
    let groups: Vec<_> = (0..sessions.div_ceil(GROUP_SIZE))
        .map(|_| GroupSecret::generate().keys())
        .collect();
    println!("READY");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let started = Instant::now();
    let dials = futures::stream::iter(0..sessions)
        .map(|i| {
            let ep = &endpoints[i / per_endpoint];
            let opts = sync_client::ConnectOptions {
                relay: addr.clone(),
                keys: groups[i / GROUP_SIZE].clone(),
                device_key: iroh::SecretKey::generate(),
                device_name: None,
                connect_timeout: Duration::from_secs(60),
                access_token: None,
            };
            async move { RelaySession::connect_on(ep, &opts).await }
        })
        .buffer_unordered(in_flight.max(1));
    let results: Vec<_> = dials.collect().await;
    let elapsed = started.elapsed();
    let mut open = Vec::new();
    let mut failed = 0usize;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(s) => open.push(s),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    if let Some(e) = first_error {
        eprintln!("idle-client: {failed} dials failed, the first: {e}");
    }
    let (rss, _) = proc_memory(std::process::id());
    println!(
        "OPEN {} {failed} {:.3} {rss}",
        open.len(),
        elapsed.as_secs_f64()
    );
    std::io::stdout().flush()?;
    // Keep the sessions until the scenario closes stdin.
    let mut rest = String::new();
    while std::io::stdin().read_line(&mut rest)? > 0 {}
    for s in &open {
        s.close().await;
    }
    for ep in endpoints {
        ep.close().await;
    }
    Ok(())
}

/// One client process: its stdin (closing it ends the process) and the
/// lines it prints.
struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
}

impl ClientProcess {
    fn spawn(relay: &Relay, sessions: usize, idle: &Idle) -> Result<ClientProcess> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["idle-client", &relay.address])
            .arg(sessions.to_string())
            .arg(idle.per_endpoint.to_string())
            .arg(idle.in_flight.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting an idle client")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Ok(ClientProcess {
            child,
            stdin,
            lines,
        })
    }

    /// The next line starting with `prefix`, within `deadline`.
    fn expect(&self, prefix: &str, deadline: Duration) -> Result<String> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .with_context(|| format!("an idle client printed no {prefix} line"))?;
            if line.starts_with(prefix) {
                return Ok(line);
            }
        }
    }

    fn go(&mut self) -> Result<()> {
        let stdin = self.stdin.as_mut().context("stdin closed")?;
        stdin.write_all(b"GO\n")?;
        stdin.flush()?;
        Ok(())
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        // The client closes its sessions and exits once stdin is closed;
        // kill it if it has not within a generous deadline.
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `OPEN open failed seconds rss_kib`.
fn parse_open(line: &str) -> Result<(usize, usize, f64, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.len() != 5 || f[0] != "OPEN" {
        bail!("not an OPEN line: {line:?}");
    }
    Ok((f[1].parse()?, f[2].parse()?, f[3].parse()?, f[4].parse()?))
}

/// Run the scenario.
pub async fn run(idle: Idle) -> Result<Table> {
    let processes = idle.processes.clamp(1, idle.sessions.max(1));
    let relay = Relay::start_with(&bench_config_sessions(
        DEFAULT_MAX_BLOB_SIZE,
        u32::try_from(idle.sessions + 100).unwrap_or(u32::MAX),
        idle.segmentation_offload,
    ))?;
    let mut clients = Vec::new();
    for p in 0..processes {
        let share = idle.sessions / processes + usize::from(p < idle.sessions % processes);
        clients.push(ClientProcess::spawn(&relay, share, &idle)?);
    }
    for c in &clients {
        c.expect("READY", Duration::from_secs(120))?;
    }
    let (rss_before, _) = relay.memory_kib();
    let heap_before = relay.heap_allocated().await?;
    let started = Instant::now();
    for c in &mut clients {
        c.go()?;
    }
    let mut open = 0usize;
    let mut failed = 0usize;
    let mut client_rss = 0u64;
    let deadline = Duration::from_secs(120 + idle.sessions as u64 / 10);
    for c in &clients {
        let (o, f, _, rss) = parse_open(&c.expect("OPEN", deadline)?)?;
        open += o;
        failed += f;
        client_rss = client_rss.max(rss);
    }
    let accept = started.elapsed();
    // The relay counts a session once its Welcome is sent; every client saw
    // its Welcomes, so the count is final. Read memory once the relay's
    // allocator has had a moment to settle its per-thread caches.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_after, hwm) = relay.memory_kib();
    let heap_after = relay.heap_allocated().await?;
    let per_session = (rss_after.saturating_sub(rss_before)) as f64 / open.max(1) as f64;
    let heap_per_session =
        heap_after.saturating_sub(heap_before) as f64 / 1024.0 / open.max(1) as f64;
    let mut table = Table::new(
        "Idle sessions",
        &[
            "sessions open",
            "failed",
            "client processes",
            "relay GSO",
            "accept time s",
            "sessions/s",
            "relay RSS before MiB",
            "relay RSS after MiB",
            "per session KiB",
            "live heap per session KiB",
            "relay peak MiB",
            "client peak RSS MiB (largest process)",
        ],
    );
    table.row(vec![
        open.to_string(),
        failed.to_string(),
        processes.to_string(),
        if idle.segmentation_offload {
            "on"
        } else {
            "off"
        }
        .to_string(),
        format!("{:.2}", accept.as_secs_f64()),
        format!("{:.0}", open as f64 / accept.as_secs_f64()),
        format!("{:.1}", rss_before as f64 / 1024.0),
        format!("{:.1}", rss_after as f64 / 1024.0),
        format!("{per_session:.1}"),
        format!("{heap_per_session:.1}"),
        format!("{:.1}", hwm as f64 / 1024.0),
        format!("{:.1}", client_rss as f64 / 1024.0),
    ]);
    table.note(format!(
        "Targets: 100,000 idle sessions under 2 GiB relay RSS (≤ 20 KiB each) accepted at ≥ 2,000/s; 10,000 under 512 MiB. \
         Sessions are opened from {processes} client processes, {} per client endpoint (one UDP socket), at most {} dials in flight per process, in groups of {GROUP_SIZE}. \
         The accept time runs from the signal to dial (endpoints already bound) to the last process's last Welcome. \
         The live heap is jemalloc's `stats.allocated` (relay metric `sync_relay_heap_allocated_bytes`).",
        idle.per_endpoint, idle.in_flight
    ));
    drop(clients);
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_line_is_parsed_and_other_lines_refused() {
        assert_eq!(
            parse_open("OPEN 100 2 1.500 20480").unwrap(),
            (100, 2, 1.5, 20480)
        );
        assert!(parse_open("READY").is_err());
        assert!(parse_open("OPEN 1 2 3").is_err());
    }
}
