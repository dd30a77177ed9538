//! Planning (pure): what the disk must do to follow the synced state
//! ([`reconcile`]), and which operations describe this device's own
//! changes ([`local_ops`]). Three views meet here: `base` (what the disk
//! held at the last reconcile), `synced` (the fold) and the scan.

use crate::entry::{Entry, Found, Hash};
use crate::fold::{Tree, conflict_path};
use crate::record::Op;
use crate::scan::Scan;
use std::collections::{BTreeSet, HashMap};

/// One step of a reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A local file changed here while the synced state changed too: it is
    /// moved aside to `copy` (kept; pushed as a new file).
    MoveAside {
        /// The path.
        path: String,
        /// Its new name.
        copy: String,
    },
    /// Write a file (create when `expect` is `None`, else replace the
    /// local file that must still be `expect`).
    Write {
        /// The path.
        path: String,
        /// The file to write.
        entry: Entry,
        /// What must be there now.
        expect: Option<Entry>,
    },
    /// Set or clear the executable bit.
    Chmod {
        /// The path.
        path: String,
        /// The entry after.
        entry: Entry,
    },
    /// Remove a file that must still be `expect`.
    Remove {
        /// The path.
        path: String,
        /// What must be there now.
        expect: Entry,
    },
    /// Create a directory.
    Mkdir {
        /// The path.
        path: String,
    },
    /// Remove a directory, if empty.
    Rmdir {
        /// The path.
        path: String,
    },
    /// Nothing to do on disk: record `entry` as the path's base.
    Adopt {
        /// The path.
        path: String,
        /// The new base.
        entry: Option<Entry>,
    },
    /// Left alone (a symbolic link, an ignored path, a directory in the
    /// way): the path stays pending.
    Blocked {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
}

impl Action {
    fn rank(&self) -> (u8, bool) {
        match self {
            Action::MoveAside { .. } => (0, false),
            Action::Mkdir { .. } => (1, false),
            Action::Write { .. } | Action::Chmod { .. } => (2, false),
            Action::Remove { .. } => (3, false),
            Action::Rmdir { .. } => (4, true),
            Action::Adopt { .. } | Action::Blocked { .. } => (5, false),
        }
    }

    fn path(&self) -> &str {
        match self {
            Action::MoveAside { path, .. }
            | Action::Write { path, .. }
            | Action::Chmod { path, .. }
            | Action::Remove { path, .. }
            | Action::Mkdir { path }
            | Action::Rmdir { path }
            | Action::Adopt { path, .. }
            | Action::Blocked { path, .. } => path,
        }
    }
}

fn transition(path: &str, from: Option<&Entry>, to: Option<&Entry>, out: &mut Vec<Action>) {
    let p = path.to_string();
    match (from, to) {
        (None, None) | (Some(Entry::Dir), Some(Entry::Dir)) => out.push(Action::Adopt {
            path: p,
            entry: to.cloned(),
        }),
        (None, Some(e @ Entry::File { .. })) => out.push(Action::Write {
            path: p,
            entry: e.clone(),
            expect: None,
        }),
        (Some(a @ Entry::File { .. }), Some(b @ Entry::File { .. })) => {
            if a.hash() == b.hash() {
                out.push(Action::Chmod {
                    path: p,
                    entry: b.clone(),
                });
            } else {
                out.push(Action::Write {
                    path: p,
                    entry: b.clone(),
                    expect: Some(a.clone()),
                });
            }
        }
        (Some(a @ Entry::File { .. }), None) => out.push(Action::Remove {
            path: p,
            expect: a.clone(),
        }),
        (None, Some(Entry::Dir)) => out.push(Action::Mkdir { path: p }),
        (Some(Entry::Dir), None) => out.push(Action::Rmdir { path: p }),
        (Some(Entry::Dir), Some(Entry::File { .. })) => out.push(Action::Blocked {
            path: p,
            reason: "a directory here where the group has a file".into(),
        }),
        (Some(a @ Entry::File { .. }), Some(Entry::Dir)) => {
            out.push(Action::Remove {
                path: p.clone(),
                expect: a.clone(),
            });
            out.push(Action::Mkdir { path: p });
        }
    }
}

