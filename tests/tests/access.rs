//! Admission of new groups and owners' budgets against the real binaries
//! (issue 10, items 1 and 2): the token step of the quick start, what a
//! revoked token leaves working, and strangers who try to crowd an existing
//! group out of the relay's storage and sessions, in both access modes.

use e2e_tests::{
    Device, LibDevice, RelayProcess, endpoint_at, json, relay_with_access as relay_with,
};
use std::net::IpAddr;
use sync_client::{ClientError, ConnectOptions, GroupSecret, RelaySession};
use sync_protocol::{AccessToken, BlobId, ErrorCode, PushItem};

fn code_of(err: &ClientError) -> ErrorCode {
    err.relay_code()
        .unwrap_or_else(|| panic!("expected a relay error, got {err}"))
}

fn item(id: u32, len: usize) -> PushItem {
    let mut blob_id = [0u8; 16];
    blob_id[..4].copy_from_slice(&id.to_le_bytes());
    PushItem {
        blob_id: BlobId(blob_id),
        payload: vec![id as u8; len],
        ttl_s: None,
    }
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A device of group `secret` connecting from `ip`, with its own endpoint.
struct Peer {
    _ep: iroh::Endpoint,
    session: Result<RelaySession, ClientError>,
}

impl Peer {
    async fn connect(
        relay: &RelayProcess,
        ip: &str,
        secret: &GroupSecret,
        token: Option<AccessToken>,
    ) -> Peer {
        let ip: IpAddr = ip.parse().unwrap();
        let ep = endpoint_at(ip).await;
        let mut opts: ConnectOptions = LibDevice::new(&relay.address, secret).opts.clone();
        opts.access_token = token;
        let session = RelaySession::connect_on(&ep, &opts).await;
        Peer { _ep: ep, session }
    }

    fn refused(&self) -> ErrorCode {
        match &self.session {
            Ok(_) => panic!("expected the Hello to be refused"),
            Err(e) => code_of(e),
        }
    }

    fn live(&self) -> &RelaySession {
        self.session.as_ref().expect("session admitted")
    }

    /// Push `n` blobs of `len` bytes one by one until one is refused;
    /// returns how many were stored and the refusal.
    async fn fill(&self, first_id: u32, len: usize, n: u32) -> (u32, Option<ErrorCode>) {
        for i in 0..n {
            if let Err(e) = self.live().push(vec![item(first_id + i, len)]).await {
                return (i, Some(code_of(&e)));
            }
        }
        (n, None)
    }
}

/// The quick start's token step: a device without a token cannot create a
/// group on a token-mode relay (and is told what to do), a device with one
/// creates it at `init` (token from `--token` or `SYNC_TOKEN`, kept
/// nowhere), a bad token is refused before anything is written, and a
/// joining device needs none.
#[tokio::test(flavor = "multi_thread")]
async fn a_token_from_the_operator_creates_the_group_at_init() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_with_access(&tmp.path().join("data"), "127.0.0.1:0", &[]);
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, b"hello from a").unwrap();

    // No token: init works but makes no invite (its mailbox would be a
    // new group), and the first push is refused with 1004.
    let stranger = Device::new();
    let out = stranger.output(&["init", "--relay", &relay.address]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "no invite");
    let err = stderr(&out);
    assert!(
        err.contains("no invite printed") && err.contains("ACCESS_TOKEN_REQUIRED"),
        "{err}"
    );
    let out = stranger.output(&["push", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("ACCESS_TOKEN_REQUIRED (1004)") && err.contains("--token"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("sync-relay token create"),
        "{err}"
    );

    // A malformed token is a usage problem found before any connection; an
    // unknown one is refused by the relay; neither leaves a group behind.
    let bad = Device::new();
    let out = bad.output(&["init", "--relay", &relay.address, "--token", "letmein"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("invalid --token"), "{}", stderr(&out));
    let unknown = AccessToken([7; 32]).to_text();
    let out = bad.output(&["init", "--relay", &relay.address, "--token", &unknown]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("ACCESS_TOKEN_INVALID (1005)"), "{err}");
    assert!(!bad.home.join("group.toml").exists(), "no group written");

    // The operator creates a token while the relay runs.
    let token = relay.create_token(&["--label", "alice", "--max-groups", "2"]);
    assert!(token.starts_with("0ksync-token-"), "{token}");
    let a = Device::new();
    let invite = a
        .cmd()
        .args(["init", "--relay", &relay.address])
        .env("SYNC_TOKEN", &token)
        .output()
        .unwrap();
    assert!(invite.status.success(), "{}", stderr(&invite));
    let invite = String::from_utf8(invite.stdout).unwrap();
    let listed = json(&String::from_utf8(relay.token(&["list", "--json"]).stdout).unwrap());
    assert_eq!(
        listed[0]["groups"], 2,
        "the group and its first invite's mailbox exist on the relay at init: {listed}"
    );
    assert_eq!(listed[0]["label"], "alice");

    // B joins without a token; A pushes, B pulls.
    let b = Device::new();
    b.join(&a, invite.trim(), &[]);
    a.run(&["push", file.to_str().unwrap()]);
    let out_dir = tmp.path().join("b");
    b.run(&["pull", "--out", out_dir.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(out_dir.join("notes.txt")).unwrap(),
        b"hello from a"
    );

    // The token is stored neither in the device home nor in the relay's
    // log or database (only its hash).
    let hex = token.trim_start_matches("0ksync-token-");
    for entry in std::fs::read_dir(&a.home).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let text = std::fs::read(&path).unwrap();
            assert!(
                !e2e_tests::contains(&text, hex.as_bytes()),
                "{}",
                path.display()
            );
        }
    }
    assert!(!relay.log().contains(hex));
    let token_bytes = hex::decode(hex).unwrap();
    let mut db = std::fs::read(relay.db_path()).unwrap();
    db.extend(std::fs::read(relay.data_dir.join("relay.db-wal")).unwrap_or_default());
    assert!(
        !e2e_tests::contains(&db, &token_bytes),
        "the raw token is not stored"
    );
}

/// Revoking a token (with the relay running) stops it creating groups and
/// freezes pushes to its groups at once; what they store stays readable and
/// devices still open sessions on them.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_token_freezes_its_groups_but_keeps_them_readable() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_with_access(&tmp.path().join("data"), "127.0.0.1:0", &[]);
    let token = AccessToken::parse(&relay.create_token(&[])).unwrap();
    let secret = GroupSecret::generate();
    let owner = Peer::connect(&relay, "127.0.0.1", &secret, Some(token)).await;
    owner.live().push(vec![item(1, 100)]).await.unwrap();

    let list = json(&String::from_utf8(relay.token(&["list", "--json"]).stdout).unwrap());
    let id = list[0]["id"].as_str().unwrap().to_string();
    assert_eq!(
        (list[0]["groups"].as_u64(), list[0]["bytes_used"].as_u64()),
        (Some(1), Some(100))
    );
    let out = relay.token(&["revoke", &id]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The open session's next push is refused: the relay caches no token.
    let err = owner.live().push(vec![item(2, 100)]).await.unwrap_err();
    assert_eq!(code_of(&err), ErrorCode::AccessTokenInvalid, "{err}");
    assert!(err.to_string().contains("revoked"), "{err}");
    // A device joining later (no token) still gets a session and the data.
    let reader = Peer::connect(&relay, "127.0.0.1", &secret, None).await;
    let mut pull = reader.live().pull(0, 10).await.unwrap();
    let batch = pull.next_batch().await.unwrap().unwrap();
    assert_eq!(batch.blobs.len(), 1);
    // The token creates no new group.
    let other = Peer::connect(&relay, "127.0.0.1", &GroupSecret::generate(), Some(token)).await;
    assert_eq!(other.refused(), ErrorCode::AccessTokenInvalid);
    let list = json(&String::from_utf8(relay.token(&["list", "--json"]).stdout).unwrap());
    assert!(list[0]["revoked_at_ms"].as_u64().is_some(), "{list}");
    assert_eq!(list[0]["bytes_used"], 100);
    // Bad limits are refused before anything is written.
    let out = relay.token(&["create", "--max-groups", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--max-groups"), "{}", stderr(&out));
    // An unknown id is an error naming it.
    let out = relay.token(&["revoke", "ffffffff"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("ffffffff"), "{}", stderr(&out));
}

/// A small relay: 128 KiB of storage, 48 KiB per group, 8 sessions, blobs
/// of up to 16 KiB.
const SMALL: &str = "[limits]\nmax_blob_size = 16384\nmax_group_storage = 49152\n\
    max_storage = 131072\nmax_sessions = 8\n\
    [rate_limits]\nconnections_per_ip_per_s = 1000\nconnections_per_ip_burst = 1000\n";

/// Token mode. The existing group was created with a token and stores
/// 16 KiB. Strangers on one address and on ten try to create groups, with
/// no token and with a made-up one; a token holder turned hostile creates
/// all the groups its token allows (2 × 48 KiB of group quota, more than
/// the relay has left) and fills its budget (64 KiB). The existing group
/// still gets its Hello and its pushes up to its group quota; the strangers
/// hold no session and no byte.
#[tokio::test(flavor = "multi_thread")]
async fn strangers_cannot_crowd_out_an_existing_group_in_token_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), SMALL);
    let mine = AccessToken::parse(&relay.create_token(&["--max-storage", "49152"])).unwrap();
    let theirs =
        AccessToken::parse(&relay.create_token(&["--max-groups", "2", "--max-storage", "65536"]))
            .unwrap();
    let existing = GroupSecret::generate();
    let owner = Peer::connect(&relay, "127.0.0.1", &existing, Some(mine)).await;
    owner.live().push(vec![item(0, 16384)]).await.unwrap();

    let one_and_many = std::iter::repeat_n("127.0.0.2".to_string(), 5)
        .chain((3..13).map(|i| format!("127.0.0.{i}")));
    let made_up = AccessToken([0x5a; 32]);
    for ip in one_and_many {
        let p = Peer::connect(&relay, &ip, &GroupSecret::generate(), None).await;
        assert_eq!(p.refused(), ErrorCode::AccessTokenRequired, "{ip}");
        let p = Peer::connect(&relay, &ip, &GroupSecret::generate(), Some(made_up)).await;
        assert_eq!(p.refused(), ErrorCode::AccessTokenInvalid, "{ip}");
    }
    // The hostile token holder: two groups, then GROUP_LIMIT_REACHED; its
    // pushes stop at its budget (64 KiB) with OWNER_QUOTA_EXCEEDED.
    let h1 = Peer::connect(&relay, "127.0.0.2", &GroupSecret::generate(), Some(theirs)).await;
    let h2 = Peer::connect(&relay, "127.0.0.3", &GroupSecret::generate(), Some(theirs)).await;
    let h3 = Peer::connect(&relay, "127.0.0.4", &GroupSecret::generate(), Some(theirs)).await;
    assert_eq!(h3.refused(), ErrorCode::GroupLimitReached);
    let (stored1, refusal) = h1.fill(100, 16384, 10).await;
    assert_eq!(
        (stored1, refusal),
        (3, Some(ErrorCode::GroupQuotaExceeded)),
        "48 KiB per group"
    );
    let (stored2, refusal) = h2.fill(200, 16384, 10).await;
    assert_eq!((stored2, refusal), (1, Some(ErrorCode::OwnerQuotaExceeded)));

    // The existing group: a new device's Hello and pushes up to its quota.
    let second = Peer::connect(&relay, "127.0.0.1", &existing, None).await;
    let (stored, refusal) = second.fill(1, 16384, 2).await;
    assert_eq!((stored, refusal), (2, None));
    let health = relay.health();
    assert_eq!(health["sessions"], 4, "owner, second, h1, h2: {health}");
    assert_eq!(health["groups"], 3, "{health}");
    assert_eq!(health["storage_bytes"], 3 * 16384 + 4 * 16384, "{health}");
}

/// Open mode, 32 KiB and 2 sessions per address, 3 new groups an hour: the
/// relay promises that to 4 addresses (128 KiB / 32 KiB, 8 / 2). The
/// existing group was created from 127.0.0.1. A stranger on one address
/// creates groups until the hourly limit, pushes until its budget and opens
/// sessions until its cap; strangers on ten more addresses do the same, and
/// all but two are refused a place. The existing group still gets its Hello
/// and its pushes up to its own budget: nobody else could take them.
#[tokio::test(flavor = "multi_thread")]
async fn strangers_cannot_crowd_out_an_existing_group_in_open_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(
        tmp.path(),
        &format!(
            "{SMALL}[access]\nmode = \"open\"\nnew_groups_per_address_per_hour = 3\n\
             max_storage_per_address = 32768\nmax_sessions_per_address = 2\n"
        ),
    );
    let existing = GroupSecret::generate();
    let owner = Peer::connect(&relay, "127.0.0.1", &existing, None).await;
    owner.live().push(vec![item(0, 16384)]).await.unwrap();

    // One address: three groups, then the hourly limit (with a retry hint).
    let mut held = Vec::new();
    let groups: Vec<GroupSecret> = (0..4).map(|_| GroupSecret::generate()).collect();
    for g in &groups[..3] {
        held.push(Peer::connect(&relay, "127.0.0.2", g, None).await);
    }
    let fourth = Peer::connect(&relay, "127.0.0.2", &groups[3], None).await;
    assert_eq!(fourth.refused(), ErrorCode::GroupLimitReached);
    match &fourth.session {
        Err(ClientError::Relay(e)) => assert!(e.retry_after_ms.unwrap() > 3_000_000, "{e}"),
        other => panic!("{other:?}"),
    }
    // Its third session is over its cap of 2 (the group exists: RATE_LIMITED).
    assert_eq!(held[2].refused(), ErrorCode::RateLimited);
    let (a, refusal) = held[0].fill(100, 16384, 10).await;
    assert_eq!((a, refusal), (2, Some(ErrorCode::OwnerQuotaExceeded)));
    let (b, refusal) = held[1].fill(200, 16384, 10).await;
    assert_eq!((b, refusal), (0, Some(ErrorCode::OwnerQuotaExceeded)));

    // Ten more addresses: two get a place (4 addresses in all), each holds
    // its two sessions and 32 KiB; the others get GROUP_LIMIT_REACHED.
    let mut admitted = 0;
    for i in 3..13 {
        let ip = format!("127.0.0.{i}");
        let g = GroupSecret::generate();
        let p = Peer::connect(&relay, &ip, &g, None).await;
        match &p.session {
            Ok(_) => {
                admitted += 1;
                let (n, refusal) = p.fill(1000 * i, 16384, 10).await;
                assert_eq!((n, refusal), (2, Some(ErrorCode::OwnerQuotaExceeded)));
                let again = Peer::connect(&relay, &ip, &g, None).await;
                assert!(again.session.is_ok(), "second session of {ip}");
                let third = Peer::connect(&relay, &ip, &g, None).await;
                assert_eq!(third.refused(), ErrorCode::RateLimited);
                held.push(p);
                held.push(again);
            }
            Err(_) => assert_eq!(p.refused(), ErrorCode::GroupLimitReached, "{ip}"),
        }
    }
    assert_eq!(admitted, 2);

    // The existing group: its owner's second session and pushes up to its
    // budget (32 KiB), which takes the relay to exactly its max_storage.
    let second = Peer::connect(&relay, "127.0.0.1", &existing, None).await;
    let (stored, refusal) = second.fill(1, 16384, 1).await;
    assert_eq!((stored, refusal), (1, None));
    let health = relay.health();
    assert_eq!(health["storage_bytes"], 131072, "{health}");
    assert_eq!(health["sessions"], 8, "{health}");
    drop(held);
}
