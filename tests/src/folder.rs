//! Helpers for folder sync tests (docs/client.md "Folder sync"): a
//! directory's content as a comparable tree, and files written with their
//! parents.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A directory's content: path → file bytes and executable bit, or `None`
/// for a directory. The folder's staging directory and symbolic links are
/// left out.
pub type Tree = BTreeMap<String, Option<(Vec<u8>, bool)>>;

/// The content of the folder at `root`.
pub fn tree(root: &Path) -> Tree {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            if rel == ".0k-sync-folder" {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                continue;
            } else if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out);
            } else {
                let mode = e.metadata().unwrap().permissions().mode();
                out.insert(
                    rel,
                    Some((std::fs::read(&path).unwrap(), mode & 0o111 != 0)),
                );
            }
        }
    }
    let mut out = Tree::new();
    if root.exists() {
        walk(root, root, &mut out);
    }
    out
}

/// Write `bytes` to `dir/rel`, creating its parents.
pub fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}
