//! Closes committed on this relay instance, announced to its live sessions
//! (docs/security.md "What the relay must do", docs/deploy.md "Closed
//! groups"): a session of a device that a close does not keep is ended
//! with close code 9 (GROUP_CLOSED) as soon as the close commits.
//!
//! A `tokio::sync::broadcast` channel: closes are rare (each needs a member
//! of the group and counts against its device's request rate), so waking
//! every session once per close is cheap, and no per-group registry has to
//! be kept in step with sessions. A session that falls more than
//! [`CLOSE_FEED_CAPACITY`] closes behind asks storage about its own group
//! instead. Sessions on *other* instances (PostgreSQL) learn of the close
//! at their next request: pushes are refused in the push transaction,
//! pulls and acks ask storage ([`crate::handlers::close::check_served`]).

use std::sync::Arc;
use sync_protocol::GroupId;
use sync_storage::GroupClosure;
use tokio::sync::broadcast;

/// Closes a session may fall behind before it asks storage instead.
pub const CLOSE_FEED_CAPACITY: usize = 64;

/// One close: the group and its recorded close.
pub type Closed = (GroupId, Arc<GroupClosure>);

/// The relay's close announcements.
#[derive(Debug)]
pub struct CloseFeed {
    tx: broadcast::Sender<Closed>,
}

impl Default for CloseFeed {
    fn default() -> Self {
        CloseFeed {
            tx: broadcast::channel(CLOSE_FEED_CAPACITY).0,
        }
    }
}

impl CloseFeed {
    /// Announce that `group` is closed as `closure` says. Never blocks;
    /// does nothing when no session listens.
    pub fn announce(&self, group: GroupId, closure: GroupClosure) {
        let _ = self.tx.send((group, Arc::new(closure)));
    }

    /// A receiver of the closes announced from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Closed> {
        self.tx.subscribe()
    }
}
