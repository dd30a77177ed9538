//! `status`: this device, its group, local state, relay reachability.

use crate::output::{Out, json_line, retry_display, short};
use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};
use sync_client::journal::Journals;
use sync_client::receive::{gap_events, withheld_events};
use sync_client::util::human_size;
use sync_client::{
    ClientError, ConnectOptions, Home, LinkState, PullEvent, RetryPolicy, SyncClient,
};

/// A push that has not finished.
#[derive(Serialize, schemars::JsonSchema)]
pub struct PendingPush {
    /// File name.
    pub name: String,
    /// Source path (None for stdin).
    pub source: Option<String>,
    /// Chunks acknowledged by the relay.
    pub acked_chunks: u32,
    /// Chunks in all (None when unknown).
    pub chunks: Option<u32>,
}

/// A file being received.
#[derive(Serialize, schemars::JsonSchema)]
pub struct PendingPull {
    /// File name.
    pub name: String,
    /// Bytes received so far.
    pub received: u64,
    /// Its size, when known.
    pub total: Option<u64>,
}

/// One relay of the group, as `status` found it.
#[derive(Serialize, schemars::JsonSchema)]
pub struct RelayStatus {
    /// Its address, `NODE_ID@HOST:PORT`.
    pub address: String,
    /// True for the relay this device used last, which commands try first.
    pub current: bool,
    /// Whether a session could be opened now.
    pub reachable: bool,
    /// Round-trip time in milliseconds, when reachable.
    pub rtt_ms: Option<f64>,
    /// The group's head cursor there, when reachable.
    pub group_head: Option<u64>,
    /// Why it is unreachable, or why it cannot be used (its head is behind
    /// this device's cursor: not an instance of the group's cluster).
    pub error: Option<String>,
}

/// `--json` output of `status`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct StatusOut {
    /// The device home.
    pub home: String,
    /// This device's node id (hex).
    pub device_id: String,
    /// The group id (hex).
    pub group_id: String,
    /// The group's name.
    pub group_name: Option<String>,
    /// The relay a command would use now: the current one if it is
    /// usable, else the first usable one in failover order (else the
    /// current one).
    pub relay: String,
    /// Whether a session could be opened with it now.
    pub relay_reachable: bool,
    /// Why not, if not.
    pub relay_error: Option<String>,
    /// Round-trip time to it in milliseconds.
    pub relay_rtt_ms: Option<f64>,
    /// The group's head cursor there.
    pub group_head: Option<u64>,
    /// Every relay of the group, in the order of `group.toml` (first
    /// preferred).
    pub relays: Vec<RelayStatus>,
    /// Everything up to this cursor has been applied here.
    pub local_cursor: u64,
    /// The next sequence number this device will use.
    pub next_seq: u64,
    /// Unfinished pushes (resume by pushing the file again).
    pub pending_pushes: Vec<PendingPush>,
    /// Files partly received.
    pub pending_pulls: Vec<PendingPull>,
    /// Blobs that failed to decrypt or verify, ever.
    pub rejected_blobs: u64,
    /// Blobs that replayed a sequence number, ever.
    pub replayed_blobs: u64,
    /// Missing sequence ranges per sender.
    pub gaps: Vec<PullEvent>,
    /// Sequence ranges other members received and the relay never
    /// delivered here, per sender (`withheld` events; docs/security.md).
    pub withheld: Vec<PullEvent>,
}

