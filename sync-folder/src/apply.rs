//! Carrying out a reconcile on disk. Content comes from transfers received
//! into the staging directory (`DIR/.0k-sync-folder/in`, where `pull`
//! writes them) or from a local file with the same content (a rename
//! moves the file; other uses copy it): every content is gathered into
//! the staging directory, its BLAKE3 checked, before the first file is
//! replaced or removed. Each file is written as `pull` writes: a temp file
//! in the staging directory, fsync, then a rename into place (or a hard
//! link, when nothing may be there), and an fsync of the directory. A file
//! is replaced or removed only while its metadata is still what the scan
//! saw (else it is left for the next run). Paths are walked from the root
//! one component at a time without following symbolic links
//! (`sync_client::relpath::resolve`).

use crate::entry::{Entry, Found, Hash, short};
use crate::plan::Action;
use crate::scan::{Scan, hash_stable, stamp};
use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use sync_client::place::received_mode;
use sync_client::relpath::resolve;
use sync_client::util::sync_dir;

/// What became of one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: the path's base is now this.
    Done(Option<Entry>),
    /// A local file was moved aside to this path.
    MovedAside(String),
    /// Not done; the path stays pending.
    Pending(String),
}

/// Applies actions under `root`, staging content in `staging`.
pub struct Applier<'a> {
    root: &'a Path,
    staging: PathBuf,
    scan: &'a Scan,
    /// Content available in the staging directory.
    staged: HashMap<Hash, PathBuf>,
    counter: u64,
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// How long a received transfer no write needs stays in the staging
/// directory (see [`Applier::clean`]).
pub const STAGED_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Copy `from` to a new file `to`, returning the BLAKE3 of what was copied
/// (fsynced).
fn copy_hashing(from: &Path, to: &Path) -> io::Result<Hash> {
    let mut src = sync_client::place::nofollow().read(true).open(from)?;
    let mut dst = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
    }
    dst.sync_all()?;
    Ok(*hasher.finalize().as_bytes())
}

