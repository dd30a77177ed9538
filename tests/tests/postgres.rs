//! The relay on PostgreSQL (`[storage] url = "postgres://…"`, here through
//! `SYNC_RELAY__STORAGE__URL`): two relay processes share one database of
//! their own on the server `SYNC_TEST_POSTGRES_URL` names. Device A pushes
//! through relay 1; device B, pointed at relay 2, pulls the same bytes; then
//! the other way round, and B's saved cursor holds on the other relay.
//! Without the variable the test prints a loud SKIPPED line and passes.

use e2e_tests::{RelayProcess, init_pair, json, ndjson};
use sync_storage_postgres::testing::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_postgres_share_groups_and_blobs() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let env = [("SYNC_RELAY__STORAGE__URL", url.as_str())];
    let relay1 = RelayProcess::start_with_env(&tmp.path().join("r1"), "127.0.0.1:0", &[], &env);
    let relay2 = RelayProcess::start_with_env(&tmp.path().join("r2"), "127.0.0.1:0", &[], &env);
    assert!(
        !tmp.path().join("r1/relay.db").exists(),
        "the relay on PostgreSQL made a SQLite file"
    );
    assert!(relay1.log().contains("postgres"), "{}", relay1.log());
    let (a, b) = init_pair(&relay1);
    b.set_relay(&relay2.address);

    let file = tmp.path().join("notes.md");
    let content: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(&file, &content).unwrap();
    let pushed = json(&a.run(&["push", "--json", file.to_str().unwrap()]));
    assert_eq!(pushed["files"][0]["size"], content.len() as u64);

    let out = tmp.path().join("out-b");
    let events = ndjson(&b.run(&["pull", "--json", "--out", out.to_str().unwrap()]));
    assert!(!events.is_empty());
    assert_eq!(std::fs::read(out.join("notes.md")).unwrap(), content);

    // Both relays see the same storage (their /health figures come from it).
    let h1 = relay1.fresh_health();
    let h2 = relay2.fresh_health();
    for key in ["groups", "devices", "storage_bytes"] {
        assert_eq!(h1[key], h2[key], "{key}: {h1} {h2}");
    }
    assert!(h1["storage_bytes"].as_u64().unwrap() >= content.len() as u64 / 2);
    assert_eq!(
        (h1["status"].as_str(), h1["db"].as_str()),
        (Some("ok"), Some("ok"))
    );

    // The other way round: A pushes through relay 2, B pulls through
    // relay 1 and gets only the new file: the cursor B saved from relay 2
    // means the same on relay 1 (one head per group in the database).
    a.set_relay(&relay2.address);
    b.set_relay(&relay1.address);
    let second = tmp.path().join("todo.md");
    std::fs::write(&second, b"second file").unwrap();
    a.run(&["push", "--json", second.to_str().unwrap()]);
    let again = tmp.path().join("out-b2");
    b.run(&["pull", "--json", "--out", again.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(again.join("todo.md")).unwrap(),
        b"second file"
    );
    assert!(
        !again.join("notes.md").exists(),
        "B pulled the first file again through the other relay"
    );
    drop(relay1);
    drop(relay2);
    drop(db);
}

/// `sync-relay backup` on PostgreSQL: `pg_dump`'s custom format plus the
/// node key; `pg_restore` into a fresh database and a relay started on it
/// with the key has the same node id and serves the same blobs (a pull
/// after the restore gets every file pushed before the backup; one pushed
/// after it is not there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_with_pg_dump_restores_into_a_fresh_database() {
    use std::os::unix::fs::PermissionsExt;
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let Some(fresh) = TestDatabase::create().await else {
        return;
    };
    let url = db.url();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("r1");
    let relay = RelayProcess::start_with_env(
        &data,
        "127.0.0.1:0",
        &[],
        &[("SYNC_RELAY__STORAGE__URL", url.as_str())],
    );
    let (a, b) = init_pair(&relay);
    let file = tmp.path().join("kept.bin");
    let content: Vec<u8> = (0..40_000u32).flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(&file, &content).unwrap();
    a.run(&["push", file.to_str().unwrap()]);

    let dest = tmp.path().join("backup");
    let backup = |dest: &std::path::Path| {
        std::process::Command::new(e2e_tests::bin("sync-relay"))
            .arg("--data-dir")
            .arg(&data)
            .arg("backup")
            .arg(dest)
            .env("SYNC_RELAY__STORAGE__URL", &url)
            .output()
            .unwrap()
    };
    let out = backup(&dest);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, mode) in [("relay.pgdump", 0o600), ("relay.key", 0o600), ("", 0o700)] {
        let meta = std::fs::metadata(dest.join(name)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{name:?}");
    }
    // Written after the backup: not in it.
    let late = tmp.path().join("late.bin");
    std::fs::write(&late, b"after the backup").unwrap();
    a.run(&["push", late.to_str().unwrap()]);
    // A second backup into the same place is refused.
    assert_eq!(backup(&dest).status.code(), Some(1));
    let node_id = relay.node_id().to_string();
    drop(relay);

    let restore = std::process::Command::new("pg_restore")
        .args(["--no-owner", "--exit-on-error", "--dbname"])
        .arg(fresh.url())
        .arg(dest.join("relay.pgdump"))
        .output()
        .expect("run pg_restore");
    assert!(
        restore.status.success(),
        "{}",
        String::from_utf8_lossy(&restore.stderr)
    );
    let restored_data = tmp.path().join("restored");
    std::fs::create_dir(&restored_data).unwrap();
    std::fs::set_permissions(&restored_data, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::copy(dest.join("relay.key"), restored_data.join("relay.key")).unwrap();
    let fresh_url = fresh.url();
    let restored = RelayProcess::start_with_env(
        &restored_data,
        "127.0.0.1:0",
        &[],
        &[("SYNC_RELAY__STORAGE__URL", fresh_url.as_str())],
    );
    assert_eq!(restored.node_id(), node_id);
    b.set_relay(&restored.address);
    let out = tmp.path().join("out");
    b.run(&["pull", "--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("kept.bin")).unwrap(), content);
    assert!(
        !out.join("late.bin").exists(),
        "a file pushed after the backup came back"
    );
    // The restored relay takes pushes (its cursors go on from the backup).
    std::fs::write(&late, b"pushed again").unwrap();
    a.set_relay(&restored.address);
    a.run(&["push", late.to_str().unwrap()]);
    b.run(&["pull", "--out", out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out.join("late.bin")).unwrap(),
        b"pushed again"
    );
    drop(restored);
    drop(fresh);
    drop(db);
}
