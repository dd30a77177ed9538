//! NOTIFY fan-out (docs/protocol.md and docs/deploy.md): one `tokio::sync::watch` channel per group
//! with live sessions, in a `DashMap`. A commit publishes the new head; each
//! session's forwarder sees only the newest value (coalesced), so pushers
//! never wait for readers and a slow reader never builds a backlog. A group's
//! entry is removed when its last subscription is dropped. The hub also
//! counts each group's live sessions per device: the cleanup never prunes a
//! device with a live session, nor its group (docs/deploy.md "Idle groups
//! and devices").
//!
//! For protocol version 2 (docs/protocol.md "Version 2: no echo") the hub
//! also keeps, per live `(group, device)`, the newest run of consecutive
//! cursors that device pushed through this relay ([`NotifyHub::pushed`]),
//! so a session's forwarder can tell a head that only its own device's
//! pushes moved ([`NotifyHub::only_own`]) and not wake the device for it.

use crate::recent::{CacheBytes, CachedBlob, RecentBlobs};
use dashmap::DashMap;
use std::sync::Arc;
use sync_protocol::{DeviceId, GroupId};
use tokio::sync::watch;

/// The per-group head channels.
#[derive(Debug, Default)]
pub struct NotifyHub {
    groups: DashMap<GroupId, LiveGroup>,
    /// Payload bytes of every live group's recent blobs.
    cache_bytes: CacheBytes,
    /// Live sessions per `(group, device)`; an entry goes with its last one.
    devices: DashMap<(GroupId, DeviceId), LiveDevice>,
}

/// A group with live sessions here.
#[derive(Debug)]
struct LiveGroup {
    /// Its head, as published.
    tx: watch::Sender<u64>,
    /// Its recently committed small blobs (docs/protocol.md "Version 3:
    /// inline delivery").
    recent: RecentBlobs,
}

/// A `(group, device)` with live sessions here.
#[derive(Debug, Default)]
struct LiveDevice {
    /// Its live sessions.
    sessions: usize,
    /// The newest run `first..=last` of consecutive cursors it pushed here.
    own: Option<(u64, u64)>,
}

/// A session's view of its group's head; unsubscribes on drop.
#[derive(Debug)]
pub struct Subscription {
    rx: Option<watch::Receiver<u64>>,
    hub: Arc<NotifyHub>,
    group: GroupId,
    device: DeviceId,
}

