//! Per-sender sequence tracking (docs/security.md, docs/client.md
//! "Integrity"): every blob a device seals carries its next sequence number
//! (1, 2, 3, …). A receiver records which numbers it has seen per sender; a
//! number seen twice is a **replay**, and a number missing below the highest
//! seen, once the relay says it has nothing more, is a **gap** (a withheld
//! or lost blob). Numbers above the highest seen that another member's
//! group view says exist ([`SenderTrack::claim`]) are **withheld** once the
//! relay says it has nothing more.
//!
//! The record is bounded whatever a group member sends: numbers above
//! [`MAX_SEQ`] are refused (so `seq + 1` never overflows), numbers seen
//! ahead of the contiguous prefix are kept as ranges (a `Void` of a million
//! numbers is one range, not a million entries), and at most [`MAX_RANGES`]
//! separate ranges are kept per sender: a number that would need one more
//! is refused. A refused number's blob is not applied (the receiver reports
//! it as rejected) and leaves the record unchanged.

use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Deserializer, Serialize};

/// Largest sequence number accepted (2^62): far beyond what a device can
/// use, and low enough that arithmetic on it never overflows.
pub const MAX_SEQ: u64 = 1 << 62;

/// Most separate ranges of numbers seen ahead of the contiguous prefix,
/// per sender. Honest senders leave a few (blobs arriving out of order, a
/// gap); more means a sender or the relay is making the record grow.
pub const MAX_RANGES: usize = 1024;

/// What one sender's sequence numbers look like so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderTrack {
    /// Every number in `1..=contiguous` has been seen.
    pub contiguous: u64,
    /// Numbers seen above `contiguous + 1` (waiting for the gap below), as
    /// ranges. Serialized as `[first, last]` pairs; a state file of an older
    /// version, with single numbers, still reads.
    #[serde(
        default,
        skip_serializing_if = "RangeInclusiveSet::is_empty",
        deserialize_with = "ranges_or_numbers"
    )]
    pub ahead: RangeInclusiveSet<u64>,
    /// Cursor of the last blob of this sender applied here: orders senders
    /// by how recently they were heard from (this device's own view names
    /// the most recent first). 0 if none yet.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub last_cursor: u64,
    /// The highest number another member's view says this sender used
    /// (0: none). At most [`MAX_SEQ`].
    #[serde(default, skip_serializing_if = "is_zero")]
    pub claimed: u64,
    /// The member (node id, hex) whose view claimed [`SenderTrack::claimed`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The verdict on one sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observation {
    /// Not seen before: apply the blob.
    New,
    /// Seen before: a replay; do not apply it again.
    Replay,
    /// Out of bounds (see the module docs); do not apply the blob.
    Refused(&'static str),
}

impl SenderTrack {
    /// Record `seq` and say whether it is new. Sequence 0 is never valid and
    /// counts as a replay.
    pub fn observe(&mut self, seq: u64) -> Observation {
        if seq == 0 || seq <= self.contiguous || self.ahead.contains(&seq) {
            return Observation::Replay;
        }
        match self.record(seq, seq) {
            Ok(()) => Observation::New,
            Err(why) => Observation::Refused(why),
        }
    }

    /// Most numbers one `Void` may give up.
    pub const MAX_VOID: u64 = 1 << 20;

    /// Record that the sender gave up `first..=last` (they are no gap and
    /// are not replays). Errors (nothing recorded): a range that is empty,
    /// longer than [`SenderTrack::MAX_VOID`], beyond [`MAX_SEQ`], or that
    /// would exceed [`MAX_RANGES`].
    pub fn void(&mut self, first: u64, last: u64) -> Result<(), &'static str> {
        if first == 0 || last < first || last - first >= Self::MAX_VOID {
            return Err("invalid range of abandoned sequence numbers");
        }
        self.record(first.max(self.contiguous + 1), last)
    }

    fn record(&mut self, first: u64, last: u64) -> Result<(), &'static str> {
        if last > MAX_SEQ {
            return Err("sequence number out of range");
        }
        if first > last {
            return Ok(()); // all at or below `contiguous` already
        }
        let mut ahead = self.ahead.clone();
        ahead.insert(first..=last);
        let mut contiguous = self.contiguous;
        if let Some(low) = ahead.first().cloned()
            && *low.start() <= contiguous + 1
        {
            contiguous = contiguous.max(*low.end());
            ahead.remove(low);
        }
        if ahead.len() > MAX_RANGES {
            return Err("too many separate ranges of sequence numbers from one sender");
        }
        self.contiguous = contiguous;
        self.ahead = ahead;
        Ok(())
    }

    /// Missing ranges `(first, last)` below the highest number seen.
    pub fn gaps(&self) -> Vec<(u64, u64)> {
        let outer = self.contiguous + 1..=self.highest();
        self.ahead
            .gaps(&outer)
            .map(|r| (*r.start(), *r.end()))
            .collect()
    }

    /// Record that member `by` has seen this sender's numbers up to `seq`
    /// (from its group view). Keeps the highest claim; numbers above
    /// [`MAX_SEQ`] are ignored (views carrying them do not decode).
    pub fn claim(&mut self, seq: u64, by: &str) {
        if seq > self.claimed && seq <= MAX_SEQ {
            self.claimed = seq;
            self.claimed_by = Some(by.to_string());
        }
    }

    /// Numbers `(first, last)` another member has seen but this device was
    /// never delivered: above the highest seen, up to the highest claimed.
    pub fn withheld(&self) -> Option<(u64, u64)> {
        let highest = self.highest();
        (self.claimed > highest).then_some((highest + 1, self.claimed))
    }

    /// True when nothing of this sender was received here: it is known
    /// only from other members' views.
    pub fn is_claim_only(&self) -> bool {
        self.contiguous == 0 && self.ahead.is_empty()
    }

    /// Highest number seen.
    pub fn highest(&self) -> u64 {
        self.ahead
            .last()
            .map(|r| *r.end())
            .unwrap_or(self.contiguous)
    }
}

