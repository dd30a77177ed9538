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
