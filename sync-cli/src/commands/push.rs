//! `push FILE|DIR…` / `push -`: seal and push files and directory trees,
//! resuming interrupted ones (docs/client.md "Files", "Directories").

use crate::output::{Out, connect, json_line};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::path::{Path, PathBuf};
use sync_client::roster::LocalRoster;
use sync_client::tree::{Skipped, walk};
use sync_client::util::{human_size, parse_duration};
use sync_client::{Home, PushOptions, PushedFile, RetryPolicy, SyncClient};

/// `--json` output of `push`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct PushOut {
    /// One entry per file pushed, in order (a directory's files by path);
    /// `name` is the relative path receivers recreate.
    pub files: Vec<PushedFile>,
    /// Unfinished earlier pushes given up because they cannot be resumed
    /// (stdin, or the file changed): their names.
    pub abandoned: Vec<String>,
    /// What was found in a pushed directory but not pushed (symbolic
    /// links, special files, names receivers would refuse), and why.
    pub skipped: Vec<Skipped>,
}

/// One thing to push, decided before connecting.
enum Input {
    /// Standard input, as `name`.
    Stdin(String),
    /// A regular file, as `name` (default: its file name; for a file
    /// found in a directory, its relative path).
    File(PathBuf, Option<String>),
}

/// The name a directory is pushed under: `--name`, or its name as given
/// (`photos` for `~/photos` or a symlink named `photos`), or for `.`,
/// `..` and the like the name of the directory they lead to.
fn tree_prefix(dir: &Path, name: Option<&str>) -> Result<String> {
    if let Some(n) = name {
        return Ok(n.to_string());
    }
    if let Some(std::path::Component::Normal(n)) = dir.components().next_back() {
        return n
            .to_str()
            .map(str::to_string)
            .with_context(|| format!("{} is not UTF-8; give a name with --name", dir.display()));
    }
    let real =
        std::fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    real.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{} has no usable name; give one with --name", dir.display()))
}

/// Check every input and list the files to push (walking directories),
/// with what was skipped.
fn plan(files: &[PathBuf], name: Option<&str>) -> Result<(Vec<Input>, Vec<Skipped>)> {
    let mut inputs = Vec::new();
    let mut skipped = Vec::new();
    for f in files {
        if f.as_os_str() == "-" {
            inputs.push(Input::Stdin(name.unwrap_or_default().to_string()));
            continue;
        }
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        if meta.is_dir() {
            let prefix = tree_prefix(f, name)?;
            let tree = walk(f, &prefix)?;
            inputs.extend(
                tree.files
                    .into_iter()
                    .map(|t| Input::File(t.path, Some(t.name))),
            );
            skipped.extend(tree.skipped);
        } else if meta.is_file() {
            inputs.push(Input::File(f.clone(), name.map(str::to_string)));
        } else {
            bail!("{} is not a regular file or a directory", f.display());
        }
    }
    Ok((inputs, skipped))
}

pub async fn push(
    home: &Home,
    files: Vec<PathBuf>,
    name: Option<String>,
    ttl: Option<String>,
    force: bool,
    policy: RetryPolicy,
    out: Out,
) -> Result<()> {
    let stdin_count = files.iter().filter(|f| f.as_os_str() == "-").count();
    if stdin_count > 0 && name.is_none() {
        bail!("pushing stdin (`-`) needs --name NAME for the receivers");
    }
    if stdin_count > 1 || (name.is_some() && files.len() > 1) {
        bail!("--name names one input: push stdin or one file with it");
    }
    let ttl_s = match ttl {
        Some(t) => Some(u32::try_from(parse_duration(&t)?).context("--ttl is too long")?),
        None => None,
    };
    // Check every input (and walk every directory) before connecting.
    let (inputs, skipped) = plan(&files, name.as_deref())?;
    if out.human() {
        // Debug-quoted: a name may hold control characters.
        for s in &skipped {
            eprintln!("skipped {:?}: {}", s.path, s.reason);
        }
        if inputs.is_empty() {
            eprintln!("nothing to push (empty directories are not sent)");
        }
    }
    check_roster(home)?;
    let mut opts = home.connect_options(None)?;
    opts.connect_timeout = opts.connect_timeout.min(policy.stall_timeout);
    let mut state = home.state()?;
    let (client, _retries) = connect(home, &opts, policy, out).await?;
    // The endpoint is closed cleanly whether the push worked or not.
    let result = push_all(&client, &mut state, inputs, skipped, ttl_s, force, out).await;
    client.close().await;
    let report = result?;
    if out.json {
        json_line(&report);
    }
    Ok(())
}

