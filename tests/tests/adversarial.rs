//! Hostile and broken clients against the real relay: each gets its
//! documented error or close code, costs bounded memory, and an honest
//! client keeps working meanwhile (issue: proof under faults).

use e2e_tests::{LibDevice, RelayProcess};
use iroh::endpoint::{Connection, ConnectionError};
use std::path::Path;
use std::time::{Duration, Instant};
use sync_client::GroupSecret;
use sync_protocol::{
    BlobId, CloseCode, ErrorCode, Hello, Message, PROTOCOL_VERSION, Proof, PushItem, read_message,
    write_message,
};

fn relay_with(dir: &Path, config: &str) -> RelayProcess {
    let file = dir.join("relay.toml");
    std::fs::write(&file, config).unwrap();
    RelayProcess::start_with(
        &dir.join("data"),
        "127.0.0.1:0",
        &["--config", file.to_str().unwrap()],
    )
}

async fn closed_with(conn: &Connection) -> Option<u64> {
    match tokio::time::timeout(Duration::from_secs(15), conn.closed())
        .await
        .ok()?
    {
        ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
        _ => None,
    }
}

fn code(c: CloseCode) -> Option<u64> {
    Some(u64::from(c.as_u32()))
}

/// An honest device of another group pushes and pulls a message.
async fn honest_round_trip(relay: &RelayProcess) -> Duration {
    let started = Instant::now();
    let secret = GroupSecret::generate();
    let mut dev = LibDevice::new(&relay.address, &secret);
    let client = dev.connect().await;
    client
        .push_messages(
            &mut dev.state,
            &[b"still here".to_vec()],
            &Default::default(),
        )
        .await
        .expect("honest push works");
    let ok = client
        .session()
        .pull(0, 10)
        .await
        .unwrap()
        .next_batch()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ok.blobs.len(), 1);
    client.close().await;
    started.elapsed()
}

fn assert_rss_bounded(relay: &RelayProcess, before_kib: u64, budget_mib: u64, what: &str) {
    let after = relay.rss_kib();
    assert!(
        after <= before_kib + budget_mib * 1024,
        "{what}: relay RSS grew from {} to {} MiB",
        before_kib / 1024,
        after / 1024
    );
}

#[tokio::test]
async fn a_4_gib_length_prefix_is_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let before = relay.rss_kib();
    let keys = GroupSecret::generate().keys();
    let (_ep, conn, _) = relay.raw_session(&keys).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    send.write_all(&[0u8; 1024]).await.unwrap();
    match read_message(&mut recv, 1 << 16).await.unwrap() {
        Some(Message::Error(e)) => assert_eq!(e.error_code(), ErrorCode::InvalidMessage),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed_with(&conn).await, code(CloseCode::FrameTooLarge));
    honest_round_trip(&relay).await;
    assert_rss_bounded(&relay, before, 16, "4 GiB prefix");
}

#[tokio::test]
async fn a_truncated_frame_is_invalid_and_closes_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let (_ep, conn, _) = relay.raw_session(&GroupSecret::generate().keys()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&100u32.to_be_bytes()).await.unwrap();
    send.write_all(&[2u8; 50]).await.unwrap();
    send.finish().unwrap();
    match read_message(&mut recv, 1 << 16).await.unwrap() {
        Some(Message::Error(e)) => {
            assert_eq!(e.error_code(), ErrorCode::InvalidMessage);
            assert!(e.message.contains("got 50 of 100"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(closed_with(&conn).await, code(CloseCode::ProtocolViolation));
    honest_round_trip(&relay).await;
}

#[tokio::test]
async fn garbage_after_hello_is_invalid_and_closes_the_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let (_ep, conn, _) = relay.raw_session(&GroupSecret::generate().keys()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let garbage = e2e_tests::random_bytes(64);
    send.write_all(&(garbage.len() as u32).to_be_bytes())
        .await
        .unwrap();
    send.write_all(&garbage).await.unwrap();
    send.finish().unwrap();
    match read_message(&mut recv, 1 << 16).await.unwrap() {
        Some(Message::Error(e)) => assert_eq!(e.error_code(), ErrorCode::InvalidMessage),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed_with(&conn).await, code(CloseCode::ProtocolViolation));
    honest_round_trip(&relay).await;
}

#[tokio::test]
async fn a_one_megabyte_device_name_is_refused_as_too_large() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let before = relay.rss_kib();
    let (_ep, conn) = relay.raw_connect().await;
    let keys = GroupSecret::generate().keys();
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        group_id: keys.group_id(),
        proof: Proof([0; 64]),
        device_name: Some("n".repeat(1 << 20)),
    });
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = write_message(&mut send, &hello, u32::MAX).await;
    let _ = send.finish();
    match read_message(&mut recv, 1 << 16).await {
        Ok(Some(Message::Error(e))) => assert_eq!(e.error_code(), ErrorCode::InvalidMessage),
        other => panic!("{other:?}"),
    }
    assert_eq!(closed_with(&conn).await, code(CloseCode::FrameTooLarge));
    honest_round_trip(&relay).await;
    assert_rss_bounded(&relay, before, 16, "1 MB name");
    assert_eq!(
        relay.health()["groups"],
        1,
        "only the honest group was created"
    );
}