impl<'a> Applier<'a> {
    /// An applier; `incoming` is where pull put received transfers.
    pub fn new(root: &'a Path, staging: PathBuf, scan: &'a Scan) -> Applier<'a> {
        Applier {
            root,
            staging,
            scan,
            staged: HashMap::new(),
            counter: 0,
        }
    }

    fn temp(&mut self, tag: &str) -> PathBuf {
        self.counter += 1;
        self.staging
            .join(format!("tmp-{}-{tag}-{}", std::process::id(), self.counter))
    }

    /// Index the received transfers in `incoming` by their BLAKE3 (the
    /// name a sender gave is not trusted).
    pub fn index_incoming(&mut self, incoming: &Path) -> io::Result<()> {
        let entries = match fs::read_dir(incoming) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for e in entries {
            let e = e?;
            if !e.file_type()?.is_file() || e.file_name().to_string_lossy().starts_with(".0k-sync-")
            {
                continue;
            }
            if let Some((hash, _)) = hash_stable(&e.path())? {
                self.staged.insert(hash, e.path());
            }
        }
        Ok(())
    }

    /// Where to copy each content from, by hash: a file the scan saw that
    /// an action is about to remove or replace (preferred: it can be
    /// moved, not copied; the first such action), else the first path in
    /// order where the scan saw it. Built once per gather, so finding a
    /// content is O(1), not a walk of every scanned path.
    fn local_sources(&self, actions: &[Action]) -> HashMap<Hash, String> {
        let mut out: HashMap<Hash, String> = HashMap::new();
        for a in actions {
            if let Action::Remove { path, expect }
            | Action::Write {
                path,
                expect: Some(expect),
                ..
            } = a
                && let Some(h) = expect.hash()
            {
                out.entry(h).or_insert_with(|| path.clone());
            }
        }
        for (p, f) in &self.scan.found {
            if let Found::Entry(Entry::File { hash, .. }) = f {
                out.entry(*hash).or_insert_with(|| p.clone());
            }
        }
        out
    }

    /// Gather every content the writes need into the staging directory.
    /// Returns the hashes that could not be found (pending).
    pub fn gather(&mut self, actions: &[Action]) -> Vec<Hash> {
        let mut missing = Vec::new();
        let mut sources: Option<HashMap<Hash, String>> = None;
        for a in actions {
            let Action::Write { entry, .. } = a else {
                continue;
            };
            let Some(hash) = entry.hash() else { continue };
            if self.staged.contains_key(&hash) {
                continue;
            }
            let sources = sources.get_or_insert_with(|| self.local_sources(actions));
            let Some(src) = sources.get(&hash).cloned() else {
                missing.push(hash);
                continue;
            };
            let from = self.root.join(&src);
            let to = self.temp(&short(&hash));
            match copy_hashing(&from, &to) {
                Ok(h) if h == hash => {
                    self.staged.insert(hash, to);
                }
                _ => {
                    let _ = fs::remove_file(&to);
                    missing.push(hash);
                }
            }
        }
        missing
    }

    /// True when the local entry at `path` is still what the scan saw.
    fn unchanged(&self, path: &Path, rel: &str) -> bool {
        let Ok(meta) = fs::symlink_metadata(path) else {
            return false;
        };
        match self.scan.cache.get(rel) {
            Some((st, _, _)) => meta.is_file() && stamp(&meta) == *st,
            None => false,
        }
    }

    fn target(&self, rel: &str, create: bool) -> Result<PathBuf, String> {
        match resolve(self.root, rel, create) {
            Ok(Ok((dir, leaf))) => Ok(dir.join(leaf)),
            Ok(Err(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Apply one action.
    pub fn apply(&mut self, action: &Action) -> Outcome {
        match self.try_apply(action) {
            Ok(o) => o,
            Err(why) => Outcome::Pending(why),
        }
    }

    fn try_apply(&mut self, action: &Action) -> Result<Outcome, String> {
        match action {
            Action::Adopt { entry, .. } => Ok(Outcome::Done(entry.clone())),
            Action::Blocked { reason, .. } => Ok(Outcome::Pending(reason.clone())),
            Action::MoveAside { path, copy } => {
                let from = self.target(path, false)?;
                let to = self.target(copy, true)?;
                // A hard link then an unlink: nothing at `to` is replaced.
                fs::hard_link(&from, &to).map_err(io_err(&to))?;
                fs::remove_file(&from).map_err(io_err(&from))?;
                if let Some(dir) = to.parent() {
                    sync_dir(dir).map_err(|e| e.to_string())?;
                }
                Ok(Outcome::MovedAside(copy.clone()))
            }
            Action::Mkdir { path } => {
                let to = self.target(path, true)?;
                match fs::create_dir(&to) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let m = fs::symlink_metadata(&to).map_err(io_err(&to))?;
                        if !m.is_dir() {
                            return Err("something else is in the way".into());
                        }
                    }
                    Err(e) => return Err(io_err(&to)(e)),
                }
                Ok(Outcome::Done(Some(Entry::Dir)))
            }
            Action::Rmdir { path } => {
                let to = self.target(path, false)?;
                match fs::remove_dir(&to) {
                    Ok(()) => Ok(Outcome::Done(None)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Outcome::Done(None)),
                    // Not empty: local files in it are kept (and pushed).
                    Err(e) => Err(io_err(&to)(e)),
                }
            }
            Action::Remove { path, .. } => {
                let to = self.target(path, false)?;
                if fs::symlink_metadata(&to).is_err() {
                    return Ok(Outcome::Done(None));
                }
                if !self.unchanged(&to, path) {
                    return Err("changed since the scan; next run".into());
                }
                fs::remove_file(&to).map_err(io_err(&to))?;
                Ok(Outcome::Done(None))
            }
            Action::Chmod { path, entry } => {
                let to = self.target(path, false)?;
                if !self.unchanged(&to, path) {
                    return Err("changed since the scan; next run".into());
                }
                let exec = matches!(entry, Entry::File { exec: true, .. });
                let mode = received_mode(if exec { 0o755 } else { 0o644 });
                fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(io_err(&to))?;
                Ok(Outcome::Done(Some(entry.clone())))
            }
            Action::Write {
                path,
                entry,
                expect,
            } => {
                let Entry::File { hash, exec, .. } = entry else {
                    return Err("not a file".into());
                };
                let Some(src) = self.staged.get(hash).cloned() else {
                    return Err(format!(
                        "content {} not available (not received; expired at the relay?)",
                        short(hash)
                    ));
                };
                let to = self.target(path, true)?;
                if expect.is_some() && !self.unchanged(&to, path) {
                    return Err("changed since the scan; next run".into());
                }
                let tmp = self.temp("w");
                let got = copy_hashing(&src, &tmp).map_err(io_err(&tmp))?;
                if got != *hash {
                    let _ = fs::remove_file(&tmp);
                    return Err("staged content changed".into());
                }
                let mode = received_mode(if *exec { 0o755 } else { 0o644 });
                fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&tmp))?;
                if expect.is_some() {
                    fs::rename(&tmp, &to).map_err(io_err(&to))?;
                } else {
                    // Created exclusively: whatever appeared meanwhile stays.
                    let linked = fs::hard_link(&tmp, &to);
                    let _ = fs::remove_file(&tmp);
                    linked.map_err(io_err(&to))?;
                }
                if let Some(dir) = to.parent() {
                    sync_dir(dir).map_err(|e| e.to_string())?;
                }
                Ok(Outcome::Done(Some(entry.clone())))
            }
        }
    }

    /// Remove the staging directory's temp files and the received
    /// transfers no pending write still needs.
    ///
    /// A received transfer younger than [`STAGED_GRACE`] is kept even when
    /// no write needs it yet: senders push content before the records
    /// naming it, so a run (`sync --watch` runs while others push) can
    /// pull the content and only the next run the record.
    pub fn clean(&self, keep: &[Hash]) {
        for (hash, path) in &self.staged {
            let fresh = fs::metadata(path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().map_or(true, |age| age < STAGED_GRACE));
            if !keep.contains(hash) && !fresh {
                let _ = fs::remove_file(path);
            }
        }
        if let Ok(entries) = fs::read_dir(&self.staging) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with("tmp-") {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan::{Cache, scan};
    use std::time::{Duration, SystemTime};

    /// A received transfer no write needs is removed only once older than
    /// [`STAGED_GRACE`]: its record may come with the next pull.
    #[test]
    fn clean_keeps_content_received_recently() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let staging = root.join(crate::STAGING_DIR);
        let incoming = staging.join("in");
        fs::create_dir_all(&incoming).unwrap();
        fs::write(incoming.join("fresh"), b"just received").unwrap();
        fs::write(incoming.join("old"), b"received long ago").unwrap();
        let old = fs::File::options()
            .write(true)
            .open(incoming.join("old"))
            .unwrap();
        old.set_modified(SystemTime::now() - STAGED_GRACE - Duration::from_secs(60))
            .unwrap();
        drop(old);
        let (s, _) = scan(&root, &Cache::new(), 0).unwrap();
        let mut a = Applier::new(&root, staging, &s);
        a.index_incoming(&incoming).unwrap();
        a.clean(&[]);
        assert!(incoming.join("fresh").exists());
        assert!(!incoming.join("old").exists());
    }
}
