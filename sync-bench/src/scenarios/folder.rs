//! Scenario 8: folder sync (issue 15 part 5) through the real `sync-cli`
//! binary against a relay process: initial `sync` of a tree of many small
//! files and of one large file, time and peak RSS, beside `cp -r` of the
//! same tree in the same run; then a rescan (a second `sync`, nothing
//! changed) of a larger tree beside a `find` that stats every file (the
//! least a rescan must do).

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, random, sibling};
use crate::measure::{Measured, measure};
use crate::stats::{Table, ratio};
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Files a subdirectory of the small-file trees.
const PER_DIR: usize = 100;

/// Scenario sizes.
#[derive(Debug, Clone)]
pub struct Folder {
    /// Small files (1–4 KiB each) in the initial-sync tree.
    pub files: usize,
    /// Bytes of the one large file.
    pub large_bytes: u64,
    /// Small files in the rescan tree.
    pub rescan_files: usize,
}

impl Folder {
    /// Full: 10,000 files, 1 GiB, 100,000 files. Tiny (CI, a few
    /// seconds): 20, 2 MiB, 50.
    pub fn for_size(size: Size) -> Folder {
        Folder {
            files: size.pick(10_000, 20),
            large_bytes: size.pick(1 << 30, 2 << 20),
            rescan_files: size.pick(100_000, 50),
        }
    }
}

/// `n` files of 1–4 KiB of random bytes under `root`, [`PER_DIR`] to a
/// subdirectory; their total size.
fn small_tree(root: &Path, n: usize) -> Result<u64> {
    let mut total = 0;
    for i in 0..n {
        let dir = root.join(format!("d{:04}", i / PER_DIR));
        if i % PER_DIR == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        let len = 1024 + (i * 397) % 3072;
        std::fs::write(dir.join(format!("f{i:06}.bin")), random(len))?;
        total += len as u64;
    }
    Ok(total)
}

/// One file of `bytes` random bytes at `root/large.bin`.
fn large_file(root: &Path, bytes: u64) -> Result<()> {
    std::fs::create_dir_all(root)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(root.join("large.bin"))?);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(8 << 20);
        f.write_all(&random(n as usize))?;
        left -= n;
    }
    f.flush()?;
    Ok(())
}

/// A device home in `dir`, in a new group on `relay` (`sync-cli init`).
fn device(relay: &Relay, dir: &Path) -> Result<PathBuf> {
    let home = dir.join("home");
    measure(
        Command::new(sibling("sync-cli")?)
            .arg("--home")
            .arg(&home)
            .args(["init", "--relay", &relay.address, "--device-name", "bench"]),
    )?;
    Ok(home)
}

/// A second device of `first`'s group, its home in `dir`: `sync-cli
/// invite` on the first, `join` on the new one, answered by `invite
/// --answer` on the first until `join` ends.
fn joined(first: &Path, dir: &Path) -> Result<PathBuf> {
    let cli = sibling("sync-cli")?;
    let home = dir.join("home2");
    let out = Command::new(&cli)
        .arg("--home")
        .arg(first)
        .arg("invite")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let invite = text
        .split_whitespace()
        .find(|w| w.starts_with("0ksync2-"))
        .with_context(|| format!("`invite` printed no invite: {text}"))?
        .to_string();
    let mut join = Command::new(&cli)
        .arg("--home")
        .arg(&home)
        .args(["join", &invite, "--device-name", "bench-2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(status) = join.try_wait()? {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = join.kill();
            bail!("`join` did not end within 60 s");
        }
        Command::new(&cli)
            .arg("--home")
            .arg(first)
            .args(["invite", "--answer"])
            .output()?;
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    if !status.success() {
        bail!("`join` failed ({status})");
    }
    Ok(home)
}

/// `sync-cli --json sync DIR`, measured, with the files it reports
/// uploaded.
fn sync(home: &Path, dir: &Path) -> Result<(Measured, usize)> {
    let m = measure(
        Command::new(sibling("sync-cli")?)
            .arg("--home")
            .arg(home)
            .arg("--json")
            .arg("sync")
            .arg(dir),
    )?;
    let text = String::from_utf8_lossy(&m.stdout);
    let report: serde_json::Value = serde_json::from_str(
        text.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .context("sync printed no report")?,
    )
    .with_context(|| format!("sync report is not JSON: {text}"))?;
    let uploaded = report["uploaded"]
        .as_array()
        .map(Vec::len)
        .context("sync report has no `uploaded`")?;
    Ok((m, uploaded))
}

/// Regular files under `dir`, the folder's staging directory left out.
fn files_in(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ty = entry.file_type()?;
        if ty.is_dir() && !entry.file_name().to_string_lossy().starts_with(".0k-sync") {
            n += files_in(&entry.path())?;
        } else if ty.is_file() {
            n += 1;
        }
    }
    Ok(n)
}

/// A second device joins and runs its first `sync` into an empty
/// directory: every file of `src` comes down. One table row, beside `cp
/// -r` of the same tree.
fn receive(
    table: &mut Table,
    what: &str,
    relay: &Relay,
    scratch: &Path,
    home: &Path,
    files: usize,
    cp: &Measured,
) -> Result<()> {
    let home2 = joined(home, scratch)?;
    let dest = scratch.join("received");
    std::fs::create_dir_all(&dest)?;
    let (m, _) = sync(&home2, &dest)?;
    let got = files_in(&dest)?;
    if got != files {
        bail!("the second device's sync of {what} wrote {got} files, not {files}");
    }
    let (_, relay_peak) = relay.memory_kib();
    table.row(vec![
        format!("second device's first sync (download): {what}"),
        secs(&m),
        mib(&m),
        format!("{:.0}", relay_peak as f64 / 1024.0),
        format!("`cp -r`: {} s, {} MiB", secs(cp), mib(cp)),
        ratio(m.elapsed.as_secs_f64(), cp.elapsed.as_secs_f64()),
    ]);
    std::fs::remove_dir_all(&dest)?;
    std::fs::remove_dir_all(&home2)?;
    Ok(())
}

