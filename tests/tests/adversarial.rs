//! Hostile and broken clients against the real relay: each gets its
//! documented error or close code, costs bounded memory, and an honest
//! client keeps working meanwhile (issue: proof under faults).
//!
//! Memory is checked by a [`MemoryWatch`]: the baseline is the relay's RSS
//! after an honest round trip (QUIC, storage and runtime warmed up, not a
//! cold start); the check reads the *peak* RSS since then (VmHWM, so memory
//! touched and freed again counts too) and fails if the relay exited. Each
//! attack is sized so that a relay without the limit under test would
//! exceed its budget several times over. The relay also runs under an
//! address-space cap (`RLIMIT_AS`, `e2e_tests::memory::ADDRESS_SPACE_HEADROOM` above its
//! warmed-up size), so an allocation sized from a hostile length — a
//! `Vec::with_capacity` of gigabytes, reserved but never touched and so
//! invisible to RSS — makes the relay abort and the test fail.

use e2e_tests::memory::MemoryWatch;
use e2e_tests::{LibDevice, RelayProcess, honest_round_trip, relay_with};
use iroh::endpoint::{Connection, ConnectionError, RecvStream, SendStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use sync_client::GroupSecret;
use sync_protocol::{
    BlobId, CloseCode, ErrorCode, ErrorMsg, Hello, Message, PROTOCOL_VERSION, Proof, PushItem,
    read_message, write_message,
};

/// Request streams a session can hold open at once: the relay's
/// `limits.max_requests_in_flight` (default 16). The relay's QUIC limit is
/// one more, for the `Hello` stream, whose slot iroh 1.4 (noq) does not hand
/// back while the others stay open.
const REQUEST_SLOTS: usize = 16;

/// Config that lifts the per-session request byte budget (4 largest frames
/// by default, `limits.session_request_frames`) to cover every request
/// slot, so a test can hold every slot with a partly sent largest frame.
/// (`tests/tests/peer_limits.rs` tests the budget itself.)
const EVERY_SLOT_READ: &str = "session_request_frames = 64\n";

/// Generous wait for an answer the relay owes.
const ANSWER: Duration = Duration::from_secs(60);

async fn closed_with(conn: &Connection) -> Option<u64> {
    match tokio::time::timeout(ANSWER, conn.closed()).await.ok()? {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

fn code(c: CloseCode) -> Option<u64> {
    Some(u64::from(c.as_u32()))
}

/// The next message on `recv`, or a panic naming `what` after [`ANSWER`].
async fn answer(recv: &mut RecvStream, what: &str) -> Message {
    match tokio::time::timeout(ANSWER, read_message(recv, 1 << 16)).await {
        Ok(Ok(Some(msg))) => msg,
        Ok(other) => panic!("{what}: no answer from the relay: {other:?}"),
        Err(_) => panic!("{what}: no answer from the relay within {ANSWER:?}"),
    }
}

/// The `Error` the relay answered on `recv`.
async fn error_answer(recv: &mut RecvStream, what: &str) -> ErrorMsg {
    match answer(recv, what).await {
        Message::Error(e) => e,
        other => panic!("{what}: expected an Error, got {other:?}"),
    }
}

/// Open `n` request streams on `conn`, each announcing a frame of `len`
/// bytes and sending the first `sent` bytes of its body; they stay open.
async fn partial_frames(
    conn: &Connection,
    n: usize,
    len: u32,
    sent: usize,
) -> Vec<(SendStream, RecvStream)> {
    let mut start = len.to_be_bytes().to_vec();
    start.extend(e2e_tests::random_bytes(sent));
    let mut streams = Vec::with_capacity(n);
    for i in 0..n {
        let (mut send, recv) = tokio::time::timeout(ANSWER, conn.open_bi())
            .await
            .unwrap_or_else(|_| panic!("stream {} of {n} did not open", i + 1))
            .unwrap();
        send.write_all(&start).await.unwrap();
        streams.push((send, recv));
    }
    streams
}

#[tokio::test]
async fn a_4_gib_length_prefix_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("data"));
    let watch = MemoryWatch::start(&relay).await;
    let keys = GroupSecret::generate().keys();
    let (_ep, conn, _) = relay.raw_session(&keys).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The prefix claims 4 GiB; then 64 MiB of body follow, as long as the
    // relay takes them. A relay that skipped the length check would buffer
    // them all; one that sized its buffer from the prefix would abort
    // under the address-space cap.
    const BODY: usize = 64 << 20;
    let writer = tokio::spawn(async move {
        let chunk = e2e_tests::random_bytes(64 << 10);
        let mut sent = 0;
        if send.write_all(&u32::MAX.to_be_bytes()).await.is_err() {
            return sent;
        }
        while sent < BODY {
            if send.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let reply = tokio::spawn(async move { error_answer(&mut recv, "4 GiB prefix").await });
    let sent = tokio::time::timeout(ANSWER, writer)
        .await
        .expect("the writer ends (relay closed the stream or all sent)")
        .unwrap();
    watch.check(&mut relay, 8.0, "4 GiB prefix");
    assert!(
        sent < BODY,
        "the relay read all {sent} bytes of a 4 GiB frame"
    );
    assert_eq!(reply.await.unwrap().error_code(), ErrorCode::InvalidMessage);
    assert_eq!(closed_with(&conn).await, code(CloseCode::FrameTooLarge));
    honest_round_trip(&relay).await;
    watch.check(&mut relay, 8.0, "4 GiB prefix, after an honest round trip");
}

#[tokio::test]
async fn truncated_frames_cost_what_arrived_and_close_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = relay_with(tmp.path(), &format!("[limits]\n{EVERY_SLOT_READ}"));
    let watch = MemoryWatch::start(&relay).await;
    let (_ep, conn, welcome) = relay.raw_session(&GroupSecret::generate().keys()).await;
    // Every stream the relay allows announces its largest frame and sends
    // 50 bytes: a relay that sized buffers from the announced length would
    // hold ~17 MiB here.
    let max = welcome.max_frame;
    let mut streams = partial_frames(&conn, REQUEST_SLOTS, max, 50).await;
    // An honest client is served meanwhile, which also gives the relay
    // time to take in every stream's start before the streams end.
    honest_round_trip(&relay).await;
    for (send, _) in &mut streams {
        send.finish().unwrap();
    }
    let mut truncated = 0;
    tokio::time::timeout(ANSWER, async {
        for (_, recv) in &mut streams {
            // The first truncated frame closes the connection; the other
            // streams may end without an answer.
            match read_message(recv, 1 << 16).await {
                Ok(Some(Message::Error(e))) => {
                    assert_eq!(e.error_code(), ErrorCode::InvalidMessage);
                    let expected = format!("got 50 of {max}");
                    assert!(e.message.contains(&expected), "{}", e.message);
                    truncated += 1;
                }
                Ok(Some(other)) => panic!("{other:?}"),
                Ok(None) | Err(_) => {}
            }
        }
    })
    .await
    .expect("every stream is answered or ends with the connection");
    watch.check(&mut relay, 8.0, "16 truncated max-size frames");
    assert!(truncated >= 1, "no stream was answered as truncated");
    assert_eq!(closed_with(&conn).await, code(CloseCode::ProtocolViolation));
    honest_round_trip(&relay).await;
}

#[tokio::test]
async fn garbage_after_hello_is_invalid_and_closes_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("data"));
    let watch = MemoryWatch::start(&relay).await;
    // Random bytes, and a Push whose item count claims 2^26 items (a
    // decoder that preallocated for it would reserve gigabytes, which the
    // address-space cap turns into an abort) followed by random bytes.
    let mut lying_push = vec![2u8]; // tag: Push
    lying_push.extend([0x80, 0x80, 0x80, 0x20]); // varint 2^26
    lying_push.extend(e2e_tests::random_bytes(1 << 20));
    for (what, garbage) in [
        ("random bytes", e2e_tests::random_bytes(64)),
        ("a Push claiming 2^26 items", lying_push),
    ] {
        let (_ep, conn, _) = relay.raw_session(&GroupSecret::generate().keys()).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&(garbage.len() as u32).to_be_bytes())
            .await
            .unwrap();
        send.write_all(&garbage).await.unwrap();
        send.finish().unwrap();
        let reply = tokio::time::timeout(ANSWER, read_message(&mut recv, 1 << 16)).await;
        watch.check(&mut relay, 8.0, what);
        match reply {
            Ok(Ok(Some(Message::Error(e)))) => {
                assert_eq!(e.error_code(), ErrorCode::InvalidMessage, "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(
            closed_with(&conn).await,
            code(CloseCode::ProtocolViolation),
            "{what}"
        );
    }
    honest_round_trip(&relay).await;
}

#[tokio::test]
async fn a_30_mib_device_name_is_refused_before_it_is_read() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("data"));
    let watch = MemoryWatch::start(&relay).await;
    let (_ep, conn) = relay.raw_connect().await;
    let keys = GroupSecret::generate().keys();
    // Under the 32 MiB frame ceiling: a relay that read the Hello with its
    // general frame limit instead of the 4 KiB handshake limit would buffer
    // and decode all of it.
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: Proof([0; 64]),
        device_name: Some("n".repeat(30 << 20)),
    });
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        let _ = write_message(&mut send, &hello, u32::MAX).await;
        let _ = send.finish();
    });
    let reply = tokio::time::timeout(ANSWER, read_message(&mut recv, 1 << 16)).await;
    tokio::time::timeout(ANSWER, writer)
        .await
        .expect("the writer ends")
        .unwrap();
    watch.check(&mut relay, 8.0, "30 MiB device name");
    match reply {
        Ok(Ok(Some(Message::Error(e)))) => assert_eq!(e.error_code(), ErrorCode::InvalidMessage),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed_with(&conn).await, code(CloseCode::FrameTooLarge));
    honest_round_trip(&relay).await;
    assert_eq!(
        relay.health()["groups"],
        2,
        "only the honest groups were created"
    );
}

