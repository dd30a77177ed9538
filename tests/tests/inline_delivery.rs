//! Inline delivery end to end (docs/protocol.md "Version 3: inline
//! delivery"): a following `SyncClient` takes new messages from the
//! relay's `Deliver` frames through the pull path, with no pull; against a
//! relay that only speaks version 2 it falls back and still follows; and a
//! relay that forges inline deliveries gets nothing it could not get with
//! a pull answer (docs/security.md "Inline delivery").

use e2e_tests::fake_relay::{FakeRelay, Reply, Script};
use e2e_tests::{LibDevice, RelayProcess};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_client::receive::PullEvent;
use sync_client::{
    ClientError, GroupSecret, PushOptions, StateStore, SubscriptionEvent, SyncClient,
};
use sync_protocol::{AckOk, BlobId, Deliver, DeviceId, Message, PullBatch, PulledBlob};

/// Longest wait for something that should arrive (a loaded CI machine).
const ARRIVES: Duration = Duration::from_secs(30);

/// Wait for the first event `want` accepts; panics on failure or timeout.
async fn wait_for(
    sub: &mut sync_client::Subscription,
    what: &str,
    mut want: impl FnMut(&PullEvent) -> bool,
) {
    tokio::time::timeout(ARRIVES, async {
        loop {
            match sub.next().await {
                Some(SubscriptionEvent::Event(e)) if want(&e) => return,
                Some(SubscriptionEvent::Event(_)) => {}
                Some(SubscriptionEvent::Failed(e)) => panic!("following failed: {e}"),
                None => panic!("the subscription ended"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within {ARRIVES:?}"));
}

fn pulls(relay: &RelayProcess) -> f64 {
    relay.fresh_metrics().value("sync_relay_pulls", &[])
}

/// A pushes `text` as a message; wait until the follower reports it.
async fn push_and_see(
    a: &SyncClient,
    state: &mut sync_client::StateStore,
    sub: &mut sync_client::Subscription,
    text: &[u8],
) {
    a.push_messages(state, &[text.to_vec()], &PushOptions::default())
        .await
        .unwrap();
    wait_for(
        sub,
        "the pushed message",
        |e| matches!(e, PullEvent::Message { data, .. } if data == text),
    )
    .await;
}

/// The relay's inline fallback counts by reason.
fn fallbacks(relay: &RelayProcess) -> Vec<(&'static str, f64)> {
    let m = relay.fresh_metrics();
    ["position", "not_cached", "budget", "relay_budget"]
        .into_iter()
        .map(|r| (r, m.value("sync_relay_inline_fallbacks", &[r])))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_new_messages_inline_without_pulling() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(tmp.path());
    let secret = GroupSecret::generate();
    let mut a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let ca = a.connect().await;
    ca.push_messages(&mut a.state, &[b"first".to_vec()], &PushOptions::default())
        .await
        .unwrap();
    let cb = Arc::new(b.connect().await);
    let out = tmp.path().join("out");
    let mut sub = cb.subscribe(b.state, out);
    wait_for(
        &mut sub,
        "first message",
        |e| matches!(e, PullEvent::Message { data, .. } if data == b"first"),
    )
    .await;
    wait_for(&mut sub, "synced", |e| {
        matches!(e, PullEvent::Synced { .. })
    })
    .await;
    let before = pulls(&relay);
    for text in [b"second".to_vec(), b"third".to_vec()] {
        push_and_see(&ca, &mut a.state, &mut sub, &text).await;
    }
    let reasons = fallbacks(&relay);
    assert_eq!(
        cb.inline_deliveries(),
        2,
        "both arrived inline; fallbacks {reasons:?}"
    );
    assert_eq!(pulls(&relay), before, "B made no pull for them");
    let state = sub.stop().await.unwrap();
    assert!(state.state.cursor >= 3);
    ca.close().await;
}

/// Pushes in lockstep with the follower (each one as soon as the last
/// arrived), the follower starting on a pull: it must leave its pull loop
/// once a round reaches the announced head (not keep pulling while each
/// round finds the next blob), and the relay must start the next `Deliver`
/// where the pull answer ended (not at the pull's `after` until an ack,
/// which the follower holds: acks are coalesced by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_under_a_steady_stream_takes_it_inline() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(tmp.path());
    let secret = GroupSecret::generate();
    let mut a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let ca = a.connect().await;
    a.state.use_seq_blocks();
    let cb = Arc::new(b.connect().await);
    let mut sub = cb.subscribe(b.state, tmp.path().join("out"));
    const N: usize = 30;
    for i in 0..N {
        let text = format!("message {i}").into_bytes();
        push_and_see(&ca, &mut a.state, &mut sub, &text).await;
    }
    let inline = cb.inline_deliveries();
    let reasons = fallbacks(&relay);
    // The first message or two may come by pull (the follower starts with
    // one); the stream after that comes inline.
    assert!(
        inline as usize >= N - 3,
        "{inline} of {N} inline; relay fallbacks {reasons:?}, pulls {}",
        pulls(&relay)
    );
    sub.stop().await.unwrap();
    ca.release_seqs(&mut a.state).await.unwrap();
    ca.close().await;
}

/// After a message too large to go inline (announced, then pulled), the
/// next small ones go inline again although the follower holds its acks:
/// the relay starts a `Deliver` where its last pull answer ended, not at
/// the pull's `after` (which would name the large blob, not in the inline
/// cache, and turn every later message into a `Notify` and a pull until
/// the held ack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_pulled_message_the_next_ones_come_inline_without_an_ack() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(tmp.path());
    let secret = GroupSecret::generate();
    let mut a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let ca = a.connect().await;
    let cb = Arc::new(b.connect().await);
    cb.set_ack_interval(Duration::from_secs(3600));
    let mut sub = cb.subscribe(b.state, tmp.path().join("out"));
    wait_for(&mut sub, "synced", |e| {
        matches!(e, PullEvent::Synced { .. })
    })
    .await;
    // Random, so compression cannot bring it under the inline limit.
    let mut large = vec![0u8; sync_protocol::limits::INLINE_MAX_BLOB + 1];
    blake3::Hasher::new().finalize_xof().fill(&mut large);
    let mut texts = vec![large];
    texts.extend((0..5).map(|i| format!("small {i}").into_bytes()));
    for text in &texts {
        push_and_see(&ca, &mut a.state, &mut sub, text).await;
    }
    let m = relay.fresh_metrics();
    assert_eq!(
        m.value("sync_relay_inline_fallbacks", &["not_cached"]),
        1.0,
        "only the large message was announced"
    );
    assert_eq!(cb.inline_deliveries(), 5, "the small ones came inline");
    sub.stop().await.unwrap();
    ca.close().await;
}

/// A fake relay that speaks versions up to `max` and answers every pull
/// with an empty page at `head`, sending `frames` on the notification
/// stream; and its count of pulls.
async fn fake(max: u16, head: u64, frames: Vec<Message>) -> (FakeRelay, Arc<AtomicU64>) {
    let pulls = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&pulls);
    let fake = FakeRelay::alone(
        Script::new()
            .max_version(max)
            .on_welcome(move |w| w.head_cursor = head)
            .on_request(move |_, req| match req {
                Message::Pull(_) => {
                    counted.fetch_add(1, Ordering::SeqCst);
                    Reply::Answer(vec![Message::PullBatch(PullBatch {
                        blobs: vec![],
                        head,
                        more: false,
                    })])
                }
                _ => Reply::Forward,
            })
            .on_notify_stream(move |_| frames.clone()),
    )
    .await;
    (fake, pulls)
}

fn junk(cursor: u64) -> PulledBlob {
    PulledBlob {
        cursor,
        blob_id: BlobId([cursor as u8; 16]),
        sender: DeviceId([0x42; 32]),
        created_at: 0,
        payload: vec![0x02; 200],
    }
}

/// Follow through `fake` for at most `limit`: the outcome and the events.
async fn follow(fake: &FakeRelay, limit: Duration) -> (Result<(), ClientError>, Vec<PullEvent>) {
    let secret = GroupSecret::generate();
    let mut dev = LibDevice::new(&fake.address, &secret);
    let client: SyncClient = dev.connect().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut events = Vec::new();
    let result = client
        .follow(
            &mut dev.state,
            &tmp.path().join("out"),
            &mut |e| events.push(e),
            tokio::time::sleep(limit),
        )
        .await;
    (result, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_cursors_that_do_not_increase_are_a_protocol_error() {
    let (relay, _) = fake(
        3,
        0,
        vec![Message::Deliver(Deliver {
            after: 0,
            blobs: vec![junk(2), junk(1)],
            head: 2,
        })],
    )
    .await;
    let (result, _) = follow(&relay, ARRIVES).await;
    match result {
        Err(ClientError::Protocol(m)) => assert!(m.contains("cursors must increase"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    relay.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_cursors_beyond_the_announced_head_are_a_protocol_error() {
    let (relay, _) = fake(
        3,
        0,
        vec![Message::Deliver(Deliver {
            after: 0,
            blobs: vec![junk(1), junk(9)],
            head: 2,
        })],
    )
    .await;
    let (result, _) = follow(&relay, ARRIVES).await;
    match result {
        Err(ClientError::Protocol(m)) => assert!(m.contains("beyond the head"), "{m}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    relay.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_not_from_the_devices_cursor_is_not_applied() {
    // The device is at 0; a delivery "after 5" would skip 1..=5. It is
    // taken as a Notify of its head: nothing applied, the device pulls.
    let (relay, pulls) = fake(
        3,
        0,
        vec![Message::Deliver(Deliver {
            after: 5,
            blobs: vec![junk(6)],
            head: 6,
        })],
    )
    .await;
    let (result, events) = follow(&relay, Duration::from_secs(3)).await;
    result.unwrap();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, PullEvent::Rejected { cursor: 6, .. })),
        "the forged blob was opened: {events:?}"
    );
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, PullEvent::Synced { cursor, .. } if *cursor > 0)),
        "the cursor moved: {events:?}"
    );
    assert!(
        pulls.load(Ordering::SeqCst) >= 2,
        "the head it announced made the device pull"
    );
    relay.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_speaks_version_2_to_a_relay_from_before_version_3() {
    let (relay, pulls) = fake(2, 0, vec![]).await;
    let secret = GroupSecret::generate();
    let dev = LibDevice::new(&relay.address, &secret);
    let session = sync_client::RelaySession::connect(&dev.opts).await.unwrap();
    assert_eq!(session.welcome().version, 2);
    assert!(!session.inline() && session.no_echo());
    session.close().await;
    let (result, _) = follow(&relay, Duration::from_secs(2)).await;
    result.unwrap();
    assert!(pulls.load(Ordering::SeqCst) >= 1, "it follows as before");
    relay.close().await;
}

/// Stopping a follower in the middle of a pull round (one blob a frame,
/// saved every few frames): the cursor it acknowledges on the way out
/// must be on disk already — the relay may delete what every device
/// acknowledged, and a device that restarts from an older saved cursor
/// would then never get the blobs in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_mid_round_acks_only_what_it_saved() {
    const BLOBS: u64 = 1000;
    const PAUSE_AT: u64 = 41;
    let acked = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&acked);
    let relay = FakeRelay::alone(
        Script::new()
            .on_welcome(|w| w.head_cursor = BLOBS)
            .on_request(move |_, req| match req {
                Message::Pull(pull) => {
                    let after = pull.after;
                    Reply::Stream(Box::new((after + 1..=BLOBS).map(|c| {
                        if c == PAUSE_AT {
                            // The device has taken the frames before this
                            // one (not a multiple of its save interval),
                            // is told to stop on the last, and waits here.
                            // (A blocking pause: the fake relay's writer
                            // has no other way to wait inside the
                            // iterator; it holds one worker thread.)
                            std::thread::sleep(Duration::from_secs(2));
                        }
                        Message::PullBatch(PullBatch {
                            blobs: vec![junk(c)],
                            head: BLOBS,
                            more: c < BLOBS,
                        })
                    })))
                }
                Message::Ack(ack) => {
                    seen.fetch_max(ack.cursor, Ordering::SeqCst);
                    Reply::Answer(vec![Message::AckOk(AckOk { cursor: ack.cursor })])
                }
                _ => Reply::Forward,
            }),
    )
    .await;
    let secret = GroupSecret::generate();
    let mut dev = LibDevice::new(&relay.address, &secret);
    let client: SyncClient = dev.connect().await;
    let tmp = tempfile::tempdir().unwrap();
    let stop = Arc::new(tokio::sync::Notify::new());
    let trigger = Arc::clone(&stop);
    let mut rejected = 0u64;
    client
        .follow(
            &mut dev.state,
            &tmp.path().join("out"),
            &mut |e| {
                if matches!(e, PullEvent::Rejected { .. }) {
                    rejected += 1;
                    // The last frame before the pause: the pull waits
                    // there when the stop is seen.
                    if rejected == PAUSE_AT - 1 {
                        trigger.notify_one();
                    }
                }
            },
            async move { stop.notified().await },
        )
        .await
        .unwrap();
    let in_memory = dev.state.state.cursor;
    let on_disk = StateStore::open(dev.state.path()).unwrap().state.cursor;
    let acked = acked.load(Ordering::SeqCst);
    assert!(acked > 0, "it acked on the way out (cursor {in_memory})");
    assert!(
        acked <= on_disk,
        "acked cursor {acked} but only {on_disk} saved (in memory {in_memory})"
    );
    client.close().await;
    relay.close().await;
}
