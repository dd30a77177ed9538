//! The end-to-end tests, one module per file of this directory, built as
//! one test binary (`[[test]] e2e` in `tests/Cargo.toml`, `autotests =
//! false`): the files share most of their code (`e2e_tests`, `sync-client`,
//! iroh, tokio), which as 28 binaries was compiled and linked 28 times —
//! minutes of every clean CI build (docs/testing.md "Running the tests").
//! One file's tests: `cargo test -p e2e-tests --test e2e chaos::`.

#[path = "access.rs"]
mod access;
#[path = "adversarial.rs"]
mod adversarial;
#[path = "chaos.rs"]
mod chaos;
#[path = "churn_retention.rs"]
mod churn_retention;
#[path = "cli_sync.rs"]
mod cli_sync;
#[path = "conflicts.rs"]
mod conflicts;
#[path = "devices.rs"]
mod devices;
#[path = "dial_storm.rs"]
mod dial_storm;
#[path = "directories.rs"]
mod directories;
#[path = "durability.rs"]
mod durability;
#[path = "folder_catchup.rs"]
mod folder_catchup;
#[path = "folder_sync.rs"]
mod folder_sync;
#[path = "folder_watch.rs"]
mod folder_watch;
#[path = "group_close.rs"]
mod group_close;
#[path = "hostile_relay.rs"]
mod hostile_relay;
#[path = "inline_delivery.rs"]
mod inline_delivery;
#[path = "invites.rs"]
mod invites;
#[path = "multi_relay.rs"]
mod multi_relay;
#[path = "operations.rs"]
mod operations;
#[path = "peer_limits.rs"]
mod peer_limits;
#[path = "postgres.rs"]
mod postgres;
#[path = "postgres_cluster.rs"]
mod postgres_cluster;
#[path = "postgres_notify.rs"]
mod postgres_notify;
#[path = "postgres_outage.rs"]
mod postgres_outage;
#[path = "protocol.rs"]
mod protocol;
#[path = "push_batch.rs"]
mod push_batch;
#[path = "resilience.rs"]
mod resilience;
#[path = "seq_blocks.rs"]
mod seq_blocks;
#[path = "unanswered_dial.rs"]
mod unanswered_dial;

/// With `autotests = false` a test file that is not a module above would
/// silently never run: every `.rs` file of this directory but this one must
/// be declared here.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let harness = include_str!("e2e.rs");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("tests/tests") {
        let name = entry.expect("tests/tests entry").file_name();
        let name = name.to_string_lossy();
        let Some(stem) = name.strip_suffix(".rs") else {
            continue;
        };
        if stem == "e2e" {
            continue;
        }
        files += 1;
        let declared = format!("#[path = \"{name}\"]\nmod {stem};\n");
        assert!(
            harness.contains(&declared),
            "tests/tests/{name} is not a module of tests/tests/e2e.rs: add\n{declared}"
        );
    }
    assert!(files > 0, "no test files found in {}", dir.display());
}
