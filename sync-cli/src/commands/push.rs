//! `push FILE…` / `push -`: seal and push files.

use crate::output::json_line;
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use sync_client::util::{human_size, parse_duration};
use sync_client::{Home, PushOptions, PushedFile, SyncClient};

#[derive(Serialize)]
struct PushReport {
    files: Vec<PushedFile>,
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .with_context(|| format!("{}: cannot tell the file name; use --name", path.display()))
}

pub async fn push(
    home: &Home,
    files: Vec<PathBuf>,
    name: Option<String>,
    ttl: Option<String>,
    json: bool,
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
    // Check every input before connecting.
    for f in files.iter().filter(|f| f.as_os_str() != "-") {
        let meta = std::fs::metadata(f).with_context(|| format!("cannot read {}", f.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", f.display());
        }
    }
    let mut state = home.state()?;
    let client = SyncClient::connect(&home.connect_options(None)?).await?;
    if let Some(ttl) = ttl_s
        && ttl > client.session().welcome().max_ttl_s
    {
        bail!(
            "--ttl is longer than this relay allows ({} s)",
            client.session().welcome().max_ttl_s
        );
    }
    let opts = PushOptions { ttl_s };
    let mut report = PushReport { files: Vec::new() };
    for path in &files {
        let pushed = if path.as_os_str() == "-" {
            let name = name.clone().unwrap_or_default();
            client
                .push_file(
                    &mut state,
                    tokio::io::stdin(),
                    &name,
                    0o644,
                    &opts,
                    &mut |_| {},
                )
                .await?
        } else {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("cannot open {}", path.display()))?;
            let mode = file.metadata().await?.permissions().mode();
            let name = match &name {
                Some(n) => n.clone(),
                None => file_name(path)?,
            };
            client
                .push_file(&mut state, file, &name, mode, &opts, &mut |_| {})
                .await
                .with_context(|| format!("pushing {}", path.display()))?
        };
        if !json {
            println!(
                "pushed {} ({}) as {} blob{}, cursors {}..{}{}",
                pushed.name,
                human_size(pushed.size),
                pushed.blobs,
                if pushed.blobs == 1 { "" } else { "s" },
                pushed.first_cursor,
                pushed.last_cursor,
                if pushed.duplicates > 0 {
                    format!(" ({} already stored)", pushed.duplicates)
                } else {
                    String::new()
                }
            );
        }
        report.files.push(pushed);
    }
    client.close().await;
    if json {
        json_line(&report);
    }
    Ok(())
}
