//! Per-sender sequence tracking (DESIGN §1, §4.4): every blob a device seals
//! carries its next sequence number (1, 2, 3, …). A receiver records which
//! numbers it has seen per sender; a number seen twice is a **replay**, and a
//! number missing below the highest seen, once the relay says it has nothing
//! more, is a **gap** (a withheld or lost blob).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// What one sender's sequence numbers look like so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderTrack {
    /// Every number in `1..=contiguous` has been seen.
    pub contiguous: u64,
    /// Numbers seen above `contiguous + 1` (waiting for the gap below).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub ahead: BTreeSet<u64>,
}

/// The verdict on one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Not seen before: apply the blob.
    New,
    /// Seen before: a replay; do not apply it again.
    Replay,
}

impl SenderTrack {
    /// Record `seq` and say whether it is new. Sequence 0 is never valid and
    /// counts as a replay.
    pub fn observe(&mut self, seq: u64) -> Observation {
        if seq == 0 || seq <= self.contiguous || self.ahead.contains(&seq) {
            return Observation::Replay;
        }
        if seq == self.contiguous + 1 {
            self.contiguous = seq;
            while self.ahead.remove(&(self.contiguous + 1)) {
                self.contiguous += 1;
            }
        } else {
            self.ahead.insert(seq);
        }
        Observation::New
    }

    /// Most numbers one `Void` may give up (bounds memory for hostile input).
    pub const MAX_VOID: u64 = 1 << 20;

    /// Record that the sender gave up `first..=last` (they are no gap and
    /// are not replays). Ranges over [`SenderTrack::MAX_VOID`] are refused.
    pub fn void(&mut self, first: u64, last: u64) -> bool {
        if first == 0 || last < first || last - first >= Self::MAX_VOID {
            return false;
        }
        for seq in first.max(self.contiguous + 1)..=last {
            let _ = self.observe(seq);
        }
        true
    }

    /// Missing ranges `(first, last)` below the highest number seen.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut expected = self.contiguous + 1;
        for &seq in &self.ahead {
            if seq > expected {
                gaps.push((expected, seq - 1));
            }
            expected = seq + 1;
        }
        gaps
    }

    /// Highest number seen.
    pub fn highest(&self) -> u64 {
        self.ahead.last().copied().unwrap_or(self.contiguous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_numbers_are_new_and_leave_no_gap() {
        let mut t = SenderTrack::default();
        for s in 1..=5 {
            assert_eq!(t.observe(s), Observation::New);
        }
        assert_eq!(t.contiguous, 5);
        assert!(t.gaps().is_empty());
    }

    #[test]
    fn repeats_are_replays() {
        let mut t = SenderTrack::default();
        t.observe(1);
        t.observe(3);
        assert_eq!(t.observe(1), Observation::Replay);
        assert_eq!(t.observe(3), Observation::Replay);
        assert_eq!(t.observe(0), Observation::Replay);
    }

    #[test]
    fn voided_numbers_fill_gaps_quietly() {
        let mut t = SenderTrack::default();
        for s in [1, 2, 9] {
            t.observe(s);
        }
        assert_eq!(t.gaps(), vec![(3, 8)]);
        assert!(t.void(3, 8));
        assert!(t.gaps().is_empty());
        assert_eq!(t.contiguous, 9);
        assert!(!t.void(1, 1 << 30), "huge ranges are refused");
        assert!(!t.void(5, 4));
    }

    #[test]
    fn gaps_are_reported_until_filled() {
        let mut t = SenderTrack::default();
        for s in [1, 2, 5, 6, 9] {
            t.observe(s);
        }
        assert_eq!(t.gaps(), vec![(3, 4), (7, 8)]);
        assert_eq!(t.highest(), 9);
        for s in [3, 4, 7, 8] {
            assert_eq!(t.observe(s), Observation::New);
        }
        assert!(t.gaps().is_empty());
        assert_eq!(t.contiguous, 9);
        assert!(t.ahead.is_empty());
    }
}
