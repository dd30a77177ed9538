//! Harness for folder-sync tests (`sync-cli sync DIR [--watch]`): trees
//! compared by content, groups of devices each with its folder, and
//! running `sync --watch` processes.

use crate::{Device, RelayProcess, init_pair, json};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A directory's content: path → file bytes and executable bit, or
/// `None` for a directory. The folder's staging directory is left out.
pub type Tree = BTreeMap<String, Option<(Vec<u8>, bool)>>;

/// The tree under `root`; an error when it changed while read (a file
/// vanished between the listing and the read).
pub fn try_tree(root: &Path) -> std::io::Result<Tree> {
    fn walk(root: &Path, dir: &Path, out: &mut Tree) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let e = e?;
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
            let ft = e.file_type()?;
            if ft.is_symlink() {
                continue;
            } else if ft.is_dir() {
                out.insert(rel, None);
                walk(root, &path, out)?;
            } else {
                let mode = e.metadata()?.permissions().mode();
                out.insert(rel, Some((std::fs::read(&path)?, mode & 0o111 != 0)));
            }
        }
        Ok(())
    }
    let mut out = Tree::new();
    walk(root, root, &mut out)?;
    Ok(out)
}

/// The tree under `root` (empty when `root` does not exist); panics when
/// it cannot be read.
pub fn tree(root: &Path) -> Tree {
    if !root.exists() {
        return Tree::new();
    }
    try_tree(root).unwrap_or_else(|e| panic!("reading {}: {e}", root.display()))
}

/// A tree entry in a few characters: `file N bytes [x] HASH` or `dir`.
pub fn brief(e: Option<&Option<(Vec<u8>, bool)>>) -> String {
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

/// The paths where `a` and `b` differ, briefly.
pub fn diff(a: &Tree, b: &Tree) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}: {} vs {}", brief(a.get(k)), brief(b.get(k))))
        .collect()
}

/// Write `bytes` at `dir/rel`, creating parents.
pub fn write(dir: &Path, rel: &str, bytes: &[u8]) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A relay and devices of one group, each with its own folder.
pub struct Group {
    /// The relay.
    pub relay: RelayProcess,
    /// Each device and its folder.
    pub devices: Vec<(Device, PathBuf)>,
    _tmp: tempfile::TempDir,
}

impl Group {
    /// A relay (started by `relay` in the directory given) and `n ≥ 2`
    /// devices of one group.
    pub fn new(n: usize, relay: impl FnOnce(&Path) -> RelayProcess) -> Group {
        let tmp = tempfile::tempdir().unwrap();
        let relay = relay(&tmp.path().join("relay"));
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
                std::fs::create_dir_all(&dir).unwrap();
                (d, dir)
            })
            .collect();
        Group {
            relay,
            devices,
            _tmp: tmp,
        }
    }

    /// Device `i`'s folder.
    pub fn dir(&self, i: usize) -> &Path {
        &self.devices[i].1
    }

    /// One `sync --json` run on device `i`.
    pub fn sync(&self, i: usize) -> serde_json::Value {
        let (dev, dir) = &self.devices[i];
        json(&dev.run(&["sync", "--json", dir.to_str().unwrap()]))
    }

    /// Start `sync --watch` on device `i` (no periodic rescan within a
    /// test's time: only events and the relay's notifications count).
    pub fn watch(&self, i: usize) -> Watching {
        let (dev, dir) = &self.devices[i];
        Watching::start(dev, dir, &["--rescan-every", "1h"])
    }

    /// Wait (generous deadline) until every folder holds the same tree,
    /// and, when given, `expected`; the tree. Panics with the differences
    /// and the watchers' error output.
    pub fn wait_same(&self, expected: Option<&Tree>, watchers: &[&Watching]) -> Tree {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let trees: std::io::Result<Vec<Tree>> =
                self.devices.iter().map(|(_, d)| try_tree(d)).collect();
            let mut why = String::from("a folder changed while read");
            if let Ok(trees) = trees {
                let first = &trees[0];
                let differ: Vec<String> = trees[1..]
                    .iter()
                    .enumerate()
                    .flat_map(|(i, t)| {
                        diff(first, t)
                            .into_iter()
                            .map(move |d| format!("device {}: {d}", i + 1))
                    })
                    .chain(
                        expected
                            .map(|e| diff(e, first))
                            .unwrap_or_default()
                            .into_iter()
                            .map(|d| format!("expected vs device 0: {d}")),
                    )
                    .collect();
                if differ.is_empty() {
                    return trees.into_iter().next().unwrap();
                }
                why = format!("{differ:#?}");
            }
            if Instant::now() > deadline {
                let logs: Vec<String> = watchers.iter().map(|w| w.stderr()).collect();
                let status: Vec<String> = self
                    .devices
                    .iter()
                    .map(|(d, dir)| d.run(&["status", "--json", dir.to_str().unwrap()]))
                    .collect();
                panic!(
                    "folders did not converge: {why}\nstatus: {status:#?}\nwatchers' stderr: {logs:#?}"
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A running `sync-cli sync --json --watch DIR`: its stdout lines are
/// collected; dropped, it is killed.
pub struct Watching {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
}

impl Watching {
    /// Start it and wait until it reports `watching` (signals handled,
    /// file-system watch set up).
    pub fn start(dev: &Device, dir: &Path, extra: &[&str]) -> Watching {
        let mut child = dev
            .cmd()
            .args(["sync", "--json", "--watch"])
            .args(extra)
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sync --watch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        let e = Arc::clone(&err);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut e = e.lock().unwrap();
                e.push_str(&line);
                e.push('\n');
            }
        });
        let w = Watching { child, lines, err };
        w.wait_line("the watcher to start", |v| v["event"] == "watching");
        w
    }

    /// Every JSON line printed so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The runs reported so far (`event: run`).
    pub fn runs(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|v| v["event"] == "run")
            .collect()
    }

    /// What it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Wait (generous deadline) for a line matching `check`.
    pub fn wait_line(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.events().iter().any(&check) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Send SIGTERM and wait for the exit (generous deadline).
    pub fn stop(mut self) -> ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "sync --watch did not stop on SIGTERM; stderr: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
