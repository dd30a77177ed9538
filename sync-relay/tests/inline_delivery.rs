//! Inline delivery (docs/protocol.md "Version 3: inline delivery"), against
//! an in-process relay over real QUIC, speaking the protocol by hand: a
//! version-3 session whose position the relay knows gets new small blobs in
//! `Deliver` frames (no pull), never its own; a large blob, or one past
//! the session's in-flight budget, comes as a bare `Notify` until the
//! device acknowledges; a version-2 session gets only `Notify` frames.

use ed25519_dalek::SigningKey;
use std::time::Duration;
use sync_protocol::limits::NOTIFY_MAX_FRAME;
use sync_protocol::{Ack, BlobId, Deliver, DeviceId, Message, Pull, Push, PushItem, read_message};
use sync_relay::Relay;

mod common;
use common::{device, exchange, session, start_relay};

/// Longest wait for a frame that should arrive (a loaded CI machine).
const ARRIVES: Duration = Duration::from_secs(10);

/// Push one blob per `(tag, size)`, in one batch; the last cursor.
async fn push(conn: &iroh::endpoint::Connection, blobs: &[(u8, usize)]) -> u64 {
    let push = Message::Push(Push {
        items: blobs
            .iter()
            .map(|&(tag, size)| PushItem {
                blob_id: BlobId([tag; 16]),
                payload: vec![tag; size],
                ttl_s: None,
            })
            .collect(),
    });
    match exchange(conn, &push).await.as_slice() {
        [Message::PushOk(ok)] => ok.results.last().expect("a result").cursor,
        other => panic!("expected PushOk, got {other:?}"),
    }
}

/// Tell the relay where the device is: a `Pull` from `after`; the
/// cursors it answered.
async fn pull(conn: &iroh::endpoint::Connection, after: u64) -> Vec<u64> {
    exchange(conn, &Message::Pull(Pull { after, limit: 1000 }))
        .await
        .into_iter()
        .flat_map(|f| match f {
            Message::PullBatch(b) => b.blobs,
            other => panic!("expected PullBatch, got {other:?}"),
        })
        .map(|b| b.cursor)
        .collect()
}

/// The next frame on the notification stream.
async fn next(uni: &mut iroh::endpoint::RecvStream) -> Message {
    tokio::time::timeout(ARRIVES, read_message(uni, NOTIFY_MAX_FRAME))
        .await
        .expect("a frame within 10 s")
        .expect("a frame")
        .expect("the stream goes on")
}

async fn notify_stream(conn: &iroh::endpoint::Connection) -> iroh::endpoint::RecvStream {
    tokio::time::timeout(ARRIVES, conn.accept_uni())
        .await
        .expect("the notification stream within 10 s")
        .expect("the notification stream")
}

/// `(cursor, first payload byte or None for a marker, payload length)`.
fn blobs(d: &Deliver) -> Vec<(u64, Option<u8>, usize)> {
    d.blobs
        .iter()
        .map(|b| (b.cursor, b.payload.first().copied(), b.payload.len()))
        .collect()
}

fn deliver(m: Message) -> Deliver {
    match m {
        Message::Deliver(d) => d,
        other => panic!("expected Deliver, got {other:?}"),
    }
}

fn notify(m: Message) -> u64 {
    match m {
        Message::Notify(n) => n.head,
        other => panic!("expected Notify, got {other:?}"),
    }
}

struct Group {
    relay: Relay,
    a: iroh::endpoint::Connection,
    b: iroh::endpoint::Connection,
    b_id: DeviceId,
    _eps: (iroh::Endpoint, iroh::Endpoint),
    _tmp: tempfile::TempDir,
}

/// A relay and two sessions of one group: A speaks version 3, B
/// `b_version`; B has told the relay it is at cursor 0.
async fn group(b_version: u16) -> Group {
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(tmp.path()).await;
    let key = SigningKey::from_bytes(&rand::random());
    let (ep_a, ep_b) = (device().await, device().await);
    let a = session(&ep_a, &relay, &key, 3).await;
    let b = session(&ep_b, &relay, &key, b_version).await;
    assert_eq!(pull(&b, 0).await, Vec::<u64>::new());
    Group {
        relay,
        a,
        b,
        b_id: DeviceId(*ep_b.id().as_bytes()),
        _eps: (ep_a, ep_b),
        _tmp: tmp,
    }
}

fn pulls(relay: &Relay) -> u64 {
    relay.context().metrics.pulls.get()
}

