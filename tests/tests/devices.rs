//! Devices, roster and key epochs (issue 14; docs/security.md "Devices,
//! roster and key epochs") through the real CLI and the real relay:
//! enrolment with one-time invites, `devices`, `revoke`, catch-up of a
//! device offline during a rotation, forged roster entries, concurrent
//! revocations.

use e2e_tests::{Device, LibDevice, RelayProcess, json, ndjson};
use std::path::Path;
use sync_client::crypto::envelope::{self, BlobKind};
use sync_client::roster::entry::{Entry, EntryId, EntryKind};
use sync_client::roster::{DeviceKeys, SignedEntry};
use sync_client::{ClientError, GroupSecret, Home, RelaySession};
use sync_protocol::PulledBlob;

fn init(relay: &RelayProcess, name: &str) -> (Device, String) {
    let d = Device::new();
    let invite = d.run(&["init", "--relay", &relay.address, "--device-name", name]);
    (d, invite.trim().to_string())
}

/// A new device joins with a one-time invite of `inviter`, which answers.
fn join(inviter: &Device, invite: &str, name: &str) -> Device {
    let d = Device::new();
    d.join(inviter, invite, &["--device-name", name]);
    d
}

fn pull(d: &Device, out: &Path) -> Vec<serde_json::Value> {
    ndjson(&d.run(&["pull", "--json", "--out", out.to_str().unwrap()]))
}

/// `revoke NAME --json` on `d`: its result line, after checking that every
/// roster entry was delivered (no `roster_undelivered` warning).
fn revoke(d: &Device, name: &str) -> serde_json::Value {
    let lines = ndjson(&d.run(&["revoke", name, "--json"]));
    for l in &lines {
        assert_ne!(l["event"], "roster_undelivered", "{lines:?}");
    }
    lines.last().unwrap().clone()
}

fn devices(d: &Device) -> serde_json::Value {
    json(&d.run(&["devices", "--json"]))
}

