//! NOTIFY fan-out (docs/protocol.md and docs/deploy.md): one `tokio::sync::watch` channel per group
//! with live sessions, in a `DashMap`. A commit publishes the new head; each
//! session's forwarder sees only the newest value (coalesced), so pushers
//! never wait for readers and a slow reader never builds a backlog. A group's
//! entry is removed when its last subscription is dropped.

use dashmap::DashMap;
use std::sync::Arc;
use sync_protocol::GroupId;
use tokio::sync::watch;

/// The per-group head channels.
#[derive(Debug, Default)]
pub struct NotifyHub {
    groups: DashMap<GroupId, watch::Sender<u64>>,
}

/// A session's view of its group's head; unsubscribes on drop.
#[derive(Debug)]
pub struct Subscription {
    rx: Option<watch::Receiver<u64>>,
    hub: Arc<NotifyHub>,
    group: GroupId,
}

impl NotifyHub {
    /// An empty hub.
    pub fn new() -> Arc<Self> {
        Arc::new(NotifyHub::default())
    }

    /// Subscribe to `group`'s head. Publish the head read from storage
    /// *after* subscribing, so no commit can fall between the two.
    pub fn subscribe(self: &Arc<Self>, group: GroupId) -> Subscription {
        self.try_subscribe(group, usize::MAX)
            .expect("no cap, always subscribes")
    }

    /// Subscribe unless `group` already has `max` subscriptions (live
    /// sessions); the check and the subscription are one atomic step.
    pub fn try_subscribe(self: &Arc<Self>, group: GroupId, max: usize) -> Option<Subscription> {
        let entry = self
            .groups
            .entry(group)
            .or_insert_with(|| watch::channel(0).0);
        if entry.receiver_count() >= max {
            return None;
        }
        let rx = entry.subscribe();
        drop(entry);
        Some(Subscription {
            rx: Some(rx),
            hub: Arc::clone(self),
            group,
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

    /// Groups with at least one live subscription.
    pub fn live_groups(&self) -> usize {
        self.groups.len()
    }

    /// The ids of the groups with a live subscription (a session subscribes
    /// before it opens its group in storage and stays subscribed until it
    /// ends): what the cleanup must never prune.
    pub fn live_group_ids(&self) -> Vec<GroupId> {
        self.groups.iter().map(|e| *e.key()).collect()
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
        self.hub
            .groups
            .remove_if(&self.group, |_, tx| tx.receiver_count() == 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn subscribers_see_the_newest_head_and_entries_go_away() {
        let hub = NotifyHub::new();
        let g = GroupId([1; 32]);
        let mut a = hub.subscribe(g);
        let mut b = hub.subscribe(g);
        hub.publish(g, 3);
        hub.publish(g, 5);
        hub.publish(g, 4); // lower: ignored
        a.receiver().changed().await.unwrap();
        assert_eq!(*a.receiver().borrow_and_update(), 5);
        assert_eq!(*b.receiver().borrow_and_update(), 5);
        assert_eq!(hub.live_groups(), 1);
        drop(a);
        assert_eq!(hub.live_groups(), 1);
        drop(b);
        assert_eq!(hub.live_groups(), 0);
        hub.publish(g, 9); // nobody listens: no entry is created
        assert_eq!(hub.live_groups(), 0);
    }

    #[test]
    fn group_cap_is_enforced() {
        let hub = NotifyHub::new();
        let g = GroupId([1; 32]);
        let a = hub.try_subscribe(g, 2).unwrap();
        let _b = hub.try_subscribe(g, 2).unwrap();
        assert!(hub.try_subscribe(g, 2).is_none());
        assert!(hub.try_subscribe(GroupId([2; 32]), 2).is_some());
        drop(a);
        assert!(hub.try_subscribe(g, 2).is_some());
    }
}
