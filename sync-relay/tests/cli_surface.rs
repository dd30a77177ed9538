//! The command-line surface of `sync-relay` (also makes `cargo test` build the binary
//! that the end-to-end tests in `tests/` run).

use std::process::Command;

fn relay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sync-relay"))
        .args(args)
        .env_remove("SYNC_RELAY_CONFIG")
        .env_remove("SYNC_RELAY_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn id_creates_the_key_once_and_prints_the_same_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = relay(&["id", "--data-dir", data.to_str().unwrap()]);
    assert!(first.status.success());
    let id = String::from_utf8(first.stdout).unwrap();
    assert_eq!(id.trim().len(), 64);
    let second = relay(&["id", "--data-dir", data.to_str().unwrap()]);
    assert_eq!(String::from_utf8(second.stdout).unwrap(), id);
}

#[test]
fn check_config_accepts_the_example_and_names_bad_keys() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../relay.toml.example");
    let out = relay(&["check-config", example]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_blob_size = 0\n").unwrap();
    let out = relay(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limits.max_blob_size"));

    std::fs::write(&bad, "[network]\nquic_bnd = \"0.0.0.0:1\"\n").unwrap();
    let out = relay(&["check-config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quic_bnd"));
}
