//! Where a received file lands, so local data is never lost (issue 11).
//!
//! A received file never replaces a local file that this device did not
//! itself write from the same file's history. What this device wrote is
//! known from two records, each a [`KnownVersion`] per absolute path:
//! `state.json`'s `files` (the version `pull` last wrote there) and the
//! push journals (the version `push` last sent from there). The rules, for a
//! complete, verified file arriving for `DIR/NAME`:
//!
//! 1. Older than a version this device holds for that path (same history,
//!    lower generation; see [`order`]): not written, reported as outdated.
//! 2. No file at `DIR/NAME`: written there (created exclusively).
//! 3. `DIR/NAME` holds the same content: nothing to write.
//! 4. `DIR/NAME` holds exactly a version this device wrote or pushed (its
//!    content hash matches the record) and the arriving file is newer in
//!    that history: replaced.
//! 5. Anything else — a file the user made or edited, another history of
//!    the same name, a concurrent version, a directory or symlink — is kept,
//!    and the arriving file is saved beside it as
//!    `NAME (conflict DEVICE YYYY-MM-DD HH.MM).EXT` (local time; `2`, `3`, …
//!    appended inside the parentheses when taken).
//!
//! Files are only ever created exclusively (a hard link from the verified
//! temp file, which fails rather than replace anything, even a symlink) or
//! renamed over a file whose content was just checked (rule 4); opens never
//! follow symlinks. Permission bits are reduced to at most `rwxr-xr-x`,
//! owner read-write always, under the process umask.

use crate::error::{ClientError, Result};
use crate::util::sync_dir;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::fs;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// A file version this device wrote (pull) or pushed (push) at a path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KnownVersion {
    /// The file history's id (hex); `None` for files whose sender did not
    /// say (ordered by sender and sequence number only).
    pub lineage: Option<String>,
    /// Generation in that history.
    #[serde(default)]
    pub generation: u64,
    /// The sender (node id, hex).
    pub sender: String,
    /// The sender's highest sequence number among the version's chunks.
    #[serde(default)]
    pub seq: u64,
    /// BLAKE3 of the content (hex).
    pub blake3: String,
    /// When this device wrote or pushed it, Unix ms.
    #[serde(default)]
    pub at_ms: u64,
}

/// How an arriving version relates to a known one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Later in the same history.
    Newer,
    /// The same version.
    Same,
    /// Earlier in the same history.
    Older,
    /// Another history, or a concurrent version of the same generation
    /// from another device.
    Unrelated,
}

/// Order `a` against `b`: in one lineage by generation, then (same
/// sender) by sequence number; versions without a lineage only against
/// the same sender's, by sequence number. Two devices' versions of one
/// generation are concurrent: [`Order::Unrelated`].
pub fn order(a: &KnownVersion, b: &KnownVersion) -> Order {
    let by_seq = |a: &KnownVersion, b: &KnownVersion| match a.seq.cmp(&b.seq) {
        Ordering::Greater => Order::Newer,
        Ordering::Equal => Order::Same,
        Ordering::Less => Order::Older,
    };
    match (&a.lineage, &b.lineage) {
        (Some(x), Some(y)) if x == y => match a.generation.cmp(&b.generation) {
            Ordering::Greater => Order::Newer,
            Ordering::Less => Order::Older,
            Ordering::Equal if a.sender == b.sender => by_seq(a, b),
            Ordering::Equal => Order::Unrelated,
        },
        (None, None) if a.sender == b.sender => by_seq(a, b),
        _ => Order::Unrelated,
    }
}

/// A verified file waiting in its temp file.
#[derive(Debug)]
pub struct Incoming<'a> {
    /// Its name (validated).
    pub name: &'a str,
    /// The temp file holding it.
    pub temp: &'a Path,
    /// Its version (with its content hash).
    pub version: &'a KnownVersion,
    /// The sending device's name for a conflict copy.
    pub device_label: &'a str,
}

