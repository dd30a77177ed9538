//! Devices that know several relays (docs/client.md "Several relays"),
//! through the real CLI and real relay processes. Two relay processes may
//! not share one SQLite data directory (one writer), so these tests cover
//! what needs no shared database: failover from a dead relay to a live
//! one, invites carrying every relay, `status` per relay, and that a relay
//! that does not hold the group's history is reported, not used.
//! Failover between two live instances of one cluster needs the PostgreSQL
//! backend (docs/testing.md).

use e2e_tests::{Device, RelayProcess, json, ndjson};
use std::net::UdpSocket;

/// Kill `relay` and hold its UDP port, so the address stays dead (nothing
/// answers, and no other test's relay can take the port).
fn kill_and_hold(relay: &mut RelayProcess) -> UdpSocket {
    relay.kill9();
    UdpSocket::bind(relay.quic).expect("the killed relay's port is free")
}

/// Fast failover from a dead relay: a connect attempt gives up after the
/// stall timeout (2 s here, 10 s by default).
const FAST: [&str; 4] = ["--stall-timeout", "2s", "--retry-for", "20s"];

fn with(args: &[&str], extra: &[&str]) -> Vec<String> {
    args.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn run(dev: &Device, args: &[String]) -> String {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    dev.run(&args)
}

#[test]
fn a_device_of_two_relays_fails_over_to_the_live_one_and_its_invite_names_both() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dead = RelayProcess::start(&tmp.path().join("relay-a"));
    let live = RelayProcess::start(&tmp.path().join("relay-b"));
    let (a, b) = (dead.address.clone(), live.address.clone());
    let _hold = kill_and_hold(&mut dead);

    let x = Device::new();
    let invite = x.run(&["init", "--relay", &a, "--relay", &b, "--name", "two"]);
    assert!(invite.trim().starts_with("0ksync2-"), "{invite}");
    let group = std::fs::read_to_string(x.home.join("group.toml")).unwrap();
    assert!(
        group.contains(&format!("relays = [\"{a}\", \"{b}\"]")),
        "{group}"
    );

    // A push goes through B (A, first preferred, is dead) ...
    let file = tmp.path().join("note.txt");
    std::fs::write(&file, b"through the second relay\n").unwrap();
    run(&x, &with(&["push", file.to_str().unwrap()], &FAST));
    // ... and B is remembered as the relay that worked.
    let current = std::fs::read_to_string(x.home.join("current-relay")).unwrap();
    assert_eq!(current.trim(), b);

    // status: A unreachable, B current and reachable with the pushed blob.
    let s = json(&x.run(&["status", "--json", "--retry-for", "2s"]));
    let relays = s["relays"].as_array().unwrap();
    assert_eq!(relays.len(), 2, "{s}");
    assert_eq!(relays[0]["address"], a.as_str());
    assert_eq!(relays[0]["reachable"], false);
    assert_eq!(relays[0]["current"], false);
    assert!(
        relays[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect"),
        "{s}"
    );
    assert_eq!(relays[1]["address"], b.as_str());
    assert_eq!(relays[1]["reachable"], true);
    assert_eq!(relays[1]["current"], true);
    assert_eq!(relays[1]["group_head"], 1);
    assert!(relays[1]["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(s["relay"], b.as_str());
    assert_eq!(s["relay_reachable"], true);
    // The human view marks the current relay.
    let human = x.run(&["status", "--retry-for", "2s"]);
    assert!(human.contains(&format!("* {b}")), "{human}");
    assert!(human.contains(&format!("  {a}")), "{human}");

    // An invite made now names both relays, in order; a device that joins
    // with it fails over the same way and receives the file.
    let inv = json(&x.run(&["invite", "--json"]));
    assert_eq!(inv["relays"], serde_json::json!([a, b]));
    let y = Device::new();
    let joined = json(&y.join(&x, inv["invite"].as_str().unwrap(), &["--json"]));
    assert_eq!(joined["relays"], serde_json::json!([a, b]));
    let out = tmp.path().join("out-y");
    let events = ndjson(&run(
        &y,
        &with(&["pull", "--json", "--out", out.to_str().unwrap()], &FAST),
    ));
    assert_eq!(events.last().unwrap()["event"], "done", "{events:?}");
    assert_eq!(
        std::fs::read(out.join("note.txt")).unwrap(),
        b"through the second relay\n"
    );
    let current = std::fs::read_to_string(y.home.join("current-relay")).unwrap();
    assert_eq!(current.trim(), b);
}

/// Two relays that are not one cluster: the second has never seen the
/// group (head 0) while the device has pulled up to cursor 2 from the
/// first. When the first is down, the device reports the second as behind
/// and pulls nothing from it, rather than skipping or re-reading history.
#[test]
fn a_relay_that_does_not_hold_the_groups_history_is_reported_not_used() {
    let tmp = tempfile::tempdir().unwrap();
    let mut first = RelayProcess::start(&tmp.path().join("relay-p"));
    let other = RelayProcess::start(&tmp.path().join("relay-q"));
    let (p, q) = (first.address.clone(), other.address.clone());
    let x = Device::new();
    let invite = x.run(&["init", "--relay", &p]);
    let y = Device::new();
    y.join(&x, invite.trim(), &[]);
    for name in ["one.txt", "two.txt"] {
        let f = tmp.path().join(name);
        std::fs::write(&f, name).unwrap();
        x.run(&["push", f.to_str().unwrap()]);
    }
    let out = tmp.path().join("out-y");
    let done = ndjson(&y.run(&["pull", "--json", "--out", out.to_str().unwrap()]));
    // Cursor 1 is X's roster blob that added Y (its answer to Y's join).
    assert_eq!(done.last().unwrap()["cursor"], 3, "{done:?}");

    // Y is told of a second relay that is really an independent one, and
    // the first goes down.
    y.set_relays(&[&p, &q]);
    let _hold = kill_and_hold(&mut first);
    let args = with(&["pull", "--out", out.to_str().unwrap()], &FAST);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pulled = y.output(&args);
    assert_eq!(pulled.status.code(), Some(1));
    let err = String::from_utf8_lossy(&pulled.stderr);
    assert!(
        err.contains(&format!(
            "relay {q} has the group's head at cursor 0, behind cursor 3"
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: every relay of a group must be an instance of one relay cluster"),
        "{err}"
    );
    let s = json(&y.run(&["status", "--json", "--retry-for", "2s"]));
    assert_eq!(s["local_cursor"], 3, "the cursor is kept");
    let relays = s["relays"].as_array().unwrap();
    assert_eq!(relays[1]["reachable"], true);
    assert!(
        relays[1]["error"]
            .as_str()
            .unwrap()
            .contains("behind cursor 3"),
        "{s}"
    );
    assert_eq!(s["relay_reachable"], false, "no usable relay: {s}");
}

/// `init --token` with several relays creates the group on the first that
/// can be reached (they share one database); a relay that answers and
/// refuses the token ends `init` with its error, naming it, and no group.
#[test]
fn init_with_a_token_creates_the_group_on_the_first_reachable_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dead = RelayProcess::start(&tmp.path().join("relay-a"));
    let live = RelayProcess::start_with_access(&tmp.path().join("relay-b"), "127.0.0.1:0", &[]);
    let (a, b) = (dead.address.clone(), live.address.clone());
    let _hold = kill_and_hold(&mut dead);

    let refused = Device::new();
    let unknown = sync_protocol::AccessToken([7; 32]).to_text();
    let out = refused.output(&["init", "--relay", &b, "--relay", &a, "--token", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("relay {b} did not create the group"))
            && err.contains("ACCESS_TOKEN_INVALID (1005)"),
        "{err}"
    );
    assert!(
        !refused.home.join("group.toml").exists(),
        "no group written"
    );

    let token = live.create_token(&["--label", "multi"]);
    let x = Device::new();
    x.run(&["init", "--relay", &a, "--relay", &b, "--token", &token]);
    let file = tmp.path().join("f.txt");
    std::fs::write(&file, b"created on B").unwrap();
    // The group exists on B: a plain Hello (no token) is accepted there.
    run(&x, &with(&["push", file.to_str().unwrap()], &FAST));
    let s = json(&x.run(&["status", "--json", "--retry-for", "2s"]));
    assert_eq!(s["relays"][1]["group_head"], 1, "{s}");
}
