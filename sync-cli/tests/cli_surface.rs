//! The command-line surface of `sync-cli` (also makes `cargo test` build the binary
//! that the end-to-end tests in `tests/` run).

use std::process::Command;

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sync-cli"))
        .args(args)
        .env_remove("SYNC_HOME")
        .output()
        .unwrap()
}

#[test]
fn help_lists_every_command() {
    let out = cli(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["init", "invite", "join", "push", "pull", "status"] {
        assert!(text.contains(cmd), "--help lacks {cmd}:\n{text}");
    }
}

#[test]
fn unknown_flags_are_usage_errors() {
    let out = cli(&["pull", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn init_refuses_a_malformed_relay_address() {
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&[
        "--home",
        dir.path().to_str().unwrap(),
        "init",
        "--relay",
        "127.0.0.1:4433",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: invalid relay address"), "{err}");
    assert!(!dir.path().join("group.toml").exists(), "nothing written");
}

/// `--help` of every command, snapshotted: an interface change must show up
/// as a reviewed snapshot change (`INSTA_UPDATE=always cargo test` rewrites
/// them; CI fails on any difference).
#[test]
fn help_texts_are_stable() {
    for cmd in [
        &[][..],
        &["init"],
        &["invite"],
        &["join"],
        &["push"],
        &["pull"],
        &["status"],
        &["sync"],
        &["completions"],
    ] {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push("--help");
        let out = cli(&args);
        assert!(out.status.success());
        let name = if cmd.is_empty() {
            "main".to_string()
        } else {
            cmd.join("_")
        };
        insta::assert_snapshot!(
            format!("help_{name}"),
            String::from_utf8(out.stdout).unwrap()
        );
    }
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = cli(&["completions", shell]);
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(
            script.contains("sync-cli") && script.contains("pull"),
            "{shell}"
        );
    }
    assert_eq!(cli(&["completions", "cmd.exe"]).status.code(), Some(2));
}