/// The steps that bring the disk from `base` to `synced`, keeping every
/// local change: a path changed both here and in the group keeps the
/// local content (moved aside as a conflict copy named after `device`
/// and `when`, or kept in place when the group deleted it); a path
/// deleted here and changed in the group gets the group's content back.
pub fn reconcile(base: &Tree, synced: &Tree, scan: &Scan, device: &str, when: &str) -> Vec<Action> {
    let paths: BTreeSet<&String> = base.keys().chain(synced.keys()).collect();
    let mut out = Vec::new();
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for path in paths {
        let old = base.get(path);
        let new = synced.get(path);
        if old == new {
            continue;
        }
        let cur = match scan.lookup(path) {
            Some(Found::Untouchable(why)) => {
                out.push(Action::Blocked {
                    path: path.clone(),
                    reason: why,
                });
                continue;
            }
            Some(Found::Entry(e)) => Some(e),
            None => None,
        };
        if cur.as_ref() == old {
            transition(path, old, new, &mut out);
        } else if cur.as_ref() == new {
            out.push(Action::Adopt {
                path: path.clone(),
                entry: new.cloned(),
            });
        } else {
            match (&cur, new) {
                (None, _) => transition(path, None, new, &mut out),
                (Some(_), None) => out.push(Action::Adopt {
                    path: path.clone(),
                    entry: None,
                }),
                (Some(Entry::Dir), Some(_)) => out.push(Action::Blocked {
                    path: path.clone(),
                    reason: "a local directory is in the way".into(),
                }),
                (Some(Entry::File { .. }), Some(_)) => {
                    let free = |p: &str| {
                        synced.contains_key(p) || scan.lookup(p).is_some() || taken.contains(p)
                    };
                    match conflict_path(path, device, when, free) {
                        Some(copy) => {
                            taken.insert(copy.clone());
                            out.push(Action::MoveAside {
                                path: path.clone(),
                                copy,
                            });
                            transition(path, None, new, &mut out);
                        }
                        None => out.push(Action::Blocked {
                            path: path.clone(),
                            reason: "no free name for a conflict copy".into(),
                        }),
                    }
                }
            }
        }
    }
    out.sort_by(|a, b| {
        let (ra, rev_a) = a.rank();
        let (rb, _) = b.rank();
        ra.cmp(&rb).then_with(|| {
            if rev_a {
                b.path().cmp(a.path())
            } else {
                a.path().cmp(b.path())
            }
        })
    });
    out
}

/// This device's changes since its last reconcile, as operations (in
/// order: new directories, files and renames, deletes, removed
/// directories deepest first), with the new base of each path they touch.
/// A file that vanished and a new file with the same content and size
/// make one `Rename`, which sends no content.
pub fn local_ops(base: &Tree, scan: &Scan) -> (Vec<Op>, Vec<(String, Option<Entry>)>) {
    let mut paths: BTreeSet<&String> = base.keys().collect();
    for (p, f) in &scan.found {
        if matches!(f, Found::Entry(_)) {
            paths.insert(p);
        }
    }
    let mut mkdirs = Vec::new();
    let mut puts = Vec::new();
    let mut deletes: Vec<(String, Hash, u64)> = Vec::new();
    let mut rmdirs = Vec::new();
    let mut new_base = Vec::new();
    for path in paths {
        let old = base.get(path);
        let cur = match scan.lookup(path) {
            Some(Found::Untouchable(_)) => continue,
            Some(Found::Entry(e)) => Some(e),
            None => None,
        };
        if cur.as_ref() == old {
            continue;
        }
        new_base.push((path.clone(), cur.clone()));
        if let Some(Entry::File { hash, size, .. }) = old
            && !matches!(cur, Some(Entry::File { .. }))
        {
            deletes.push((path.clone(), *hash, *size));
        }
        if matches!(old, Some(Entry::Dir)) && !matches!(cur, Some(Entry::Dir)) {
            rmdirs.push(path.clone());
        }
        match cur {
            Some(Entry::Dir) if !matches!(old, Some(Entry::Dir)) => {
                mkdirs.push(Op::Mkdir { path: path.clone() })
            }
            Some(Entry::File { hash, size, exec }) => puts.push(Op::Put {
                path: path.clone(),
                base: old.and_then(Entry::hash),
                hash,
                size,
                exec,
            }),
            _ => {}
        }
    }
    // Renames: a deleted file whose content and size a new path has.
    let mut vanished: HashMap<(Hash, u64), Vec<String>> = HashMap::new();
    for (p, h, s) in &deletes {
        vanished.entry((*h, *s)).or_default().push(p.clone());
    }
    let mut renamed = BTreeSet::new();
    for op in puts.iter_mut() {
        if let Op::Put {
            path,
            base: None,
            hash,
            size,
            exec,
        } = op
            && let Some(from) = vanished.get_mut(&(*hash, *size)).and_then(Vec::pop)
        {
            renamed.insert(from.clone());
            *op = Op::Rename {
                from,
                to: path.clone(),
                hash: *hash,
                size: *size,
                exec: *exec,
            };
        }
    }
    let mut ops = mkdirs;
    ops.extend(puts);
    ops.extend(
        deletes
            .into_iter()
            .filter(|(p, _, _)| !renamed.contains(p))
            .map(|(path, base, _)| Op::Delete { path, base }),
    );
    rmdirs.reverse();
    ops.extend(rmdirs.into_iter().map(|path| Op::Rmdir { path }));
    (ops, new_base)
}
