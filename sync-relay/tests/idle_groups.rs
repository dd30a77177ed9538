//! No unbounded tables (issue 10, item 5), against an in-process relay over
//! real QUIC: a thousand `Hello`s of fresh, empty groups (what a token
//! holder, or a stranger on an open relay, can do with random keys) leave
//! `groups`/`devices` rows that one cleanup with an idle window of 0 days
//! prunes back to the groups in use, while a group holding a blob and a
//! group with a live session survive, and the pruned groups go back to their
//! token's `max_groups`; `Hello`s racing repeated prunes (open mode, owned
//! by an address) never lose a live session's group and keep the owners'
//! counters exact; and a session whose peer stopped the notify stream still
//! counts as live.

use ed25519_dalek::{Signer, SigningKey};
use futures::StreamExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use sync_protocol::{
    AccessToken, BlobId, DeviceId, ErrorCode, GroupId, Hello, HelloWithToken, MIN_PROTOCOL_VERSION,
    Message, Proof, Push, PushItem, hello_proof_message, read_message, write_message,
};
use sync_relay::config::{AccessMode, CleanupConfig};
use sync_relay::context::RelayContext;
use sync_relay::storage::{NewToken, TokenHash};
use sync_relay::{Config, Relay, cleanup};

const FRESH_GROUPS: usize = 1000;

/// A relay in token mode (the default), or in open mode with no practical
/// limit on the groups one address creates per hour.
async fn start_relay(dir: &std::path::Path, mode: AccessMode) -> Relay {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.access.mode = mode;
    config.access.new_groups_per_address_per_hour = 1_000_000;
    config.network.quic_bind = "127.0.0.1:0".parse().unwrap();
    config.network.http_bind = "127.0.0.1:0".parse().unwrap();
    // One address opens every connection here.
    config.rate_limits.connections_per_ip_per_s = 1_000_000;
    config.rate_limits.connections_per_ip_burst = 1_000_000;
    // The test runs its own cleanups; the relay's (idle window 30 days)
    // runs once at start and not again during the test.
    config.cleanup.interval_s = 3600;
    Relay::start(config).await.expect("start relay")
}

/// A client endpoint: loopback only, no relay servers, no lookups.
async fn client() -> iroh::Endpoint {
    iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .expect("bind address")
        .bind()
        .await
        .expect("bind endpoint")
}

/// One request on a new stream; its answer.
async fn exchange(conn: &iroh::endpoint::Connection, msg: &Message) -> Message {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    write_message(&mut send, msg, 1 << 20).await.expect("write");
    send.finish().expect("finish");
    read_message(&mut recv, 1 << 20)
        .await
        .expect("read")
        .expect("an answer")
}

/// Store a new access token allowed `max_groups` groups.
async fn new_token(relay: &Relay, max_groups: u64) -> AccessToken {
    let token = AccessToken(rand::random());
    relay
        .context()
        .storage
        .create_token(NewToken {
            hash: TokenHash::of(&token),
            label: None,
            created_at_ms: 0,
            max_groups,
            max_storage: 1 << 30,
        })
        .await
        .expect("create token");
    token
}

/// A session on a new group of a random key (created with `token` if
/// given): the connection after its `Welcome`, the group, and the
/// `Welcome`'s head.
async fn hello(
    ep: &iroh::Endpoint,
    relay: &Relay,
    token: Option<AccessToken>,
) -> (iroh::endpoint::Connection, GroupId, u64) {
    match try_hello(ep, relay, token).await {
        (conn, group, Message::Welcome(w)) => (conn, group, w.head_cursor),
        (_, _, other) => panic!("expected Welcome, got {other:?}"),
    }
}

/// [`hello`], returning the relay's answer whatever it is.
async fn try_hello(
    ep: &iroh::Endpoint,
    relay: &Relay,
    token: Option<AccessToken>,
) -> (iroh::endpoint::Connection, GroupId, Message) {
    let key = SigningKey::from_bytes(&rand::random());
    hello_with_key(ep, relay, &key, token).await
}

/// A `Hello` of `ep`'s device on the group of `key`; the relay's answer.
async fn hello_with_key(
    ep: &iroh::Endpoint,
    relay: &Relay,
    key: &SigningKey,
    token: Option<AccessToken>,
) -> (iroh::endpoint::Connection, GroupId, Message) {
    let group = GroupId(key.verifying_key().to_bytes());
    let relay_id = DeviceId(*relay.node_id().as_bytes());
    let device = DeviceId(*ep.id().as_bytes());
    let conn = ep
        .connect(
            iroh::EndpointAddr::new(relay.node_id()).with_ip_addr(relay.quic_addr()),
            sync_protocol::ALPN,
        )
        .await
        .expect("connect");
    let hello = Hello {
        // Version 1: these sessions are notified of their own pushes (a
        // version-2 session is not: docs/protocol.md "Version 2: no echo"),
        // which the notify-stream tests below rely on.
        version: MIN_PROTOCOL_VERSION,
        group_id: group,
        proof: Proof(
            key.sign(&hello_proof_message(&relay_id, &device))
                .to_bytes(),
        ),
        device_name: None,
    };
    let hello = match token {
        Some(access_token) => Message::HelloWithToken(HelloWithToken {
            hello,
            access_token,
        }),
        None => Message::Hello(hello),
    };
    let answer = exchange(&conn, &hello).await;
    (conn, group, answer)
}