#[tokio::test]
async fn slowloris_gets_a_timeout_answer_and_honest_clients_are_served() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), "[limits]\nrequest_timeout_s = 2\n");
    let (_ep, conn, _) = relay.raw_session(&GroupSecret::generate().keys()).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let drip = tokio::spawn(async move {
        // One byte a second of a frame that never completes.
        for b in [0u8, 0, 0, 200, 2, 1, 2, 3] {
            if send.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let started = Instant::now();
    let rtt = honest_round_trip(&relay).await;
    assert!(rtt < Duration::from_secs(5), "honest client waited {rtt:?}");
    match read_message(&mut recv, 1 << 16).await.unwrap() {
        Some(Message::Error(e)) => {
            assert_eq!(e.error_code(), ErrorCode::InvalidMessage);
            assert!(e.message.contains("within 2 s"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    drip.abort();
}

#[tokio::test]
async fn ten_thousand_silent_streams_are_capped_by_quic_and_cost_little() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(tmp.path(), "[limits]\nrequest_timeout_s = 2\n");
    let before = relay.rss_kib();
    let (_ep, conn, _) = relay.raw_session(&GroupSecret::generate().keys()).await;
    let mut streams = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut attempts = 0;
    while attempts < 10_000 && Instant::now() < deadline {
        attempts += 1;
        match tokio::time::timeout(Duration::from_millis(20), conn.open_bi()).await {
            Ok(Ok((mut send, recv))) => {
                // One byte makes the stream exist at the relay; then silence.
                let _ = send.write_all(&[0]).await;
                streams.push((send, recv));
            }
            _ => continue,
        }
    }
    // QUIC lets at most 100 request streams be open at once; the relay
    // answers the silent ones after request_timeout_s, freeing slots.
    assert!(
        streams.len() <= 400,
        "{} streams open in 4 s",
        streams.len()
    );
    let rtt = honest_round_trip(&relay).await;
    assert!(rtt < Duration::from_secs(5), "{rtt:?}");
    assert_rss_bounded(&relay, before, 32, "silent streams");
}

#[tokio::test]
async fn a_client_that_never_reads_notify_does_not_slow_pushers_or_grow_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = relay_with(
        tmp.path(),
        "[rate_limits]\nrequests_per_s = 100000\nrequests_burst = 100000\n",
    );
    let secret = GroupSecret::generate();
    // Joins the group, never accepts the NOTIFY stream.
    let (_ep, deaf, _) = relay.raw_session(&secret.keys()).await;
    let before = relay.rss_kib();
    let dev = LibDevice::new(&relay.address, &secret);
    let pusher = dev.connect().await;
    let mut worst = Duration::ZERO;
    let mut head = 0;
    for i in 0..2000u32 {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let started = Instant::now();
        let ok = pusher
            .session()
            .push(vec![PushItem {
                blob_id: BlobId(id),
                payload: vec![1; 64],
                ttl_s: None,
            }])
            .await
            .unwrap();
        worst = worst.max(started.elapsed());
        head = ok.head;
    }
    assert!(worst < Duration::from_secs(1), "a push waited {worst:?}");
    assert_rss_bounded(&relay, before, 32, "deaf subscriber");
    // When it finally reads, it sees the newest head, not a backlog of 2000.
    let mut uni = tokio::time::timeout(Duration::from_secs(5), deaf.accept_uni())
        .await
        .unwrap()
        .unwrap();
    let mut heads = Vec::new();
    // The relay re-sends the newest head at most once a second to a reader
    // that makes no requests.
    while let Ok(Ok(Some(Message::Notify(n)))) =
        tokio::time::timeout(Duration::from_millis(1500), read_message(&mut uni, 4096)).await
    {
        heads.push(n.head);
    }
    assert_eq!(heads.last(), Some(&head));
    assert!(
        heads.len() < 200,
        "coalesced: {} notifications for 2000 pushes",
        heads.len()
    );
    pusher.close().await;
}
