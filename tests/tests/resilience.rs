//! The client rides through relay crashes, network outages and its own
//! crashes (issue: never lose or duplicate data on a bad network). Devices
//! reach the relay through the userspace fault proxy where the test needs to
//! shape or cut the link.

use e2e_tests::proxy::{Faults, Link, UdpProxy};
use e2e_tests::{
    Device, INIT_PAIR_BLOBS, RelayProcess, init_pair, json, ndjson, random_bytes, wait_until,
};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A link of `bytes_per_s` both ways (so a transfer lasts long enough to be
/// interrupted in its middle).
fn capped(bytes_per_s: u64) -> Link {
    Link::both(Faults {
        bandwidth: Some(bytes_per_s),
        queue: Duration::from_millis(300),
        ..Faults::default()
    })
}

/// Bytes written so far into partial files (`.0k-sync-*.part`) in `dir`.
fn partial_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn spawn(dev: &Device, args: &[&str]) -> Child {
    dev.cmd()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: Child, what: &str) -> String {
    let out = child.wait_with_output().unwrap();
    e2e_tests::assert_success(&out, &[what]);
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn relay_killed_mid_push_and_mid_pull_both_complete_byte_identical_without_duplicates() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let mut relay = RelayProcess::start_behind_proxy(&data, &[]);
    let quic = relay.quic.to_string();
    let (a, b) = init_pair(&relay);
    let proxy = rt.block_on(UdpProxy::start(relay.quic));
    proxy.set(capped(12_000_000));
    let via_proxy = format!("{}@{}", relay.node_id(), proxy.addr);
    a.set_relay(&via_proxy);
    b.set_relay(&via_proxy);

    let content = random_bytes(50 * MIB);
    let file = tmp.path().join("big-50mib.bin");
    std::fs::write(&file, &content).unwrap();

    // Push; kill -9 the relay once ~15 MiB are stored; restart it.
    let push = spawn(
        &a,
        &[
            "--json",
            "push",
            "--stall-timeout",
            "3s",
            file.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(60), "15 MiB stored", || {
        relay.health()["storage_bytes"].as_u64().unwrap_or(0) >= 15 * MIB as u64
    });
    relay.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let mut relay = RelayProcess::start_with(&data, &quic, &[]);
    let report = json(&finish(push, "push"));
    let pushed = &report["files"][0];
    assert_eq!(pushed["size"], 50 * MIB as u64);
    let chunks = pushed["blobs"].as_u64().unwrap() + pushed["resumed_chunks"].as_u64().unwrap();
    assert!(chunks >= 50);
    let m = relay.metrics();
    assert_eq!(
        m.value("sync_relay_storage_blobs", &[]),
        (chunks + INIT_PAIR_BLOBS) as f64,
        "each chunk stored once (and the blobs of B's join)"
    );

    // Pull; kill -9 the relay once ~15 MiB arrived; restart it.
    let out = tmp.path().join("out");
    let pull = spawn(
        &b,
        &[
            "--json",
            "pull",
            "--stall-timeout",
            "3s",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(60), "15 MiB received", || {
        partial_bytes(&out) >= 15 * MIB as u64
    });
    relay.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let relay = RelayProcess::start_with(&data, &quic, &[]);
    let events = ndjson(&finish(pull, "pull"));
    let files: Vec<_> = events.iter().filter(|e| e["event"] == "file").collect();
    assert_eq!(files.len(), 1, "{events:?}");
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "rejected" && e["event"] != "gap"),
        "{events:?}"
    );
    assert!(
        std::fs::read(out.join("big-50mib.bin")).unwrap() == content,
        "byte-identical"
    );
    assert_eq!(partial_bytes(&out), 0, "no partial file left");
    // Each chunk once, and the blobs of B's join.
    assert_eq!(
        relay.metrics().value("sync_relay_storage_blobs", &[]),
        (chunks + INIT_PAIR_BLOBS) as f64
    );
}

#[test]
fn follow_gets_a_file_pushed_during_a_five_second_outage() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_behind_proxy(&tmp.path().join("relay"), &[]);
    let (a, b) = init_pair(&relay);
    let proxy = rt.block_on(UdpProxy::start(relay.quic));
    b.set_relay(&format!("{}@{}", relay.node_id(), proxy.addr));
    let out = tmp.path().join("out");
    let mut follow = b
        .cmd()
        .args(["--json", "pull", "--follow", "--out", out.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send((Instant::now(), line));
        }
    });
    let (_, first) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert!(first.contains("following"), "{first}");

    let _in_runtime = rt.enter();
    let _restore = proxy.blackhole_for(Duration::from_secs(5));
    let cut = Instant::now();
    let file = tmp.path().join("during-outage.txt");
    std::fs::write(&file, b"pushed while the follower was cut off").unwrap();
    a.run(&["push", file.to_str().unwrap()]);
    let (at, line) = loop {
        let (at, line) = rx
            .recv_timeout(Duration::from_secs(40))
            .expect("the file after the outage");
        if line.contains("\"file\"") {
            break (at, line);
        }
    };
    assert!(line.contains("during-outage.txt"), "{line}");
    assert!(
        at.duration_since(cut) >= Duration::from_secs(5),
        "arrived through a blackhole?"
    );
    assert_eq!(
        std::fs::read(out.join("during-outage.txt")).unwrap(),
        b"pushed while the follower was cut off"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &follow.id().to_string()])
        .status()
        .unwrap();
    assert!(follow.wait().unwrap().success());
}

