//! The follower against the memory model: what it publishes is always the
//! stored head, whatever a wake-up claims; a resync after a reconnect and
//! the fallback poll re-read every live group.

use super::*;
use crate::config::Config;
use crate::storage::{MemoryStorage, NewBlob, NewGroup, PushRequest, Quotas, Storage};
use sync_protocol::{BlobId, DeviceId};

const DEADLINE: Duration = Duration::from_secs(20);

fn ctx() -> Arc<RelayContext> {
    let storage: Arc<dyn Storage> = Arc::new(MemoryStorage::new(Quotas::UNLIMITED));
    RelayContext::new(&Config::default(), DeviceId([0; 32]), storage)
}

/// Open `group` in storage and push `n` blobs straight to it (the hub is
/// not told, as when another instance pushes).
async fn pushed_elsewhere(ctx: &RelayContext, group: GroupId, n: u8) -> u64 {
    let d = DeviceId([9; 32]);
    ctx.storage
        .open_session(group, d, 1, NewGroup::Unowned)
        .await
        .unwrap();
    let items = (0..n)
        .map(|i| NewBlob {
            blob_id: BlobId([i; 16]),
            payload: vec![i; 8],
            expires_at_ms: i64::MAX,
        })
        .collect();
    let req = PushRequest {
        group,
        sender: d,
        items,
        now_ms: 1,
    };
    ctx.storage.push(req).await.unwrap().head
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn kind(ctx: &RelayContext, kind: &'static str) -> u64 {
    ctx.metrics
        .head_feed
        .notifications
        .get_or_create(&NotificationKind { kind })
        .get()
}

#[tokio::test]
async fn a_forged_wake_up_publishes_the_stored_head_never_its_own() {
    let ctx = ctx();
    let g = GroupId([1; 32]);
    let stored = pushed_elsewhere(&ctx, g, 2).await;
    let mut sub = ctx.notify.subscribe(g, DeviceId([2; 32]));
    let (mut tx, feed) = HeadFeed::channel();
    let task = tokio::spawn(run(Arc::clone(&ctx), feed, Duration::from_secs(3600)));
    tx.send(HeadEvent::Moved {
        group: g,
        head: u64::MAX,
    })
    .unwrap();
    tokio::time::timeout(DEADLINE, sub.receiver().changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*sub.receiver().borrow_and_update(), stored);
    // A group without a session here, and garbage: counted, ignored.
    tx.send(HeadEvent::Moved {
        group: GroupId([5; 32]),
        head: 7,
    })
    .unwrap();
    tx.send(HeadEvent::Malformed).unwrap();
    wait_for("idle and malformed counted", || {
        kind(&ctx, "idle") == 1 && kind(&ctx, "malformed") == 1
    })
    .await;
    assert_eq!(kind(&ctx, "live"), 1);
    assert_eq!(ctx.notify.head(g), Some(stored), "never the forged head");
    assert_eq!(ctx.notify.head(GroupId([5; 32])), None, "no entry made");
    ctx.shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn after_a_reconnect_every_live_group_is_re_read() {
    let ctx = ctx();
    let (g1, g2) = (GroupId([1; 32]), GroupId([2; 32]));
    let _s1 = ctx.notify.subscribe(g1, DeviceId([2; 32]));
    let _s2 = ctx.notify.subscribe(g2, DeviceId([2; 32]));
    let (mut tx, feed) = HeadFeed::channel();
    let task = tokio::spawn(run(Arc::clone(&ctx), feed, Duration::from_secs(3600)));
    let m = &ctx.metrics.head_feed;
    tx.send(HeadEvent::Resync).unwrap();
    wait_for("connected", || m.connected.get() == 1).await;
    assert_eq!(
        m.reconnects.get(),
        0,
        "the first connection is no reconnect"
    );
    tx.send(HeadEvent::Disconnected).unwrap();
    wait_for("disconnected", || m.connected.get() == 0).await;
    // Pushed during the outage: no wake-up will ever tell of them.
    let h1 = pushed_elsewhere(&ctx, g1, 3).await;
    let h2 = pushed_elsewhere(&ctx, g2, 1).await;
    tx.send(HeadEvent::Resync).unwrap();
    wait_for("both heads caught up", || {
        ctx.notify.head(g1) == Some(h1) && ctx.notify.head(g2) == Some(h2)
    })
    .await;
    assert_eq!((m.connected.get(), m.reconnects.get()), (1, 1));
    assert_eq!(
        m.poll_missed.get(),
        0,
        "caught up by the resync, not a poll"
    );
    ctx.shutdown.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn the_fallback_poll_delivers_what_no_wake_up_announced() {
    let ctx = ctx();
    let g = GroupId([1; 32]);
    let _s = ctx.notify.subscribe(g, DeviceId([2; 32]));
    let (_tx, feed) = HeadFeed::channel();
    let task = tokio::spawn(run(Arc::clone(&ctx), feed, Duration::from_millis(50)));
    let head = pushed_elsewhere(&ctx, g, 4).await;
    wait_for("the poll", || ctx.notify.head(g) == Some(head)).await;
    let m = &ctx.metrics.head_feed;
    assert!(m.polls.get() >= 1);
    assert_eq!(
        m.poll_missed.get(),
        1,
        "one head found newer than published"
    );
    let encoded = ctx.metrics.encode();
    for name in [
        "sync_relay_listener_connected 0",
        "sync_relay_listener_reconnects_total 0",
        "sync_relay_listener_notifications_total{kind=\"malformed\"} 0",
        "sync_relay_head_poll_missed_total 1",
    ] {
        assert!(encoded.contains(name), "{name} not in:\n{encoded}");
    }
    ctx.shutdown.cancel();
    task.await.unwrap();
}