/// Read a set of ranges written as `[first, last]` pairs or, as older
/// state files did, as single numbers.
pub fn ranges_or_numbers<'de, D, T>(d: D) -> Result<RangeInclusiveSet<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Ord + Clone + rangemap::StepLite,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item<T> {
        One(T),
        Range(T, T),
    }
    let items = Vec::<Item<T>>::deserialize(d)?;
    let mut set = RangeInclusiveSet::new();
    for item in items {
        match item {
            Item::One(n) => set.insert(n.clone()..=n),
            Item::Range(a, b) if a <= b => set.insert(a..=b),
            Item::Range(..) => return Err(serde::de::Error::custom("range ends before it starts")),
        }
    }
    Ok(set)
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
        assert!(t.void(3, 8).is_ok());
        assert!(t.gaps().is_empty());
        assert_eq!(t.contiguous, 9);
        assert!(t.void(1, 1 << 30).is_err(), "huge ranges are refused");
        assert!(t.void(5, 4).is_err());
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

    #[test]
    fn huge_sequence_numbers_are_refused_without_overflow() {
        let mut t = SenderTrack::default();
        t.observe(1);
        for seq in [u64::MAX, u64::MAX - 1, MAX_SEQ + 1] {
            assert!(matches!(t.observe(seq), Observation::Refused(_)), "{seq}");
        }
        assert_eq!(t.observe(MAX_SEQ), Observation::New);
        assert_eq!(t.gaps(), vec![(2, MAX_SEQ - 1)]);
        assert!(t.void(MAX_SEQ - 10, MAX_SEQ + 5).is_err());
        assert!(t.void(u64::MAX - 1, u64::MAX).is_err());
        assert_eq!(t.highest(), MAX_SEQ);
    }

    #[test]
    fn the_record_stays_small_whatever_numbers_arrive() {
        // Every other number: each one a separate range, until the cap.
        let mut t = SenderTrack::default();
        let mut refused = 0;
        for i in 0..(MAX_RANGES as u64 + 100) {
            match t.observe(10 + 2 * i) {
                Observation::New => {}
                Observation::Refused(_) => refused += 1,
                Observation::Replay => panic!("nothing repeats"),
            }
        }
        assert_eq!(t.ahead.len(), MAX_RANGES);
        assert_eq!(refused, 100);
        // A number next to a kept range still fits: it needs no new range.
        assert_eq!(t.observe(11), Observation::New);
        // A big Void is one range, and filling the gap below collapses all.
        assert!(t.void(1, 9).is_ok());
        assert_eq!(t.contiguous, 12);
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.len() < 64 * MAX_RANGES, "{} bytes", json.len());
        let mut v = SenderTrack::default();
        assert!(v.void(5, 5 + SenderTrack::MAX_VOID - 1).is_ok());
        assert_eq!(v.ahead.len(), 1);
        assert!(serde_json::to_string(&v).unwrap().len() < 100);
    }

    #[test]
    fn claims_above_the_highest_seen_are_withheld_until_delivered() {
        let mut t = SenderTrack::default();
        assert!(t.is_claim_only());
        t.claim(4, "cc");
        assert_eq!(t.withheld(), Some((1, 4)));
        for s in [1, 2] {
            t.observe(s);
        }
        assert!(!t.is_claim_only());
        assert_eq!(t.withheld(), Some((3, 4)));
        t.claim(3, "dd"); // a lower claim changes nothing
        assert_eq!((t.claimed, t.claimed_by.as_deref()), (4, Some("cc")));
        t.claim(MAX_SEQ + 1, "ee"); // out of range: ignored
        assert_eq!(t.claimed, 4);
        t.observe(4);
        assert_eq!(t.withheld(), None, "the newest arrived: 3 is a gap now");
        assert_eq!(t.gaps(), vec![(3, 3)]);
        t.observe(3);
        assert_eq!((t.withheld(), t.gaps()), (None, vec![]));
    }

    #[test]
    fn older_state_files_with_single_numbers_still_read() {
        let t: SenderTrack = serde_json::from_str(r#"{"contiguous":2,"ahead":[5,6,9]}"#).unwrap();
        assert_eq!(t.gaps(), vec![(3, 4), (7, 8)]);
        let again: SenderTrack = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(again, t);
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#"{"contiguous":2,"ahead":[[5,6],[9,9]]}"#
        );
    }
}