fn secs(m: &Measured) -> String {
    format!("{:.2}", m.elapsed.as_secs_f64())
}

fn mib(m: &Measured) -> String {
    format!("{:.0}", m.peak_rss_kib as f64 / 1024.0)
}

/// An initial sync of `src` (holding `files` files) on a fresh relay and
/// device, and `cp -r` of it: one table row. Returns the relay and the
/// device's home, for a rescan.
fn initial(
    table: &mut Table,
    what: &str,
    scratch: &Path,
    src: &Path,
    files: usize,
    download: bool,
) -> Result<(Relay, PathBuf)> {
    let cp = measure(
        Command::new("cp")
            .arg("-r")
            .arg(src)
            .arg(scratch.join("copy")),
    )?;
    std::fs::remove_dir_all(scratch.join("copy"))?;
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    let home = device(&relay, scratch)?;
    let (m, uploaded) = sync(&home, src)?;
    if uploaded != files {
        bail!("initial sync of {what} uploaded {uploaded} files, not {files}");
    }
    let (_, relay_peak) = relay.memory_kib();
    table.row(vec![
        format!("initial sync: {what}"),
        secs(&m),
        mib(&m),
        format!("{:.0}", relay_peak as f64 / 1024.0),
        format!("`cp -r`: {} s, {} MiB", secs(&cp), mib(&cp)),
        ratio(m.elapsed.as_secs_f64(), cp.elapsed.as_secs_f64()),
    ]);
    if download {
        receive(table, what, &relay, scratch, &home, files, &cp)?;
    }
    Ok((relay, home))
}

/// Run the scenario.
pub async fn run(f: Folder) -> Result<Table> {
    tokio::task::spawn_blocking(move || run_blocking(&f)).await?
}

fn count(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn run_blocking(f: &Folder) -> Result<Table> {
    let mut table = Table::new(
        "Folder sync (sync-cli sync DIR)",
        &[
            "",
            "sync-cli s",
            "sync-cli peak RSS MiB",
            "relay peak RSS MiB",
            "baseline (same run)",
            "sync ÷ baseline (time)",
        ],
    );
    let scratch = tempfile::tempdir()?;
    // Many small files.
    let small = scratch.path().join("small");
    let bytes = small_tree(&small, f.files)?;
    let (relay, home) = initial(
        &mut table,
        &format!(
            "{} files of 1–4 KiB ({:.1} MiB)",
            count(f.files),
            bytes as f64 / 1048576.0
        ),
        scratch.path(),
        &small,
        f.files,
        true,
    )?;
    drop(relay);
    std::fs::remove_dir_all(&home)?;
    std::fs::remove_dir_all(&small)?;
    // One large file.
    let large = scratch.path().join("large");
    large_file(&large, f.large_bytes)?;
    let (relay, home) = initial(
        &mut table,
        &format!("one file of {} MiB", f.large_bytes >> 20),
        scratch.path(),
        &large,
        1,
        true,
    )?;
    drop(relay);
    std::fs::remove_dir_all(&home)?;
    std::fs::remove_dir_all(&large)?;
    // Rescan of unchanged files.
    let many = scratch.path().join("many");
    let bytes = small_tree(&many, f.rescan_files)?;
    let (relay, home) = initial(
        &mut table,
        &format!(
            "{} files of 1–4 KiB ({:.0} MiB)",
            count(f.rescan_files),
            bytes as f64 / 1048576.0
        ),
        scratch.path(),
        &many,
        f.rescan_files,
        false,
    )?;
    let (rescan, uploaded) = sync(&home, &many)?;
    if uploaded != 0 {
        bail!("a rescan of unchanged files uploaded {uploaded}");
    }
    let stat =
        measure(
            Command::new("find")
                .arg(&many)
                .args(["-type", "f", "-printf", "%s %T@\\n"]),
        )?;
    table.row(vec![
        format!("rescan, nothing changed: {} files", count(f.rescan_files)),
        secs(&rescan),
        mib(&rescan),
        format!("{:.0}", relay.memory_kib().1 as f64 / 1024.0),
        format!(
            "`find -printf '%s %T@'` (a stat of every file): {} s",
            secs(&stat)
        ),
        ratio(rescan.elapsed.as_secs_f64(), stat.elapsed.as_secs_f64()),
    ]);
    table.note("Each case: a fresh relay process (default 1 MiB blobs) and a fresh device (`sync-cli init`), the tree written just before (in the page cache); times are spawn to exit of one `sync-cli --json sync DIR` (scan, pull, push, its connection and handshake included), peak RSS from wait4's ru_maxrss. `cp -r` of the same tree runs just before the sync (it does not fsync; the relay does). The rescan is the second `sync` of the tree, uploading nothing (checked). The download rows: a second device joins the group (`invite`, `join`, answered by the first) and runs its first `sync` into an empty directory, every file written (counted); the `cp -r` beside it is the same tree's.");
    Ok(table)
}
