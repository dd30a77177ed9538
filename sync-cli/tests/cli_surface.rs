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

#[test]
fn invite_prints_a_qr_code_on_request() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_str().unwrap();
    let relay = "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@127.0.0.1:4433";
    let out = cli(&[
        "--home",
        home,
        "init",
        "--relay",
        relay,
        "--qr",
        "--expires",
        "2h",
    ]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.trim().starts_with("0ksync1-") && stdout.lines().count() == 1,
        "stdout is the invite alone"
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains('█') || stderr.contains('▀') || stderr.contains('▄'),
        "a QR code on stderr"
    );
    assert!(stderr.contains("2h"));
    // JSON mode: one object, no QR.
    let out = cli(&["--home", home, "--json", "invite", "--expires", "30m"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["invite"].as_str().unwrap().starts_with("0ksync1-"));
    assert!(v["expires_at"].as_u64().is_some());
    // An expired invite is refused with a clear message.
    let expired = cli(&["--home", home, "invite", "--expires", "0s"]);
    let invite = String::from_utf8(expired.stdout).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let other = tempfile::tempdir().unwrap();
    let out = cli(&[
        "--home",
        other.path().to_str().unwrap(),
        "join",
        invite.trim(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));
}
