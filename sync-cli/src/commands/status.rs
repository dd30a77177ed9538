//! `status`: this device, its group, local state, relay reachability.

use crate::output::json_line;
use anyhow::Result;
use serde::Serialize;
use std::time::{Duration, Instant};
use sync_client::receive::gap_events;
use sync_client::{Home, PullEvent, RelaySession};

#[derive(Serialize)]
struct Status {
    home: String,
    device_id: String,
    group_id: String,
    group_name: Option<String>,
    relay: String,
    relay_reachable: bool,
    relay_error: Option<String>,
    relay_rtt_ms: Option<f64>,
    group_head: Option<u64>,
    local_cursor: u64,
    next_seq: u64,
    partial_files: Vec<String>,
    rejected_blobs: u64,
    replayed_blobs: u64,
    gaps: Vec<PullEvent>,
}

pub async fn status(home: &Home, json: bool) -> Result<()> {
    let group = home.group()?;
    let state = home.state()?;
    let mut opts = home.connect_options(None)?;
    opts.connect_timeout = Duration::from_secs(5);
    let mut status = Status {
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
        partial_files: state
            .state
            .partials
            .values()
            .map(|p| p.name.clone())
            .collect(),
        rejected_blobs: state.state.rejected,
        replayed_blobs: state.state.replays,
        gaps: gap_events(&state.state),
    };
    let started = Instant::now();
    match RelaySession::connect(&opts).await {
        Ok(session) => {
            let connect_ms = started.elapsed().as_secs_f64() * 1000.0;
            status.relay_reachable = true;
            status.group_head = Some(session.welcome().head_cursor);
            status.relay_rtt_ms = Some(
                session
                    .rtt()
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .unwrap_or(connect_ms),
            );
            session.close().await;
        }
        Err(e) => status.relay_error = Some(e.to_string()),
    }
    if json {
        json_line(&status);
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
    if !status.partial_files.is_empty() {
        println!("receiving: {}", status.partial_files.join(", "));
    }
    if status.rejected_blobs + status.replayed_blobs > 0 || !status.gaps.is_empty() {
        println!(
            "integrity: {} rejected, {} replayed, {} gaps",
            status.rejected_blobs,
            status.replayed_blobs,
            status.gaps.len()
        );
    } else {
        println!("integrity: ok");
    }
    Ok(())
}
