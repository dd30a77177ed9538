//! Relative paths of pushed files (docs/client.md "Directories").
//!
//! A file's name on the wire (the sealed [`FileChunk::name`]) is its path
//! relative to the receiver's output directory: UTF-8 components joined by
//! `/`. Each component is a valid single name
//! ([`validate_name`]: no `.`/`..`, no NUL, no control or bidirectional
//! override character, not the reserved `.0k-sync-` prefix, at most 255
//! bytes); there is no leading `/`, no empty component, no backslash (a
//! separator on Windows: a path that is harmless here would climb out of
//! the output directory there, so the format has exactly one separator),
//! at most [`MAX_DEPTH`] components and [`MAX_PATH_LEN`] bytes in all.
//!
//! A receiver checks every name it opens ([`validate_path`]) — a group
//! member can seal any string — and creates the directories of a path one
//! component at a time without following symlinks ([`resolve`]), so a
//! received file lands inside the output directory or nowhere.
//!
//! [`FileChunk::name`]: crate::crypto::envelope::FileChunk::name

use crate::crypto::envelope::validate_name;
use crate::error::{ClientError, Result};
use crate::util::sync_dir;
use std::fs;
use std::path::{Path, PathBuf};

/// The one separator of path components on the wire.
pub const SEPARATOR: char = '/';
/// Most bytes of a relative path (4 × a 255-byte name; well under Linux's
/// 4096-byte `PATH_MAX` with the output directory in front).
pub const MAX_PATH_LEN: usize = 1024;
/// Most components of a relative path (the file's name included).
pub const MAX_DEPTH: usize = 32;

/// Check one relative path as sent on the wire (see the module doc).
/// Errors: a fixed human reason.
pub fn validate_path(path: &str) -> std::result::Result<(), &'static str> {
    if path.is_empty() {
        return Err("empty file name");
    }
    if path.len() > MAX_PATH_LEN {
        return Err("path longer than 1024 bytes");
    }
    if path.starts_with(SEPARATOR) {
        return Err("absolute path");
    }
    if path.contains('\\') {
        return Err("path contains a backslash (a separator on Windows)");
    }
    let mut depth = 0;
    for component in path.split(SEPARATOR) {
        depth += 1;
        if depth > MAX_DEPTH {
            return Err("path deeper than 32 components");
        }
        if component.is_empty() {
            return Err("path has an empty component");
        }
        if component == "." || component == ".." {
            return Err("path has a . or .. component");
        }
        validate_name(component)?;
    }
    Ok(())
}

/// Check one component of a path being pushed (a directory or file name
/// met while walking a directory): as a single name, plus no backslash.
pub fn validate_component(name: &str) -> std::result::Result<(), &'static str> {
    validate_name(name)?;
    if name.contains('\\') {
        return Err("name contains a backslash (a separator on Windows)");
    }
    Ok(())
}

