//! Group views in the local state (docs/security.md "Withheld blobs"): the
//! view this device seals into its blobs, and what it learns from the
//! views in blobs it receives.
//!
//! A relay can hide a sender's newest blobs from one device without leaving
//! a gap (a gap shows only below the highest number delivered). Every blob
//! carries its sender's [`GroupView`] — the highest number it has received
//! from each other device — so a device learns of numbers it was never
//! delivered as soon as any later blob of any member reaches it. After a
//! complete pull those numbers are reported as withheld
//! ([`crate::receive::withheld_events`]).
//!
//! What a member's views make this device keep is bounded: a claim about a
//! device never heard from directly creates a record only while fewer than
//! [`MAX_CLAIMED_SENDERS`] such records exist (claims beyond are dropped),
//! and claimed numbers are at most [`crate::integrity::MAX_SEQ`] (a view
//! with more does not decode).

use crate::crypto::view::{GroupView, MAX_VIEW_ENTRIES, ViewEntry};
use crate::state::ClientState;
use sync_protocol::DeviceId;

/// Most senders known only from other members' views (never heard from
/// directly) that are recorded; claims about more are dropped.
pub const MAX_CLAIMED_SENDERS: usize = 256;

/// The view this device seals into its next blobs: up to
/// [`MAX_VIEW_ENTRIES`] senders it has received blobs from, most recently
/// heard from first (by the cursor of their last blob), each with the
/// highest sequence number received. Never names `me`.
pub fn own_view(state: &ClientState, me: &DeviceId) -> GroupView {
    let mut heard: Vec<(u64, ViewEntry)> = state
        .senders
        .iter()
        .filter(|(_, t)| !t.is_claim_only())
        .filter_map(|(id, t)| {
            let device = DeviceId(hex::decode(id).ok()?.try_into().ok()?);
            let seq = t.highest();
            (device != *me && seq > 0 && seq <= crate::integrity::MAX_SEQ)
                .then_some((t.last_cursor, ViewEntry { device, seq }))
        })
        .collect();
    heard.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.device.0.cmp(&b.1.device.0)));
    // A damaged or hand-edited state file can name one device twice (the
    // same key in upper and lower case hex): keep its most recent entry.
    let mut seen = std::collections::HashSet::new();
    heard.retain(|(_, e)| seen.insert(e.device.0));
    heard.truncate(MAX_VIEW_ENTRIES);
    // Distinct devices, numbers in range, at most the limit: `new` accepts
    // it; an empty view is the safe answer if that ever stops being true.
    GroupView::new(heard.into_iter().map(|(_, e)| e).collect()).unwrap_or_default()
}