/// Open and close `n` sessions on fresh groups, 32 at a time.
async fn hello_and_leave(ep: &iroh::Endpoint, relay: &Relay, n: usize, token: Option<AccessToken>) {
    futures::stream::iter(0..n)
        .map(|_| async {
            let (conn, _, head) = hello(ep, relay, token).await;
            assert_eq!(head, 0, "a fresh group starts at the head floor, 0 here");
            conn.close(0u32.into(), b"bye");
        })
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
}

/// Wait (up to 60 s) until the relay counts `n` live sessions.
async fn wait_sessions(ctx: &RelayContext, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ctx.sessions() != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} live sessions, expected {n}",
            ctx.sessions()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows of `groups` in the `groups` and `devices` tables, read from the
/// database file (a group without a row would look like a fresh one through
/// the storage API, at the head floor).
async fn rows_of(db: &std::path::Path, groups: &[GroupId]) -> (i64, i64) {
    use sqlx::Connection;
    let opts = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(db)
        .read_only(true);
    let mut conn = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
    let (mut g, mut d) = (0, 0);
    for group in groups {
        g += sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM groups WHERE group_id = ?1")
            .bind(&group.0[..])
            .fetch_one(&mut conn)
            .await
            .unwrap();
        d += sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM devices WHERE group_id = ?1")
            .bind(&group.0[..])
            .fetch_one(&mut conn)
            .await
            .unwrap();
    }
    conn.close().await.unwrap();
    (g, d)
}

fn idle_now() -> CleanupConfig {
    CleanupConfig {
        idle_group_days: 0,
        ..CleanupConfig::default()
    }
}

/// Token mode: the token may own exactly the groups made here, so the
/// `Hello` after them is refused, and one after the cleanup is admitted
/// only if pruning gave the token its groups back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_fresh_groups_are_pruned_back_to_the_groups_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), AccessMode::Token).await;
    let ctx = Arc::clone(relay.context());
    let ep = client().await;
    let token = new_token(&relay, FRESH_GROUPS as u64 + 2).await;
    let token = Some(token);

    // A group that holds a blob (its session ended) and a live session.
    let (conn, kept, _) = hello(&ep, &relay, token).await;
    let push = Message::Push(Push {
        items: vec![PushItem {
            blob_id: BlobId([1; 16]),
            payload: vec![7; 100],
            ttl_s: None,
        }],
    });
    assert!(matches!(exchange(&conn, &push).await, Message::PushOk(_)));
    conn.close(0u32.into(), b"bye");
    let (live_conn, live, _) = hello(&ep, &relay, token).await;

    hello_and_leave(&ep, &relay, FRESH_GROUPS, token).await;
    wait_sessions(&ctx, 1).await;
    let before = ctx.storage.stats().await.unwrap();
    assert_eq!(before.groups, FRESH_GROUPS as u64 + 2, "{before:?}");
    assert_eq!(before.devices, FRESH_GROUPS as u64 + 2, "{before:?}");
    assert_eq!(before.owners, 1, "{before:?}");
    // The token has created all the groups it may own.
    let (_, _, refused) = try_hello(&ep, &relay, token).await;
    match refused {
        Message::Error(e) => assert_eq!(e.error_code(), ErrorCode::GroupLimitReached, "{e}"),
        other => panic!("expected GROUP_LIMIT_REACHED, got {other:?}"),
    }

    // Every row above was written before this instant.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = cleanup::run_once(&ctx, &idle_now()).await.unwrap();
    let after = ctx.storage.stats().await.unwrap();
    assert_eq!(
        (after.groups, after.devices, after.blobs),
        (2, 1, 1),
        "left: the group with a blob (its device forgotten) and the live \
         session's group and device; pruned {:?}",
        report.pruned
    );
    assert_eq!(report.pruned.groups, FRESH_GROUPS as u64);
    assert_eq!(
        report.batches,
        1 + 3,
        "one expiry batch, then 1,001 devices and 1,000 groups in batches of 500"
    );
    // The pruned groups went back to their token: it owns the two left, its
    // owner row stays, and the counters match the groups.
    let tokens = ctx.storage.tokens().await.unwrap();
    assert_eq!(
        (tokens.len(), tokens[0].groups, tokens[0].bytes_used),
        (1, 2, 100)
    );
    assert_eq!((after.owners, report.pruned.owners), (1, 0));
    let audit = ctx.storage.audit().await.unwrap();
    assert_eq!(audit.mismatched_owners, 0, "{audit:?}");
    assert_eq!(ctx.storage.head(kept).await.unwrap(), 1);
    assert_eq!(ctx.storage.head(live).await.unwrap(), 0);
    // The live session goes on: its push lands in its (still present) group.
    match exchange(&live_conn, &push).await {
        Message::PushOk(ok) => assert_eq!(ok.head, 1),
        other => panic!("{other:?}"),
    }
    // A new group is admitted again (the token is below its max_groups),
    // at the floor (0: every pruned group was at head 0); and without a
    // token none is.
    hello_and_leave(&ep, &relay, 1, token).await;
    let (_, _, refused) = try_hello(&ep, &relay, None).await;
    match refused {
        Message::Error(e) => assert_eq!(e.error_code(), ErrorCode::AccessTokenRequired, "{e}"),
        other => panic!("expected ACCESS_TOKEN_REQUIRED, got {other:?}"),
    }
    live_conn.close(0u32.into(), b"bye");
    ep.close().await;
    relay.shutdown().await;
}