pub async fn status(home: &Home, policy: RetryPolicy, out: Out) -> Result<()> {
    let group = home.group()?;
    let state = home.state()?;
    let mut opts = home.connect_options(None)?;
    opts.connect_timeout = Duration::from_secs(5);
    let relays = home.relays()?;
    let current = opts.relay.clone();
    let pending_pushes = Journals::at(home.dir().join("transfers"))
        .list()?
        .into_iter()
        .filter(|j| j.complete.is_none())
        .map(|j| PendingPush {
            name: j.name,
            source: j.source.map(|s| s.path.display().to_string()),
            acked_chunks: j.acked,
            chunks: j.chunks,
        })
        .collect();
    let mut status = StatusOut {
        home: home.dir().display().to_string(),
        device_id: home.device_key()?.public().to_string(),
        group_id: opts.keys.group_id().to_string(),
        group_name: group.name.clone(),
        relay: current.to_string(),
        relay_reachable: false,
        relay_error: None,
        relay_rtt_ms: None,
        group_head: None,
        local_cursor: state.state.cursor,
        next_seq: state.next_seq()?,
        pending_pushes,
        pending_pulls: state
            .state
            .partials
            .values()
            .map(|p| PendingPull {
                name: p.name.clone(),
                received: p.bytes,
                total: p.end.as_ref().map(|e| e.1).or(p.size_hint),
            })
            .collect(),
        rejected_blobs: state.state.rejected,
        replayed_blobs: state.state.replays,
        gaps: gap_events(&state.state),
        relays: Vec::new(),
        withheld: withheld_events(&state.state),
    };
    drop(group);
    // Every relay at once, each with the whole retry budget; the retry
    // lines are shown when there is one relay (several would interleave).
    let display = (relays.len() == 1).then(|| retry_display(out));
    let probes = relays.as_slice().iter().map(|relay| {
        let mut opts = opts.clone();
        opts.relay = relay.clone();
        let link = display.as_ref().map(|(link, _)| link.clone());
        let cursor = status.local_cursor;
        let current = *relay == current;
        async move { probe(&opts, policy, link, cursor, current).await }
    });
    status.relays = futures::future::join_all(probes).await;
    drop(display);
    // The relay a command would use: the current one, else the first usable
    // one in failover order (after the current one).
    let start = relays.position(&current).unwrap_or(0);
    let used = std::iter::once(start)
        .chain(relays.rotation(start + 1))
        .map(|i| &status.relays[i])
        .find(|r| r.reachable && r.error.is_none())
        .unwrap_or(&status.relays[start]);
    status.relay = used.address.clone();
    status.relay_reachable = used.reachable;
    status.relay_error = used.error.clone();
    status.relay_rtt_ms = used.rtt_ms;
    status.group_head = used.group_head;
    if out.json {
        json_line(&status);
        return Ok(());
    }
    if out.quiet {
        return Ok(());
    }
    println!("home:      {}", status.home);
    println!("device:    {}", status.device_id);
    println!(
        "group:     {}{}",
        status.group_id,
        status
            .group_name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    if status.relays.len() == 1 {
        println!("relay:     {}", status.relay);
        print_reachable("reachable: ", &status.relays[0]);
    } else {
        println!("relays:    (in failover order; * = current)");
        for r in &status.relays {
            let mark = if r.current { "*" } else { " " };
            println!("  {mark} {}", r.address);
            print_reachable("      ", r);
        }
    }
    println!("cursor:    {}", status.local_cursor);
    for p in &status.pending_pushes {
        println!(
            "pushing:   {} ({} of {} chunks acknowledged; push it again to resume)",
            p.name,
            p.acked_chunks,
            p.chunks
                .map(|c| c.to_string())
                .unwrap_or_else(|| "?".into())
        );
    }
    for p in &status.pending_pulls {
        println!(
            "receiving: {} ({} of {})",
            p.name,
            human_size(p.received),
            p.total.map(human_size).unwrap_or_else(|| "?".into())
        );
    }
    if status.rejected_blobs + status.replayed_blobs > 0
        || !status.gaps.is_empty()
        || !status.withheld.is_empty()
    {
        println!(
            "integrity: {} rejected, {} replayed, {} gaps, {} withheld — blobs were altered, replayed or withheld",
            status.rejected_blobs,
            status.replayed_blobs,
            status.gaps.len(),
            status.withheld.len()
        );
        for w in &status.withheld {
            if let PullEvent::Withheld {
                sender,
                first,
                last,
                claimed_by,
            } = w
            {
                println!(
                    "withheld:  blobs {first}..={last} of device {} (device {} received them)",
                    short(sender),
                    short(claimed_by)
                );
            }
        }
    } else {
        println!("integrity: ok");
    }
    Ok(())
}

fn print_reachable(prefix: &str, r: &RelayStatus) {
    match (&r.error, r.rtt_ms, r.group_head) {
        (Some(err), _, _) if r.reachable => println!("{prefix}yes, but not usable ({err})"),
        (None, Some(rtt), Some(head)) => {
            println!("{prefix}yes, round trip {rtt:.1} ms, head {head}")
        }
        (Some(err), _, _) => println!("{prefix}no ({err})"),
        _ => println!("{prefix}unknown"),
    }
}

/// Open a session with one relay (retrying per `policy`), measure it and
/// close it. A relay whose head is below `cursor` is reachable but not
/// usable ([`ClientError::RelayBehind`]).
async fn probe(
    opts: &ConnectOptions,
    policy: RetryPolicy,
    link: Option<tokio::sync::watch::Sender<LinkState>>,
    cursor: u64,
    current: bool,
) -> RelayStatus {
    let mut status = RelayStatus {
        address: opts.relay.to_string(),
        current,
        reachable: false,
        rtt_ms: None,
        group_head: None,
        error: None,
    };
    let started = Instant::now();
    let link = link
        .unwrap_or_else(|| tokio::sync::watch::channel(LinkState::Connected { generation: 1 }).0);
    match SyncClient::connect_reporting(opts, policy, link).await {
        Ok(client) => {
            let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
            let session = client.session();
            let head = session.welcome().head_cursor;
            status.reachable = true;
            status.group_head = Some(head);
            status.rtt_ms = Some(
                session
                    .rtt()
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(connect_ms),
            );
            if head < cursor {
                status.error = Some(
                    ClientError::RelayBehind {
                        relay: status.address.clone(),
                        head,
                        known: cursor,
                    }
                    .to_string(),
                );
            }
            client.close().await;
        }
        Err(e) => status.error = Some(e.to_string()),
    }
    status
}