fn fallbacks(relay: &Relay, reason: &'static str) -> u64 {
    relay
        .context()
        .metrics
        .inline_fallbacks
        .get_or_create(&sync_relay::metrics::ReasonLabel { reason })
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_session_gets_new_small_blobs_inline_without_a_pull() {
    let g = group(3).await;
    let pulls_before = pulls(&g.relay);
    assert_eq!(push(&g.a, &[(7, 100), (8, 16 * 1024)]).await, 2);
    let mut uni = notify_stream(&g.b).await;
    let d = deliver(next(&mut uni).await);
    assert_eq!((d.after, d.head), (0, 2));
    assert_eq!(blobs(&d), vec![(1, Some(7), 100), (2, Some(8), 16 * 1024)]);
    // Acknowledged as a pull would be; the next blob follows inline.
    exchange(&g.b, &Message::Ack(Ack { cursor: 2 })).await;
    push(&g.a, &[(9, 10)]).await;
    let d = deliver(next(&mut uni).await);
    assert_eq!((d.after, d.head), (2, 3));
    assert_eq!(blobs(&d), vec![(3, Some(9), 10)]);
    assert_eq!(pulls(&g.relay), pulls_before, "no pull was needed");
    assert_eq!(g.relay.context().metrics.inline_deliveries.get(), 2);
    g.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_blobs_are_never_sent_inline() {
    let g = group(3).await;
    // A's blob (1) inline, acknowledged.
    assert_eq!(push(&g.a, &[(1, 10)]).await, 1);
    let mut uni = notify_stream(&g.b).await;
    assert_eq!(
        blobs(&deliver(next(&mut uni).await)),
        vec![(1, Some(1), 10)]
    );
    exchange(&g.b, &Message::Ack(Ack { cursor: 1 })).await;
    // B's own blob (2) alone is not announced at all; with A's (3) after
    // it, only A's goes inline.
    assert_eq!(push(&g.b, &[(0xb0, 50)]).await, 2);
    assert_eq!(push(&g.a, &[(0xa0, 50)]).await, 3);
    let d = deliver(next(&mut uni).await);
    assert_eq!((d.after, d.head), (1, 3));
    assert_eq!(blobs(&d), vec![(3, Some(0xa0), 50)]);
    assert!(d.blobs.iter().all(|b| b.sender != g.b_id));
    g.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_blob_falls_back_to_a_notify_and_a_pull() {
    let g = group(3).await;
    push(&g.a, &[(1, 16 * 1024 + 1)]).await;
    let mut uni = notify_stream(&g.b).await;
    assert_eq!(notify(next(&mut uni).await), 1);
    assert_eq!(fallbacks(&g.relay, "not_cached"), 1);
    assert_eq!(pull(&g.b, 0).await, vec![1], "the device pulls it");
    assert_eq!(g.relay.context().metrics.inline_deliveries.get(), 0);
    g.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_falls_back_until_the_device_acknowledges() {
    let g = group(3).await;
    // 60 KiB inline, not acknowledged.
    let big = 15 * 1024;
    push(&g.a, &[(1, big), (2, big), (3, big), (4, big)]).await;
    let mut uni = notify_stream(&g.b).await;
    assert_eq!(deliver(next(&mut uni).await).blobs.len(), 4);
    // 15 KiB more would pass the 64 KiB budget: a bare Notify (sent
    // without a request from B after the 1 s quiet resend).
    push(&g.a, &[(5, big)]).await;
    assert_eq!(notify(next(&mut uni).await), 5);
    assert_eq!(fallbacks(&g.relay, "budget"), 1);
    // B acknowledges what it got inline: the budget is free again, and
    // the next delivery starts where B is (4), with 5 and 6.
    exchange(&g.b, &Message::Ack(Ack { cursor: 4 })).await;
    push(&g.a, &[(6, big)]).await;
    let d = deliver(next(&mut uni).await);
    assert_eq!((d.after, d.head), (4, 6));
    assert_eq!(
        blobs(&d),
        vec![(5, Some(5), big), (6, Some(6), big)],
        "contiguous from B's cursor"
    );
    g.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_2_session_gets_only_notifies() {
    let g = group(2).await;
    push(&g.a, &[(1, 10)]).await;
    let mut uni = notify_stream(&g.b).await;
    assert_eq!(notify(next(&mut uni).await), 1);
    assert_eq!(pull(&g.b, 0).await, vec![1]);
    push(&g.a, &[(2, 10)]).await;
    assert_eq!(notify(next(&mut uni).await), 2);
    assert_eq!(g.relay.context().metrics.inline_deliveries.get(), 0);
    g.relay.shutdown().await;
}
