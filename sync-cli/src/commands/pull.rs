//! `pull [--out DIR] [--follow]`: fetch, decrypt, verify and write files.

use super::epochs::{Reporter, connect_to, pull_all};
use crate::output::{Out, Progress, json_line, short};
use anyhow::Result;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use sync_client::roster::LocalRoster;
use sync_client::util::human_size;
use sync_client::{Home, PullEvent, PullSummary, RetryPolicy};

/// The last line of `pull --json` (without --follow).
#[derive(Serialize, schemars::JsonSchema)]
#[serde(tag = "event", rename = "done")]
pub struct Done {
    /// What the pull did.
    #[serde(flatten)]
    pub summary: PullSummary,
}

/// Prints events; keeps one progress bar per file being received.
struct Printer {
    out: Out,
    bars: HashMap<String, Progress>,
}

impl Printer {
    fn event(&mut self, event: PullEvent) {
        if let PullEvent::Progress {
            name,
            received,
            total,
        } = &event
        {
            let out = self.out;
            self.bars
                .entry(name.clone())
                .or_insert_with(|| out.progress(name))
                .update(*received, *total);
            return;
        }
        if let PullEvent::File { name, .. }
        | PullEvent::Conflict { name, .. }
        | PullEvent::Outdated { name, .. } = &event
            && let Some(bar) = self.bars.remove(name)
        {
            bar.finish();
        }
        if self.out.json {
            if !matches!(event, PullEvent::Message { .. }) {
                json_line(&event);
            }
            return;
        }
        let human = self.out.human();
        match event {
            PullEvent::File {
                name, size, sender, ..
            } if human => {
                println!(
                    "received {name} ({}) from {}",
                    human_size(size),
                    short(&sender)
                );
            }
            PullEvent::Conflict {
                name,
                path,
                kept,
                size,
                sender,
                ..
            } if human => {
                println!(
                    "received {name} ({}) from {}, but {} differs here and was kept; saved the received file as {}",
                    human_size(size),
                    short(&sender),
                    kept.display(),
                    path.display()
                );
            }
            PullEvent::Outdated { name, sender, .. } => {
                eprintln!(
                    "warning: ignored an older version of {name} from device {}; this device has a newer one",
                    short(&sender)
                );
            }
            PullEvent::Message {
                cursor,
                sender,
                len,
                ..
            } if human => {
                println!(
                    "message of {len} bytes from {} at cursor {cursor}",
                    short(&sender)
                );
            }
            PullEvent::Abandoned {
                name: Some(name),
                sender,
            } if human => {
                println!(
                    "{} gave up pushing {name}; its partial copy was removed",
                    short(&sender)
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
                    "warning: blob at cursor {cursor} replays sequence number {seq} of device {}; ignored",
                    short(&sender)
                );
            }
            PullEvent::Gap {
                sender,
                first,
                last,
            } => {
                eprintln!(
                    "warning: blobs {first}..={last} of device {} are missing at the relay (withheld or expired)",
                    short(&sender)
                );
            }
            PullEvent::Withheld {
                sender,
                first,
                last,
                claimed_by,
            } => {
                eprintln!(
                    "warning: blobs {first}..={last} of device {} were withheld from this device: device {} received them, the relay never delivered them here (or they expired)",
                    short(&sender),
                    short(&claimed_by)
                );
            }
            // Reconnects are shown by the connection's status line
            // (`output::RetryStatus`); `--json` carries them as events.
            _ => {}
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

pub async fn pull(
    home: &Home,
    out_dir: &Path,
    follow: bool,
    policy: RetryPolicy,
    out: Out,
) -> Result<()> {
    // A home without a group says so before anything is created in it.
    home.connect_options(None)?;
    let _lock = home.lock_pull()?;
    let mut state = home.state()?;
    run(home, &mut state, out_dir, follow, policy, out).await
}

async fn run(
    home: &Home,
    state: &mut sync_client::StateStore,
    out_dir: &Path,
    follow: bool,
    policy: RetryPolicy,
    out: Out,
) -> Result<()> {
    let mut printer = Printer {
        out,
        bars: HashMap::new(),
    };
    if !follow {
        let summary =
            pull_all(home, state, out_dir, policy, out, &mut |e| printer.event(e)).await?;
        if out.json {
            json_line(&Done { summary });
        } else if out.human() {
            if summary.files == 0 {
                println!("nothing new (cursor {})", summary.cursor);
            } else if summary.conflicts > 0 {
                println!(
                    "up to date at cursor {} ({} files, {} saved as conflict copies)",
                    summary.cursor, summary.files, summary.conflicts
                );
            } else {
                println!(
                    "up to date at cursor {} ({} files)",
                    summary.cursor, summary.files
                );
            }
        }
        return Ok(());
    }
    // Follow the current epoch's group; a roster blob (a rotation, an
    // enrolment request…) ends the round, and the next one catches up
    // through every epoch and publishes before following again.
    let mut announced = false;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        pull_all(home, state, out_dir, policy, out, &mut |e| printer.event(e)).await?;
        let mut roster = LocalRoster::open(home)?;
        let secret = roster.chain.current().secret()?;
        let group = secret.keys().group_id();
        let (client, _retries) = connect_to(home, &secret, policy, out).await?;
        let roster_news = tokio::sync::Notify::new();
        let mut reporter = Reporter::new(out);
        let stopped = std::sync::atomic::AtomicBool::new(false);
        let result = client
            .follow(
                state,
                out_dir,
                &mut |e| match e {
                    PullEvent::Roster {
                        sender,
                        enrolment,
                        data,
                        ..
                    } => {
                        reporter.absorb(&mut roster, &group, &sender, enrolment, &data);
                        roster_news.notify_one();
                    }
                    e => {
                        if let PullEvent::Synced { cursor, .. } = &e
                            && !announced
                        {
                            announced = true;
                            if out.json {
                                json_line(
                                    &serde_json::json!({"event": "following", "cursor": cursor}),
                                );
                            } else if out.human() {
                                eprintln!("following at cursor {cursor}; press Ctrl-C to stop");
                            }
                        }
                        printer.event(e)
                    }
                },
                async {
                    tokio::select! {
                        _ = &mut shutdown => stopped.store(true, std::sync::atomic::Ordering::Relaxed),
                        _ = roster_news.notified() => {}
                    }
                },
            )
            .await;
        client.close().await;
        result?;
        if stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
    }
}