/// Where an incoming file went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// Written at its name (new, or replacing a version this device wrote).
    Written(PathBuf),
    /// The same content was already there.
    Same(PathBuf),
    /// The local file was kept; the incoming one saved as `saved`.
    Conflict {
        /// The local file left untouched.
        kept: PathBuf,
        /// Where the incoming file was saved.
        saved: PathBuf,
    },
    /// Older than the version this device holds there; not written.
    Outdated(PathBuf),
}

/// Put a verified temp file in place in `dir` by the rules of this module,
/// given what this device knows it wrote or pushed at `dir/name`. The temp
/// file is gone afterwards (moved or removed). Errors: local I/O.
pub fn place(dir: &Path, incoming: &Incoming<'_>, known: &[KnownVersion]) -> Result<Placed> {
    let dest = dir.join(incoming.name);
    let temp = incoming.temp;
    if known
        .iter()
        .any(|k| order(incoming.version, k) == Order::Older)
    {
        remove(temp)?;
        return Ok(Placed::Outdated(dest));
    }
    let conflict = || -> Result<Placed> {
        let saved = save_as_conflict(dir, incoming)?;
        Ok(Placed::Conflict {
            kept: dest.clone(),
            saved,
        })
    };
    match fs::symlink_metadata(&dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match link_new(temp, &dest) {
            Ok(true) => {
                remove(temp)?;
                sync_dir(dir)?;
                Ok(Placed::Written(dest))
            }
            // Someone created it meanwhile: theirs.
            Ok(false) => conflict(),
            Err(e) => Err(e),
        },
        Err(e) => Err(ClientError::io(&dest)(e)),
        Ok(meta) if !meta.file_type().is_file() => conflict(),
        Ok(_) => {
            let local = match hash_file_nofollow(&dest) {
                Ok(h) => h.to_hex().to_string(),
                // Replaced by a symlink since the check: not ours.
                Err(_) => return conflict(),
            };
            if local == incoming.version.blake3 {
                remove(temp)?;
                return Ok(Placed::Same(dest));
            }
            let ours_and_older = known
                .iter()
                .any(|k| k.blake3 == local && order(incoming.version, k) == Order::Newer);
            if ours_and_older {
                fs::rename(temp, &dest).map_err(ClientError::io(&dest))?;
                sync_dir(dir)?;
                Ok(Placed::Written(dest))
            } else {
                conflict()
            }
        }
    }
}

/// Save the incoming file under the first free conflict name.
fn save_as_conflict(dir: &Path, incoming: &Incoming<'_>) -> Result<PathBuf> {
    let when = chrono::Local::now().format("%Y-%m-%d %H.%M").to_string();
    for n in 1..=1000 {
        let path = dir.join(conflict_name(
            incoming.name,
            incoming.device_label,
            &when,
            n,
        ));
        if link_new(incoming.temp, &path)? {
            remove(incoming.temp)?;
            sync_dir(dir)?;
            return Ok(path);
        }
    }
    Err(ClientError::Home(format!(
        "{}: no free name for a conflict copy of {:?}",
        dir.display(),
        incoming.name
    )))
}

/// `NAME (conflict DEVICE WHEN).EXT`, with ` n` before the `)` from `n = 2`
/// on; the extension is what follows the last dot (none for dotfiles such
/// as `.bashrc`). The stem is shortened (at a character boundary) so the
/// whole stays within 255 bytes.
pub fn conflict_name(name: &str, device: &str, when: &str, n: u32) -> String {
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    let counter = if n > 1 {
        format!(" {n}")
    } else {
        String::new()
    };
    let tag = format!(" (conflict {device} {when}{counter})");
    let room = crate::crypto::envelope::MAX_NAME_LEN.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{tag}{ext}", &stem[..cut])
}

/// Create `to` as a hard link to `from`; `Ok(false)` if `to` exists (in
/// any form, a dangling symlink included: nothing is followed or replaced).
fn link_new(from: &Path, to: &Path) -> Result<bool> {
    match fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(ClientError::io(to)(e)),
    }
}

