//! Files with relative paths (docs/client.md "Directories"): directories
//! made under the output directory, the conflict rules per path, and
//! recovery of a nested file moved into place before a crash.

use super::*;

#[test]
fn a_nested_file_has_its_own_history_at_its_path() {
    let mut f = fixture();
    let v1 = file_blob(&f, SENDER, 1, 1, "proj/src/main.rs", b"v1", Some((1, 1)));
    let same_leaf = file_blob(&f, SENDER, 2, 2, "main.rs", b"top", Some((2, 1)));
    let events = outcomes(&mut f, &[v1, same_leaf]);
    assert!(
        matches!(&events[..], [PullEvent::File { name, path, .. }, PullEvent::File { .. }]
            if name == "proj/src/main.rs" && path == &out(&f).join("proj/src/main.rs")),
        "{events:?}"
    );
    let key = std::fs::canonicalize(out(&f))
        .unwrap()
        .join("proj/src/main.rs");
    assert!(
        f.store.state.files.contains_key(key.to_str().unwrap()),
        "{:?}",
        f.store.state.files.keys()
    );
    // Version 2 of that history replaces what this device wrote there;
    // the file of the same name at the top is another path, untouched.
    let v2 = file_blob(&f, OTHER, 3, 1, "proj/src/main.rs", b"v2", Some((1, 2)));
    let events = outcomes(&mut f, &[v2]);
    assert!(
        matches!(&events[..], [PullEvent::File { .. }]),
        "{events:?}"
    );
    assert_eq!(read(&f, "proj/src/main.rs"), b"v2");
    assert_eq!(read(&f, "main.rs"), b"top");
    // A local edit there is kept; the next version lands beside it.
    std::fs::write(out(&f).join("proj/src/main.rs"), b"edited here").unwrap();
    let v3 = file_blob(&f, OTHER, 4, 2, "proj/src/main.rs", b"v3", Some((1, 3)));
    let events = outcomes(&mut f, &[v3]);
    let [PullEvent::Conflict { path, kept, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(kept, &out(&f).join("proj/src/main.rs"));
    assert_eq!(path.parent().unwrap(), out(&f).join("proj/src"));
    let saved = path.file_name().unwrap().to_str().unwrap();
    assert!(is_conflict_name(saved, "main", "laptop", ".rs"), "{saved}");
    assert_eq!(read(&f, "proj/src/main.rs"), b"edited here");
}

#[test]
fn a_nested_file_moved_before_a_crash_is_recovered_only_inside_out() {
    for through_symlink in [false, true] {
        let mut f = fixture();
        let b = file_blob(&f, SENDER, 1, 1, "a/b/c.txt", b"done", Some((1, 1)));
        outcomes(&mut f, &[b]);
        assert_eq!(read(&f, "a/b/c.txt"), b"done");
        // The crash: the file was moved into place, the state still says
        // `completing` and the temp file is gone.
        let key = std::fs::canonicalize(out(&f))
            .unwrap()
            .join("a/b/c.txt")
            .to_string_lossy()
            .into_owned();
        f.store.state.files.remove(&key);
        let mut partial = PartialFile {
            name: "a/b/c.txt".into(),
            mode: 0o644,
            temp_path: out(&f).join(".0k-sync-ff.part"),
            sender: hex::encode(SENDER.0),
            received: Default::default(),
            end: Some((1, 4, blake3::hash(b"done").to_hex().to_string())),
            bytes: 4,
            size_hint: Some(4),
            completing: true,
            lineage: Some(hex::encode([1u8; 16])),
            generation: 1,
            device: None,
            seq: 1,
        };
        partial.received.insert(0..=0);
        f.store.state.partials.insert("ff".into(), partial);
        if through_symlink {
            // Meanwhile `a` became a symlink to a copy outside: the copy
            // is not taken for the file.
            let outside = f.dir.path().join("outside");
            std::fs::rename(out(&f).join("a"), &outside).unwrap();
            std::os::unix::fs::symlink(&outside, out(&f).join("a")).unwrap();
        }
        let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), out(&f));
        let mut events = Vec::new();
        receiver
            .recover(&mut f.store, &mut |e| events.push(e))
            .unwrap();
        if through_symlink {
            assert!(
                matches!(&events[..], [PullEvent::Rejected { reason, .. }] if reason.contains("interrupted")),
                "{events:?}"
            );
            assert!(f.store.state.files.is_empty());
        } else {
            assert!(
                matches!(&events[..], [PullEvent::File { name, .. }] if name == "a/b/c.txt"),
                "{events:?}"
            );
            assert!(f.store.state.files.contains_key(&key));
        }
        assert!(f.store.state.partials.is_empty());
    }
}
