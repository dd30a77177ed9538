//! Folder sync (`sync-cli sync DIR`, docs/client.md "Folder sync"): real
//! devices through a real relay, driven by the real CLI.

use e2e_tests::{Device, RelayProcess, init_pair, json};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory's content: path → file bytes and executable bit, or
/// `None` for a directory. The folder's staging directory is left out.
type Tree = BTreeMap<String, Option<(Vec<u8>, bool)>>;

fn tree(root: &Path) -> Tree {
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
    walk(root, root, &mut out);
    out
}

/// A tree entry in a few characters: `file N bytes [x] HASH` or `dir`.
fn brief(e: Option<&Option<(Vec<u8>, bool)>>) -> String {
    match e {
        None => "absent".into(),
        Some(None) => "dir".into(),
        Some(Some((b, x))) => format!(
            "file {} bytes{} {}",
            b.len(),
            if *x { " x" } else { "" },
            &blake3::hash(b).to_hex()[..8]
        ),
    }
}

fn sync(dev: &Device, dir: &Path) -> serde_json::Value {
    json(&dev.run(&["sync", "--json", dir.to_str().unwrap()]))
}

fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

struct Group {
    relay: RelayProcess,
    devices: Vec<(Device, PathBuf)>,
    _tmp: tempfile::TempDir,
}

/// A relay and `n` devices of one group, each with its own folder.
fn group(n: usize) -> Group {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let mut devices = vec![a, b];
    for _ in 2..n {
        let c = Device::new();
        let invite = devices[0].run(&["invite"]);
        c.join(&devices[0], invite.trim(), &[]);
        devices.push(c);
    }
    let devices = devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let dir = tmp.path().join(format!("folder-{i}"));
            (d, dir)
        })
        .collect();
    Group {
        relay,
        devices,
        _tmp: tmp,
    }
}

impl Group {
    fn sync(&self, i: usize) -> serde_json::Value {
        sync(&self.devices[i].0, &self.devices[i].1)
    }

    fn dir(&self, i: usize) -> &Path {
        &self.devices[i].1
    }

    /// Two rounds of `sync` on every device, then every tree must equal
    /// the first.
    fn converge(&self) -> Tree {
        for _ in 0..2 {
            for i in 0..self.devices.len() {
                self.sync(i);
            }
        }
        let first = tree(self.dir(0));
        for i in 1..self.devices.len() {
            let other = tree(self.dir(i));
            let differ: Vec<String> = first
                .keys()
                .chain(other.keys())
                .filter(|k| first.get(*k) != other.get(*k))
                .map(|k| {
                    format!(
                        "{k}: {:?} vs {:?}",
                        brief(first.get(k)),
                        brief(other.get(k))
                    )
                })
                .collect();
            if !differ.is_empty() {
                let status: Vec<String> = self
                    .devices
                    .iter()
                    .map(|(d, dir)| d.run(&["status", "--json", dir.to_str().unwrap()]))
                    .collect();
                panic!("device {i} differs from device 0: {differ:#?}\nstatus: {status:#?}");
            }
        }
        first
    }
}

#[test]
fn three_devices_create_edit_rename_delete_and_converge() {
    let g = group(3);
    let a = g.dir(0);
    std::fs::create_dir_all(a).unwrap();
    write(a, "notes.txt", b"first notes\n");
    write(a, "src/main.rs", b"fn main() {}\n");
    write(a, "src/deep/er/lib.rs", b"pub fn f() {}\n");
    write(a, "run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(a.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(a.join("empty/inner")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", a.join("link")).unwrap();
    let report = g.sync(0);
    assert!(
        report["skipped"].to_string().contains("symbolic link"),
        "{report}"
    );
    let t = g.converge();
    assert_eq!(t["run.sh"], Some((b"#!/bin/sh\necho hi\n".to_vec(), true)));
    assert_eq!(t["empty/inner"], None);
    assert!(!t.contains_key("link"));
    for i in 1..3 {
        assert!(std::fs::symlink_metadata(g.dir(i).join("link")).is_err());
    }

    // Each device changes something different.
    write(g.dir(1), "notes.txt", b"notes edited on B\n");
    std::fs::rename(g.dir(2).join("src/main.rs"), g.dir(2).join("src/app.rs")).unwrap();
    std::fs::remove_dir_all(a.join("src/deep")).unwrap();
    std::fs::remove_dir(a.join("empty/inner")).unwrap();
    write(g.dir(2), "new/file.bin", &[7u8; 3000]);
    let t = g.converge();
    assert_eq!(
        t["notes.txt"],
        Some((b"notes edited on B\n".to_vec(), false))
    );
    assert!(t.contains_key("src/app.rs") && !t.contains_key("src/main.rs"));
    assert!(!t.contains_key("src/deep"));
    assert!(!t.contains_key("empty/inner") && t.contains_key("empty"));
    assert_eq!(t["new/file.bin"], Some((vec![7u8; 3000], false)));
}