fn remove(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ClientError::io(path)(e)),
    }
}

/// Open options that never follow a symlink at the last path component.
pub fn nofollow() -> fs::OpenOptions {
    let mut o = fs::OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// BLAKE3 of a regular file, read in 64 KiB pieces (constant memory),
/// without following a symlink.
pub fn hash_file_nofollow(path: &Path) -> Result<blake3::Hash> {
    let mut f = nofollow()
        .read(true)
        .open(path)
        .map_err(ClientError::io(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(ClientError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize())
}

/// The permission bits a received file gets from the sender's `mode`:
/// owner read-write always, at most `rwxr-xr-x`, and nothing the process
/// umask removes.
pub fn received_mode(mode: u32) -> u32 {
    (mode | 0o600) & 0o755 & !umask()
}

/// The process umask, from `/proc/self/status` (Linux ≥ 4.7); `022` when it
/// cannot be read. Reading it this way does not change it (`umask(2)`
/// would, for every thread).
pub fn umask() -> u32 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(lineage: Option<&str>, generation: u64, sender: &str, seq: u64) -> KnownVersion {
        KnownVersion {
            lineage: lineage.map(str::to_string),
            generation,
            sender: sender.into(),
            seq,
            blake3: String::new(),
            at_ms: 0,
        }
    }

    #[test]
    fn versions_order_by_history_then_sequence() {
        let a1 = v(Some("L"), 1, "A", 5);
        assert_eq!(order(&v(Some("L"), 2, "B", 1), &a1), Order::Newer);
        assert_eq!(order(&a1, &v(Some("L"), 2, "B", 1)), Order::Older);
        assert_eq!(order(&v(Some("L"), 1, "A", 9), &a1), Order::Newer);
        assert_eq!(order(&a1, &a1), Order::Same);
        assert_eq!(order(&v(Some("L"), 1, "B", 9), &a1), Order::Unrelated);
        assert_eq!(order(&v(Some("M"), 9, "A", 9), &a1), Order::Unrelated);
        assert_eq!(order(&v(None, 0, "A", 9), &a1), Order::Unrelated);
        assert_eq!(
            order(&v(None, 0, "A", 9), &v(None, 0, "A", 5)),
            Order::Newer
        );
        assert_eq!(
            order(&v(None, 0, "A", 4), &v(None, 0, "A", 5)),
            Order::Older
        );
        assert_eq!(
            order(&v(None, 0, "B", 9), &v(None, 0, "A", 5)),
            Order::Unrelated
        );
    }

    #[test]
    fn conflict_names_keep_the_extension_and_fit() {
        let w = "2025-01-02 10.30";
        assert_eq!(
            conflict_name("note.txt", "laptop", w, 1),
            "note (conflict laptop 2025-01-02 10.30).txt"
        );
        assert_eq!(
            conflict_name("a.tar.gz", "pc", w, 3),
            "a.tar (conflict pc 2025-01-02 10.30 3).gz"
        );
        assert_eq!(
            conflict_name(".bashrc", "pc", w, 1),
            ".bashrc (conflict pc 2025-01-02 10.30)"
        );
        assert_eq!(
            conflict_name("Makefile", "pc", w, 1),
            "Makefile (conflict pc 2025-01-02 10.30)"
        );
        let long = format!("{}.txt", "é".repeat(126));
        let n = conflict_name(&long, &"d".repeat(32), w, 999);
        assert!(n.len() <= 255, "{}", n.len());
        assert!(n.ends_with(" 999).txt"), "{n}");
        crate::crypto::envelope::validate_name(&n).unwrap();
    }

    #[test]
    fn received_modes_are_reduced() {
        let m = umask();
        assert_eq!(received_mode(0o7777), 0o755 & !m);
        assert_eq!(received_mode(0o666), 0o644 & !m);
        assert_eq!(received_mode(0), 0o600 & !m);
        assert_eq!(received_mode(0o700), 0o700 & !m);
    }
}
