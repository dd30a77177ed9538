//! The head change feed (docs/deploy.md "Several relays on one PostgreSQL"):
//! how a backend shared by several relay instances tells each instance that
//! a push committed *elsewhere* moved a group's head.
//!
//! A backend that only one relay uses (SQLite) has no feed: the relay's own
//! push handler publishes every new head. A shared backend (PostgreSQL)
//! sends a wake-up with every committed push (`pg_notify`) and offers a
//! [`HeadFeed`] of them ([`crate::Storage::head_changes`]).
//!
//! A feed event is a **hint**, never a fact: anyone who can reach the
//! database can forge one, and one can be lost (a dropped connection, a
//! full queue). The consumer therefore re-reads the heads from storage
//! ([`crate::Storage::heads`]) before it publishes anything, re-reads every
//! head it cares about after a [`HeadEvent::Resync`], and polls on a timer
//! so a lost wake-up only costs latency.

use sync_protocol::GroupId;
use tokio::sync::mpsc;

/// One event of a [`HeadFeed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadEvent {
    /// A wake-up: a push committed (on any instance) and says `group`'s
    /// head is now `head`. Unauthenticated: re-read before trusting it.
    Moved {
        /// The group the wake-up names.
        group: GroupId,
        /// The head it claims.
        head: u64,
    },
    /// The feed is (again) connected and listening. Wake-ups sent before
    /// this event and after the previous [`HeadEvent::Disconnected`] (or,
    /// for the first one, before the feed started) may have been lost:
    /// re-read every head you care about now. Also sent after wake-ups were
    /// dropped because the consumer fell behind ([`FEED_CAPACITY`]).
    Resync,
    /// The feed lost its connection; wake-ups are lost until the next
    /// [`HeadEvent::Resync`] (the backend reconnects on its own).
    Disconnected,
    /// A wake-up arrived whose payload is not one of ours (forged, from
    /// another program, or from a newer format); it was ignored.
    Malformed,
}

/// Events buffered between the backend and the consumer. When the
/// consumer falls behind, further wake-ups are dropped (never queued
/// without bound) and a [`HeadEvent::Resync`] follows once there is room.
pub const FEED_CAPACITY: usize = 1024;

/// A stream of [`HeadEvent`]s from a backend, ending when the storage
/// closes. Dropping it stops the backend's listener.
#[derive(Debug)]
pub struct HeadFeed {
    rx: mpsc::Receiver<HeadEvent>,
}

impl HeadFeed {
    /// A feed and the sender a backend (or a test) writes events to,
    /// holding at most [`FEED_CAPACITY`] events.
    pub fn channel() -> (FeedSender, HeadFeed) {
        let (tx, rx) = mpsc::channel(FEED_CAPACITY);
        (FeedSender { tx, lost: false }, HeadFeed { rx })
    }

    /// The next event; `None` once the backend stopped the feed.
    pub async fn recv(&mut self) -> Option<HeadEvent> {
        self.rx.recv().await
    }

    /// The next event if one is ready (never waits); `None` if none is.
    pub fn try_recv(&mut self) -> Option<HeadEvent> {
        self.rx.try_recv().ok()
    }
}

/// The backend's end of a [`HeadFeed`]: never blocks, never queues more
/// than [`FEED_CAPACITY`] events.
#[derive(Debug)]
pub struct FeedSender {
    tx: mpsc::Sender<HeadEvent>,
    /// Events were dropped since the last [`HeadEvent::Resync`] sent.
    lost: bool,
}

/// The consumer dropped its [`HeadFeed`]: stop listening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedClosed;

impl FeedSender {
    /// Send `event` without waiting. When the buffer is full the event is
    /// dropped and a [`HeadEvent::Resync`] is sent before the next event
    /// that fits, so the consumer re-reads what it missed. Errors:
    /// [`FeedClosed`] when the consumer is gone.
    pub fn send(&mut self, event: HeadEvent) -> Result<(), FeedClosed> {
        if self.lost {
            match self.tx.try_send(HeadEvent::Resync) {
                Ok(()) => self.lost = false,
                Err(mpsc::error::TrySendError::Full(_)) => return Ok(()),
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(FeedClosed),
            }
            if event == HeadEvent::Resync {
                return Ok(());
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lost = true;
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(FeedClosed),
        }
    }

    /// Resolves once the consumer dropped its [`HeadFeed`] (borrows
    /// nothing: it may be awaited while events are being sent).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let tx = self.tx.clone();
        async move { tx.closed().await }
    }

    /// True once the consumer dropped its [`HeadFeed`].
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(n: u8) -> HeadEvent {
        HeadEvent::Moved {
            group: GroupId([n; 32]),
            head: u64::from(n),
        }
    }

    #[test]
    fn a_full_feed_drops_wake_ups_and_then_asks_for_a_resync() {
        let (mut tx, mut feed) = HeadFeed::channel();
        for i in 0..FEED_CAPACITY + 10 {
            tx.send(moved((i % 200) as u8)).unwrap();
        }
        let mut got = 0;
        while feed.try_recv().is_some() {
            got += 1;
        }
        assert_eq!(got, FEED_CAPACITY, "bounded: the rest was dropped");
        tx.send(moved(7)).unwrap();
        assert_eq!(
            feed.try_recv(),
            Some(HeadEvent::Resync),
            "what was dropped is re-read"
        );
        assert_eq!(feed.try_recv(), Some(moved(7)));
        assert_eq!(feed.try_recv(), None);
        drop(feed);
        assert_eq!(tx.send(moved(1)), Err(FeedClosed));
        assert!(tx.is_closed());
    }
}
