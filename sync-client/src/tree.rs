//! The files of a directory being pushed (docs/client.md "Directories"):
//! every regular file under it, each with the relative path receivers
//! will recreate ([`crate::relpath`]), in a stable order (by name, depth
//! first).
//!
//! Nothing is followed or sent that is not a regular file: symbolic links
//! (to files or directories), sockets, FIFOs and devices are skipped and
//! reported, as are names a receiver would refuse (control characters,
//! backslashes, the reserved `.0k-sync-` prefix, non-UTF-8) and whatever
//! lies deeper than [`MAX_DEPTH`] or past [`MAX_PATH_LEN`]. Empty
//! directories are not sent: a directory exists on a receiver once a file
//! in it arrives.

use crate::error::{ClientError, Result};
use crate::relpath::{MAX_DEPTH, MAX_PATH_LEN, SEPARATOR, validate_component, validate_path};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// A regular file to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeFile {
    /// Where it is on this device.
    pub path: PathBuf,
    /// Its relative path for receivers (`/`-separated, valid by
    /// [`validate_path`]), starting with the pushed directory's name.
    pub name: String,
}

/// Something under the directory that is not pushed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Skipped {
    /// Where it is on this device.
    pub path: PathBuf,
    /// Why it is not pushed (e.g. "symbolic link, not followed").
    pub reason: String,
}

/// What [`walk`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// The regular files, in push order.
    pub files: Vec<TreeFile>,
    /// What was left out.
    pub skipped: Vec<Skipped>,
}

/// Walk `dir` (not following any symlink inside it), naming each file
/// `prefix/relative/path`. `prefix` (the name the directory is pushed
/// under, one or more components) must be valid by [`validate_path`].
/// Entries that cannot be read (permissions) are skipped and reported.
/// Errors: [`ClientError::InvalidInput`] (bad prefix), [`ClientError::Io`]
/// when `dir` itself cannot be read.
pub fn walk(dir: &Path, prefix: &str) -> Result<Tree> {
    validate_path(prefix)
        .map_err(|why| ClientError::InvalidInput(format!("cannot push as {prefix:?}: {why}")))?;
    std::fs::read_dir(dir).map_err(ClientError::io(dir))?;
    let prefix_depth = prefix.split(SEPARATOR).count();
    let mut tree = Tree::default();
    let mut it = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name()
        .into_iter();
    let mut skip = |path: &Path, reason: &str| {
        tree.skipped.push(Skipped {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        })
    };
    while let Some(entry) = it.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let path = e.path().unwrap_or(dir).to_path_buf();
                let reason = e
                    .io_error()
                    .map_or_else(|| e.to_string(), |io| format!("cannot read: {io}"));
                skip(&path, &reason);
                continue;
            }
        };
        let path = entry.path();
        let kind = entry.file_type();
        let Some(component) = entry.file_name().to_str() else {
            skip(path, "name is not UTF-8");
            if kind.is_dir() {
                it.skip_current_dir();
            }
            continue;
        };
        if let Err(why) = validate_component(component) {
            skip(path, why);
            if kind.is_dir() {
                it.skip_current_dir();
            }
            continue;
        }
        if kind.is_symlink() {
            skip(path, "symbolic link, not followed");
        } else if kind.is_dir() {
            // Its files would have one component more than it.
            if prefix_depth + entry.depth() + 1 > MAX_DEPTH {
                skip(path, "deeper than 32 components; its files are not pushed");
                it.skip_current_dir();
            }
        } else if !kind.is_file() {
            skip(path, "not a regular file");
        } else {
            let relative = entry
                .path()
                .strip_prefix(dir)
                .expect("walkdir yields paths under its root");
            let mut name = prefix.to_string();
            for c in relative.components() {
                name.push(SEPARATOR);
                name.push_str(c.as_os_str().to_str().expect("checked above"));
            }
            match validate_path(&name) {
                Ok(()) => tree.files.push(TreeFile {
                    path: path.to_path_buf(),
                    name,
                }),
                Err(_) if name.len() > MAX_PATH_LEN => {
                    skip(path, "relative path longer than 1024 bytes")
                }
                Err(why) => skip(path, why),
            }
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn regular_files_only_with_relative_names() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("photos");
        fs::create_dir_all(d.join("2024/summer")).unwrap();
        fs::create_dir_all(d.join("empty")).unwrap();
        fs::write(d.join("b.txt"), b"b").unwrap();
        fs::write(d.join("2024/a.jpg"), b"a").unwrap();
        fs::write(d.join("2024/summer/c.jpg"), b"c").unwrap();
        fs::write(d.join("bad\x1bname"), b"x").unwrap();
        fs::write(d.join("back\\slash"), b"x").unwrap();
        fs::create_dir_all(d.join("evil\ndir")).unwrap();
        fs::write(d.join("evil\ndir/inner.txt"), b"x").unwrap();
        symlink(tmp.path(), d.join("up")).unwrap();
        symlink(d.join("b.txt"), d.join("alias.txt")).unwrap();
        let tree = walk(&d, "photos").unwrap();
        let names: Vec<&str> = tree.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "photos/2024/a.jpg",
                "photos/2024/summer/c.jpg",
                "photos/b.txt"
            ]
        );
        assert_eq!(tree.files[0].path, d.join("2024/a.jpg"));
        let skipped: Vec<(String, &str)> = tree
            .skipped
            .iter()
            .map(|s| {
                let rel = s.path.strip_prefix(&d).unwrap().to_string_lossy();
                (rel.into_owned(), s.reason.as_str())
            })
            .collect();
        assert_eq!(skipped.len(), 5, "{skipped:?}");
        for (name, why) in [
            ("alias.txt", "symbolic link"),
            ("up", "symbolic link"),
            ("back\\slash", "backslash"),
            ("bad\x1bname", "control"),
            ("evil\ndir", "control"),
        ] {
            assert!(
                skipped.iter().any(|(n, r)| n == name && r.contains(why)),
                "{name}: {skipped:?}"
            );
        }
    }

    #[test]
    fn depth_is_capped_and_prefix_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let mut deep = tmp.path().to_path_buf();
        for _ in 0..MAX_DEPTH + 2 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("too-deep.txt"), b"x").unwrap();
        fs::write(deep.join("too-deep-2.txt"), b"x").unwrap();
        let mut ok = tmp.path().to_path_buf();
        for _ in 0..MAX_DEPTH - 2 {
            ok.push("d");
        }
        fs::write(ok.join("deepest.txt"), b"x").unwrap();
        let tree = walk(tmp.path(), "top").unwrap();
        assert_eq!(tree.files.len(), 1, "{:?}", tree.files);
        assert_eq!(tree.files[0].name.split('/').count(), MAX_DEPTH);
        assert!(tree.files[0].name.ends_with("/deepest.txt"));
        // One report for the directory, which is not walked further.
        assert_eq!(tree.skipped.len(), 1, "{:?}", tree.skipped);
        assert!(tree.skipped[0].reason.contains("its files are not pushed"));
        for bad in ["", "../x", "/abs", "a\\b"] {
            assert!(walk(tmp.path(), bad).is_err(), "{bad:?}");
        }
    }
}