#[tokio::test]
async fn slowloris_gets_a_timeout_answer_and_honest_clients_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = relay_with(
        tmp.path(),
        &format!("[limits]\nrequest_timeout_s = 2\n{EVERY_SLOT_READ}"),
    );
    let watch = MemoryWatch::start(&relay).await;
    let (_ep, conn, welcome) = relay.raw_session(&GroupSecret::generate().keys()).await;
    let started = Instant::now();
    // One stream drips a 200-byte frame a byte a second, without end.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let drip = tokio::spawn(async move {
        send.write_all(&200u32.to_be_bytes()).await.unwrap();
        while send.write_all(&[7]).await.is_ok() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    // Every other stream slot holds the start of a largest frame (the
    // relay's deadline for those grows with the announced length).
    let _held = partial_frames(&conn, REQUEST_SLOTS - 1, welcome.max_frame, 1).await;
    honest_round_trip(&relay).await;
    let e = error_answer(&mut recv, "dripping stream").await;
    let waited = started.elapsed();
    watch.check(&mut relay, 8.0, "slowloris on every stream slot");
    assert_eq!(e.error_code(), ErrorCode::InvalidMessage);
    assert!(e.message.contains("within 2 s"), "{}", e.message);
    // Not cut before its deadline (2 s + 200 B / 4096 B/s).
    assert!(waited >= Duration::from_secs(2), "{waited:?}");
    drip.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_stream_attempts_get_only_the_stream_cap_and_cost_little() {
    let tmp = tempfile::tempdir().unwrap();
    // No silent stream is answered (and its slot freed) within the test.
    let mut relay = relay_with(
        tmp.path(),
        &format!("[limits]\nrequest_timeout_s = 60\n{EVERY_SLOT_READ}"),
    );
    let watch = MemoryWatch::start(&relay).await;
    let (_ep, conn, welcome) = relay.raw_session(&GroupSecret::generate().keys()).await;
    // 10,000 streams at once, each with the start of a largest frame (16
    // KiB of it), then silence: 256 KiB for the relay to hold with its
    // cap, ~160 MiB without.
    let opened = Arc::new(AtomicUsize::new(0));
    let mut start = welcome.max_frame.to_be_bytes().to_vec();
    start.extend(e2e_tests::random_bytes(16 << 10));
    let start = Arc::new(start);
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..10_000 {
        let (conn, opened, start) = (conn.clone(), Arc::clone(&opened), Arc::clone(&start));
        attempts.spawn(async move {
            let Ok((mut send, recv)) = conn.open_bi().await else {
                return;
            };
            if send.write_all(&start).await.is_ok() {
                opened.fetch_add(1, Ordering::SeqCst);
            }
            // Hold the stream until the test ends.
            std::future::pending::<()>().await;
            drop((send, recv));
        });
    }
    let deadline = Instant::now() + ANSWER;
    while opened.load(Ordering::SeqCst) < REQUEST_SLOTS {
        assert!(
            Instant::now() < deadline,
            "only {} streams opened",
            opened.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Watch for more until none opens for a second: the relay grants no
    // slot while the first streams are held (a relay without the cap lets
    // the attack go on to all 10,000).
    let mut seen = 0;
    while opened.load(Ordering::SeqCst) != seen && Instant::now() < deadline {
        seen = opened.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    honest_round_trip(&relay).await;
    let opened = opened.load(Ordering::SeqCst);
    watch.check(&mut relay, 8.0, &format!("{opened} silent streams"));
    assert!(
        opened == REQUEST_SLOTS,
        "the relay let {opened} of 10,000 streams open"
    );
    attempts.abort_all();
}

#[tokio::test]
async fn a_client_that_never_reads_notify_blocks_no_pusher_and_gets_no_backlog() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = relay_with(
        tmp.path(),
        "[rate_limits]\nrequests_per_s = 100000\nrequests_burst = 100000\n",
    );
    let secret = GroupSecret::generate();
    let watch = MemoryWatch::start(&relay).await;
    // Joins the group, never accepts the NOTIFY stream.
    let (_ep, deaf, _) = relay.raw_session(&secret.keys()).await;
    let dev = LibDevice::new(&relay.address, &secret);
    let pusher = dev.connect().await;
    let mut head = 0;
    for i in 0..2000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        // A relay that waited on the deaf reader would stall a push here.
        let ok = tokio::time::timeout(
            ANSWER,
            pusher.session().push(vec![PushItem {
                blob_id: BlobId(id),
                payload: vec![1; 64],
                ttl_s: None,
            }]),
        )
        .await
        .expect("a push is answered while a subscriber never reads")
        .unwrap();
        head = ok.head;
    }
    watch.check(&mut relay, 8.0, "deaf subscriber");
    // When it finally reads, it sees the newest head, not a backlog of 2000.
    let mut uni = tokio::time::timeout(ANSWER, deaf.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let mut heads = Vec::new();
    // The relay re-sends the newest head at most once a second to a reader
    // that makes no requests: read until it arrives.
    while heads.last() != Some(&head) {
        match tokio::time::timeout(ANSWER, read_message(&mut uni, 4096)).await {
            Ok(Ok(Some(Message::Notify(n)))) => heads.push(n.head),
            other => panic!("after {} notifications: {other:?}", heads.len()),
        }
    }
    assert!(
        heads.len() < 200,
        "coalesced: {} notifications for 2000 pushes",
        heads.len()
    );
    pusher.close().await;
}

#[tokio::test]
async fn unidirectional_streams_from_a_device_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&tmp.path().join("data"));
    let watch = MemoryWatch::start(&relay).await;
    let (_ep, conn, _) = relay.raw_session(&GroupSecret::generate().keys()).await;
    // The protocol has no device-to-relay unidirectional stream, so the
    // relay never reads one: what QUIC accepted on them would sit in its
    // buffers (a stream window, ~1.2 MB, each) for the connection's life.
    let opened = Arc::new(AtomicUsize::new(0));
    let written = Arc::new(AtomicUsize::new(0));
    let data = Arc::new(e2e_tests::random_bytes(1 << 20));
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (conn, data) = (conn.clone(), Arc::clone(&data));
        let (opened, written) = (Arc::clone(&opened), Arc::clone(&written));
        attempts.spawn(async move {
            let Ok(mut send) = conn.open_uni().await else {
                return;
            };
            opened.fetch_add(1, Ordering::SeqCst);
            if send.write_all(&data).await.is_ok() {
                written.fetch_add(1, Ordering::SeqCst);
            }
            std::future::pending::<()>().await;
            drop(send);
        });
    }
    // Streams the relay allows open at once (QUIC stream credit comes with
    // the handshake): look after an honest round trip and a second more.
    honest_round_trip(&relay).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let opened = opened.load(Ordering::SeqCst);
    // Let those deliver their data (all but the last send window's worth).
    let deadline = Instant::now() + ANSWER;
    while written.load(Ordering::SeqCst) < opened && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    watch.check(
        &mut relay,
        8.0,
        &format!("{opened} unidirectional streams of 1 MiB"),
    );
    assert_eq!(opened, 0, "unidirectional streams the relay let open");
    attempts.abort_all();
    honest_round_trip(&relay).await;
}
