//! The fold: the folder's synced state is every device's records applied
//! in the relay's order (cursor order) by these rules, so every device
//! that has applied the same records holds the same state
//! (docs/client.md "Folder sync", "The fold"). Pure: no I/O.
//!
//! - `Put{path, base, hash}`: applied when the path holds `base` (nothing
//!   for `None`); a `Put` of the content already there only updates the
//!   executable bit; otherwise the change was concurrent with one applied
//!   before it, and it lands beside as a **conflict copy**,
//!   `NAME (conflict DEVICE YYYY-MM-DD HH.MM).EXT` (the sender's name and
//!   the record's time in UTC: the same name on every device).
//! - `Delete{path, base}`: applied only when the path holds `base`: a
//!   delete never removes content its sender had not seen.
//! - `Rename{from, to, hash}`: `from` is removed when it holds `hash`, and
//!   `to` gets `hash` as a `Put` with no base.
//! - `Mkdir` creates a directory where nothing is; `Rmdir` removes an
//!   empty directory. Files imply their parent directories; a path under
//!   a file is refused.

use crate::entry::{Entry, Hash};
use crate::record::{Op, Record, check_path};
use std::collections::BTreeMap;
use sync_client::place::conflict_name;

/// The synced state: relative path → entry.
pub type Tree = BTreeMap<String, Entry>;

/// Most entries the synced state holds: operations adding more are
/// dropped (a hostile member cannot make a device track without end).
pub const MAX_ENTRIES: usize = 1_000_000;
/// Most numbered names tried for one conflict copy.
pub const MAX_CONFLICT_TRIES: u32 = 100;