#[test]
fn concurrent_edits_keep_both_versions() {
    let g = group(2);
    write(g.dir(0), "doc.txt", b"v1\n");
    g.converge();
    write(g.dir(0), "doc.txt", b"edited on A\n");
    write(g.dir(1), "doc.txt", b"edited on B\n");
    g.sync(0);
    let report = g.sync(1);
    assert_eq!(
        report["moved_aside"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    let t = g.converge();
    // A's edit arrived first and holds the name; B's is the conflict copy.
    assert_eq!(t["doc.txt"], Some((b"edited on A\n".to_vec(), false)));
    let copies: Vec<_> = t
        .iter()
        .filter(|(k, _)| k.starts_with("doc (conflict "))
        .collect();
    assert_eq!(copies.len(), 1, "{:?}", t.keys());
    assert_eq!(copies[0].1, &Some((b"edited on B\n".to_vec(), false)));
    let status = json(
        &g.devices[1]
            .0
            .run(&["status", "--json", g.dir(1).to_str().unwrap()]),
    );
    assert_eq!(status["conflicts"].as_array().unwrap().len(), 1, "{status}");
    assert_eq!(
        status["pending_up"].as_array().unwrap().len(),
        0,
        "{status}"
    );
}

#[test]
fn a_rename_sends_no_content() {
    let g = group(2);
    let big = e2e_tests::random_bytes(3 << 20);
    write(g.dir(0), "big.bin", &big);
    let first = g.sync(0);
    assert!(first["uploaded_blobs"].as_u64().unwrap() >= 3, "{first}");
    g.converge();
    std::fs::create_dir_all(g.dir(0).join("moved")).unwrap();
    std::fs::rename(g.dir(0).join("big.bin"), g.dir(0).join("moved/big.bin")).unwrap();
    let report = g.sync(0);
    assert_eq!(report["uploaded_blobs"], 0, "{report}");
    assert_eq!(report["uploaded_bytes"], 0, "{report}");
    assert_eq!(report["records_sent"], 1, "{report}");
    let t = g.converge();
    assert_eq!(t["moved/big.bin"], Some((big, false)));
    assert!(!t.contains_key("big.bin"));
    // A rescan of unchanged files uploads nothing and reads metadata only
    // (files modified in the last 2 s are hashed again: wait that out).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let again = g.sync(0);
    assert_eq!(again["uploaded_blobs"], 0, "{again}");
    assert_eq!(again["ops_sent"], 0, "{again}");
    assert_eq!(again["hashed"], 0, "{again}");
}

#[test]
fn an_ignored_file_never_leaves_the_device() {
    let g = group(2);
    let relay_dir = g.relay.db_path().parent().unwrap().to_path_buf();
    let size = |dir: &Path| -> u64 {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    write(g.dir(0), ".0k-syncignore", b"secret*.txt\nbuild/\n");
    write(g.dir(0), "kept.txt", b"kept\n");
    g.converge();
    let before = size(&relay_dir);
    // Incompressible and large: were it sent, the relay would grow by it.
    let marker = e2e_tests::random_bytes(2 << 20);
    write(g.dir(0), "secret-plans.txt", &marker);
    write(g.dir(0), "build/out.o", &marker);
    let report = g.sync(0);
    assert_eq!(report["uploaded_blobs"], 0, "{report}");
    g.sync(1);
    let after = size(&relay_dir);
    assert!(
        after < before + (1 << 20),
        "relay data grew from {before} to {after} bytes"
    );
    let t = tree(g.dir(1));
    assert!(!t.contains_key("secret-plans.txt") && !t.contains_key("build"));
    assert!(t.contains_key("kept.txt") && t.contains_key(".0k-syncignore"));
    // Nothing is reported as deleted either: A still has them.
    g.sync(0);
    assert!(g.dir(0).join("secret-plans.txt").exists());
}

#[test]
fn a_delete_of_unseen_content_keeps_the_file() {
    let g = group(2);
    write(g.dir(0), "f.txt", b"v1\n");
    g.converge();
    // B changes f and syncs; A, which never saw that change, deletes f.
    write(g.dir(1), "f.txt", b"v2 from B\n");
    g.sync(1);
    std::fs::remove_file(g.dir(0).join("f.txt")).unwrap();
    g.sync(0);
    let t = g.converge();
    assert_eq!(t["f.txt"], Some((b"v2 from B\n".to_vec(), false)));

    // The other order: B edits without syncing, A deletes and syncs first.
    write(g.dir(1), "f.txt", b"v3 local on B\n");
    std::fs::remove_file(g.dir(0).join("f.txt")).unwrap();
    g.sync(0);
    g.sync(1);
    assert_eq!(
        std::fs::read(g.dir(1).join("f.txt")).unwrap(),
        b"v3 local on B\n"
    );
    let t = g.converge();
    assert_eq!(t["f.txt"], Some((b"v3 local on B\n".to_vec(), false)));
}

#[test]
fn random_edit_scripts_converge() {
    let g = group(3);
    let mut rng = SmallRng::seed_from_u64(0x0f01de5);
    let mut ops = 0;
    for round in 0..12 {
        for dev in 0..3 {
            let dir = g.dir(dev).to_path_buf();
            std::fs::create_dir_all(&dir).unwrap();
            for _ in 0..rng.random_range(4..10) {
                ops += 1;
                random_op(&mut rng, &dir, round);
            }
            g.sync(dev);
        }
    }
    assert!(ops >= 200, "{ops} operations");
    g.converge();
}

/// Files are named `f*`, directories `d*` (a file and a directory at one
/// path on two devices is not resolved: docs/client.md "Folder sync").
fn random_op(rng: &mut SmallRng, dir: &Path, round: u32) {
    let files: Vec<String> = tree(dir)
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| k)
        .collect();
    let dirs = ["d0", "d1", "d1/d2"];
    let pick_dir = |rng: &mut SmallRng| {
        if rng.random_bool(0.4) {
            String::new()
        } else {
            format!("{}/", dirs[rng.random_range(0..dirs.len())])
        }
    };
    match rng.random_range(0..10) {
        0..=3 => {
            let name = format!("{}f{}", pick_dir(rng), rng.random_range(0..12));
            let body =
                format!("round {round} {}\n", rng.random::<u32>()).repeat(rng.random_range(1..50));
            write(dir, &name, body.as_bytes());
        }
        4..=5 if !files.is_empty() => {
            let f = &files[rng.random_range(0..files.len())];
            let mut body = std::fs::read(dir.join(f)).unwrap();
            body.extend(format!("edit {}\n", rng.random::<u32>()).as_bytes());
            std::fs::write(dir.join(f), body).unwrap();
        }
        6 if !files.is_empty() => {
            let f = &files[rng.random_range(0..files.len())];
            std::fs::remove_file(dir.join(f)).unwrap();
        }
        7 if !files.is_empty() => {
            let f = &files[rng.random_range(0..files.len())];
            let to = format!("{}f{}", pick_dir(rng), rng.random_range(0..12));
            if !dir.join(&to).exists() {
                std::fs::create_dir_all(dir.join(&to).parent().unwrap()).unwrap();
                std::fs::rename(dir.join(f), dir.join(&to)).unwrap();
            }
        }
        8 if !files.is_empty() => {
            let f = &files[rng.random_range(0..files.len())];
            let p = dir.join(f);
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() ^ 0o111;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        _ => {
            std::fs::create_dir_all(dir.join(dirs[rng.random_range(0..dirs.len())])).unwrap();
        }
    }
}
