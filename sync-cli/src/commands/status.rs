//! `status`: this device, its group, local state, relay reachability.

use crate::output::{Out, connect, json_line, short};
use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};
use sync_client::journal::Journals;
use sync_client::receive::{gap_events, withheld_events};
use sync_client::util::human_size;
use sync_client::{Home, PullEvent, RetryPolicy};

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
    /// The relay address.
    pub relay: String,
    /// Whether a session could be opened now.
    pub relay_reachable: bool,
    /// Why not, if not.
    pub relay_error: Option<String>,
    /// Round-trip time to the relay in milliseconds.
    pub relay_rtt_ms: Option<f64>,
    /// The group's head cursor at the relay.
    pub group_head: Option<u64>,
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
        relay: group.relay.clone(),
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
        withheld: withheld_events(&state.state),
    };
    let started = Instant::now();
    match connect(&opts, policy, out).await {
        Ok((client, _retries)) => {
            let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
            let session = client.session();
            status.relay_reachable = true;
            status.group_head = Some(session.welcome().head_cursor);
            status.relay_rtt_ms = Some(
                session
                    .rtt()
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(connect_ms),
            );
            client.close().await;
        }
        Err(e) => status.relay_error = Some(e.to_string()),
    }
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
    println!("relay:     {}", status.relay);
    match (&status.relay_error, status.relay_rtt_ms, status.group_head) {
        (None, Some(rtt), Some(head)) => {
            println!("reachable: yes, round trip {rtt:.1} ms");
            println!("head:      {head}");
        }
        (Some(err), _, _) => println!("reachable: no ({err})"),
        _ => println!("reachable: unknown"),
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
