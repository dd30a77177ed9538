//! Two devices sync real files through a real relay, driven by the real CLI.

use e2e_tests::{Device, RelayProcess, contains, init_pair, json, machine_binary, ndjson};
use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn two_devices_sync_files_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);

    // A pushes a multi-megabyte binary from the machine and an empty file.
    let binary = machine_binary();
    let bin_name = binary.file_name().unwrap().to_str().unwrap().to_string();
    let empty = tmp.path().join("empty.dat");
    std::fs::write(&empty, b"").unwrap();
    let pushed = json(&a.run(&[
        "push",
        "--json",
        binary.to_str().unwrap(),
        empty.to_str().unwrap(),
    ]));
    let files = pushed["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["name"], bin_name.as_str());
    assert_eq!(files[0]["size"], std::fs::metadata(&binary).unwrap().len());
    assert!(
        files[0]["blobs"].as_u64().unwrap() >= 2,
        "a multi-megabyte file spans several blobs"
    );
    assert_eq!(files[1]["size"], 0);

    // B pulls both, byte for byte, under the same names.
    let out_b = tmp.path().join("out-b");
    let events = ndjson(&b.run(&["pull", "--json", "--out", out_b.to_str().unwrap()]));
    let received: Vec<_> = events.iter().filter(|e| e["event"] == "file").collect();
    assert_eq!(received.len(), 2, "{events:?}");
    assert_eq!(
        std::fs::read(out_b.join(&bin_name)).unwrap(),
        std::fs::read(&binary).unwrap()
    );
    assert_eq!(std::fs::read(out_b.join("empty.dat")).unwrap(), b"");
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "rejected" && e["event"] != "gap"),
        "{events:?}"
    );
    assert_eq!(events.last().unwrap()["event"], "done");

    // B pushes back; A pulls it (and does not get its own files back).
    let reply = tmp.path().join("reply.txt");
    std::fs::write(&reply, b"got it, thanks\n").unwrap();
    b.run(&["push", reply.to_str().unwrap()]);
    let out_a = tmp.path().join("out-a");
    let events = ndjson(&a.run(&["pull", "--json", "--out", out_a.to_str().unwrap()]));
    let names: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "file")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["reply.txt"]);
    assert_eq!(
        std::fs::read(out_a.join("reply.txt")).unwrap(),
        b"got it, thanks\n"
    );

    // A second pull by B receives nothing new.
    let events = ndjson(&b.run(&["pull", "--json", "--out", out_b.to_str().unwrap()]));
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event"], "done");
    assert_eq!(events[0]["files"], 0);
    assert_eq!(events[0]["cursor"], events[0]["head"]);

    // Both homes are private.
    use std::os::unix::fs::PermissionsExt;
    for dev in [&a, &b] {
        assert_eq!(
            std::fs::metadata(&dev.home).unwrap().permissions().mode() & 0o777,
            0o700
        );
        for entry in std::fs::read_dir(&dev.home).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let mode = meta.permissions().mode() & 0o777;
            let want = if meta.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{}", entry.path().display());
        }
    }
}

