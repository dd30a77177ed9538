//! `sync DIR`: one run of folder sync (docs/client.md "Folder sync"), and
//! `status DIR`: what is pending. Thin over `sync-folder`: this module only
//! wires the pull of every key epoch (`epochs::pull_all`, rosters and
//! invites included) and the connection to the library's steps.

use super::epochs::{connect_to, pull_all};
use super::push::check_roster;
use crate::output::{Out, json_line};
use anyhow::{Context, Result, bail};
use std::path::Path;
use sync_client::roster::LocalRoster;
use sync_client::util::parse_duration;
use sync_client::{Home, PullEvent, RetryPolicy};
use sync_folder::catchup::PullSigns;
use sync_folder::{Folder, Report};

async fn open(home: &Home, dir: &Path) -> Result<Folder> {
    let roster = LocalRoster::open(home)?;
    let device = roster.device_name();
    Ok(Folder::open(home.dir(), dir, &device).await?)
}

/// `sync DIR`: one run, or with `watch` (`--watch`) runs until Ctrl-C or
/// SIGTERM (see `sync_watch`).
pub async fn sync(
    home: &Home,
    dir: &Path,
    ttl: Option<String>,
    policy: RetryPolicy,
    out: Out,
    watch: Option<sync_folder::watch::WatchOptions>,
) -> Result<()> {
    home.connect_options(None)?;
    let ttl_s = match ttl {
        Some(t) => Some(u32::try_from(parse_duration(&t)?).context("--ttl is too long")?),
        None => None,
    };
    let _lock = home.lock_pull()?;
    let folder = open(home, dir).await?;
    let result = match watch {
        Some(opts) => super::sync_watch::watch(home, &folder, ttl_s, policy, out, opts).await,
        None => run(home, &folder, ttl_s, policy, out)
            .await
            .map(|(report, _)| print(&report, out)),
    };
    folder.close().await;
    result
}

/// One run; the report and the group's head its pull reached (the
/// highest of the current epoch's head and cursor).
pub(super) async fn run(
    home: &Home,
    folder: &Folder,
    ttl_s: Option<u32>,
    policy: RetryPolicy,
    out: Out,
) -> Result<(Report, u64)> {
    let mut report = Report::default();
    let mut state = home.state()?;
    // 1. Pull every epoch into the staging directory, keeping folder
    //    records durably as they arrive.
    let mut failure: Option<sync_folder::FolderError> = None;
    //    Gaps and withheld ranges are kept: blobs gone for good, which a
    //    manifest may stand in for.
    let incoming = folder.incoming_dir();
    let mut signs = PullSigns::default();
    let pulled = pull_all(
        home,
        &mut state,
        &incoming,
        policy,
        out,
        &mut |e| match &e {
            PullEvent::Message {
                cursor,
                sender,
                seq,
                data,
                ..
            } => {
                if failure.is_none()
                    && let Err(err) = folder.receive(*cursor, sender, *seq, data)
                {
                    failure = Some(err);
                }
            }
            PullEvent::Gap {
                sender,
                first,
                last,
            }
            | PullEvent::Withheld {
                sender,
                first,
                last,
                ..
            } => signs.gap(sender, *first, *last),
            _ => {}
        },
    )
    .await?;
    if let Some(err) = failure {
        return Err(err.into());
    }
    signs.head = pulled.head;
    let head = pulled.head.max(state.state.cursor);
    // 2. Fold and reconcile.
    folder
        .fold_after_pull(state.state.cursor, &signs, &mut report)
        .await?;
    folder.reconcile(&mut report).await?;
    // 3. Push this device's changes.
    check_roster(home)?;
    let roster = LocalRoster::open(home)?;
    let secret = roster.chain.current().secret()?;
    let (client, _retries) = connect_to(home, &secret, policy, out).await?;
    if let Some(t) = ttl_s {
        let max = client.session().welcome().max_ttl_s;
        if t > max {
            client.close().await;
            bail!("--ttl is longer than this relay allows ({max} s)");
        }
    }
    let pushed = folder.push(&client, &mut state, ttl_s, &mut report).await;
    client.close().await;
    pushed?;
    Ok((report, head))
}

pub(super) fn print(report: &Report, out: Out) {
    if out.json {
        json_line(report);
        return;
    }
    for (p, why) in &report.skipped {
        if !out.quiet {
            eprintln!("skipped {p:?}: {why}");
        }
    }
    for r in &report.records_refused {
        eprintln!("warning: a folder record was refused: {r}");
    }
    for (p, why) in &report.dropped {
        eprintln!("warning: a change to {p:?} was not applied: {why}");
    }
    if let Some(w) = &report.ignore_warning {
        eprintln!("warning: {w}");
    }
    if !out.human() {
        return;
    }
    for (p, copy) in &report.conflicts {
        println!("conflict: {p} changed on two devices; the later change is saved as {copy}");
    }
    for copy in &report.moved_aside {
        println!("conflict: kept this device's version as {copy}");
    }
    for (p, why) in &report.pending {
        println!("pending {p}: {why}");
    }
    println!(
        "synced: {} applied here, {} uploaded ({} bytes), {} changes sent",
        report.applied.len(),
        report.uploaded.len(),
        report.uploaded_bytes,
        report.ops_sent
    );
}

pub async fn status(home: &Home, dir: &Path, out: Out) -> Result<()> {
    let folder = open(home, dir).await?;
    let status = folder.status().await;
    folder.close().await;
    let status = status?;
    if out.json {
        json_line(&status);
        return Ok(());
    }
    println!("folder {}", status.root);
    println!("pending up: {}", status.pending_up.len());
    for p in &status.pending_up {
        println!("  {p}");
    }
    println!("pending down: {}", status.pending_down.len());
    for p in &status.pending_down {
        println!("  {p}");
    }
    if status.outbox > 0 {
        println!("records not yet confirmed by a pull: {}", status.outbox);
    }
    if status.manifest_needed {
        println!(
            "catch-up pending: changes of the group expired before this device got them; \
             waiting for another device's manifest (asked for; the next sync uses it)"
        );
    }
    if status.wanted > 0 {
        println!(
            "contents other devices asked for, pushed again by the next sync: {}",
            status.wanted
        );
    }
    println!("conflict copies: {}", status.conflicts.len());
    for c in &status.conflicts {
        println!("  {} (of {}, by {})", c.copy, c.path, c.device);
    }
    for (p, why) in &status.skipped {
        println!("not synced {p:?}: {why}");
    }
    Ok(())
}
