//! `push DIR` (docs/client.md "Directories"), through the real relay and
//! CLI: a tree is recreated under `--out` by `pull` and `pull --follow`,
//! symlinks in it are skipped, the conflict rules hold per path; and,
//! through the fake relay, paths a hostile member seals (`..`, absolute,
//! backslashes, control characters, through a symlink or a file planted in
//! `--out`) are refused with an event while nothing is written outside
//! `--out`.

use e2e_tests::fake_relay::{FakeRelay, Script};
use e2e_tests::member::{device_with_keys, file_kind, sealed, serve};
use e2e_tests::{Device, RelayProcess, init_pair, json, ndjson, random_bytes, wait_until};
use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::Duration;
use sync_client::crypto::envelope::FileVersion;
use sync_protocol::{DeviceId, PulledBlob};

/// A file's content as compared: the text when short, else its size and
/// BLAKE3 (so a failed comparison stays readable).
fn content(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) if bytes.len() <= 64 => text.to_string(),
        _ => format!("{} bytes, blake3 {}", bytes.len(), blake3::hash(bytes)),
    }
}

/// Every entry under `dir` (recursively, not following symlinks) as
/// `relative/path` → content: `<dir>` for a directory, `<link TARGET>`
/// for a symlink.
fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let meta = std::fs::symlink_metadata(e.path()).unwrap();
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(e.path()).unwrap();
            out.push((name, format!("<link {}>", target.display())));
        } else if meta.is_dir() {
            out.push((name.clone(), "<dir>".to_string()));
            for (n, c) in tree(&e.path()) {
                out.push((format!("{name}/{n}"), c));
            }
        } else {
            out.push((name, content(&std::fs::read(e.path()).unwrap())));
        }
    }
    out.sort();
    out
}

/// The kinds and names of `pull --json` events, progress left out.
fn events(out: &str) -> Vec<serde_json::Value> {
    ndjson(out)
        .into_iter()
        .filter(|e| e["event"] != "progress" && e["event"] != "done")
        .collect()
}

