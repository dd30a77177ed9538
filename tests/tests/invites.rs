//! One-time invites (issue 14 item 3; docs/security.md "Invites as one-time
//! enrolment credentials") through the real CLI and the real relay: a
//! fresh invite admits one device, which reads the group's files; a second
//! use, an expired and a cancelled invite fail with clear messages; forged
//! answers in the mailbox are rejected.

use e2e_tests::{Device, RelayProcess, contains, json, ndjson};
use sync_client::crypto::envelope::{self, BlobHeader, BlobKind, Compression};
use sync_client::crypto::view::GroupView;
use sync_client::mailbox::{self, Answer};
use sync_client::roster::entry::{Entry, EntryKind};
use sync_client::roster::{DeviceKeys, LocalRoster, SignedEntry};
use sync_client::{GroupSecret, Home, Invite};
use sync_protocol::{BlobId, PushItem};

fn init(relay: &RelayProcess, name: &str) -> (Device, String) {
    let d = Device::new();
    let invite = d.run(&["init", "--relay", &relay.address, "--device-name", name]);
    (d, invite.trim().to_string())
}

fn member_names(d: &Device) -> Vec<String> {
    let mut names: Vec<String> = json(&d.run(&["devices", "--json"]))["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn invites(d: &Device) -> Vec<serde_json::Value> {
    json(&d.run(&["invite", "--list", "--json"]))["invites"]
        .as_array()
        .unwrap()
        .clone()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn secret_of(d: &Device) -> GroupSecret {
    Home::at(&d.home).current_secret().unwrap()
}

#[test]
fn a_fresh_invite_admits_one_device_which_reads_the_group_files() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, invite) = init(&relay, "alpha");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from alpha\n").unwrap();
    a.run(&["push", src.join("hello.txt").to_str().unwrap()]);

    // The invite holds no key of the group.
    let decoded = Invite::decode(&invite).unwrap();
    let raw = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(invite.strip_prefix("0ksync2-").unwrap())
            .unwrap()
    };
    assert!(!contains(&raw, secret_of(&a).as_bytes()));
    assert_eq!(invites(&a)[0]["state"], "pending");

    // B joins while A runs `pull` (the quick start's flow).
    let b = Device::new();
    let scratch = tmp.path().join("a-files");
    let out = b.join_answered(
        &a,
        &invite,
        &["--device-name", "bravo", "--json"],
        &["pull", "--out", scratch.to_str().unwrap()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let joined = json(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(
        joined["group_id"],
        secret_of(&a).keys().group_id().to_string()
    );
    let listed = invites(&a);
    assert_eq!(listed[0]["state"], "used");
    assert_eq!(listed[0]["device_name"], "bravo");
    assert_eq!(listed[0]["id"], decoded.mailbox().invite_id());

    // B reads the group's files and sees the roster.
    let b_out = tmp.path().join("b-files");
    b.run(&["pull", "--out", b_out.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(b_out.join("hello.txt")).unwrap(),
        b"hello from alpha\n"
    );
    assert_eq!(member_names(&b), ["alpha", "bravo"]);
    a.run(&["pull", "--out", scratch.to_str().unwrap()]);
    assert_eq!(member_names(&a), ["alpha", "bravo"]);

    // The same invite a second time: the mailbox is closed.
    let c = Device::new();
    let out = c.output(&["join", &invite, "--timeout", "30s"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("already used") && e.contains("GROUP_CLOSED"),
        "{e}"
    );
    assert!(!c.home.join("group.toml").exists(), "no home written");
    // Cancelling a used invite says who used it.
    let out = a.output(&[
        "invite",
        "--cancel",
        &listed[0]["id"].as_str().unwrap()[..8],
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already used by bravo"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_old_format_invite_is_refused_naming_its_version() {
    let d = Device::new();
    let out = d.output(&[
        "join",
        "0ksync1-AU8xZDNjMmRjYjMzMzhlZmFmN2ZhYTQ5MmFlYjhiNGU3OWUxYjY5NzExN2VkNTc4ODIyNTVmODJiODZmNThlZjY1QDEyNy4wLjAuMTo0NDMzBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBweAqNa5BwEGZmFtaWx57hiBbA",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("version-1 invite"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_expired_invite_fails_on_both_sides() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, _) = init(&relay, "alpha");
    let made = json(&a.run(&["invite", "--expires", "2s", "--json"]));
    let invite = made["invite"].as_str().unwrap().to_string();
    let expires_at = made["expires_at"].as_u64().unwrap();
    // A join that nobody answers (it may also find the invite expired
    // already, on a slow machine): either way it fails.
    let b = Device::new();
    let out = b.output(&["join", &invite, "--timeout", "1s"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains("no member answered") || e.contains("expired"),
        "{e}"
    );
    // Its own request comes back as a no-echo marker, which is no refusal.
    assert!(!e.contains("refus"), "{e}");
    // Once past the expiry, both sides say so.
    while sync_client::util::now_s() <= expires_at {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = a.run(&["invite", "--answer", "--json"]);
    let events = ndjson(&out);
    assert!(
        events.iter().any(|e| e["event"] == "invite_expired"),
        "{events:?}"
    );
    let listed = invites(&a);
    assert_eq!(listed[0]["state"], "pending", "the invite of `init`");
    assert_eq!(listed[1]["id"], made["id"]);
    assert_eq!(listed[1]["state"], "expired");
    assert_eq!(member_names(&a), ["alpha"], "nobody added");
    let out = b.output(&["join", &invite]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("this invite expired"),
        "{}",
        stderr(&out)
    );
    // A device with a slow clock meets the closed mailbox instead.
    let out = Device::new().output(&["join", &invite]);
    assert!(!out.status.success());
}

#[test]
fn a_cancelled_invite_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, _) = init(&relay, "alpha");
    let made = json(&a.run(&["invite", "--json"]));
    let invite = made["invite"].as_str().unwrap().to_string();
    let id = made["id"].as_str().unwrap().to_string();
    a.run(&["invite", "--cancel", &id]);
    assert_eq!(invites(&a)[1]["state"], "cancelled");
    let b = Device::new();
    let out = b.output(&["join", &invite, "--timeout", "30s"]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("cancelled") && e.contains("GROUP_CLOSED"), "{e}");
    // Cancelling again says so; an unknown id is a clear error.
    let again = a.output(&["invite", "--cancel", &id]);
    assert!(again.status.success());
    assert!(stderr(&again).contains("already cancelled"));
    let unknown = a.output(&["invite", "--cancel", "ffffffff"]);
    assert!(stderr(&unknown).contains("no invite ffffffff"));
    assert_eq!(member_names(&a), ["alpha"]);
}

/// Seal `body` as a blob of `kind` from `sender` under `keys`.
fn sealed(
    keys: &sync_client::GroupKeys,
    sender: &DeviceKeys,
    kind: BlobKind,
    body: &[u8],
) -> PushItem {
    let blob_id = BlobId(rand_id());
    let header = BlobHeader {
        kind,
        sender: sender.device_id(),
        seq: 1,
        created_at_ms: 1,
        compression: Compression::None,
        body_len: 0,
        view: GroupView::default(),
    };
    PushItem {
        payload: envelope::seal(keys, &blob_id, header, body, 1 << 20).unwrap(),
        blob_id,
        ttl_s: None,
    }
}

fn rand_id() -> [u8; 16] {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    blake3::hash(&n.to_le_bytes()).as_bytes()[..16]
        .try_into()
        .unwrap()
}

#[test]
fn a_forged_answer_in_the_mailbox_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, invite) = init(&relay, "alpha");
    let decoded = Invite::decode(&invite).unwrap();
    let mailbox_keys = decoded.mailbox();
    // The thief holds the invite and knows the roster's genesis (a former
    // member, say), but is no member.
    let genesis = LocalRoster::open(&Home::at(&a.home)).unwrap().entries()[0].clone();
    let thief = DeviceKeys::from_parts(&[7; 32], &[8; 32]);

    let b = Device::new();
    let mut join = b
        .cmd()
        .args(["join", &invite, "--device-name", "bravo", "--timeout", "5m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let forged_add = rt.block_on(async {
        let relays = decoded.relay_list().unwrap();
        let key = iroh::SecretKey::from_bytes(&[7; 32]);
        let session = mailbox::connect(&relays, &mailbox_keys, &key, None)
            .await
            .unwrap();
        // Wait for B's request (bounded by B's --timeout: B is waiting).
        let request = loop {
            let read = mailbox::read(&session, &mailbox_keys, 0).await.unwrap();
            if let Some(r) = read.blobs.iter().find(|b| b.kind == BlobKind::Enrolment) {
                break sync_client::roster::enrol::Enrolment::decode(
                    r.sender,
                    &mailbox_keys.group_id(),
                    &r.body,
                )
                .unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        // 1. A blob not sealed with the mailbox key.
        let other = GroupSecret::from_bytes([9; 32]).keys();
        let wrong_key = sealed(&other, &thief, BlobKind::Enrolment, b"x");
        // 2. The genesis and an Add of B signed by the thief, and an answer
        //    wrapping a secret of the thief's to B.
        let roster = decoded.roster;
        let add = SignedEntry::sign(
            Entry {
                roster,
                epoch: 0,
                anchor: roster,
                author: thief.device_id(),
                created_at_ms: 2,
                kind: EntryKind::Add {
                    device: request.device,
                    hpke_key: request.hpke_key,
                    name: "bravo".into(),
                },
            },
            thief.signing_key(),
        )
        .unwrap();
        let mut body = genesis.encode();
        body.extend_from_slice(&add.encode());
        let state = sync_client::roster::fold(roster, &[genesis.clone(), add.clone()]).unwrap();
        // The wrap names the real epoch-0 group id in its context, as a
        // real answer does; only the secret inside is the thief's.
        let fake = GroupSecret::from_bytes([11; 32]);
        let ctx = sync_client::roster::WrapContext {
            roster,
            epoch: 0,
            group_id: state.group_id,
        };
        let w = sync_client::roster::wrap(&fake, request.device, &request.hpke_key, &ctx).unwrap();
        let answer = Answer {
            epoch: 0,
            group_id: state.group_id,
            enc: w.enc,
            ciphertext: w.ciphertext,
        };
        let mk = mailbox_keys.keys();
        let items = vec![
            wrong_key,
            sealed(&mk, &thief, BlobKind::Roster, &body),
            sealed(&mk, &thief, BlobKind::Enrolment, &answer.encode()),
        ];
        session.push(items).await.unwrap();
        session.close().await;
        add.id()
    });
    // Now A answers for real; B takes only the answer that checks out.
    loop {
        if join.try_wait().unwrap().is_some() {
            break;
        }
        a.run(&["invite", "--answer"]);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = join.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        secret_of(&b).keys().group_id(),
        secret_of(&a).keys().group_id()
    );
    assert_eq!(member_names(&b), ["alpha", "bravo"]);
    // B kept the forged Add, and its fold ignores it.
    let d = json(&b.run(&["devices", "--json"]));
    let ignored = d["ignored"].as_array().unwrap();
    assert!(
        ignored.iter().any(|i| i["id"] == forged_add.to_string()
            && i["reason"].as_str().unwrap().contains("not a member")),
        "{d}"
    );
}

/// Moved from sync-cli's cli_surface tests: `init` now reaches the relay
/// (the first invite's mailbox is created there).
#[test]
fn invite_prints_a_qr_code_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let a = Device::new();
    let out = a.output(&["init", "--relay", &relay.address, "--qr", "--expires", "2h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert!(
        stdout.trim().starts_with("0ksync2-") && stdout.lines().count() == 1,
        "stdout is the invite alone"
    );
    let e = stderr(&out);
    assert!(
        e.contains('█') || e.contains('▀') || e.contains('▄'),
        "a QR code on stderr"
    );
    assert!(e.contains("2h") && e.contains("admits one device"), "{e}");
    // JSON mode: one object, no QR; --ttl is the same as --expires.
    let v = json(&a.run(&["--json", "invite", "--ttl", "30m"]));
    assert!(v["invite"].as_str().unwrap().starts_with("0ksync2-"));
    assert!(v["expires_at"].as_u64().is_some());
    assert_eq!(v["id"].as_str().unwrap().len(), 16);
    // The human list shows both.
    let list = a.run(&["invite", "--list"]);
    assert_eq!(
        list.lines().filter(|l| l.contains("pending")).count(),
        2,
        "{list}"
    );
}