/// Something the fold reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoldNote {
    /// A concurrent change saved as a conflict copy.
    Conflict {
        /// The path both changed.
        path: String,
        /// Where the later change landed.
        copy: String,
        /// The device that made the later change.
        device: String,
    },
    /// An operation that could not apply (path under a file, caps).
    Dropped {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// `YYYY-MM-DD HH.MM` (UTC) of `at_ms`.
pub fn conflict_time(at_ms: u64) -> String {
    let secs = i64::try_from(at_ms / 1000).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp(secs, 0)
        .unwrap_or_default()
        .format("%Y-%m-%d %H.%M")
        .to_string()
}

/// A free name for a conflict copy of `path` in `taken` (`n` = 1, 2, …).
pub fn conflict_path(
    path: &str,
    device: &str,
    when: &str,
    taken: impl Fn(&str) -> bool,
) -> Option<String> {
    let (dir, leaf) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    (1..=MAX_CONFLICT_TRIES)
        .map(|n| format!("{dir}{}", conflict_name(leaf, device, when, n)))
        .find(|p| check_path(p).is_ok() && !taken(p))
}

fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Make the parent directories of `path` exist; false when one is a file
/// (the operation is then dropped).
fn ensure_parents(tree: &mut Tree, path: &str) -> bool {
    if parents(path).any(|p| matches!(tree.get(p), Some(Entry::File { .. }))) {
        return false;
    }
    for p in parents(path) {
        tree.entry(p.to_string()).or_insert(Entry::Dir);
    }
    true
}

fn has_children(tree: &Tree, dir: &str) -> bool {
    let prefix = format!("{dir}/");
    tree.range(prefix.clone()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(&prefix))
}

/// Apply one record to `tree`.
pub fn apply_record(tree: &mut Tree, record: &Record, notes: &mut Vec<FoldNote>) {
    for op in &record.ops {
        apply_op(tree, op, &record.device, record.at_ms, notes);
    }
}

fn room(tree: &Tree, path: &str, notes: &mut Vec<FoldNote>) -> bool {
    // Parents and the entry itself: at most 33 new entries.
    if tree.len() + 33 > MAX_ENTRIES {
        notes.push(FoldNote::Dropped {
            path: path.to_string(),
            reason: format!("the folder holds {MAX_ENTRIES} entries already"),
        });
        return false;
    }
    true
}

fn put(
    tree: &mut Tree,
    path: &str,
    base: Option<Hash>,
    new: Entry,
    device: &str,
    at_ms: u64,
    notes: &mut Vec<FoldNote>,
) {
    if !room(tree, path, notes) {
        return;
    }
    if !ensure_parents(tree, path) {
        notes.push(FoldNote::Dropped {
            path: path.to_string(),
            reason: "a parent is a file".into(),
        });
        return;
    }
    let holds = tree.get(path);
    let applies = match holds {
        None => base.is_none(),
        Some(Entry::File { hash, .. }) => Some(*hash) == base || Some(*hash) == new.hash(),
        Some(Entry::Dir) => false,
    };
    if applies {
        tree.insert(path.to_string(), new);
        return;
    }
    let when = conflict_time(at_ms);
    match conflict_path(path, device, &when, |p| tree.contains_key(p)) {
        Some(copy) => {
            tree.insert(copy.clone(), new);
            notes.push(FoldNote::Conflict {
                path: path.to_string(),
                copy,
                device: device.to_string(),
            });
        }
        None => notes.push(FoldNote::Dropped {
            path: path.to_string(),
            reason: "no free name for a conflict copy".into(),
        }),
    }
}

/// Apply one operation of a record made by `device` at `at_ms`.
pub fn apply_op(tree: &mut Tree, op: &Op, device: &str, at_ms: u64, notes: &mut Vec<FoldNote>) {
    match op {
        Op::Put {
            path,
            base,
            hash,
            size,
            exec,
        } => {
            let new = Entry::File {
                hash: *hash,
                size: *size,
                exec: *exec,
            };
            put(tree, path, *base, new, device, at_ms, notes);
        }
        Op::Delete { path, base } => {
            if tree.get(path).and_then(Entry::hash) == Some(*base) {
                tree.remove(path);
            }
        }
        Op::Rename {
            from,
            to,
            hash,
            size,
            exec,
        } => {
            if tree.get(from).and_then(Entry::hash) == Some(*hash) {
                tree.remove(from);
            }
            let new = Entry::File {
                hash: *hash,
                size: *size,
                exec: *exec,
            };
            put(tree, to, None, new, device, at_ms, notes);
        }
        Op::Mkdir { path } => {
            if tree.contains_key(path) || !room(tree, path, notes) {
                return;
            }
            if ensure_parents(tree, path) {
                tree.insert(path.clone(), Entry::Dir);
            } else {
                notes.push(FoldNote::Dropped {
                    path: path.clone(),
                    reason: "a parent is a file".into(),
                });
            }
        }
        Op::Rmdir { path } => {
            if matches!(tree.get(path), Some(Entry::Dir)) && !has_children(tree, path) {
                tree.remove(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(h: u8) -> Entry {
        Entry::File {
            hash: [h; 32],
            size: 1,
            exec: false,
        }
    }

    fn put_op(path: &str, base: Option<u8>, h: u8) -> Op {
        Op::Put {
            path: path.into(),
            base: base.map(|b| [b; 32]),
            hash: [h; 32],
            size: 1,
            exec: false,
        }
    }

    fn rec(device: &str, ops: Vec<Op>) -> Record {
        Record {
            device: device.into(),
            at_ms: 0,
            ops,
        }
    }

    #[test]
    fn concurrent_puts_keep_both_in_arrival_order() {
        let mut t = Tree::new();
        let mut notes = Vec::new();
        apply_record(
            &mut t,
            &rec("a", vec![put_op("f.txt", None, 1)]),
            &mut notes,
        );
        apply_record(
            &mut t,
            &rec("a", vec![put_op("f.txt", Some(1), 2)]),
            &mut notes,
        );
        apply_record(
            &mut t,
            &rec("b", vec![put_op("f.txt", Some(1), 3)]),
            &mut notes,
        );
        assert_eq!(t["f.txt"], file(2));
        assert_eq!(t["f (conflict b 1970-01-01 00.00).txt"], file(3));
        assert_eq!(notes.len(), 1);
    }

    #[test]
    fn delete_of_unseen_content_is_ignored() {
        let mut t = Tree::new();
        let mut notes = Vec::new();
        apply_record(&mut t, &rec("a", vec![put_op("f", None, 1)]), &mut notes);
        apply_record(&mut t, &rec("a", vec![put_op("f", Some(1), 2)]), &mut notes);
        let del = Op::Delete {
            path: "f".into(),
            base: [1; 32],
        };
        apply_record(&mut t, &rec("b", vec![del]), &mut notes);
        assert_eq!(t["f"], file(2));
        let del = Op::Delete {
            path: "f".into(),
            base: [2; 32],
        };
        apply_record(&mut t, &rec("b", vec![del]), &mut notes);
        assert!(!t.contains_key("f"));
    }

    #[test]
    fn rename_and_dirs() {
        let mut t = Tree::new();
        let mut notes = Vec::new();
        apply_record(&mut t, &rec("a", vec![put_op("d/f", None, 1)]), &mut notes);
        assert_eq!(t["d"], Entry::Dir);
        let mv = Op::Rename {
            from: "d/f".into(),
            to: "e/g".into(),
            hash: [1; 32],
            size: 1,
            exec: false,
        };
        apply_record(
            &mut t,
            &rec("a", vec![mv, Op::Rmdir { path: "d".into() }]),
            &mut notes,
        );
        assert_eq!(t.keys().collect::<Vec<_>>(), ["e", "e/g"]);
        // A path under a file is dropped.
        apply_record(
            &mut t,
            &rec("a", vec![put_op("e/g/x", None, 2)]),
            &mut notes,
        );
        assert!(!t.contains_key("e/g/x"));
        assert!(matches!(notes.last(), Some(FoldNote::Dropped { .. })));
        // Rmdir of a directory with children keeps it.
        apply_record(
            &mut t,
            &rec("a", vec![Op::Rmdir { path: "e".into() }]),
            &mut notes,
        );
        assert!(t.contains_key("e"));
    }
}