/// Chunks acknowledged according to the push journal in `home` (`None`
/// while there is no journal).
fn journal_acked(home: &Path) -> Option<u64> {
    std::fs::read_dir(home.join("transfers"))
        .ok()?
        .flatten()
        // The journal itself, not a temp file of an atomic write.
        .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .and_then(|e| std::fs::read(e.path()).ok())
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j["acked"].as_u64())
}

/// The pull cursor saved in `home`'s state (0 before the first save).
fn state_cursor(home: &Path) -> u64 {
    std::fs::read(home.join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|j| j["cursor"].as_u64())
        .unwrap_or(0)
}

/// `kill -9` `child` once `reached` holds; fails if it exits before.
fn kill_when(child: &mut Child, what: &str, mut reached: impl FnMut() -> bool) {
    let mut exited = None;
    wait_until(Duration::from_secs(60), what, || {
        exited = child.try_wait().unwrap();
        exited.is_some() || reached()
    });
    assert!(
        exited.is_none(),
        "{what}: exited ({exited:?}) before it was reached"
    );
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn cli_killed_mid_transfer_resumes_and_ends_with_the_same_files_and_no_duplicates() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_behind_proxy(&tmp.path().join("relay"), &[]);
    let (a, b) = init_pair(&relay);
    let proxy = rt.block_on(UdpProxy::start(relay.quic));
    proxy.set(capped(8_000_000));
    let via_proxy = format!("{}@{}", relay.node_id(), proxy.addr);
    a.set_relay(&via_proxy);
    b.set_relay(&via_proxy);
    let content = random_bytes(16 * MIB);
    let file = tmp.path().join("killed.bin");
    std::fs::write(&file, &content).unwrap();
    let small = tmp.path().join("small.txt");
    std::fs::write(&small, b"a second file in the same pushes").unwrap();
    // Kill points on observed progress: as soon as the push journal exists
    // (before or at the first acknowledgement), then each time the journal
    // shows chunks acknowledged beyond what the run started from.
    for point in 0..3 {
        let start = journal_acked(&a.home);
        let mut push = spawn(
            &a,
            &["push", file.to_str().unwrap(), small.to_str().unwrap()],
        );
        kill_when(&mut push, &format!("push kill point {point}"), || {
            let now = journal_acked(&a.home);
            if point == 0 {
                now.is_some()
            } else {
                now > start
            }
        });
    }
    let resumable = journal_acked(&a.home).expect("a journal left by the killed pushes");
    let report = json(&a.run(&[
        "--json",
        "push",
        file.to_str().unwrap(),
        small.to_str().unwrap(),
    ]));
    let big = &report["files"][0];
    let resumed = big["resumed_chunks"].as_u64().unwrap();
    assert!(
        resumed > 0,
        "the last run resumed the killed ones: {report}"
    );
    assert_eq!(
        resumed, resumable,
        "resumed where the journal says: {report}"
    );
    let chunks = big["blobs"].as_u64().unwrap() + resumed;
    assert_eq!(chunks, 17, "16 MiB in ~1 MiB chunks: {report}");
    println!("push: the last run resumed after {resumed} of {chunks} chunks");
    // The same push once more is a no-op.
    let again = json(&a.run(&[
        "--json",
        "push",
        file.to_str().unwrap(),
        small.to_str().unwrap(),
    ]));
    assert_eq!(again["files"][0]["unchanged"], true);
    assert_eq!(again["files"][1]["unchanged"], true);

    // Kill points on observed progress: as soon as a partial file exists;
    // once the saved cursor moved; once the partial file grew by 2 MiB
    // (mid-stream, maybe unsaved); once the saved cursor moved again.
    let out = tmp.path().join("out");
    for point in 0..4 {
        let (cursor, part) = (state_cursor(&b.home), partial_bytes(&out));
        let mut pull = spawn(&b, &["pull", "--out", out.to_str().unwrap()]);
        kill_when(
            &mut pull,
            &format!("pull kill point {point}"),
            || match point {
                0 => partial_bytes(&out) > 0,
                2 => partial_bytes(&out) >= part + 2 * MIB as u64,
                _ => state_cursor(&b.home) > cursor,
            },
        );
    }
    let resumable = state_cursor(&b.home);
    assert!(resumable > 0, "the killed pulls saved progress");
    let events = ndjson(&b.run(&["--json", "pull", "--out", out.to_str().unwrap()]));
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done", "{events:?}");
    assert_eq!(
        done["blobs"].as_u64().unwrap(),
        done["head"].as_u64().unwrap() - resumable,
        "the last pull resumed after the saved cursor {resumable}: {done}"
    );
    println!(
        "pull: the last run resumed after cursor {resumable} of {}",
        done["head"]
    );
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "rejected" && e["event"] != "gap" && e["event"] != "replay"),
        "{events:?}"
    );
    assert!(std::fs::read(out.join("killed.bin")).unwrap() == content);
    assert_eq!(
        std::fs::read(out.join("small.txt")).unwrap(),
        b"a second file in the same pushes"
    );
    assert_eq!(partial_bytes(&out), 0);
    let names: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    // No blob stored twice: the big file's chunks plus the small file's one
    // (plus any Void blobs of abandoned stdin pushes: none here), and the
    // blobs of B's join.
    let stored = relay.metrics().value("sync_relay_storage_blobs", &[]);
    assert_eq!(stored, (chunks + 1 + INIT_PAIR_BLOBS) as f64);
}

