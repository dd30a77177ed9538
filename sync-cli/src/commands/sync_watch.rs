//! `sync DIR --watch` (docs/client.md "Folder sync", "Watch mode"): runs
//! of `sync DIR`, one at a time, whenever `sync_folder::watch::Watcher`
//! says (local changes, a new head, the periodic rescan), until Ctrl-C or
//! SIGTERM. This module only wires the watcher to the runs and keeps the
//! watcher fed with the group's head from a session of its own.

use super::epochs::{connect_to, is_group_closed};
use super::sync::{print, run};
use crate::output::{Out, json_line};
use anyhow::Result;
use serde::Serialize;
use std::time::Duration;
use sync_client::roster::LocalRoster;
use sync_client::{Home, RetryPolicy};
use sync_folder::watch::{Trigger, WatchOptions, Watcher};
use sync_folder::{Folder, Report};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{oneshot, watch};

/// A `--json` line per run.
#[derive(Serialize)]
struct RunLine<'a> {
    event: &'static str,
    trigger: &'static str,
    #[serde(flatten)]
    report: &'a Report,
}

/// A `--json` line per failed run.
#[derive(Serialize)]
struct FailedLine<'a> {
    event: &'static str,
    trigger: &'static str,
    error: &'a str,
    retry_in_ms: u64,
}

fn name(t: Trigger) -> &'static str {
    match t {
        Trigger::Local => "local",
        Trigger::Remote { .. } => "remote",
        Trigger::Rescan => "rescan",
        Trigger::Retry => "retry",
    }
}

/// True when the run changed or reported something worth a human line.
fn eventful(r: &Report) -> bool {
    !(r.applied.is_empty()
        && r.moved_aside.is_empty()
        && r.conflicts.is_empty()
        && r.dropped.is_empty()
        && r.pending.is_empty()
        && r.records_refused.is_empty()
        && r.ops_sent == 0
        && r.uploaded.is_empty())
}

pub async fn watch(
    home: &Home,
    folder: &Folder,
    ttl_s: Option<u32>,
    policy: RetryPolicy,
    out: Out,
    opts: WatchOptions,
) -> Result<()> {
    // Signals first: from here on Ctrl-C and SIGTERM stop us cleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut watcher = Watcher::new(folder.root(), opts)?;
    let mut feed = HeadFeed::start(home, policy, out, &mut watcher)?;
    if out.json {
        json_line(&serde_json::json!({
            "event": "watching",
            "dir": folder.root(),
            "rescan_s": opts.rescan.as_secs(),
        }));
    } else if out.human() {
        eprintln!("watching {}; press Ctrl-C to stop", folder.root().display());
    }
    let result = loop {
        let trigger = tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            t = watcher.next() => t,
        };
        tracing::debug!(?trigger, "folder run");
        // A signal aborts the run where it is: every step of a run is
        // crash-safe (docs/client.md "Folder sync"), so stopping at any
        // await is as safe as a crash, and cleaner.
        let ran = tokio::select! {
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
            r = run(home, folder, ttl_s, policy, out) => r,
        };
        match ran {
            Ok((report, head)) => {
                watcher.synced(head);
                if report.records_sent > 0 {
                    // Its own records are folded by the next pull.
                    watcher.again();
                }
                if out.json {
                    json_line(&RunLine {
                        event: "run",
                        trigger: name(trigger),
                        report: &report,
                    });
                } else if eventful(&report) {
                    print(&report, out);
                }
            }
            Err(e) if is_group_closed(&e) => break Err(e),
            Err(e) => {
                watcher.failed();
                let retry = watcher.retry_in().unwrap_or_default();
                if out.json {
                    json_line(&FailedLine {
                        event: "run_failed",
                        trigger: name(trigger),
                        error: &format!("{e:#}"),
                        retry_in_ms: retry.as_millis() as u64,
                    });
                } else {
                    eprintln!("warning: sync run failed: {e:#}; retrying in {retry:?}");
                }
            }
        }
        // After a key rotation the head to follow is the new epoch's.
        if current_group(home).is_ok_and(|g| g != feed.group) {
            feed.stop().await;
            feed = HeadFeed::start(home, policy, out, &mut watcher)?;
        }
    };
    feed.stop().await;
    result
}

fn current_group(home: &Home) -> Result<String> {
    let roster = LocalRoster::open(home)?;
    Ok(roster.chain.current().group_id.clone())
}

/// A task keeping a session to the current epoch's group open and its
/// head (NOTIFY) in the watcher's channel, reconnecting (1 s backoff,
/// doubling to 60 s) when the session ends.
struct HeadFeed {
    group: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Longest wait between two attempts to reopen the head's session.
const MAX_FEED_BACKOFF: Duration = Duration::from_secs(60);

impl HeadFeed {
    fn start(
        home: &Home,
        policy: RetryPolicy,
        out: Out,
        watcher: &mut Watcher,
    ) -> Result<HeadFeed> {
        let group = current_group(home)?;
        let (tx, rx) = watch::channel(0);
        watcher.set_heads(rx);
        let (stop, mut stopped) = oneshot::channel();
        let home = home.clone();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let connected = async {
                    let roster = LocalRoster::open(&home)?;
                    let secret = roster.chain.current().secret()?;
                    connect_to(&home, &secret, policy, out).await
                };
                let client = tokio::select! {
                    _ = &mut stopped => return,
                    c = connected => c,
                };
                match client {
                    Ok((client, _)) => {
                        backoff = Duration::from_secs(1);
                        let mut heads = client.heads();
                        let session = client.session();
                        let stalled = session.stalled(policy.stall_timeout);
                        tokio::pin!(stalled);
                        let stop_now = loop {
                            tx.send_replace(*heads.borrow_and_update());
                            tokio::select! {
                                _ = &mut stopped => break true,
                                changed = heads.changed() => if changed.is_err() { break false },
                                _ = &mut stalled => break false,
                            }
                        };
                        client.close().await;
                        if stop_now {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "following the group's head");
                        if !out.quiet {
                            eprintln!(
                                "warning: cannot follow the group's changes: {e:#}; retrying in {backoff:?}"
                            );
                        }
                    }
                }
                tokio::select! {
                    _ = &mut stopped => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_FEED_BACKOFF);
            }
        });
        Ok(HeadFeed { group, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}