fn member_names(d: &Device) -> Vec<String> {
    let mut names: Vec<String> = devices(d)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

fn push(d: &Device, dir: &Path, name: &str, content: &[u8]) {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    d.run(&["push", path.to_str().unwrap()]);
}

/// Every secret a device's home holds: `group.toml`'s and each epoch's.
fn stored_secrets(d: &Device) -> Vec<GroupSecret> {
    let hex32 = |s: &str| -> [u8; 32] { hex::decode(s).unwrap().try_into().unwrap() };
    let group = std::fs::read_to_string(d.home.join("group.toml")).unwrap();
    let secret = group
        .lines()
        .find_map(|l| l.strip_prefix("secret = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap();
    let mut out = vec![GroupSecret::from_bytes(hex32(secret))];
    if let Ok(text) = std::fs::read_to_string(d.home.join("epochs.json")) {
        let chain: serde_json::Value = serde_json::from_str(&text).unwrap();
        for e in chain["epochs"].as_array().unwrap() {
            out.push(GroupSecret::from_bytes(hex32(
                e["secret"].as_str().unwrap(),
            )));
        }
    }
    out
}

fn current_secret(d: &Device) -> GroupSecret {
    stored_secrets(d).pop().unwrap()
}

/// Every blob of the group `secret` at the relay, pulled raw.
async fn raw_blobs(relay: &RelayProcess, secret: &GroupSecret) -> Vec<PulledBlob> {
    let lib = LibDevice::new(&relay.address, secret);
    let session = RelaySession::connect(&lib.opts).await.unwrap();
    let mut resp = session.pull(0, 1000).await.unwrap();
    let mut blobs = Vec::new();
    while let Some(batch) = resp.next_batch().await.unwrap() {
        blobs.extend(batch.blobs);
    }
    session.close().await;
    blobs
}

/// A enrols B and C (one one-time invite each; A answers each join).
fn three_devices(relay: &RelayProcess, tmp: &Path) -> (Device, Device, Device) {
    let (a, invite) = init(relay, "alpha");
    let b = join(&a, &invite, "bravo");
    let c = join(&a, a.run(&["invite"]).trim(), "charlie");
    let out = tmp.join("scratch");
    pull(&a, &out); // publishes the genesis
    pull(&b, &out); // posts B's enrolment request
    pull(&c, &out);
    pull(&a, &out); // answers both
    pull(&b, &out);
    pull(&c, &out);
    for d in [&a, &b, &c] {
        assert_eq!(member_names(d), ["alpha", "bravo", "charlie"]);
    }
    (a, b, c)
}

#[test]
fn revoked_device_loses_the_new_epoch_and_an_offline_device_catches_up() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b, c) = three_devices(&relay, tmp.path());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();

    // C goes offline. A pushes a file before the rotation that C has not
    // pulled, then revokes B, then pushes again (into the new epoch).
    push(&a, &src, "before.txt", b"pushed before the rotation\n");
    let old_secret = current_secret(&a);
    let revoked = revoke(&a, "bravo");
    assert_eq!(revoked["name"], "bravo");
    assert_eq!(revoked["epoch"], 1);
    assert_eq!(revoked["old_group_close"], "applied", "{revoked}");
    assert_eq!(revoked["old_group_closed"], true, "{revoked}");
    let new_secret = current_secret(&a);
    assert_ne!(
        new_secret.keys().group_id(),
        old_secret.keys().group_id(),
        "the new epoch is a new group"
    );
    push(&a, &src, "after.txt", b"pushed after the rotation\n");

    // A refuses to revoke itself, and unknown names with the member list.
    let me = a.output(&["revoke", "alpha"]);
    assert!(!me.status.success());
    assert!(String::from_utf8_lossy(&me.stderr).contains("cannot revoke itself"));
    let unknown = a.output(&["revoke", "nobody"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("charlie"));

    // C comes back and, before pulling, pushes into the epoch it knows
    // (the old one): A, already in epoch 1, still gets it (pull visits
    // every epoch's group it holds).
    let src_c = tmp.path().join("src-c");
    std::fs::create_dir_all(&src_c).unwrap();
    push(&c, &src_c, "stale.txt", b"pushed into the old epoch\n");
    let out_a = tmp.path().join("out-a");
    pull(&a, &out_a);
    assert_eq!(
        std::fs::read(out_a.join("stale.txt")).unwrap(),
        b"pushed into the old epoch\n"
    );

    // One pull of C reaches epoch 1 and gets both files.
    let out_c = tmp.path().join("out-c");
    let events = pull(&c, &out_c);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "epoch" && e["epoch"] == 1),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(out_c.join("before.txt")).unwrap(),
        b"pushed before the rotation\n"
    );
    assert_eq!(
        std::fs::read(out_c.join("after.txt")).unwrap(),
        b"pushed after the rotation\n"
    );
    let dc = devices(&c);
    assert_eq!(
        (dc["epoch"].as_u64(), dc["my_epoch"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(member_names(&c), ["alpha", "charlie"]);
    assert_eq!(dc["removed"][0]["name"], "bravo");
    assert_eq!(current_secret(&c), new_secret);

    // B: the relay closed the old group to it (A's revoke kept A and C
    // only), so its pull and its push get GROUP_CLOSED with a message that
    // says what happened; it receives nothing, not even what was pushed
    // into the old group before the rotation that it had not pulled.
    let out_b = tmp.path().join("out-b");
    let refused = b.output(&["pull", "--out", out_b.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("closed by a member") && stderr.contains("this device was removed"),
        "{stderr}"
    );
    assert!(stderr.contains("key epoch 0"), "{stderr}");
    assert!(!out_b.join("before.txt").exists());
    assert!(!out_b.join("after.txt").exists());
    let refused = b.output(&["push", src.join("before.txt").to_str().unwrap()]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("closed by a member") && stderr.contains("removed"),
        "{stderr}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut old_lib = LibDevice::new(&relay.address, &old_secret);
    old_lib.opts.device_key = Home::at(b.home.clone()).device_key().unwrap();
    let hello = rt.block_on(RelaySession::connect(&old_lib.opts));
    assert!(
        matches!(&hello, Err(ClientError::GroupClosed(_))),
        "B's Hello to the old group: {hello:?}"
    );

    // Every blob of the new epoch: none opens with any key B stored; each
    // opens with the new epoch's key.
    let blobs = rt.block_on(raw_blobs(&relay, &new_secret));
    assert!(blobs.len() >= 2, "{} blobs", blobs.len());
    let b_secrets = stored_secrets(&b);
    assert!(!b_secrets.contains(&new_secret));
    for blob in &blobs {
        envelope::open(&new_secret.keys(), &blob.blob_id, &blob.payload).unwrap();
        for s in &b_secrets {
            assert!(
                envelope::open(&s.keys(), &blob.blob_id, &blob.payload).is_err(),
                "B's stored key opened a blob of the new epoch"
            );
        }
    }
}

#[test]
fn a_roster_entry_signed_by_a_non_member_is_rejected_and_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, _invite) = init(&relay, "alpha");
    let out = tmp.path().join("out");
    pull(&a, &out);
    let roster_id = devices(&a)["roster"].as_str().unwrap().to_string();
    let roster = EntryId(hex::decode(&roster_id).unwrap().try_into().unwrap());

    // A stranger's key signs an Add of itself; a holder of the group secret
    // (a member, or a device removed later) seals it into the group. A second blob carries an entry
    // whose signature was damaged.
    let stranger = DeviceKeys::from_parts(&[7; 32], &[8; 32]);
    let forged = SignedEntry::sign(
        Entry {
            roster,
            epoch: 0,
            anchor: roster,
            author: stranger.device_id(),
            created_at_ms: 1,
            kind: EntryKind::Add {
                device: stranger.device_id(),
                hpke_key: stranger.hpke_public(),
                name: "intruder".into(),
            },
        },
        stranger.signing_key(),
    )
    .unwrap();
    let mut damaged = forged.encode();
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    let secret = current_secret(&a);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut lib = LibDevice::new(&relay.address, &secret);
        let client = lib.connect().await;
        client
            .push_roster(&mut lib.state, BlobKind::Roster, &[forged.encode()])
            .await
            .unwrap();
        client
            .push_roster(&mut lib.state, BlobKind::Roster, &[damaged])
            .await
            .unwrap();
        client.close().await;
    });

    let events = pull(&a, &out);
    let ignored: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "roster_ignored")
        .collect();
    assert_eq!(ignored.len(), 1, "{events:?}");
    assert_eq!(ignored[0]["id"], forged.id().to_string());
    assert!(
        ignored[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not a member"),
        "{ignored:?}"
    );
    assert!(
        events.iter().any(|e| e["event"] == "roster_refused"
            && e["reason"].as_str().unwrap().contains("signature")),
        "{events:?}"
    );
    let d = devices(&a);
    assert_eq!(member_names(&a), ["alpha"]);
    assert_eq!(d["ignored"][0]["id"], forged.id().to_string());
}

#[test]
fn two_concurrent_revocations_converge_to_one_roster() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b, c) = three_devices(&relay, tmp.path());
    let invite = a.run(&["invite"]);
    let d = join(&a, invite.trim(), "delta");
    let out = tmp.path().join("scratch");
    pull(&d, &out);
    pull(&a, &out);
    for dev in [&b, &c, &d] {
        pull(dev, &out);
    }
    assert_eq!(member_names(&d), ["alpha", "bravo", "charlie", "delta"]);

    // A revokes C while B revokes D, neither having seen the other. A's
    // close of the old group keeps A, B and D; B is on it, so B's `Rotate`
    // still reaches the old group (docs/security.md "Closing and
    // concurrent rotations"), and B's own close finds A's, which keeps D.
    let ra = revoke(&a, "charlie");
    let rb = revoke(&b, "delta");
    assert_eq!(ra["old_group_close"], "applied", "{ra}");
    assert_eq!(ra["old_group_closed"], true, "{ra}");
    assert_eq!(rb["old_group_close"], "closed_earlier_other_keep", "{rb}");
    assert_eq!(rb["old_group_closed"], false, "{rb}");
    // Rounds of pulls until both agree (a re-key may be due when the
    // winning rotation still wrapped to the device the other removed).
    for _ in 0..3 {
        pull(&a, &out);
        pull(&b, &out);
    }
    let (da, db) = (devices(&a), devices(&b));
    assert_eq!(da["roster"], db["roster"]);
    assert_eq!(da["epoch"], db["epoch"]);
    assert_eq!(da["group_id"], db["group_id"]);
    assert_eq!(da["my_epoch"], da["epoch"]);
    assert_eq!(db["my_epoch"], db["epoch"]);
    assert_eq!(member_names(&a), ["alpha", "bravo"]);
    assert_eq!(member_names(&b), ["alpha", "bravo"]);
    assert!(da["must_rotate"].as_array().unwrap().is_empty(), "{da}");
    let mut removed: Vec<_> = da["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    removed.sort();
    assert_eq!(removed, ["charlie", "delta"]);
    assert_eq!(current_secret(&a), current_secret(&b));
    // C, not kept by the close, is refused in the old group.
    let refused = c.output(&["pull", "--out", out.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("closed by a member"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[test]
fn two_members_revoking_the_same_device_at_once_converge_and_close_it_once() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b, c) = three_devices(&relay, tmp.path());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Pushed before the rotations; B has not pulled it yet.
    push(&a, &src, "before.txt", b"pushed before the rotations\n");

    // A and B both revoke C, neither having seen the other's `Rotate`.
    let ra = revoke(&a, "charlie");
    let rb = revoke(&b, "charlie");
    assert_eq!(ra["old_group_close"], "applied", "{ra}");
    assert_eq!(rb["old_group_close"], "closed_earlier", "{rb}");
    assert_eq!(
        (&ra["old_group_closed"], &rb["old_group_closed"]),
        (&true.into(), &true.into())
    );

    let out = tmp.path().join("out");
    let (out_a, out_b) = (out.join("a"), out.join("b"));
    for _ in 0..2 {
        let events_a = pull(&a, &out_a);
        let events_b = pull(&b, &out_b);
        for e in events_a.iter().chain(&events_b) {
            assert_ne!(e["event"], "roster_undelivered", "{e}");
        }
    }
    let (da, db) = (devices(&a), devices(&b));
    assert_eq!(da["roster"], db["roster"]);
    assert_eq!(da["epoch"], db["epoch"]);
    assert_eq!(da["group_id"], db["group_id"]);
    assert_eq!(current_secret(&a), current_secret(&b));
    assert_eq!(member_names(&a), ["alpha", "bravo"]);
    assert_eq!(member_names(&b), ["alpha", "bravo"]);
    // Nothing pushed before the rotations is lost to a remaining device.
    assert_eq!(
        std::fs::read(out_b.join("before.txt")).unwrap(),
        b"pushed before the rotations\n"
    );
    // Files pushed now reach the other member in the epoch they agree on.
    push(&b, &src, "after.txt", b"pushed after\n");
    pull(&a, &out_a);
    assert_eq!(
        std::fs::read(out_a.join("after.txt")).unwrap(),
        b"pushed after\n"
    );
    let refused = c.output(&["pull", "--out", out.join("c").to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(!out.join("c").join("after.txt").exists());
}

#[test]
fn pull_follow_follows_a_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b, _c) = three_devices(&relay, tmp.path());
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let out_b = tmp.path().join("out-b");
    let mut follow = b
        .cmd()
        .args(["pull", "--follow", "--out", out_b.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    a.run(&["revoke", "charlie"]);
    push(&a, &src, "after.txt", b"pushed into epoch 1\n");
    e2e_tests::wait_until(
        std::time::Duration::from_secs(90),
        "the follower to receive a file of the new epoch",
        || out_b.join("after.txt").exists(),
    );
    follow.kill().unwrap();
    follow.wait().unwrap();
    assert_eq!(
        std::fs::read(out_b.join("after.txt")).unwrap(),
        b"pushed into epoch 1\n"
    );
    assert_eq!(devices(&b)["my_epoch"], 1);
}

/// Once the old group's grace has ended, the relay refuses it to everyone;
/// a remaining device that moved on pulls its later epochs all the same:
/// the closed earlier group is skipped with a `group_closed` note, not an
/// error. The grace's end is made deterministic (no waiting for a clock):
/// the relay is stopped, the close's `grace_until` moved into the past in
/// its database, and the relay started again on the same address.
#[test]
fn after_the_old_groups_grace_remaining_devices_skip_it_and_keep_pulling() {
    use sqlx::Connection;
    let tmp = tempfile::tempdir().unwrap();
    let relay_dir = tmp.path().join("relay");
    let mut relay = RelayProcess::start(&relay_dir);
    let (a, _b, c) = three_devices(&relay, tmp.path());
    let out_c = tmp.path().join("out-c");
    a.run(&["revoke", "bravo"]);
    pull(&c, &out_c);
    assert_eq!(devices(&c)["my_epoch"], 1);

    let address = relay.address.clone();
    let port = address.rsplit(':').next().unwrap().to_string();
    relay.terminate();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url = format!("sqlite://{}", relay.db_path().display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let ended = sqlx::query("UPDATE groups SET grace_until = 1 WHERE closed_at IS NOT NULL")
            .execute(&mut db)
            .await
            .unwrap();
        // The old epoch's group, and the mailboxes of the two invites B and
        // C joined with (each closed once used).
        assert_eq!(ended.rows_affected(), 3, "three groups were closed");
        db.close().await.unwrap();
    });
    let relay = RelayProcess::start_with(&relay_dir, &format!("127.0.0.1:{port}"), &[]);
    assert_eq!(relay.address, address, "the relay came back on its address");

    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    push(&a, &src, "after.txt", b"pushed after the grace\n");
    let events = pull(&c, &out_c);
    let skipped: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "group_closed")
        .collect();
    assert_eq!(skipped.len(), 1, "{events:?}");
    assert_eq!(skipped[0]["epoch"], 0, "{events:?}");
    assert_eq!(
        std::fs::read(out_c.join("after.txt")).unwrap(),
        b"pushed after the grace\n"
    );
}

/// A removes B; B, not having seen it, tries to remove A. The relay closed
/// the old group without B, so B's `Rotate` cannot be published there: the
/// revoke still finishes, drops the entries from its outbox with a
/// `roster_undelivered` warning (instead of retrying them forever) and
/// reports that the old group was closed without it; A and C keep the
/// roster in which B is removed.
#[test]
fn a_device_removed_first_cannot_publish_its_own_concurrent_revocation() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("relay"));
    let (a, b, c) = three_devices(&relay, tmp.path());
    let ra = revoke(&a, "bravo");
    assert_eq!(ra["old_group_close"], "applied", "{ra}");

    let lines = ndjson(&b.run(&["revoke", "alpha", "--json"]));
    assert!(
        lines.iter().any(|l| l["event"] == "roster_undelivered"
            && l["epoch"] == 0
            && l["message"].as_str().unwrap().contains("closed")),
        "{lines:?}"
    );
    let done = lines.last().unwrap();
    assert_eq!(
        done["old_group_close"], "closed_without_this_device",
        "{done}"
    );
    assert_eq!(done["old_group_closed"], false, "{done}");
    // Dropped from the outbox: B's next pull does not try them again (it
    // is refused in the old group, its own new group has no other member).
    let out = tmp.path().join("out");
    for l in pull(&b, &out) {
        assert_ne!(l["event"], "roster_undelivered", "{l}");
    }

    pull(&a, &out);
    pull(&c, &out);
    assert_eq!(member_names(&a), ["alpha", "charlie"]);
    assert_eq!(member_names(&c), ["alpha", "charlie"]);
    assert_eq!(devices(&c)["my_epoch"], 1);
    assert_eq!(current_secret(&a), current_secret(&c));
}