/// Pushes go to the current key epoch only, and never while this device
/// was removed or the roster lists devices that still hold the current
/// epoch's key (`must_rotate`: a re-key is due; docs/security.md "Order and
/// convergence"). Catching up with epochs known locally happens here too.
pub fn check_roster(home: &Home) -> Result<()> {
    let mut roster = LocalRoster::open(home)?;
    let Some(settled) = roster.settle(sync_client::util::now_ms())? else {
        return Ok(());
    };
    roster.save()?;
    if let Some(why) = settled.stuck {
        bail!("{why}: nothing is pushed (a member must enrol this device again)");
    }
    if !settled.state.must_rotate.is_empty() {
        let ids: Vec<String> = settled
            .state
            .must_rotate
            .iter()
            .map(|d| d.to_string()[..16].to_string())
            .collect();
        bail!(
            "the group's key must be rotated before anything is pushed: removed device(s) {} still hold it; \
             run `sync-cli pull` (a member re-keys the group)",
            ids.join(", ")
        );
    }
    Ok(())
}

async fn push_all(
    client: &SyncClient,
    state: &mut sync_client::StateStore,
    inputs: Vec<Input>,
    skipped: Vec<Skipped>,
    ttl_s: Option<u32>,
    force: bool,
    out: Out,
) -> Result<PushOut> {
    let max_ttl = client.session().welcome().max_ttl_s;
    if ttl_s.is_some_and(|t| t > max_ttl) {
        bail!("--ttl is longer than this relay allows ({max_ttl} s)");
    }
    let abandoned = client.abandon_stale_pushes(state).await?;
    if out.human() {
        for n in &abandoned {
            eprintln!(
                "note: gave up an unfinished earlier push of {n} (it changed or came from stdin)"
            );
        }
    }
    let push_opts = PushOptions {
        ttl_s,
        force,
        device_name: sync_client::util::host_name(),
    };
    let mut report = PushOut {
        files: Vec::new(),
        abandoned,
        skipped,
    };
    for input in inputs {
        let pushed = match input {
            Input::Stdin(name) => {
                let mut bar = out.progress(&name);
                let r = client
                    .push_file(
                        state,
                        tokio::io::stdin(),
                        &name,
                        0o644,
                        &push_opts,
                        &mut |done| bar.update(done, None),
                    )
                    .await;
                bar.finish();
                r?
            }
            Input::File(path, name) => {
                let label = name.clone().unwrap_or_else(|| path.display().to_string());
                let mut bar = out.progress(&label);
                let r = client
                    .push_path(
                        state,
                        &path,
                        name.as_deref(),
                        &push_opts,
                        &mut |done, total| bar.update(done, total),
                    )
                    .await
                    .with_context(|| format!("pushing {}", path.display()));
                bar.finish();
                r?
            }
        };
        if out.human() {
            if pushed.unchanged {
                println!(
                    "{} unchanged since its last push; skipped (--force pushes it again)",
                    pushed.name
                );
            } else {
                let resumed = if pushed.resumed_chunks > 0 {
                    format!(", resumed after {} chunks", pushed.resumed_chunks)
                } else {
                    String::new()
                };
                println!(
                    "pushed {} ({}) as {} blob{}, cursors {}..{}{}{}",
                    pushed.name,
                    human_size(pushed.size),
                    pushed.blobs,
                    if pushed.blobs == 1 { "" } else { "s" },
                    pushed.first_cursor,
                    pushed.last_cursor,
                    resumed,
                    if pushed.duplicates > 0 {
                        format!(" ({} already stored)", pushed.duplicates)
                    } else {
                        String::new()
                    }
                );
            }
        }
        report.files.push(pushed);
    }
    Ok(report)
}
