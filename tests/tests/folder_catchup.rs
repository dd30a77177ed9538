//! Folder sync past the relay's TTL (docs/client.md "Folder sync", "Late
//! and returning devices"): a device that joins after the blobs carrying
//! the folder expired, and one away longer than the TTL, reach the same
//! tree as the others with nothing but `sync-cli sync DIR`, through a
//! manifest and contents pushed again on request. Real CLI processes; the
//! relay's cleanup runs every second and the old blobs are pushed with a
//! 2-second TTL; the tests wait for the relay to report them deleted.

use e2e_tests::folder::{Tree, tree, write};
use e2e_tests::{Device, RelayProcess, init_pair, json, relay_with, wait_until};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

fn sync(dev: &Device, dir: &Path, ttl: Option<&str>) -> serde_json::Value {
    let dir = dir.to_str().unwrap();
    let mut args = vec!["sync", "--json", dir];
    if let Some(t) = ttl {
        args.extend(["--ttl", t]);
    }
    json(&dev.run(&args))
}

/// Blobs a run pushed (content, records, manifest parts, a request).
fn blobs_pushed(r: &serde_json::Value) -> u64 {
    let n = |k: &str| r[k].as_u64().unwrap();
    let asked = r["manifest_requested"].as_bool().unwrap() || n("requested") > 0;
    n("uploaded_blobs") + n("records_sent") + n("manifest_parts_sent") + u64::from(asked)
}

/// Wait until the relay's cleanup has deleted at least `n` expired blobs.
fn wait_expired(relay: &RelayProcess, n: u64) {
    wait_until(
        Duration::from_secs(90),
        "the short-lived blobs to expire",
        || relay.metrics().value("sync_relay_cleanup_deleted", &[]) >= n as f64,
    );
}

/// Sync `late` then `online` in turns until their trees are equal (at
/// most `rounds` turns each); returns both devices' reports.
fn catch_up(
    late: (&Device, &Path),
    online: (&Device, &Path),
    rounds: usize,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let (mut l, mut o) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        l.push(sync(late.0, late.1, None));
        if tree(late.1) == tree(online.1) {
            break;
        }
        o.push(sync(online.0, online.1, None));
    }
    let (a, b): (Tree, Tree) = (tree(online.1), tree(late.1));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "late device's tree differs\nlate: {l:#?}\nonline: {o:#?}"
    );
    assert!(a == b, "contents differ\nlate: {l:#?}\nonline: {o:#?}");
    (l, o)
}

fn any(reports: &[serde_json::Value], f: impl Fn(&serde_json::Value) -> bool) -> bool {
    reports.iter().any(f)
}

#[test]
fn a_device_joining_after_the_folder_expired_gets_the_whole_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), "[cleanup]\ninterval_s = 1\n");
    let (a, _b) = init_pair(&relay);
    let dir_a = tmp.path().join("folder-a");
    write(&dir_a, "notes.txt", b"notes\n");
    write(&dir_a, "src/main.rs", b"fn main() {}\n");
    write(&dir_a, "run.sh", b"#!/bin/sh\necho hi\n");
    std::fs::set_permissions(dir_a.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    write(&dir_a, "data/big.bin", &e2e_tests::random_bytes(300_000));
    std::fs::create_dir_all(dir_a.join("empty/inner")).unwrap();
    // Every blob of the folder so far lives 2 s.
    let mut short = 0;
    for _ in 0..2 {
        short += blobs_pushed(&sync(&a, &dir_a, Some("2s")));
    }
    assert!(short >= 2, "{short}");
    wait_expired(&relay, short);

    // C joins now: nothing of the folder is left at the relay.
    let c = Device::new();
    let invite = a.run(&["invite"]);
    c.join(&a, invite.trim(), &[]);
    let dir_c = tmp.path().join("folder-c");
    let (late, online) = catch_up((&c, &dir_c), (&a, &dir_a), 5);
    assert!(
        any(&late, |r| r["manifest_from"].is_array()),
        "C started from a manifest: {late:#?}"
    );
    assert!(
        any(&online, |r| !r["repushed"].as_array().unwrap().is_empty()),
        "A pushed contents again: {online:#?}"
    );
    let t = tree(&dir_c);
    assert_eq!(t["run.sh"], Some((b"#!/bin/sh\necho hi\n".to_vec(), true)));
    assert_eq!(t["empty/inner"], None);
}

#[test]
fn a_device_away_past_the_ttl_catches_up_through_a_repush() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), "[cleanup]\ninterval_s = 1\n");
    let (a, b) = init_pair(&relay);
    let (dir_a, dir_b) = (tmp.path().join("folder-a"), tmp.path().join("folder-b"));
    let moved = e2e_tests::random_bytes(200_000);
    write(&dir_a, "keep.txt", b"kept\n");
    write(&dir_a, "edit.txt", b"first version\n");
    write(&dir_a, "gone.txt", b"to be deleted\n");
    write(&dir_a, "moved.bin", &moved);
    for _ in 0..2 {
        sync(&a, &dir_a, None);
        sync(&b, &dir_b, None);
    }
    assert_eq!(tree(&dir_a), tree(&dir_b));

    // B is away; A's changes live 2 s at the relay.
    write(
        &dir_a,
        "edit.txt",
        b"second version, made while B was away\n",
    );
    std::fs::remove_file(dir_a.join("gone.txt")).unwrap();
    std::fs::create_dir_all(dir_a.join("sub")).unwrap();
    std::fs::rename(dir_a.join("moved.bin"), dir_a.join("sub/moved.bin")).unwrap();
    write(&dir_a, "new/fresh.bin", &e2e_tests::random_bytes(150_000));
    let mut short = 0;
    for _ in 0..2 {
        short += blobs_pushed(&sync(&a, &dir_a, Some("2s")));
    }
    wait_expired(&relay, short);

    // B comes back.
    let (late, online) = catch_up((&b, &dir_b), (&a, &dir_a), 5);
    assert!(
        late[0]["manifest_needed"].as_bool().unwrap()
            && late[0]["manifest_requested"].as_bool().unwrap(),
        "B saw the gap and asked for a manifest: {late:#?}"
    );
    assert!(
        any(&late, |r| r["manifest_from"].is_array()),
        "B started from a manifest: {late:#?}"
    );
    // Only the two contents no disk of B held were asked for: the moved
    // file came from B's own copy.
    let asked: u64 = late.iter().map(|r| r["requested"].as_u64().unwrap()).sum();
    assert_eq!(asked, 2, "{late:#?}");
    let repushed: Vec<String> = online
        .iter()
        .flat_map(|r| r["repushed"].as_array().unwrap().clone())
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert!(
        repushed.contains(&"edit.txt".to_string())
            && repushed.contains(&"new/fresh.bin".to_string()),
        "{repushed:?}"
    );
    let t = tree(&dir_b);
    assert_eq!(t["sub/moved.bin"], Some((moved, false)));
    assert!(!t.contains_key("gone.txt") && !t.contains_key("moved.bin"));
}