/// Record what `author`'s view says of other senders. Entries about
/// `author` itself (its own number is the blob's) and about `me` are
/// skipped. Returns the number of claims dropped because
/// [`MAX_CLAIMED_SENDERS`] senders are already known only from views.
pub fn absorb_view(
    state: &mut ClientState,
    author: &DeviceId,
    me: &DeviceId,
    view: &GroupView,
) -> usize {
    let by = hex::encode(author.0);
    let mut dropped = 0;
    let mut claim_only: Option<usize> = None;
    for entry in view.entries() {
        if entry.device == *author || entry.device == *me {
            continue;
        }
        let id = hex::encode(entry.device.0);
        if let Some(track) = state.senders.get_mut(&id) {
            track.claim(entry.seq, &by);
            continue;
        }
        let count = claim_only
            .get_or_insert_with(|| state.senders.values().filter(|t| t.is_claim_only()).count());
        if *count >= MAX_CLAIMED_SENDERS {
            dropped += 1;
            continue;
        }
        *count += 1;
        state.senders.entry(id).or_default().claim(entry.seq, &by);
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::MAX_SEQ;

    fn id(i: u8) -> DeviceId {
        DeviceId([i; 32])
    }

    fn view(entries: &[(u8, u64)]) -> GroupView {
        GroupView::new(
            entries
                .iter()
                .map(|&(i, seq)| ViewEntry { device: id(i), seq })
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn own_view_names_the_most_recent_senders_with_their_highest_number() {
        let mut state = ClientState::default();
        for i in 0..40u8 {
            let t = state.senders.entry(hex::encode([i; 32])).or_default();
            t.observe(1);
            t.observe(u64::from(i) + 3); // highest, with a gap below
            t.last_cursor = 100 + u64::from(i);
        }
        // Known only from a claim, and this device itself: never named.
        state
            .senders
            .entry(hex::encode([200; 32]))
            .or_default()
            .claim(9, "x");
        let me = id(39);
        let v = own_view(&state, &me);
        assert_eq!(v.entries().len(), MAX_VIEW_ENTRIES);
        let devices: Vec<u8> = v.entries().iter().map(|e| e.device.0[0]).collect();
        let expected: Vec<u8> = (6..39u8).rev().collect::<Vec<_>>()[..MAX_VIEW_ENTRIES].to_vec();
        assert_eq!(devices, expected, "most recent first, not me");
        assert_eq!(v.entries()[0].seq, 38 + 3);
    }

    #[test]
    fn a_damaged_state_naming_a_device_twice_gives_one_entry_not_a_panic() {
        // Keys are written lowercase; a hand-edited state.json may hold the
        // same device in upper case too, and this device under upper case.
        let mut state = ClientState::default();
        let lower = hex::encode([0xab; 32]);
        let t = state.senders.entry(lower.clone()).or_default();
        t.observe(4);
        t.last_cursor = 10;
        let t = state.senders.entry(lower.to_uppercase()).or_default();
        t.observe(7);
        t.last_cursor = 20;
        let me = id(0xcd);
        let t = state
            .senders
            .entry(hex::encode(me.0).to_uppercase())
            .or_default();
        t.observe(3);
        t.last_cursor = 30;
        let v = own_view(&state, &me);
        assert_eq!(v.entries().len(), 1, "{v:?}");
        assert_eq!(v.entries()[0].device, id(0xab));
        assert_eq!(v.entries()[0].seq, 7, "the most recently heard entry wins");
    }

    #[test]
    fn a_view_reveals_numbers_never_delivered() {
        let mut state = ClientState::default();
        let x = state.senders.entry(hex::encode(id(1).0)).or_default();
        x.observe(1);
        x.observe(2);
        let (author, me) = (id(2), id(3));
        let dropped = absorb_view(
            &mut state,
            &author,
            &me,
            &view(&[(1, 5), (2, 99), (3, 77), (4, 2)]),
        );
        assert_eq!(dropped, 0);
        let x = &state.senders[&hex::encode(id(1).0)];
        assert_eq!(x.withheld(), Some((3, 5)));
        assert_eq!(
            x.claimed_by.as_deref(),
            Some(hex::encode(author.0).as_str())
        );
        // The author's own entry and this device's are not recorded; a
        // sender never heard from is, as withheld from 1.
        assert!(!state.senders.contains_key(&hex::encode(author.0)));
        assert!(!state.senders.contains_key(&hex::encode(me.0)));
        assert_eq!(
            state.senders[&hex::encode(id(4).0)].withheld(),
            Some((1, 2))
        );
    }

    #[test]
    fn views_cannot_grow_the_state_without_bound() {
        let mut state = ClientState::default();
        let (me, author) = (DeviceId([0xfe; 32]), DeviceId([0xff; 32]));
        let mut dropped = 0;
        for round in 0..200u32 {
            let entries: Vec<ViewEntry> = (0..MAX_VIEW_ENTRIES as u32)
                .map(|i| {
                    let mut d = [0u8; 32];
                    d[..4].copy_from_slice(&(round * 1000 + i).to_be_bytes());
                    ViewEntry {
                        device: DeviceId(d),
                        seq: MAX_SEQ,
                    }
                })
                .collect();
            dropped += absorb_view(&mut state, &author, &me, &GroupView::new(entries).unwrap());
        }
        assert_eq!(state.senders.len(), MAX_CLAIMED_SENDERS);
        assert_eq!(
            dropped,
            200 * MAX_VIEW_ENTRIES - MAX_CLAIMED_SENDERS,
            "claims past the cap are dropped"
        );
        let json = serde_json::to_string(&state).unwrap();
        assert!(
            json.len() < 300 * MAX_CLAIMED_SENDERS,
            "{} bytes",
            json.len()
        );
    }
}
