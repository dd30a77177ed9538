//! The sender's view of the group, sealed inside every blob of envelope
//! version 2 (docs/protocol.md "Blob payloads", docs/security.md
//! "Withheld blobs"): for up to [`MAX_VIEW_ENTRIES`] other devices, the
//! highest sequence number the sender has received from each, most
//! recently heard-from first. A receiver that is never delivered numbers
//! another member has seen reports them as withheld.
//!
//! A view is bounded on both sides: a sealer puts at most
//! [`MAX_VIEW_ENTRIES`] entries in it, and a view with more entries, a
//! number outside `1..=`[`MAX_SEQ`], or the same device twice makes the
//! blob malformed. Decoding stops at the first entry over the limit, and
//! nothing is sized from the length prefix: a hostile prefix costs at most
//! 32 entries.

use crate::integrity::MAX_SEQ;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use sync_protocol::DeviceId;

/// Most devices one view names. Groups of up to 33 devices are covered
/// whole (a view leaves out its own sender); in larger groups the devices
/// heard from most recently are named.
pub const MAX_VIEW_ENTRIES: usize = 32;

/// Most bytes of an encoded [`GroupView`] (postcard: a length byte, then
/// per entry 32 bytes of node id and a varint of at most 9 bytes for a
/// number up to [`MAX_SEQ`]).
pub const MAX_VIEW_LEN: usize = 1 + MAX_VIEW_ENTRIES * (32 + 9);

/// One device as the sender has seen it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewEntry {
    /// The device's node id.
    pub device: DeviceId,
    /// The highest sequence number the sender has received from it
    /// (`1..=`[`MAX_SEQ`]).
    pub seq: u64,
}

/// What the sender had received from other devices when it sealed the
/// blob: at most [`MAX_VIEW_ENTRIES`] entries, distinct devices, most
/// recent first. Empty in blobs of envelope version 1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupView {
    entries: Vec<ViewEntry>,
}

impl GroupView {
    /// A view of `entries` (most recent first). Errors: more than
    /// [`MAX_VIEW_ENTRIES`] entries, a number outside `1..=`[`MAX_SEQ`], or
    /// a device named twice.
    pub fn new(entries: Vec<ViewEntry>) -> Result<GroupView, &'static str> {
        if entries.len() > MAX_VIEW_ENTRIES {
            return Err("a view names more than 32 devices");
        }
        if entries.iter().any(|e| e.seq == 0 || e.seq > MAX_SEQ) {
            return Err("a view claims a sequence number out of range");
        }
        let mut devices: Vec<&DeviceId> = entries.iter().map(|e| &e.device).collect();
        devices.sort_by_key(|d| d.0);
        if devices.windows(2).any(|w| w[0] == w[1]) {
            return Err("a view names a device twice");
        }
        Ok(GroupView { entries })
    }

    /// The entries, most recent first.
    pub fn entries(&self) -> &[ViewEntry] {
        &self.entries
    }

    /// True when the view names no device.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl Serialize for GroupView {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.entries.len()))?;
        for e in &self.entries {
            seq.serialize_element(e)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for GroupView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GroupView, D::Error> {
        struct Bounded;
        impl<'de> Visitor<'de> for Bounded {
            type Value = GroupView;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "at most {MAX_VIEW_ENTRIES} view entries")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<GroupView, A::Error> {
                // Never sized from the claimed length: one entry at a time,
                // and no more than the limit.
                let mut entries = Vec::new();
                while let Some(e) = seq.next_element::<ViewEntry>()? {
                    if entries.len() == MAX_VIEW_ENTRIES {
                        return Err(serde::de::Error::custom(
                            "a view names more than 32 devices",
                        ));
                    }
                    entries.push(e);
                }
                GroupView::new(entries).map_err(serde::de::Error::custom)
            }
        }
        d.deserialize_seq(Bounded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u8, seq: u64) -> ViewEntry {
        ViewEntry {
            device: DeviceId([i; 32]),
            seq,
        }
    }

    #[test]
    fn a_full_view_round_trips_within_its_byte_bound() {
        let view = GroupView::new(
            (0..MAX_VIEW_ENTRIES as u8)
                .map(|i| entry(i, MAX_SEQ))
                .collect(),
        )
        .unwrap();
        let bytes = postcard::to_allocvec(&view).unwrap();
        assert!(bytes.len() <= MAX_VIEW_LEN, "{} bytes", bytes.len());
        assert_eq!(postcard::from_bytes::<GroupView>(&bytes).unwrap(), view);
    }

    #[test]
    fn views_breaking_the_rules_do_not_decode() {
        let encode = |entries: &[ViewEntry]| {
            // Bypass `GroupView::new`, as a hostile member's client would.
            postcard::to_allocvec(&entries.to_vec()).unwrap()
        };
        let too_many: Vec<ViewEntry> = (0..=MAX_VIEW_ENTRIES as u8).map(|i| entry(i, 1)).collect();
        for bad in [
            too_many,
            vec![entry(1, 0)],
            vec![entry(1, MAX_SEQ + 1)],
            vec![entry(1, u64::MAX)],
            vec![entry(1, 3), entry(2, 4), entry(1, 5)],
        ] {
            assert!(
                postcard::from_bytes::<GroupView>(&encode(&bad)).is_err(),
                "{bad:?}"
            );
            assert!(GroupView::new(bad).is_err());
        }
    }

    #[test]
    fn a_huge_length_prefix_is_refused_at_the_33rd_entry() {
        // Claims about 2^32 entries and holds 33 whole ones: decoding stops
        // at the 33rd with the limit's error, rather than reading on as the
        // prefix says (until the bytes run out).
        let mut bytes = vec![0xff, 0xff, 0xff, 0xff, 0x0f];
        for i in 0..=MAX_VIEW_ENTRIES as u8 {
            bytes.extend_from_slice(&[i; 32]);
            bytes.push(1);
        }
        assert_eq!(
            postcard::from_bytes::<GroupView>(&bytes),
            Err(postcard::Error::SerdeDeCustom)
        );
        // Cut short, the same view is refused for running out of bytes.
        bytes.truncate(bytes.len() - 33 * 2);
        assert_eq!(
            postcard::from_bytes::<GroupView>(&bytes),
            Err(postcard::Error::DeserializeUnexpectedEnd)
        );
    }
}
