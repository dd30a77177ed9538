//! The conflict rules with three devices through the real relay and CLI
//! (docs/client.md, "Local files are never lost"): a version replaces only
//! what the device itself wrote or pushed from the same history; an edit
//! made here, or a concurrent version from another device, is kept and the
//! arriving file saved beside it; identical content is nothing to do.

use e2e_tests::{Device, RelayProcess, init_pair, ndjson};
use std::path::Path;

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut n: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    n.sort();
    n
}

/// `pull --json --out dir`: the kinds of file events, progress left out.
fn pull(d: &Device, dir: &Path) -> Vec<String> {
    ndjson(&d.run(&["pull", "--json", "--out", dir.to_str().unwrap()]))
        .iter()
        .map(|e| e["event"].as_str().unwrap().to_string())
        .filter(|k| k != "progress" && k != "done")
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// The one conflict copy of `plan.txt` in `dir`.
fn conflict_copy(dir: &Path) -> String {
    let copies: Vec<String> = names(dir)
        .into_iter()
        .filter(|n| n.starts_with("plan (conflict ") && n.ends_with(").txt"))
        .collect();
    assert_eq!(copies.len(), 1, "{:?}", names(dir));
    read(&dir.join(&copies[0]))
}

#[test]
fn three_devices_never_lose_an_edit() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b) = init_pair(&relay);
    let c = Device::new();
    let invite = a.run(&["invite"]);
    c.join(&a, invite.trim(), &[]);
    let dir = |n: &str| {
        let d = tmp.path().join(n);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    let (da, db, dc) = (dir("a"), dir("b"), dir("c"));

    // A writes version 1 and pushes it. B has nothing yet; C happens to
    // have the same content already: nothing to do there.
    std::fs::write(da.join("plan.txt"), "v1").unwrap();
    a.run(&["push", da.join("plan.txt").to_str().unwrap()]);
    std::fs::write(dc.join("plan.txt"), "v1").unwrap();
    assert_eq!(pull(&b, &db), ["file"]);
    assert_eq!(pull(&c, &dc), ["file"]);
    assert_eq!(names(&dc), ["plan.txt"]);

    // B edits what it received and pushes: version 2 of the same history.
    // C edits its copy too, without pushing.
    std::fs::write(db.join("plan.txt"), "v2 by B").unwrap();
    b.run(&["push", db.join("plan.txt").to_str().unwrap()]);
    std::fs::write(dc.join("plan.txt"), "C's edit").unwrap();

    // A still holds exactly what it pushed: replaced by B's version.
    assert_eq!(pull(&a, &da), ["file"]);
    assert_eq!(read(&da.join("plan.txt")), "v2 by B");
    assert_eq!(names(&da), ["plan.txt"]);

    // C's edit is kept; B's version saved beside it.
    assert_eq!(pull(&c, &dc), ["conflict"]);
    assert_eq!(read(&dc.join("plan.txt")), "C's edit");
    assert_eq!(conflict_copy(&dc), "v2 by B");

    // C pushes its edit: a version 2 made concurrently with B's. A and B,
    // which hold B's version 2, keep it and save C's beside it.
    c.run(&["push", dc.join("plan.txt").to_str().unwrap()]);
    assert_eq!(pull(&a, &da), ["conflict"]);
    assert_eq!(read(&da.join("plan.txt")), "v2 by B");
    assert_eq!(conflict_copy(&da), "C's edit");
    assert_eq!(pull(&b, &db), ["conflict"]);
    assert_eq!(read(&db.join("plan.txt")), "v2 by B");
    assert_eq!(conflict_copy(&db), "C's edit");

    // A settles on C's text and pushes: version 3, which replaces what B
    // and C hold (each wrote or pushed the version it has there).
    std::fs::write(da.join("plan.txt"), "merged by A").unwrap();
    a.run(&["push", da.join("plan.txt").to_str().unwrap()]);
    assert_eq!(pull(&b, &db), ["file"]);
    assert_eq!(read(&db.join("plan.txt")), "merged by A");
    assert_eq!(pull(&c, &dc), ["file"]);
    assert_eq!(read(&dc.join("plan.txt")), "merged by A");
    assert_eq!(names(&dc).len(), 2, "plan.txt and the earlier copy only");
}
