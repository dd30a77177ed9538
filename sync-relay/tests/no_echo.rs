//! No echo (docs/protocol.md "Version 2: no echo"), against an in-process
//! relay over real QUIC: a version-2 session never gets its own blobs back
//! (only the empty-payload marker where an answer's page ends with one of
//! them) and no `Notify` for a head only its own push moved, while others'
//! blobs and heads reach it whole; a version-1 session of the same device
//! still gets everything, as before.

use ed25519_dalek::SigningKey;
use std::time::Duration;
use sync_protocol::{BlobId, DeviceId, Message, Pull, PulledBlob, Push, PushItem, read_message};

mod common;
use common::{device, exchange, session, start_relay};

async fn push(conn: &iroh::endpoint::Connection, tag: u8) -> u64 {
    let push = Message::Push(Push {
        items: vec![PushItem {
            blob_id: BlobId([tag; 16]),
            payload: vec![tag; 100],
            ttl_s: None,
        }],
    });
    match exchange(conn, &push).await.as_slice() {
        [Message::PushOk(ok)] => ok.results[0].cursor,
        other => panic!("expected PushOk, got {other:?}"),
    }
}

/// Every blob of a pull from `after`: (cursor, first payload byte or
/// `None` for a marker, sender).
async fn pull(conn: &iroh::endpoint::Connection, after: u64) -> Vec<(u64, Option<u8>, DeviceId)> {
    let frames = exchange(conn, &Message::Pull(Pull { after, limit: 1000 })).await;
    let blobs: Vec<PulledBlob> = frames
        .into_iter()
        .flat_map(|f| match f {
            Message::PullBatch(b) => b.blobs,
            other => panic!("expected PullBatch, got {other:?}"),
        })
        .collect();
    blobs
        .into_iter()
        .map(|b| (b.cursor, b.payload.first().copied(), b.sender))
        .collect()
}

/// The heads of the `Notify` frames that arrive on `conn`'s notify stream
/// within `wait`.
async fn notifies(uni: &mut iroh::endpoint::RecvStream, wait: Duration) -> Vec<u64> {
    let mut heads = Vec::new();
    while let Ok(Ok(Some(Message::Notify(n)))) =
        tokio::time::timeout(wait, read_message(uni, 4096)).await
    {
        heads.push(n.head);
    }
    heads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_session_gets_no_echo_of_its_own_blobs() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(tmp.path()).await;
    let key = SigningKey::from_bytes(&rand::random());
    let (ep_a, ep_b) = (device().await, device().await);
    let (id_a, id_b) = (
        DeviceId(*ep_a.id().as_bytes()),
        DeviceId(*ep_b.id().as_bytes()),
    );
    let a = session(&ep_a, &relay, &key, 2).await;
    let b = session(&ep_b, &relay, &key, 2).await;

    // Cursors: 1..=3 A's, 4 B's, 5 A's.
    for tag in 1..=3 {
        push(&a, tag).await;
    }
    push(&b, 4).await;
    push(&a, 5).await;

    assert_eq!(
        pull(&a, 0).await,
        vec![(4, Some(4), id_b), (5, None, id_a)],
        "A gets B's blob whole and only a marker where its own run ends"
    );
    assert_eq!(pull(&a, 4).await, vec![(5, None, id_a)]);
    assert_eq!(pull(&a, 5).await, vec![], "nothing after the marker");
    assert_eq!(
        pull(&b, 0).await,
        vec![
            (1, Some(1), id_a),
            (2, Some(2), id_a),
            (3, Some(3), id_a),
            (5, Some(5), id_a)
        ],
        "B gets every blob of A whole, none of its own, and no marker (its run is not last)"
    );

    // The same device on version 1: everything, its own blobs included.
    let a1 = session(&ep_a, &relay, &key, 1).await;
    let all: Vec<u64> = pull(&a1, 0)
        .await
        .into_iter()
        .map(|(cursor, first, _)| {
            assert!(first.is_some(), "a version-1 session gets no marker");
            cursor
        })
        .collect();
    assert_eq!(all, vec![1, 2, 3, 4, 5]);
    a1.close(0u32.into(), b"bye");

    // Notifications: A's own push moves the head without a Notify to A; B's
    // push does notify A. B is notified of A's push.
    let mut a_notify = tokio::time::timeout(Duration::from_secs(10), a.accept_uni())
        .await
        .expect("A's notify stream within 10 s")
        .expect("A's notify stream");
    let mut b_notify = tokio::time::timeout(Duration::from_secs(10), b.accept_uni())
        .await
        .expect("B's notify stream within 10 s")
        .expect("B's notify stream");
    // Drain what the pushes above announced (a first Notify each at most).
    notifies(&mut a_notify, Duration::from_millis(300)).await;
    notifies(&mut b_notify, Duration::from_millis(300)).await;
    let own = push(&a, 6).await;
    assert_eq!(own, 6);
    // B pulls (a request), so its forwarder may send right away.
    pull(&b, 5).await;
    assert_eq!(
        notifies(&mut b_notify, Duration::from_secs(3)).await,
        vec![6]
    );
    assert_eq!(
        notifies(&mut a_notify, Duration::from_secs(2)).await,
        Vec::<u64>::new(),
        "no Notify for a head only A's own push moved"
    );
    pull(&a, 5).await; // A makes a request: its forwarder is free to send
    push(&b, 7).await;
    assert_eq!(
        notifies(&mut a_notify, Duration::from_secs(3)).await,
        vec![7],
        "B's push reaches A"
    );
    a.close(0u32.into(), b"bye");
    b.close(0u32.into(), b"bye");
    relay.shutdown().await;
}
