//! `pull [--out DIR] [--follow]`: fetch, decrypt, verify and write files.

use crate::output::{json_line, short};
use anyhow::{Result, bail};
use serde::Serialize;
use std::path::Path;
use sync_client::util::human_size;
use sync_client::{Home, PullEvent, PullSummary, SyncClient};

#[derive(Serialize)]
#[serde(tag = "event", rename = "done")]
struct Done<'a> {
    #[serde(flatten)]
    summary: &'a PullSummary,
}

fn print_event(event: &PullEvent, json: bool) {
    if json {
        if !matches!(event, PullEvent::Message { .. }) {
            json_line(event);
        }
        return;
    }
    match event {
        PullEvent::File {
            name, size, sender, ..
        } => {
            println!(
                "received {name} ({}) from {}",
                human_size(*size),
                short(sender)
            );
        }
        PullEvent::Message {
            cursor,
            sender,
            len,
            ..
        } => {
            println!(
                "message of {len} bytes from {} at cursor {cursor}",
                short(sender)
            );
        }
        PullEvent::Rejected { cursor, reason, .. } => {
            eprintln!("warning: blob at cursor {cursor} rejected: {reason}");
        }
        PullEvent::Replay {
            cursor,
            sender,
            seq,
        } => {
            eprintln!(
                "warning: blob at cursor {cursor} replays sequence number {seq} of {}; ignored",
                short(sender)
            );
        }
        PullEvent::Gap {
            sender,
            first,
            last,
        } => {
            eprintln!(
                "warning: blobs {first}..={last} of device {} are missing at the relay (withheld or expired)",
                short(sender)
            );
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub async fn pull(home: &Home, out: &Path, follow: bool, json: bool) -> Result<()> {
    let opts = home.connect_options(None)?;
    let _lock = home.lock_pull()?;
    let mut state = home.state()?;
    let client = SyncClient::connect(&opts).await?;
    let mut heads = client.subscribe();
    let mut printer = |e: PullEvent| print_event(&e, json);
    let summary = client.pull(&mut state, out, &mut printer).await?;
    if !follow {
        if json {
            json_line(&Done { summary: &summary });
        } else if summary.files == 0 {
            println!("nothing new (cursor {})", summary.cursor);
        } else {
            println!(
                "up to date at cursor {} ({} files)",
                summary.cursor, summary.files
            );
        }
        client.close().await;
        return Ok(());
    }
    if json {
        json_line(&serde_json::json!({"event": "following", "cursor": summary.cursor}));
    } else {
        eprintln!(
            "following at cursor {}; press Ctrl-C to stop",
            summary.cursor
        );
    }
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => {
                client.close().await;
                return Ok(());
            }
            changed = heads.changed() => {
                if changed.is_err() {
                    bail!("lost the connection to the relay; run pull again");
                }
                let head = *heads.borrow_and_update();
                if head > state.state.cursor {
                    client.pull(&mut state, out, &mut printer).await?;
                }
            }
        }
    }
}