#[test]
fn stdin_push_uses_the_given_name() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let mut child = a
        .cmd()
        .args(["push", "-", "--name", "notes.md"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"# from stdin\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    e2e_tests::assert_success(&out, &["push", "-"]);
    let out_b = tmp.path().join("out");
    b.run(&["pull", "--out", out_b.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out_b.join("notes.md")).unwrap(),
        b"# from stdin\n"
    );
    // Without --name, stdin is refused before connecting.
    let out = a.output(&["push", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--name"));
}

#[test]
fn pull_follow_receives_a_file_pushed_while_following() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let out_b = tmp.path().join("out");
    let mut follow = b
        .cmd()
        .args([
            "pull",
            "--follow",
            "--json",
            "--out",
            out_b.to_str().unwrap(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("follow started");
    assert!(first.contains("\"following\""), "{first}");

    // The file reaches the running follow (no new pull started), however
    // long the machine takes: latency is sync-bench's business.
    let file = tmp.path().join("live.txt");
    std::fs::write(&file, b"pushed while B follows").unwrap();
    a.run(&["push", file.to_str().unwrap()]);
    let event = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the followed file within 60 s");
        let event = json(&line);
        match event["event"].as_str() {
            Some("synced" | "progress") => continue,
            _ => break event,
        }
    };
    assert_eq!(event["event"], "file", "{event}");
    assert_eq!(event["name"], "live.txt", "{event}");
    assert_eq!(
        std::fs::read(out_b.join("live.txt")).unwrap(),
        b"pushed while B follows"
    );

    // A second pull while follow holds the home is refused with a clear error.
    let out = b.output(&["pull", "--out", out_b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another pull"));

    // SIGTERM stops follow cleanly.
    std::process::Command::new("kill")
        .args(["-TERM", &follow.id().to_string()])
        .status()
        .unwrap();
    let status = follow.wait().unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn relay_database_holds_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    const MARKER: &str = "ZK-PLAINTEXT-MARKER-5f1d";
    let file = tmp.path().join("secret-plans-2027.txt");
    let body: String = (0..20_000)
        .map(|i| format!("{MARKER} line {i}\n"))
        .collect();
    std::fs::write(&file, &body).unwrap();
    a.run(&["push", file.to_str().unwrap()]);
    b.run(&["pull", "--out", tmp.path().join("out").to_str().unwrap()]);

    let scan = |relay: &RelayProcess| {
        let mut found = Vec::new();
        // The database and every payload file (`blobs/xx/…`).
        let mut dirs = vec![relay.data_dir.clone()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                for needle in [MARKER, "secret-plans-2027", "line 19999"] {
                    if contains(&bytes, needle.as_bytes()) {
                        found.push(format!("{} contains {needle:?}", path.display()));
                    }
                }
            }
        }
        found
    };
    assert!(relay.db_path().exists());
    assert_eq!(
        scan(&relay),
        Vec::<String>::new(),
        "while running (db + WAL)"
    );
    assert!(relay.terminate().success());
    assert_eq!(
        scan(&relay),
        Vec::<String>::new(),
        "after shutdown checkpoint"
    );
    // The check can fail: the received copy does contain the marker.
    assert!(contains(
        &std::fs::read(tmp.path().join("out/secret-plans-2027.txt")).unwrap(),
        MARKER.as_bytes()
    ));
}

#[test]
fn restarted_relay_keeps_node_id_and_serves_earlier_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("relay");
    let mut relay = RelayProcess::start(&data);
    let (a, b) = init_pair(&relay);
    let file = tmp.path().join("before-restart.bin");
    let content: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &content).unwrap();
    a.run(&["push", file.to_str().unwrap()]);

    // Crash it (kill -9): everything acknowledged must survive.
    let node_id = relay.node_id().to_string();
    let quic = relay.quic;
    relay.kill9();
    let relay = RelayProcess::start_with(&data, &quic.to_string(), &[]);
    assert_eq!(relay.node_id(), node_id);
    let printed = std::process::Command::new(e2e_tests::bin("sync-relay"))
        .args(["id", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), node_id);
    assert_eq!(relay.health()["node_id"], node_id.as_str());

    let out = tmp.path().join("out");
    b.run(&["pull", "--out", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("before-restart.bin")).unwrap(),
        content
    );
}

#[test]
fn usage_errors_exit_2_and_runtime_errors_exit_1() {
    let dev = Device::new();
    let out = dev.output(&["push"]);
    assert_eq!(out.status.code(), Some(2), "missing FILE is a usage error");
    let out = dev.output(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = dev.output(&["pull"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no group yet") && err.contains("sync-cli init"),
        "{err}"
    );
    let out = dev.output(&["init", "--relay", "not-an-address"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NODE_ID@HOST:PORT"));
    let out = dev.output(&["join", "0ksync1-garbage"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid invite"));
}

#[test]
fn status_reports_reachability_and_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, _b) = init_pair(&relay);
    let f = tmp.path().join("x.txt");
    std::fs::write(&f, b"x").unwrap();
    a.run(&["push", f.to_str().unwrap()]);
    let s = json(&a.run(&["status", "--json"]));
    assert_eq!(s["relay_reachable"], true);
    // Cursor 1 is A's roster blob that added B (its answer to B's join).
    assert_eq!(s["group_head"], 2);
    assert_eq!(s["local_cursor"], 0);
    assert_eq!(s["group_name"], "test group");
    relay.terminate();
    let s = json(&a.run(&["status", "--json", "--retry-for", "1s"]));
    assert_eq!(s["relay_reachable"], false);
    assert!(
        s["relay_error"]
            .as_str()
            .unwrap()
            .contains("cannot connect")
    );
}

/// What a person sees when the relay is down: one status line per retry,
/// then the error and what to do — and nothing else (no library log line,
/// no "Endpoint dropped" from an endpoint that was not closed).
#[test]
fn an_unreachable_relay_is_retried_then_given_up_quietly_with_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    relay.terminate();
    let f = tmp.path().join("x.txt");
    std::fs::write(&f, b"x").unwrap();
    let (file, dir) = (f.to_str().unwrap(), tmp.path().to_str().unwrap());
    let budget = ["--retry-for", "3s", "--stall-timeout", "1s"];
    let push: Vec<&str> = [&["push"][..], &budget, &[file]].concat();
    let pull: Vec<&str> = [&["pull"][..], &budget, &["--out", dir]].concat();
    // A as a person runs it; B with the libraries' error lines let through
    // (SYNC_LOG): the endpoints were closed, not dropped. All at once.
    let runs = std::thread::scope(|s| {
        let jobs: Vec<_> = [
            (&a, &push, None),
            (&a, &pull, None),
            (&b, &push, Some("error")),
            (&b, &pull, Some("error")),
        ]
        .into_iter()
        .map(|(dev, args, log)| {
            s.spawn(move || {
                let mut cmd = dev.cmd();
                cmd.args(args.iter());
                if let Some(filter) = log {
                    cmd.env("SYNC_LOG", filter);
                }
                (args.clone(), log, cmd.output().unwrap())
            })
        })
        .collect();
        jobs.into_iter()
            .map(|j| j.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (args, log, out) in runs {
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        if log.is_some() {
            assert!(!err.contains("Endpoint dropped"), "{err}");
            continue;
        }
        let lines: Vec<&str> = err.lines().collect();
        let (retries, rest): (Vec<&str>, Vec<&str>) = lines
            .iter()
            .partition(|l| l.starts_with("relay unreachable, retrying in "));
        assert!(!retries.is_empty(), "a status line per retry: {err}");
        for (i, line) in retries.iter().enumerate() {
            assert!(line.ends_with(&format!("(attempt {})", i + 1)), "{line}");
        }
        assert_eq!(rest.len(), 2, "only the error and its hint: {err}");
        assert!(rest[0].starts_with("error: gave up after"), "{err}");
        assert!(rest[1].starts_with("  hint: "), "says what to do: {err}");
    }
}

#[test]
fn the_invite_can_come_from_stdin_or_a_file() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let a = e2e_tests::Device::new();
    let invite = a.run(&["init", "--relay", &relay.address]);
    let b = e2e_tests::Device::new();
    let mut child = b
        .cmd()
        .args(["join", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(invite.as_bytes())
        .unwrap();
    let out = a.answer_until_done(child, &["invite", "--answer"]);
    assert!(out.status.success(), "{out:?}");
    // An invite admits one device: C gets one of its own.
    let c = e2e_tests::Device::new();
    let file = tmp.path().join("invite.txt");
    std::fs::write(&file, a.run(&["invite"])).unwrap();
    let child = c
        .cmd()
        .args(["join", "--file", file.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = a.answer_until_done(child, &["invite", "--answer"]);
    assert!(out.status.success(), "{out:?}");
    let group = |d: &e2e_tests::Device| {
        json(&d.run(&["status", "--json", "--retry-for", "5s"]))["group_id"].clone()
    };
    assert_eq!(group(&b), group(&a));
    assert_eq!(group(&c), group(&a));
    // An empty input is a clear error, not a panic or a hang.
    let d = e2e_tests::Device::new();
    let out = d.output(&["join", "-"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no invite given"));
}