/// A member keeps one session open and reconnects from fresh device ids
/// (node ids) on the same group: every `Hello` leaves a `devices` row, and
/// the group never goes idle (a live session, a blob). One cleanup with an
/// idle window of 0 forgets the devices that left, in that live group too,
/// and keeps the device whose session is still open (docs/deploy.md "Idle
/// groups and devices").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_that_left_a_live_group_are_pruned_but_not_the_live_one() {
    const LEFT: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), AccessMode::Open).await;
    let ctx = Arc::clone(relay.context());
    let key = SigningKey::from_bytes(&rand::random());
    let live_ep = client().await;
    let (live_conn, group, answer) = hello_with_key(&live_ep, &relay, &key, None).await;
    assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
    let push = Message::Push(Push {
        items: vec![PushItem {
            blob_id: BlobId([1; 16]),
            payload: vec![7; 100],
            ttl_s: None,
        }],
    });
    assert!(matches!(
        exchange(&live_conn, &push).await,
        Message::PushOk(_)
    ));
    for _ in 0..LEFT {
        let ep = client().await;
        let (conn, _, answer) = hello_with_key(&ep, &relay, &key, None).await;
        assert!(matches!(answer, Message::Welcome(_)), "{answer:?}");
        conn.close(0u32.into(), b"bye");
        ep.close().await;
    }
    wait_sessions(&ctx, 1).await;
    let db = dir.path().join("data").join("relay.db");
    assert_eq!(rows_of(&db, &[group]).await, (1, LEFT as i64 + 1));

    // Every row above was written before this instant.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let report = cleanup::run_once(&ctx, &idle_now()).await.unwrap();
    assert_eq!(
        (report.pruned.devices, report.pruned.groups),
        (LEFT as u64, 0)
    );
    assert_eq!(rows_of(&db, &[group]).await, (1, 1));
    let live_device = DeviceId(*live_ep.id().as_bytes());
    assert_eq!(ctx.notify.live_sessions(), vec![(group, live_device)]);
    let stats = ctx.storage.stats().await.unwrap();
    assert_eq!((stats.groups, stats.devices, stats.blobs), (1, 1, 1));
    // Once it leaves, its row goes at the next cleanup; the blob keeps the
    // group.
    live_conn.close(0u32.into(), b"bye");
    wait_sessions(&ctx, 0).await;
    let report = cleanup::run_once(&ctx, &idle_now()).await.unwrap();
    assert_eq!((report.pruned.devices, report.pruned.groups), (1, 0));
    assert_eq!(rows_of(&db, &[group]).await, (1, 0));
    live_ep.close().await;
    relay.shutdown().await;
}

