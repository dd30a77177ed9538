//! NOTIFY fan-out (docs/protocol.md and docs/deploy.md): one `tokio::sync::watch` channel per group
//! with live sessions, in a `DashMap`. A commit publishes the new head; each
//! session's forwarder sees only the newest value (coalesced), so pushers
//! never wait for readers and a slow reader never builds a backlog. A group's
//! entry is removed when its last subscription is dropped. The hub also
//! counts each group's live sessions per device: the cleanup never prunes a
//! device with a live session, nor its group (docs/deploy.md "Idle groups
//! and devices").

use dashmap::DashMap;
use std::sync::Arc;
use sync_protocol::{DeviceId, GroupId};
use tokio::sync::watch;

/// The per-group head channels.
#[derive(Debug, Default)]
pub struct NotifyHub {
    groups: DashMap<GroupId, watch::Sender<u64>>,
    /// Live sessions per `(group, device)`; an entry goes with its last one.
    devices: DashMap<(GroupId, DeviceId), usize>,
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
        let entry = self
            .groups
            .entry(group)
            .or_insert_with(|| watch::channel(0).0);
        if entry.receiver_count() >= max {
            return None;
        }
        let rx = entry.subscribe();
        drop(entry);
        *self.devices.entry((group, device)).or_insert(0) += 1;
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
        if let Some(tx) = self.groups.get(&group) {
            tx.send_if_modified(|current| {
                if head > *current {
                    *current = head;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// The head last published for `group`, or `None` when it has no live
    /// session here.
    pub fn head(&self, group: GroupId) -> Option<u64> {
        self.groups.get(&group).map(|tx| *tx.borrow())
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
        if let Some(mut n) = self.hub.devices.get_mut(&key) {
            *n -= 1;
        }
        self.hub.devices.remove_if(&key, |_, n| *n == 0);
        self.hub
            .groups
            .remove_if(&self.group, |_, tx| tx.receiver_count() == 0);
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