#[test]
fn a_nested_tree_is_recreated_by_pull_and_follow_and_conflicts_land_beside() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let c = Device::new();
    c.join(&a, a.run(&["invite"]).trim(), &[]);

    // A's project: nested files (one of several chunks, one empty, one in
    // a dot-directory), an empty directory, and two symlinks.
    let src = tmp.path().join("a").join("proj");
    std::fs::create_dir_all(src.join("src/deep/er")).unwrap();
    std::fs::create_dir_all(src.join(".config")).unwrap();
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    std::fs::write(src.join("README.md"), b"# proj\n").unwrap();
    std::fs::write(src.join("src/main.rs"), b"fn main() {}\n").unwrap();
    std::fs::write(src.join("src/deep/er/data.bin"), random_bytes(2_500_000)).unwrap();
    std::fs::write(src.join(".config/settings"), b"x=1\n").unwrap();
    std::fs::write(src.join("empty.txt"), b"").unwrap();
    symlink(src.join("src"), src.join("src-link")).unwrap();
    symlink("/etc/passwd", src.join("passwd")).unwrap();
    let expected: Vec<(String, String)> = {
        let mut t: Vec<_> = tree(&src)
            .into_iter()
            .filter(|(n, c)| !c.starts_with("<link") && n != "empty-dir")
            .map(|(n, c)| (format!("proj/{n}"), c))
            .collect();
        t.push(("proj".into(), "<dir>".to_string()));
        t.sort();
        t
    };

    // C follows before anything is pushed.
    let out_c = tmp.path().join("c");
    let mut follower = c
        .cmd()
        .args([
            "pull",
            "--follow",
            "--json",
            "--out",
            out_c.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    let pushed = json(&a.run(&["push", "--json", src.to_str().unwrap()]));
    let names: Vec<&str> = pushed["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "proj/.config/settings",
            "proj/README.md",
            "proj/empty.txt",
            "proj/src/deep/er/data.bin",
            "proj/src/main.rs",
        ]
    );
    let skipped = pushed["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 2, "{skipped:?}");
    assert!(
        skipped
            .iter()
            .all(|s| s["reason"].as_str().unwrap().contains("symbolic link")),
        "{skipped:?}"
    );

    // B pulls once: the same tree, no symlink, no empty directory; the
    // events name each file by its relative path.
    let out_b = tmp.path().join("b");
    let got = events(&b.run(&["pull", "--json", "--out", out_b.to_str().unwrap()]));
    let mut got_names: Vec<&str> = got.iter().map(|e| e["name"].as_str().unwrap()).collect();
    got_names.sort();
    assert_eq!(got_names, names);
    assert!(got.iter().all(|e| e["event"] == "file"), "{got:?}");
    assert_eq!(tree(&out_b), expected);

    // C, following, gets the same.
    wait_until(Duration::from_secs(60), "the follower's tree", || {
        tree(&out_c) == expected
    });
    follower.kill().unwrap();
    follower.wait().unwrap();

    // B edits a nested file without pushing; A changes it and pushes the
    // directory again: only that file is sent, and at B it lands as a
    // conflict copy beside B's edit, in the same directory.
    std::fs::write(out_b.join("proj/src/main.rs"), b"B's edit\n").unwrap();
    std::fs::write(src.join("src/main.rs"), b"fn main() { v2 }\n").unwrap();
    let again = json(&a.run(&["push", "--json", src.to_str().unwrap()]));
    let changed: Vec<&str> = again["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["unchanged"] == false)
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(changed, ["proj/src/main.rs"]);
    let got = events(&b.run(&["pull", "--json", "--out", out_b.to_str().unwrap()]));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["event"], "conflict");
    assert_eq!(got[0]["name"], "proj/src/main.rs");
    let saved = Path::new(got[0]["path"].as_str().unwrap());
    assert_eq!(
        std::fs::canonicalize(saved.parent().unwrap()).unwrap(),
        std::fs::canonicalize(out_b.join("proj/src")).unwrap()
    );
    let saved_name = saved.file_name().unwrap().to_str().unwrap();
    assert!(
        saved_name.starts_with("main (conflict ") && saved_name.ends_with(").rs"),
        "{saved_name}"
    );
    assert_eq!(std::fs::read(saved).unwrap(), b"fn main() { v2 }\n");
    assert_eq!(
        std::fs::read(out_b.join("proj/src/main.rs")).unwrap(),
        b"B's edit\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_paths_are_refused_and_nothing_lands_outside_out() {
    let (a, keys) = device_with_keys();
    let evil = DeviceId([0xee; 32]);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // Planted in --out before the pull: a symlink to a directory outside
    // it, a symlink to a directory inside it, and a file where a
    // directory of a received path would go.
    symlink(&outside, out.join("link")).unwrap();
    std::fs::create_dir_all(out.join("real")).unwrap();
    symlink(out.join("real"), out.join("inner")).unwrap();
    std::fs::write(out.join("notes.txt"), b"my notes").unwrap();
    let absolute = format!("{}/abs.txt", outside.display());
    let hostile: Vec<(&str, &str)> = vec![
        ("../up.txt", "component"),
        (&absolute, "absolute"),
        ("a/../../x.txt", "component"),
        ("sub/\x1b]0;pwned\x07.txt", "control"),
        ("sub\\..\\..\\x.txt", "backslash"),
        ("a//b.txt", "empty component"),
        ("link/planted.txt", "symbolic link"),
        ("link/deeper/planted.txt", "symbolic link"),
        ("inner/planted.txt", "symbolic link"),
        ("notes.txt/inner.txt", "not a directory"),
    ];
    let good = "ok/deep/fine.txt";
    let blobs: Vec<PulledBlob> = hostile
        .iter()
        .map(|(n, _)| *n)
        .chain([good])
        .enumerate()
        .map(|(i, name)| {
            let n = i as u64 + 1;
            let content = format!("content of {name}").into_bytes();
            let version = FileVersion {
                lineage: [i as u8; 16],
                generation: 1,
                device: Some("evil".into()),
            };
            sealed(
                &keys,
                evil,
                n,
                n,
                file_kind(name, &content, 0o644, Some(version)),
                &content,
            )
        })
        .collect();
    let fake = FakeRelay::alone(Script::new().on_request(move |_, req| serve(&blobs, req))).await;
    a.set_relay(&fake.address);
    let before = tree(&out);

    let mut cmd = a.cmd();
    cmd.args(["pull", "--json", "--out", out.to_str().unwrap()]);
    let result = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains('\x1b') && !stderr.contains('\x1b'));
    let got = events(&stdout);
    let rejected: Vec<&str> = got
        .iter()
        .filter(|e| e["event"] == "rejected")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(rejected.len(), hostile.len(), "{got:?}");
    // In cursor order, each for its own reason.
    for ((name, why), reason) in hostile.iter().zip(&rejected) {
        assert!(reason.contains(why), "{name:?}: {reason}");
    }
    let files: Vec<&serde_json::Value> = got.iter().filter(|e| e["event"] == "file").collect();
    assert_eq!(files.len(), 1, "{got:?}");
    assert_eq!(files[0]["name"], good);

    // Nothing outside --out; in it, what was there plus the one good file
    // (no temp file left behind).
    assert_eq!(tree(&outside), []);
    let mut entries: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    assert_eq!(entries, ["out", "outside"]);
    let mut expected = before;
    expected.extend([
        ("ok".to_string(), "<dir>".to_string()),
        ("ok/deep".to_string(), "<dir>".to_string()),
        (good.to_string(), format!("content of {good}")),
    ]);
    expected.sort();
    assert_eq!(tree(&out), expected);
    fake.close().await;
}