impl NotifyHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(NotifyHub::default())
    }

    /// Subscribe a session of `device` to `group`'s head. Publish the head
    /// read from storage *after* subscribing, so no commit can fall between
    /// the two.
    pub fn subscribe(self: &Arc<Self>, group: GroupId, device: DeviceId) -> Subscription {
        self.try_subscribe(group, device, usize::MAX)
            .expect("no cap, always subscribes")
    }

    /// Subscribe a session of `device` unless `group` already has `max`
    /// subscriptions (live sessions); the check and the subscription are
    /// one atomic step, and the session is live (`live_sessions`) when
    /// this returns.
    pub fn try_subscribe(
        self: &Arc<Self>,
        group: GroupId,
        device: DeviceId,
        max: usize,
    ) -> Option<Subscription> {
        let entry = self.groups.entry(group).or_insert_with(|| LiveGroup {
            tx: watch::channel(0).0,
            recent: RecentBlobs::default(),
        });
        if entry.tx.receiver_count() >= max {
            return None;
        }
        let rx = entry.tx.subscribe();
        drop(entry);
        self.devices.entry((group, device)).or_default().sessions += 1;
        Some(Subscription {
            rx: Some(rx),
            hub: Arc::clone(self),
            group,
            device,
        })
    }

    /// Raise `group`'s head to `head` (never lowers it) and wake its
    /// subscribers. Does nothing when nobody listens. Never blocks.
    pub fn publish(&self, group: GroupId, head: u64) {
        if let Some(live) = self.groups.get(&group) {
            live.tx.send_if_modified(|current| {
                if head > *current {
                    *current = head;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// Whether `group` has a live session here (worth keeping its new
    /// blobs for: [`NotifyHub::remember`]).
    pub fn is_live(&self, group: GroupId) -> bool {
        self.groups.contains_key(&group)
    }

    /// Keep `blobs`, newly **committed** in `group` (increasing cursors),
    /// for inline delivery to its live sessions ([`crate::recent`]); call
    /// before [`NotifyHub::publish`] of the head they moved. Does nothing
    /// when the group has no live session here.
    pub fn remember(&self, group: GroupId, blobs: Vec<CachedBlob>) {
        if let Some(mut live) = self.groups.get_mut(&group) {
            for blob in blobs {
                live.recent.add(blob, &self.cache_bytes);
            }
        }
    }

    /// `group`'s blobs with cursors in `after + 1 ..= head`, when every one
    /// of them is kept here and unexpired at `now_ms`; else `None` (the
    /// session is sent a `Notify` and pulls).
    pub fn recent(
        &self,
        group: GroupId,
        after: u64,
        head: u64,
        now_ms: i64,
    ) -> Option<Vec<Arc<CachedBlob>>> {
        self.groups
            .get(&group)
            .and_then(|live| live.recent.range(after, head, now_ms))
    }

    /// Payload bytes of recent blobs kept for inline delivery, all groups
    /// together (at most [`crate::recent::RELAY_CACHE_BYTES`]).
    pub fn cached_bytes(&self) -> usize {
        self.cache_bytes.get()
    }

    /// Record that `device` pushed the new cursors `first..=last` of `group`
    /// (call before [`NotifyHub::publish`] of the head they moved). Kept
    /// only while the device has a live session here; a run that continues
    /// the previous one (`first == previous last + 1`) extends it, any other
    /// replaces it. Costs two `u64` per live `(group, device)`.
    pub fn pushed(&self, group: GroupId, device: DeviceId, first: u64, last: u64) {
        if first == 0 || last < first {
            return;
        }
        if let Some(mut live) = self.devices.get_mut(&(group, device)) {
            live.own = match live.own {
                Some((start, end)) if end.checked_add(1) == Some(first) => Some((start, last)),
                _ => Some((first, last)),
            };
        }
    }

    /// Whether every cursor in `after + 1 ..= head` of `group` is one that
    /// `device` pushed here ([`NotifyHub::pushed`]), so a `Notify` of `head`
    /// would tell the device only of its own blobs. Cursors are gapless, so
    /// a run of its own that covers the range leaves no room for anyone
    /// else's blob; when in doubt (another relay instance's push, a run
    /// replaced since) this says `false` and the `Notify` goes out.
    pub fn only_own(&self, group: GroupId, device: DeviceId, after: u64, head: u64) -> bool {
        head > after
            && self
                .devices
                .get(&(group, device))
                .and_then(|live| live.own)
                .is_some_and(|(first, last)| first <= after + 1 && head <= last)
    }

    /// The head last published for `group`, or `None` when it has no live
    /// session here.
    pub fn head(&self, group: GroupId) -> Option<u64> {
        self.groups.get(&group).map(|live| *live.tx.borrow())
    }

    /// Every group with a live session here.
    pub fn live_group_ids(&self) -> Vec<GroupId> {
        self.groups.iter().map(|e| *e.key()).collect()
    }

    /// Groups with at least one live subscription.
    pub fn live_groups(&self) -> usize {
        self.groups.len()
    }

    /// The `(group, device)` of every live session, once per pair (a
    /// session subscribes before it opens its group in storage and stays
    /// subscribed until it ends): what the cleanup must never prune.
    pub fn live_sessions(&self) -> Vec<(GroupId, DeviceId)> {
        self.devices.iter().map(|e| *e.key()).collect()
    }
}

impl Subscription {
    /// The receiver: `borrow_and_update()` for the newest head,
    /// `changed().await` to wait for a newer one.
    pub fn receiver(&mut self) -> &mut watch::Receiver<u64> {
        self.rx.as_mut().expect("present until drop")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.rx.take());
        let key = (self.group, self.device);
        if let Some(mut live) = self.hub.devices.get_mut(&key) {
            live.sessions -= 1;
        }
        self.hub
            .devices
            .remove_if(&key, |_, live| live.sessions == 0);
        if let Some((_, mut gone)) = self
            .hub
            .groups
            .remove_if(&self.group, |_, live| live.tx.receiver_count() == 0)
        {
            gone.recent.clear(&self.hub.cache_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[tokio::test]
    async fn subscribers_see_the_newest_head_and_entries_go_away() {
        let hub = NotifyHub::new();
        let g = GroupId([1; 32]);
        let mut a = hub.subscribe(g, d(1));
        let mut b = hub.subscribe(g, d(1));
        hub.publish(g, 3);
        hub.publish(g, 5);
        hub.publish(g, 4); // lower: ignored
        a.receiver().changed().await.unwrap();
        assert_eq!(*a.receiver().borrow_and_update(), 5);
        assert_eq!(*b.receiver().borrow_and_update(), 5);
        assert_eq!(hub.live_groups(), 1);
        assert_eq!(hub.live_sessions(), vec![(g, d(1))]);
        drop(a);
        assert_eq!(hub.live_groups(), 1);
        assert_eq!(hub.live_sessions(), vec![(g, d(1))]);
        drop(b);
        assert_eq!(hub.live_groups(), 0);
        assert_eq!(hub.live_sessions(), vec![]);
        hub.publish(g, 9); // nobody listens: no entry is created
        assert_eq!(hub.live_groups(), 0);
    }

    #[test]
    fn only_runs_of_the_devices_own_cursors_are_own() {
        let hub = NotifyHub::new();
        let g = GroupId([1; 32]);
        let (me, other) = (d(1), d(2));
        assert!(!hub.only_own(g, me, 0, 1), "no session: nothing recorded");
        let sub = hub.subscribe(g, me);
        hub.pushed(g, me, 1, 3);
        assert!(hub.only_own(g, me, 0, 3));
        assert!(hub.only_own(g, me, 2, 3));
        assert!(
            !hub.only_own(g, me, 3, 3),
            "nothing new is not a head to skip"
        );
        assert!(!hub.only_own(g, other, 0, 3), "another device's run");
        hub.pushed(g, me, 4, 5); // continues the run
        assert!(hub.only_own(g, me, 0, 5));
        assert!(!hub.only_own(g, me, 0, 6), "cursor 6 is someone else's");
        hub.pushed(g, me, 7, 7); // 6 was someone else's: a new run
        assert!(!hub.only_own(g, me, 5, 7), "6 is not ours");
        assert!(hub.only_own(g, me, 6, 7));
        hub.pushed(g, me, 0, 0); // ignored
        hub.pushed(g, me, 9, 8); // ignored
        assert!(hub.only_own(g, me, 6, 7));
        hub.pushed(g, me, u64::MAX, u64::MAX);
        hub.pushed(g, me, 1, 1); // no overflow past u64::MAX
        assert!(hub.only_own(g, me, 0, 1));
        drop(sub);
        assert!(!hub.only_own(g, me, 0, 1), "gone with the last session");
        let _sub = hub.subscribe(g, me);
        assert!(
            !hub.only_own(g, me, 0, 1),
            "a new session starts with no run"
        );
    }

    #[test]
    fn group_cap_is_enforced() {
        let hub = NotifyHub::new();
        let g = GroupId([1; 32]);
        let a = hub.try_subscribe(g, d(1), 2).unwrap();
        let _b = hub.try_subscribe(g, d(2), 2).unwrap();
        assert!(hub.try_subscribe(g, d(3), 2).is_none());
        let mut live = hub.live_sessions();
        live.sort();
        assert_eq!(
            live,
            vec![(g, d(1)), (g, d(2))],
            "a refused one is not live"
        );
        assert!(hub.try_subscribe(GroupId([2; 32]), d(1), 2).is_some());
        drop(a);
        assert!(hub.try_subscribe(g, d(1), 2).is_some());
        assert_eq!(hub.live_sessions(), vec![(g, d(2))]);
    }
}
