//! Folder sync with `sync DIR --watch` running on every device, and
//! `sync` killed with SIGKILL mid-transfer (docs/client.md "Folder sync").
//! Real devices through a real relay, driven by the real CLI; every wait is
//! for an observable condition (trees equal by content, a line printed, a
//! relay counter, a partial file), with a generous deadline.

use e2e_tests::folder::{Group, Tree, Watching, diff, try_tree, write};
use e2e_tests::{RelayProcess, random_bytes, relay_with};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn file(bytes: &[u8]) -> Option<(Vec<u8>, bool)> {
    Some((bytes.to_vec(), false))
}

/// Bytes uploaded over the runs `runs` reported.
fn uploaded(runs: &[serde_json::Value]) -> u64 {
    runs.iter()
        .map(|r| r["uploaded_bytes"].as_u64().unwrap())
        .sum()
}

#[test]
fn two_watching_devices_follow_creates_edits_renames_and_deletes() {
    let g = Group::new(2, RelayProcess::start);
    let (a, b) = (g.dir(0).to_path_buf(), g.dir(1).to_path_buf());
    let wa = g.watch(0);
    let wb = g.watch(1);
    write(&a, "notes.txt", b"first notes\n");
    write(&a, "src/main.rs", b"fn main() {}\n");
    write(&a, "run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(a.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(a.join("empty")).unwrap();
    let mut expected: Tree = [
        ("notes.txt", file(b"first notes\n")),
        ("src", None),
        ("src/main.rs", file(b"fn main() {}\n")),
        ("run.sh", Some((b"#!/bin/sh\necho hi\n".to_vec(), true))),
        ("empty", None),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    g.wait_same(Some(&expected), &[&wa, &wb]);

    // Both devices change the tree at once, at different paths.
    let runs_before = wa.runs().len();
    write(&b, "notes.txt", b"notes edited on B\n");
    std::fs::rename(a.join("src/main.rs"), a.join("src/app.rs")).unwrap();
    std::fs::remove_file(b.join("run.sh")).unwrap();
    std::fs::remove_dir(a.join("empty")).unwrap();
    write(&b, "new/deep/file.bin", &[7u8; 3000]);
    expected.insert("notes.txt".into(), file(b"notes edited on B\n"));
    let main = expected.remove("src/main.rs").unwrap();
    expected.insert("src/app.rs".into(), main);
    expected.remove("run.sh");
    expected.remove("empty");
    expected.insert("new".into(), None);
    expected.insert("new/deep".into(), None);
    expected.insert("new/deep/file.bin".into(), file(&[7u8; 3000]));
    g.wait_same(Some(&expected), &[&wa, &wb]);
    // A renamed and removed: no content left A.
    assert_eq!(uploaded(&wa.runs()[runs_before..]), 0, "{:?}", wa.runs());

    assert!(wa.stop().success());
    assert!(wb.stop().success());
}

/// Same file changed on two watching devices at once: both versions stay,
/// one at the name, the other as a conflict copy, on both devices.
#[test]
fn a_conflict_between_watching_devices_keeps_both_versions() {
    let g = Group::new(2, RelayProcess::start);
    let wa = g.watch(0);
    let wb = g.watch(1);
    write(g.dir(0), "doc.txt", b"v1\n");
    let v1: Tree = [("doc.txt".to_string(), file(b"v1\n"))].into();
    g.wait_same(Some(&v1), &[&wa, &wb]);
    write(g.dir(0), "doc.txt", b"edited on A\n");
    write(g.dir(1), "doc.txt", b"edited on B\n");
    let t = wait_for(&g, &[&wa, &wb], |t| t.len() == 2);
    let mut contents: Vec<&[u8]> = t.values().map(|v| &v.as_ref().unwrap().0[..]).collect();
    contents.sort();
    assert_eq!(
        contents,
        [&b"edited on A\n"[..], &b"edited on B\n"[..]],
        "{:?}",
        t.keys()
    );
    assert!(t.contains_key("doc.txt"), "{:?}", t.keys());
    assert!(
        t.keys().any(|k| k.starts_with("doc (conflict ")),
        "{:?}",
        t.keys()
    );
    assert!(wa.stop().success());
    assert!(wb.stop().success());
}

/// Wait until the folders are the same and `done` holds of their tree.
fn wait_for(g: &Group, watchers: &[&Watching], done: impl Fn(&Tree) -> bool) -> Tree {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let t = g.wait_same(None, watchers);
        if done(&t) {
            return t;
        }
        assert!(Instant::now() < deadline, "never reached: {:?}", t.keys());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A seeded random script of creates, edits, whole-file replacements,
/// deletes, mode changes and directories over three watching devices, applied while
/// they sync; they converge, and a one-shot `sync` afterwards finds
/// nothing left to do. `FOLDER_WATCH_SEED` replays a seed.
#[test]
fn three_watching_devices_converge_under_a_random_edit_script() {
    let seed: u64 = std::env::var("FOLDER_WATCH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("random edit script: FOLDER_WATCH_SEED={seed}");
    let g = Group::new(3, RelayProcess::start);
    let watchers: Vec<Watching> = (0..3).map(|i| g.watch(i)).collect();
    let refs: Vec<&Watching> = watchers.iter().collect();
    let mut rng = SmallRng::seed_from_u64(seed);
    for step in 0..36 {
        let dev = rng.random_range(0..3);
        random_op(&mut rng, g.dir(dev), step);
        // Now and then let the watchers see a batch before the next.
        if rng.random_bool(0.2) {
            g.wait_same(None, &refs);
        }
    }
    let converged = g.wait_same(None, &refs);
    // Converged means settled: nothing pending on any device.
    for (dev, dir) in &g.devices {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let s = e2e_tests::json(&dev.run(&["status", "--json", dir.to_str().unwrap()]));
            if s["pending_up"] == serde_json::json!([])
                && s["pending_down"] == serde_json::json!([])
            {
                break;
            }
            assert!(Instant::now() < deadline, "seed {seed}: {s}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for w in watchers {
        assert!(w.stop().success(), "seed {seed}");
    }
    for i in 0..3 {
        let r = g.sync(i);
        assert_eq!(r["ops_sent"], 0, "seed {seed}: {r}");
        assert_eq!(r["applied"], serde_json::json!([]), "seed {seed}: {r}");
    }
    for i in 0..3 {
        let t = try_tree(g.dir(i)).unwrap();
        assert!(
            diff(&converged, &t).is_empty(),
            "seed {seed}: {:?}",
            diff(&converged, &t)
        );
    }
}

/// One random edit in `dir`. Files are named `f*`, directories `d*` (a
/// file and a directory at one path on two devices is not resolved:
/// docs/client.md "Folder sync"). The watcher changes the same tree
/// meanwhile: an edit whose file vanished under it is skipped.
///
/// No renames: with devices syncing continuously, a rename of a file that
/// another device edited before it synced happens (seed
/// 1795808308893595319 did it), and the renamed content is then on no disk
/// of that device: `to` stays pending there until the re-push of content
/// by hash exists (docs/client.md "Folder sync", "Not yet"). Renames under
/// `--watch` are covered by the two-device test above.
fn random_op(rng: &mut SmallRng, dir: &Path, step: u32) {
    let files: Vec<String> = try_tree(dir)
        .unwrap_or_default()
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
    let _ = (|| -> std::io::Result<()> {
        match rng.random_range(0..10) {
            0..=3 => {
                let name = format!("{}f{}", pick_dir(rng), rng.random_range(0..8));
                let body = format!("step {step} {}\n", rng.random::<u32>())
                    .repeat(rng.random_range(1..50));
                let p = dir.join(&name);
                std::fs::create_dir_all(p.parent().unwrap())?;
                std::fs::write(p, body)?;
            }
            4..=5 if !files.is_empty() => {
                let f = &files[rng.random_range(0..files.len())];
                let mut body = std::fs::read(dir.join(f))?;
                body.extend(format!("edit {}\n", rng.random::<u32>()).as_bytes());
                std::fs::write(dir.join(f), body)?;
            }
            6 if !files.is_empty() => {
                let f = &files[rng.random_range(0..files.len())];
                std::fs::remove_file(dir.join(f))?;
            }
            7 if !files.is_empty() => {
                // Replaced whole (a new inode), as editors save.
                let f = &files[rng.random_range(0..files.len())];
                let tmp = dir.join(format!(".save-{step}"));
                std::fs::write(&tmp, format!("saved {}\n", rng.random::<u32>()))?;
                std::fs::rename(&tmp, dir.join(f))?;
            }
            8 if !files.is_empty() => {
                let f = &files[rng.random_range(0..files.len())];
                let p = dir.join(f);
                let mode = std::fs::metadata(&p)?.permissions().mode() ^ 0o111;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))?;
            }
            _ => {
                std::fs::create_dir_all(dir.join(dirs[rng.random_range(0..dirs.len())]))?;
            }
        }
        Ok(())
    })();
}

/// A relay whose blobs are at most 64 KiB (a file is many chunks) and
/// whose devices push at most 1 MiB/s: an upload of a few MiB lasts
/// seconds, long enough to be killed in the middle.
fn slow_relay(dir: &Path) -> RelayProcess {
    std::fs::create_dir_all(dir).unwrap();
    relay_with(
        dir,
        "[limits]\nmax_blob_size = 65536\n[rate_limits]\nrequests_per_s = 1000000\n\
         requests_burst = 1000000\npush_bytes_per_s = 1048576\npush_bytes_burst = 262144\n\
         connections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n",
    )
}

fn spawn_sync(g: &Group, i: usize) -> Child {
    let (dev, dir) = &g.devices[i];
    dev.cmd()
        .args(["sync", "--json"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Payload bytes the relay has stored from pushes so far.
fn pushed(g: &Group) -> u64 {
    g.relay.metrics().value("sync_relay_push_bytes", &[]) as u64
}

/// `sync` on device 0, killed with SIGKILL once `bytes` more are stored
/// at the relay (or once it ended by itself): its exit status and the
/// bytes stored by then.
fn sync_killed_once_stored(g: &Group, bytes: u64) -> (std::process::ExitStatus, u64) {
    let before = pushed(g);
    let mut sync = spawn_sync(g, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    while pushed(g) < before + bytes && sync.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the upload never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    sync.kill().unwrap();
    let status = sync.wait().unwrap();
    (status, pushed(g) - before)
}

/// Watches `path` (inotify on its directory) until dropped: a file there
/// must only ever appear whole — renamed or linked into place — never be
/// written at its final path, where a crash would leave it half-written.
/// [`Guard::writes`] lists the writes seen.
struct Guard {
    _watcher: notify::RecommendedWatcher,
    writes: Arc<Mutex<Vec<String>>>,
}

impl Guard {
    fn new(path: &Path) -> Guard {
        use notify::Watcher as _;
        use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
        let writes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&writes);
        let target = path.to_path_buf();
        let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(e) = res else { return };
            let write = matches!(
                e.kind,
                EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                    | EventKind::Access(AccessKind::Close(AccessMode::Write))
            );
            if write && e.paths.contains(&target) {
                seen.lock().unwrap().push(format!("{:?}", e.kind));
            }
        })
        .unwrap();
        w.watch(path.parent().unwrap(), notify::RecursiveMode::NonRecursive)
            .unwrap();
        Guard {
            _watcher: w,
            writes,
        }
    }

    fn writes(&self) -> Vec<String> {
        self.writes.lock().unwrap().clone()
    }
}

/// `sync` killed with SIGKILL while it uploads a large file: a device
/// syncing meanwhile never shows part of it, and the rerun completes it;
/// the folders end identical.
#[test]
fn sync_killed_mid_upload_resumes_with_no_loss() {
    let g = Group::new(2, slow_relay);
    let big = random_bytes(4 << 20);
    write(g.dir(0), "big.bin", &big);
    write(g.dir(0), "small.txt", b"small\n");
    // Observably mid-upload: a quarter of the file is at the relay.
    let (status, at_kill) = sync_killed_once_stored(&g, 1 << 20);
    eprintln!(
        "killed ({status}) with {at_kill} of {} bytes pushed",
        big.len()
    );

    // B syncs the half-uploaded state: nothing of big.bin shows.
    let guard = Guard::new(&g.dir(1).join("big.bin"));
    g.sync(1);
    assert!(!g.dir(1).join("big.bin").exists());
    // A's rerun resumes; B then gets everything.
    let rerun = g.sync(0);
    eprintln!("rerun: {rerun}");
    g.sync(1);
    assert_eq!(guard.writes(), Vec::<String>::new());
    let t = g.wait_same(None, &[]);
    assert_eq!(t["big.bin"], file(&big));
    assert_eq!(t["small.txt"], file(b"small\n"));
}

/// `sync` killed with SIGKILL in the middle of batched small files
/// (docs/client.md "Batched small files"): 3,000 files of 1–2 KiB go up as
/// batches of one journal each, at 1 MiB/s, and the kill lands once 1 MiB
/// of them is stored. The rerun resumes: the other device ends with every
/// file, and what the relay stored over both runs is the files once (a
/// rerun that pushed the killed batch again under new blob ids would store
/// at least the megabyte already there a second time).
#[test]
fn sync_killed_mid_batch_of_small_files_resumes_with_no_loss() {
    let g = Group::new(2, slow_relay);
    // Every file its own content (`random_bytes` is one fixed stream, so
    // its prefixes would repeat: equal contents are stored once).
    let mut rng = SmallRng::seed_from_u64(15);
    let mut content = 0u64;
    for i in 0..3000u64 {
        let mut bytes = vec![0u8; 1024 + rng.random_range(0..1024)];
        rng.fill(&mut bytes[..]);
        write(g.dir(0), &format!("d{:02}/f{i:04}.bin", i / 100), &bytes);
        content += bytes.len() as u64;
    }
    let before = pushed(&g);
    let (status, at_kill) = sync_killed_once_stored(&g, 1 << 20);
    eprintln!("killed ({status}) with {at_kill} of about {content} bytes stored");
    assert!(
        at_kill < content,
        "the sync finished before the kill ({at_kill} bytes stored): nothing was interrupted"
    );

    let t0 = Instant::now();
    let rerun = g.sync(0);
    eprintln!(
        "rerun ({:?}): {} files uploaded, {} bytes",
        t0.elapsed(),
        rerun["uploaded"].as_array().unwrap().len(),
        rerun["uploaded_bytes"]
    );
    let t0 = Instant::now();
    g.sync(1);
    eprintln!("receiver's sync: {:?}", t0.elapsed());
    let t = g.wait_same(None, &[]);
    assert_eq!(t.keys().filter(|k| k.ends_with(".bin")).count(), 3000);
    let stored = pushed(&g) - before;
    // Sealing adds a few dozen bytes a file and the folder records about a
    // hundred; storing the killed batch twice would add at least `at_kill`.
    eprintln!("stored over both runs: {stored} bytes for {content} of content");
    assert!(
        stored < content + content / 4,
        "stored {stored} bytes for {content} bytes of files: something went up twice"
    );
}

/// `sync` killed with SIGKILL while it downloads a large file (its partial
/// copy is in the staging directory): nothing half-written ever appears at
/// the final path, and the rerun completes it.
#[test]
fn sync_killed_mid_download_resumes_with_no_loss() {
    let g = Group::new(2, slow_relay);
    let big = random_bytes(6 << 20);
    write(g.dir(0), "big.bin", &big);
    write(g.dir(0), "small.txt", b"small\n");
    g.sync(0);
    let staging = g.dir(1).join(".0k-sync-folder/in");
    let guard = Guard::new(&g.dir(1).join("big.bin"));
    let partial = || -> u64 {
        std::fs::read_dir(&staging)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0)
    };
    let mut sync = spawn_sync(&g, 1);
    // Observably mid-download: a partial copy with content is staged.
    let deadline = Instant::now() + Duration::from_secs(120);
    while partial() == 0 && sync.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    sync.kill().unwrap();
    let status = sync.wait().unwrap();
    // Killed mid-download: the file is absent or whole.
    if let Ok(b) = std::fs::read(g.dir(1).join("big.bin")) {
        assert!(
            b == big,
            "{} bytes at the final path after the kill",
            b.len()
        );
    }
    eprintln!(
        "killed ({status}) with a partial copy of {} of {} bytes",
        partial(),
        big.len()
    );
    let rerun = g.sync(1);
    eprintln!("rerun: {rerun}");
    assert_eq!(guard.writes(), Vec::<String>::new());
    let t = g.wait_same(None, &[]);
    assert_eq!(t["big.bin"], file(&big));
    assert_eq!(t["small.txt"], file(b"small\n"));
}
