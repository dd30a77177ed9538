//! Coalesced acknowledgements while following (docs/client.md "Following"):
//! a following device pulls after every NOTIFY, and acking after each pull
//! would cost one relay round trip and one storage write per update. While
//! following, an ack is sent at once when none was sent for
//! [`ACK_INTERVAL`], otherwise when the interval is over (the device may be
//! idle by then); stopping sends the last one. An ack only lets the relay's
//! cleanup drop blobs every device has applied (sync-storage "retention"),
//! so a later or lost ack keeps data a little longer, never loses any; the
//! device's own cursor lives in `state.json`.

use std::time::{Duration, Instant};

/// Longest a following device leaves its newest cursor unacknowledged, by
/// default.
pub const ACK_INTERVAL: Duration = Duration::from_millis(200);

/// What a follower has acknowledged and still owes the relay.
#[derive(Debug)]
pub(crate) struct AckCoalescer {
    interval: Duration,
    acked: u64,
    pending: Option<u64>,
    last: Option<Instant>,
}

impl AckCoalescer {
    /// Holding acks for at most `interval` (see
    /// [`crate::SyncClient::set_ack_interval`]).
    pub(crate) fn new(interval: Duration) -> AckCoalescer {
        AckCoalescer {
            interval,
            acked: 0,
            pending: None,
            last: None,
        }
    }

    /// A pull reached `cursor` at `now`: the cursor to ack right away, if
    /// any (nothing new, or an ack was sent less than [`ACK_INTERVAL`] ago:
    /// it is kept pending, see [`AckCoalescer::due_at`]).
    pub(crate) fn offer(&mut self, cursor: u64, now: Instant) -> Option<u64> {
        if cursor <= self.acked {
            return None;
        }
        match self.last {
            Some(last) if now.duration_since(last) < self.interval => {
                self.pending = Some(cursor);
                None
            }
            _ => Some(cursor),
        }
    }

    /// When the pending cursor is due (None: nothing pending).
    pub(crate) fn due_at(&self) -> Option<Instant> {
        self.pending?;
        Some(self.last.map_or_else(Instant::now, |l| l + self.interval))
    }

    /// The pending cursor, taken (to ack when due, or the final one).
    pub(crate) fn take_pending(&mut self) -> Option<u64> {
        self.pending.take().filter(|&c| c > self.acked)
    }

    /// The ack owed when following stops with the local cursor at
    /// `cursor`: the newest of it and the pending one, unless acked.
    pub(crate) fn last_owed(&mut self, cursor: u64) -> Option<u64> {
        let owed = self.pending.take().unwrap_or(0).max(cursor);
        (owed > self.acked).then_some(owed)
    }

    /// The relay acknowledged `cursor` at `now`.
    pub(crate) fn acked(&mut self, cursor: u64, now: Instant) {
        self.acked = self.acked.max(cursor);
        self.last = Some(now);
        if self.pending.is_some_and(|p| p <= self.acked) {
            self.pending = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_within_the_interval_are_held_and_the_last_is_kept() {
        let t0 = Instant::now();
        let mut c = AckCoalescer::new(ACK_INTERVAL);
        assert_eq!(c.offer(5, t0), Some(5), "the first ack goes at once");
        c.acked(5, t0);
        assert_eq!(c.offer(5, t0), None, "nothing new");
        assert_eq!(c.due_at(), None);
        let soon = t0 + ACK_INTERVAL / 4;
        assert_eq!(c.offer(6, soon), None, "held");
        assert_eq!(c.offer(9, soon), None, "held");
        assert_eq!(c.due_at(), Some(t0 + ACK_INTERVAL));
        assert_eq!(c.last_owed(7), Some(9), "the newest, for the final ack");
        assert_eq!(c.take_pending(), None);
        assert_eq!(c.last_owed(5), None, "already acked");
        c.acked(9, soon);
        let later = soon + ACK_INTERVAL;
        assert_eq!(c.offer(12, later), Some(12), "after the interval, at once");
    }
}
