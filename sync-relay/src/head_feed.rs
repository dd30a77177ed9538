//! Heads moved on other relay instances (docs/deploy.md "Several relays on
//! one PostgreSQL"): the task that turns the storage's head change feed
//! ([`crate::storage::HeadFeed`], PostgreSQL's `LISTEN`) into NOTIFY for
//! this instance's live sessions ([`crate::notify::NotifyHub`]). A backend
//! only one relay uses (SQLite) has no feed, and this task does not run.
//!
//! A wake-up is only a hint (anyone with access to the database can send
//! one, and one can be lost), so what is published is **always a head read
//! from the table**, never the notified value. The notified head decides
//! one thing: whether to re-read (only for a group with a live session
//! here, and only when it is above the head already published here; our
//! own pushes, published by the push handler, come back below it and cost
//! nothing). A forged wake-up therefore costs one re-read, coalesced with
//! whatever else arrived meanwhile (one query in flight at a time); it can
//! never raise a head. After a (re)connection ([`HeadEvent::Resync`]) the
//! heads of all live groups are re-read (wake-ups of the outage are lost),
//! and every `storage.head_poll_interval_s` a fallback poll re-reads them
//! too, so a lost wake-up costs at most one poll interval. Each re-read is
//! one query per [`POLL_CHUNK`] live groups.

use crate::context::RelayContext;
use crate::storage::{HeadEvent, HeadFeed, StorageError};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use sync_protocol::GroupId;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, warn};

/// Groups whose heads one query re-reads.
pub const POLL_CHUNK: usize = 1000;

/// `kind` label of `listener_notifications_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotificationKind {
    /// `live` (a group with a live session here), `idle` (no session
    /// here: ignored), `malformed` (not our payload: ignored).
    pub kind: &'static str,
}

/// The listener's metrics (docs/deploy.md "Prometheus"); all stay 0 on
/// SQLite, which has no listener.
#[derive(Debug, Default)]
pub struct FeedMetrics {
    /// 1 while the listening connection is up, else 0.
    pub connected: Gauge,
    /// Times the listening connection came back after it was lost.
    pub reconnects: Counter,
    /// Wake-ups received, by [`NotificationKind`].
    pub notifications: Family<NotificationKind, Counter>,
    /// Fallback polls run.
    pub polls: Counter,
    /// Heads a fallback poll found above what this relay had published: a
    /// wake-up was lost (or was still on its way).
    pub poll_missed: Counter,
}

impl FeedMetrics {
    /// Register every metric in `registry` (prefixed `sync_relay_` there).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "listener_connected",
            "1 while the PostgreSQL LISTEN connection is up (0 on SQLite)",
            self.connected.clone(),
        );
        registry.register(
            "listener_reconnects",
            "Times the LISTEN connection came back after it was lost",
            self.reconnects.clone(),
        );
        registry.register(
            "listener_notifications",
            "Wake-ups received from other instances, by kind (live, idle, malformed)",
            self.notifications.clone(),
        );
        registry.register(
            "head_polls",
            "Fallback polls of live groups' heads",
            self.polls.clone(),
        );
        registry.register(
            "head_poll_missed",
            "Heads the fallback poll found newer than published (lost wake-ups)",
            self.poll_missed.clone(),
        );
        for kind in ["live", "idle", "malformed"] {
            let _ = self.notifications.get_or_create(&NotificationKind { kind });
        }
    }

    fn notification(&self, kind: &'static str) {
        self.notifications
            .get_or_create(&NotificationKind { kind })
            .inc();
    }
}

/// What the events read so far ask for.
#[derive(Default)]
struct Pending {
    /// Groups to re-read.
    stale: HashSet<GroupId>,
    /// Re-read every live group.
    all: bool,
}

/// The follower's state between events.
struct Follower {
    ctx: Arc<RelayContext>,
    /// The connection was lost and has not come back yet.
    disconnected: bool,
}

impl Follower {
    fn on_event(&mut self, event: HeadEvent, pending: &mut Pending) {
        let m = &self.ctx.metrics.head_feed;
        match event {
            HeadEvent::Moved { group, head } => match self.ctx.notify.head(group) {
                Some(published) => {
                    m.notification("live");
                    if head > published {
                        pending.stale.insert(group);
                    }
                }
                None => m.notification("idle"),
            },
            HeadEvent::Resync => {
                m.connected.set(1);
                if self.disconnected {
                    self.disconnected = false;
                    m.reconnects.inc();
                }
                pending.all = true;
            }
            HeadEvent::Disconnected => {
                m.connected.set(0);
                self.disconnected = true;
            }
            HeadEvent::Malformed => m.notification("malformed"),
        }
    }

    /// Re-read `groups`' heads and publish them; with `poll`, count each
    /// head that was newer than the published one.
    async fn refresh(&self, groups: Vec<GroupId>, poll: bool) -> Result<(), StorageError> {
        for chunk in groups.chunks(POLL_CHUNK) {
            for (group, head) in self.ctx.storage.heads(chunk).await? {
                if poll && self.ctx.notify.head(group).is_some_and(|p| head > p) {
                    self.ctx.metrics.head_feed.poll_missed.inc();
                }
                self.ctx.notify.publish(group, head);
            }
        }
        Ok(())
    }
}

/// Follow `feed` and poll every `poll_every` until shutdown.
pub async fn run(ctx: Arc<RelayContext>, mut feed: HeadFeed, poll_every: Duration) {
    let mut poll = tokio::time::interval_at(Instant::now() + poll_every, poll_every);
    poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut follower = Follower {
        ctx: Arc::clone(&ctx),
        disconnected: false,
    };
    let mut feed_open = true;
    loop {
        let mut pending = Pending::default();
        let mut polled = false;
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            event = feed.recv(), if feed_open => match event {
                Some(event) => {
                    follower.on_event(event, &mut pending);
                    // Coalesce what else is waiting into the same re-read.
                    for _ in 0..crate::storage::FEED_CAPACITY {
                        match feed.try_recv() {
                            Some(event) => follower.on_event(event, &mut pending),
                            None => break,
                        }
                    }
                }
                None => {
                    debug!("head feed ended; the fallback poll goes on");
                    feed_open = false;
                    ctx.metrics.head_feed.connected.set(0);
                    continue;
                }
            },
            _ = poll.tick() => {
                polled = true;
                ctx.metrics.head_feed.polls.inc();
            }
        }
        let groups: Vec<GroupId> = if polled || pending.all {
            ctx.notify.live_group_ids()
        } else {
            pending.stale.into_iter().collect()
        };
        if groups.is_empty() {
            continue;
        }
        match follower.refresh(groups, polled).await {
            Ok(()) => {}
            Err(StorageError::Closed) => return,
            Err(err) => warn!(error = %err, "re-reading heads failed; the next poll retries"),
        }
    }
}

#[cfg(test)]
#[path = "head_feed_test.rs"]
mod tests;