/// `Hello`s racing prunes with an idle window of 0: a session subscribes to
/// its group's notifications before it opens the group in storage, and each
/// prune asks for the live groups inside its transaction, so no prune can
/// remove the row of a session that is still open. Checked without a final
/// prune: every open session's group and device row is there. Open mode:
/// every group is owned by the one loopback address, whose counters the
/// prunes must keep exact while groups come and go under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hellos_racing_prunes_never_lose_a_live_sessions_group() {
    const SESSIONS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), AccessMode::Open).await;
    let ctx = Arc::clone(relay.context());
    let ep = client().await;
    let stop = tokio_util::sync::CancellationToken::new();
    let pruner = {
        let (ctx, stop) = (Arc::clone(&ctx), stop.clone());
        tokio::spawn(async move {
            let mut runs = 0u32;
            let mut pruned = 0;
            while !stop.is_cancelled() || runs < 3 {
                pruned += cleanup::run_once(&ctx, &idle_now())
                    .await
                    .unwrap()
                    .pruned
                    .groups;
                runs += 1;
                // A short pause, not a busy loop: prunes still run hundreds
                // of times among the Hellos, and the handshakes get CPU on a
                // loaded machine (a busy loop made connects time out).
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (runs, pruned)
        })
    };
    // Open sessions kept, and sessions that leave at once (their groups are
    // pruned meanwhile), interleaved.
    let open: Vec<_> = futures::stream::iter(0..SESSIONS)
        .map(|_| async {
            let leaving = hello(&ep, &relay, None).await;
            leaving.0.close(0u32.into(), b"bye");
            hello(&ep, &relay, None).await
        })
        .buffer_unordered(16)
        .collect()
        .await;
    stop.cancel();
    let (runs, pruned) = pruner.await.unwrap();
    assert!(
        runs >= 3 && pruned > 0,
        "{runs} prunes, {pruned} groups pruned"
    );
    wait_sessions(&ctx, SESSIONS as u64).await;
    let groups: Vec<GroupId> = open.iter().map(|(_, g, _)| *g).collect();
    assert_eq!(
        rows_of(&dir.path().join("data/relay.db"), &groups).await,
        (SESSIONS as i64, SESSIONS as i64),
        "(group rows, device rows) of the {SESSIONS} open sessions"
    );
    // And the next prune leaves exactly the live ones.
    cleanup::run_once(&ctx, &idle_now()).await.unwrap();
    let stats = ctx.storage.stats().await.unwrap();
    assert_eq!(
        (stats.groups, stats.devices, stats.owners),
        (SESSIONS as u64, SESSIONS as u64, 1)
    );
    let audit = ctx.storage.audit().await.unwrap();
    assert_eq!(audit.mismatched_owners, 0, "{audit:?}");
    for (conn, _, _) in open {
        conn.close(0u32.into(), b"bye");
    }
    ep.close().await;
    relay.shutdown().await;
}

/// A session whose peer stopped its notify stream (`STOP_SENDING`: the
/// relay's next `Notify` fails) is still a live session: once its group is
/// empty and idle, cleanups with an idle window of 0 leave the group alone,
/// and the session's next push lands in it. (Were the group pruned, the push
/// would be refused with NOT_IN_SESSION: pushes never re-create a group
/// outside admission.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_stopped_its_notify_stream_keeps_its_group() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), AccessMode::Token).await;
    let ctx = Arc::clone(relay.context());
    let ep = client().await;
    let token = new_token(&relay, 1).await;
    let (conn, group, _) = hello(&ep, &relay, Some(token)).await;
    let push = |id: u8| {
        Message::Push(Push {
            items: vec![PushItem {
                blob_id: BlobId([id; 16]),
                payload: vec![id; 10],
                ttl_s: Some(1),
            }],
        })
    };
    assert!(matches!(
        exchange(&conn, &push(1)).await,
        Message::PushOk(_)
    ));
    // The relay opens the notify stream with its first Notify; stop it.
    let mut notify = tokio::time::timeout(std::time::Duration::from_secs(10), conn.accept_uni())
        .await
        .expect("notify stream within 10 s")
        .expect("notify stream");
    assert!(matches!(
        read_message(&mut notify, 1 << 20).await,
        Ok(Some(Message::Notify(_)))
    ));
    notify.stop(0u32.into()).expect("stop the notify stream");
    // Each push makes the relay write a Notify on the stopped stream.
    for id in 2..=4 {
        assert!(matches!(
            exchange(&conn, &push(id)).await,
            Message::PushOk(_)
        ));
    }
    // Cleanups (idle window 0) until every blob (TTL 1 s) has expired and
    // was deleted; the run that deletes the last one prunes right after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        cleanup::run_once(&ctx, &idle_now()).await.unwrap();
        if ctx.storage.stats().await.unwrap().blobs == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "blobs never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = cleanup::run_once(&ctx, &idle_now()).await.unwrap();
    assert_eq!(report.pruned, Default::default(), "nothing left to prune");
    let stats = ctx.storage.stats().await.unwrap();
    assert_eq!(
        (stats.groups, stats.devices, stats.owners),
        (1, 1, 1),
        "the live session's group, device and owner"
    );
    assert_eq!(ctx.storage.head(group).await.unwrap(), 4);
    match exchange(&conn, &push(5)).await {
        Message::PushOk(ok) => assert_eq!(ok.head, 5),
        other => panic!("expected PushOk, got {other:?}"),
    }
    conn.close(0u32.into(), b"bye");
    ep.close().await;
    relay.shutdown().await;
}