/// Where the file with relative path `path` goes under `root`: the
/// directory that holds it and its last component. Each directory
/// component is looked at without following it (`symlink_metadata`): one
/// that is a symlink or not a directory refuses the path; a missing one is
/// created when `create` (and refuses the path otherwise). A final check
/// that the directory's canonical form is exactly `root`'s followed by the
/// components catches one swapped meanwhile.
///
/// Returns `Ok(Err(reason))` when the path is refused (invalid, or a
/// component is in the way); `Err` only for local I/O failures.
pub fn resolve(
    root: &Path,
    path: &str,
    create: bool,
) -> Result<std::result::Result<(PathBuf, String), String>> {
    if let Err(why) = validate_path(path) {
        return Ok(Err(why.to_string()));
    }
    let mut parts: Vec<&str> = path.split(SEPARATOR).collect();
    let leaf = parts.pop().expect("validated: not empty").to_string();
    let mut dir = root.to_path_buf();
    for (i, part) in parts.iter().enumerate() {
        let next = dir.join(part);
        let shown = parts[..=i].join("/");
        let meta = match fs::symlink_metadata(&next) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                match fs::create_dir(&next) {
                    Ok(()) => sync_dir(&dir)?,
                    // Made meanwhile: looked at again below.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(ClientError::io(&next)(e)),
                }
                fs::symlink_metadata(&next).map_err(ClientError::io(&next))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Err(format!("directory {shown} does not exist")));
            }
            Err(e) => return Err(ClientError::io(&next)(e)),
            Ok(meta) => meta,
        };
        if meta.file_type().is_symlink() {
            return Ok(Err(format!(
                "{shown} is a symbolic link in the output directory (not followed)"
            )));
        }
        if !meta.is_dir() {
            return Ok(Err(format!(
                "{shown} is not a directory in the output directory"
            )));
        }
        dir = next;
    }
    if !parts.is_empty() {
        let base = fs::canonicalize(root).map_err(ClientError::io(root))?;
        let real = fs::canonicalize(&dir).map_err(ClientError::io(&dir))?;
        let expected = parts.iter().fold(base, |p, c| p.join(c));
        if real != expected {
            return Ok(Err(format!(
                "{} leads outside the output directory",
                parts.join("/")
            )));
        }
    }
    Ok(Ok((dir, leaf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_paths_are_refused() {
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        let long = vec!["n".repeat(200); 6].join("/");
        for bad in [
            "",
            "/abs",
            "/",
            "../x",
            "a/../../x",
            "a/..",
            "./a",
            "a/./b",
            "a//b",
            "a/",
            "a\\..\\..\\x",
            "dir\\file",
            "a/\x1b[2Jb",
            "a\nb/c",
            "a/b\0c",
            "a/\u{202E}txt.exe",
            "a/.0k-sync-00112233445566778899aabbccddeeff.part",
            ".0k-sync-x/a",
            &deep,
            &long,
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        assert!(long.len() > MAX_PATH_LEN);
        let deepest = vec!["d"; MAX_DEPTH].join("/");
        let longest = format!(
            "{}/m/{}",
            vec!["n".repeat(255); 3].join("/"),
            "o".repeat(MAX_PATH_LEN - 770)
        );
        assert_eq!(longest.len(), MAX_PATH_LEN);
        for good in [
            "a.txt",
            ".bashrc",
            "photos/2024/a.jpg",
            "..a/b..",
            "café/日本.txt",
            &deepest,
            &longest,
        ] {
            validate_path(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        assert!(validate_component("a\\b").is_err());
        validate_component("a b").unwrap();
    }

    #[test]
    fn directories_are_created_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let (dir, leaf) = resolve(root, "a/b/c.txt", true).unwrap().unwrap();
        assert_eq!(dir, root.join("a/b"));
        assert_eq!(leaf, "c.txt");
        assert!(root.join("a/b").is_dir());
        let (dir, leaf) = resolve(root, "top.txt", false).unwrap().unwrap();
        assert_eq!((dir.as_path(), leaf.as_str()), (root, "top.txt"));
        let missing = resolve(root, "x/y.txt", false).unwrap().unwrap_err();
        assert!(missing.contains("does not exist"), "{missing}");
        assert!(!root.join("x").exists());
        let refused = resolve(root, "a/../../x", true).unwrap().unwrap_err();
        assert!(refused.contains(".."), "{refused}");
    }

    #[test]
    fn symlinks_and_files_in_the_way_refuse_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("out");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("real")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink(root.join("real"), root.join("inner")).unwrap();
        fs::write(root.join("file"), b"x").unwrap();
        for (path, why) in [
            ("link/x.txt", "symbolic link"),
            ("link/deeper/x.txt", "symbolic link"),
            ("inner/x.txt", "symbolic link"),
            ("real/../link/x.txt", ".."),
            ("file/x.txt", "not a directory"),
        ] {
            let refused = resolve(&root, path, true).unwrap().unwrap_err();
            assert!(refused.contains(why), "{path}: {refused}");
        }
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        assert_eq!(fs::read_dir(root.join("real")).unwrap().count(), 0);
    }
}
