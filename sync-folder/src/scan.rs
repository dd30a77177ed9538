//! Scanning the folder: every directory and regular file under the root,
//! not following symbolic links, leaving out what `.0k-syncignore` (gitignore
//! syntax, at the root) ignores and the folder's own staging directory.
//! A file whose size, mtime, ctime and inode match the index's scan cache
//! is not read again; any other file is hashed (BLAKE3) between two
//! `stat`s, and one that changed meanwhile is reported as changing and
//! left for the next run (never sent half-written).

use crate::entry::{Entry, Found, Hash};
use crate::index::Stamp;
use crate::record::check_path;
use crate::{IGNORE_FILE, STAGING_DIR};
use ignore::gitignore::{Gitignore, GitignoreBuilder};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Files modified this recently (ns) are hashed again at the next scan:
/// a write within the file system's timestamp granularity after the scan
/// would otherwise leave metadata equal to the cached one.
const RACY_NS: i64 = 2_000_000_000;

/// The scan cache: path → (metadata, hash, executable).
pub type Cache = BTreeMap<String, (Stamp, Hash, bool)>;

/// What a scan found.
#[derive(Debug)]
pub struct Scan {
    /// Every path found (relative, `/`-separated).
    pub found: BTreeMap<String, Found>,
    /// Paths not synced, with why (symbolic links, special files, bad
    /// names, files changing while read), for the report.
    pub skipped: Vec<(String, String)>,
    /// The new scan cache.
    pub cache: Cache,
    /// Files hashed (not taken from the cache).
    pub hashed: u64,
    ignore: Gitignore,
}

impl Scan {
    /// What is at `path`: its entry, `Untouchable` when the path (or a
    /// parent) is ignored, `None` when nothing is there.
    pub fn lookup(&self, path: &str) -> Option<Found> {
        if let Some(f) = self.found.get(path) {
            return Some(f.clone());
        }
        if self.ignored(path, false) {
            return Some(Found::Untouchable("ignored (.0k-syncignore)".into()));
        }
        None
    }

    /// True when `.0k-syncignore` ignores `path` or a parent.
    pub fn ignored(&self, path: &str, is_dir: bool) -> bool {
        self.ignore
            .matched_path_or_any_parents(path, is_dir)
            .is_ignore()
    }
}

/// Metadata stamp of a file.
pub fn stamp(meta: &fs::Metadata) -> Stamp {
    Stamp {
        size: meta.len(),
        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        ino: meta.ino(),
    }
}

/// BLAKE3 of `path` read between two `stat`s; `None` when the file
/// changed meanwhile (or is no longer a regular file).
pub fn hash_stable(path: &Path) -> std::io::Result<Option<(Hash, Stamp)>> {
    let before = fs::symlink_metadata(path)?;
    if !before.is_file() {
        return Ok(None);
    }
    let mut f = sync_client::place::nofollow().read(true).open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let after = fs::symlink_metadata(path)?;
    let (b, a) = (stamp(&before), stamp(&after));
    Ok((b == a).then(|| (*hasher.finalize().as_bytes(), a)))
}

/// The ignore rules of `root` (its `.0k-syncignore`, if any).
pub fn ignore_rules(root: &Path) -> (Gitignore, Option<String>) {
    let mut b = GitignoreBuilder::new(root);
    let file = root.join(IGNORE_FILE);
    let mut warning = None;
    if file.exists()
        && let Some(e) = b.add(&file)
    {
        warning = Some(format!("{IGNORE_FILE}: {e}"));
    }
    match b.build() {
        Ok(g) => (g, warning),
        Err(e) => (Gitignore::empty(), Some(format!("{IGNORE_FILE}: {e}"))),
    }
}

fn rel(root: &Path, path: &Path) -> Option<String> {
    let r = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = r.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Scan `root` against the previous `cache`.
pub fn scan(root: &Path, cache: &Cache, now_ns: i64) -> std::io::Result<(Scan, Option<String>)> {
    let (ignore, warning) = ignore_rules(root);
    let mut found = BTreeMap::new();
    let mut skipped = Vec::new();
    let mut new_cache = Cache::new();
    let mut hashed = 0;
    let mut walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
        .into_iter();
    while let Some(item) = walk.next() {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                let p = e
                    .path()
                    .and_then(|p| rel(root, p))
                    .unwrap_or_else(|| "?".into());
                skipped.push((p.clone(), format!("cannot read: {e}")));
                // An unreadable path is left alone, not reported deleted.
                found.insert(p, Found::Untouchable("unreadable".into()));
                continue;
            }
        };
        let path: PathBuf = item.path().to_path_buf();
        let is_dir = item.file_type().is_dir();
        let Some(name) = rel(root, &path) else {
            skipped.push((path.display().to_string(), "name is not UTF-8".into()));
            if is_dir {
                walk.skip_current_dir();
            }
            continue;
        };
        if item.depth() == 1 && name == STAGING_DIR {
            walk.skip_current_dir();
            continue;
        }
        if ignore.matched(&name, is_dir).is_ignore() {
            if is_dir {
                walk.skip_current_dir();
            }
            continue;
        }
        if let Err(why) = check_path(&name) {
            // Pull's temp files (`.0k-sync-*`) are not reported.
            if !name
                .rsplit('/')
                .next()
                .unwrap_or("")
                .starts_with(".0k-sync-")
            {
                skipped.push((name.clone(), why));
            }
            found.insert(name, Found::Untouchable("name not syncable".into()));
            if is_dir {
                walk.skip_current_dir();
            }
            continue;
        }
        let ft = item.file_type();
        if ft.is_symlink() {
            skipped.push((
                name.clone(),
                "symbolic link (not followed, not synced)".into(),
            ));
            found.insert(name, Found::Untouchable("symbolic link".into()));
            continue;
        }
        if is_dir {
            found.insert(name, Found::Entry(Entry::Dir));
            continue;
        }
        if !ft.is_file() {
            skipped.push((name.clone(), "not a regular file".into()));
            found.insert(name, Found::Untouchable("special file".into()));
            continue;
        }
        let meta = match item.metadata() {
            Ok(m) => m,
            Err(e) => {
                skipped.push((name.clone(), format!("cannot read: {e}")));
                found.insert(name, Found::Untouchable("unreadable".into()));
                continue;
            }
        };
        let st = stamp(&meta);
        let exec = meta.mode() & 0o111 != 0;
        let cached = cache
            .get(&name)
            .filter(|(s, _, _)| *s == st && now_ns - st.mtime_ns > RACY_NS)
            .map(|(_, h, _)| *h);
        let (hash, st) = match cached {
            Some(h) => (h, st),
            None => {
                hashed += 1;
                match hash_stable(&path) {
                    Ok(Some(x)) => x,
                    Ok(None) => {
                        skipped.push((name.clone(), "changed while read; next run".into()));
                        found.insert(name, Found::Untouchable("changing".into()));
                        continue;
                    }
                    Err(e) => {
                        skipped.push((name.clone(), format!("cannot read: {e}")));
                        found.insert(name, Found::Untouchable("unreadable".into()));
                        continue;
                    }
                }
            }
        };
        new_cache.insert(name.clone(), (st, hash, exec));
        found.insert(
            name,
            Found::Entry(Entry::File {
                hash,
                size: st.size,
                exec,
            }),
        );
    }
    Ok((
        Scan {
            found,
            skipped,
            cache: new_cache,
            hashed,
            ignore,
        },
        warning,
    ))
}