#[test]
fn an_interrupted_push_resumes_after_its_acknowledged_chunks() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_behind_proxy(&tmp.path().join("relay"), &[]);
    let (a, _b) = init_pair(&relay);
    let proxy = rt.block_on(UdpProxy::start(relay.quic));
    proxy.set(capped(4_000_000));
    a.set_relay(&format!("{}@{}", relay.node_id(), proxy.addr));
    let file = tmp.path().join("resume.bin");
    std::fs::write(&file, random_bytes(16 * MIB)).unwrap();
    let transfers = a.home.join("transfers");
    let acked = || -> u64 {
        std::fs::read_dir(&transfers)
            .ok()
            .and_then(|d| {
                // The journal itself, not a temp file of an atomic write.
                d.flatten()
                    .find(|e| e.file_name().to_string_lossy().ends_with(".json"))
            })
            .and_then(|e| std::fs::read(e.path()).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|j| j["acked"].as_u64())
            .unwrap_or(0)
    };
    let mut push = spawn(&a, &["push", file.to_str().unwrap()]);
    wait_until(
        Duration::from_secs(60),
        "4 chunks acknowledged in the journal",
        || acked() >= 4,
    );
    push.kill().unwrap();
    push.wait().unwrap();
    let before = acked();
    let report = json(&a.run(&["--json", "push", file.to_str().unwrap()]));
    let f = &report["files"][0];
    assert_eq!(f["resumed_chunks"].as_u64().unwrap(), before, "{report}");
    assert_eq!(f["blobs"].as_u64().unwrap() + before, 17);
    assert_eq!(
        relay.metrics().value("sync_relay_storage_blobs", &[]),
        (17 + INIT_PAIR_BLOBS) as f64,
        "each chunk stored once (and the blobs of B's join)"
    );
}
