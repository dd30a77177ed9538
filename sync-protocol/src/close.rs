//! Closing a group (`docs/protocol.md` §CloseGroup → CloseGroupOk,
//! `docs/security.md` "What the relay must do"): the keep list a close
//! carries, checked while it is decoded.
//!
//! A keep list names the devices (node ids) that may still pull from a
//! closed group until its grace period ends: at most [`MAX_KEEP_LIST`] of
//! them, strictly increasing, so a list has exactly one encoding. Decoding
//! checks the claimed count against the limit before allocating anything
//! for it, and stops at the first id out of order.

use crate::message::DeviceId;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Most node ids in a keep list: 64, the most members a roster holds
/// (`docs/security.md` "Honest limits").
pub const MAX_KEEP_LIST: usize = 64;

/// Why a list of node ids is not a keep list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeepListError {
    /// More than [`MAX_KEEP_LIST`] ids (after removing duplicates).
    #[error("a keep list names at most {MAX_KEEP_LIST} devices, not {0}")]
    TooLong(usize),
}

/// The node ids a close keeps: sorted, unique, at most [`MAX_KEEP_LIST`].
/// On the wire: a postcard sequence (varint count, then 32 bytes per id);
/// a count over 64, an id not greater than the one before it, or a
/// duplicate make the message malformed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeepList(Vec<DeviceId>);

impl KeepList {
    /// A keep list of `ids` in any order; duplicates are merged. Errors:
    /// [`KeepListError::TooLong`] for more than 64 distinct ids.
    pub fn new(mut ids: Vec<DeviceId>) -> Result<KeepList, KeepListError> {
        ids.sort_unstable();
        ids.dedup();
        if ids.len() > MAX_KEEP_LIST {
            return Err(KeepListError::TooLong(ids.len()));
        }
        Ok(KeepList(ids))
    }

    /// The ids, strictly increasing.
    pub fn ids(&self) -> &[DeviceId] {
        &self.0
    }

    /// Whether `device` is on the list (binary search).
    pub fn contains(&self, device: &DeviceId) -> bool {
        self.0.binary_search(device).is_ok()
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a list naming no device (a close that keeps no one).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Serialize for KeepList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

struct KeepVisitor;

impl<'de> Visitor<'de> for KeepVisitor {
    type Value = KeepList;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {MAX_KEEP_LIST} node ids in strictly increasing order"
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeepList, A::Error> {
        // postcard gives the claimed count here: refuse it before any
        // allocation sized from it.
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > MAX_KEEP_LIST {
            return Err(A::Error::custom(format!(
                "keep list claims {claimed} devices, at most {MAX_KEEP_LIST} allowed"
            )));
        }
        let mut ids: Vec<DeviceId> = Vec::with_capacity(claimed);
        while let Some(id) = seq.next_element::<DeviceId>()? {
            if ids.len() == MAX_KEEP_LIST {
                return Err(A::Error::custom(format!(
                    "keep list names more than {MAX_KEEP_LIST} devices"
                )));
            }
            if ids.last().is_some_and(|last| *last >= id) {
                return Err(A::Error::custom(
                    "keep list is not in strictly increasing order (unsorted or a duplicate)",
                ));
            }
            ids.push(id);
        }
        Ok(KeepList(ids))
    }
}

impl<'de> Deserialize<'de> for KeepList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<KeepList, D::Error> {
        d.deserialize_seq(KeepVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> DeviceId {
        DeviceId([n; 32])
    }

    #[test]
    fn new_sorts_merges_and_caps() {
        let k = KeepList::new(vec![d(3), d(1), d(3), d(2)]).unwrap();
        assert_eq!(k.ids(), &[d(1), d(2), d(3)]);
        assert!(k.contains(&d(2)) && !k.contains(&d(4)));
        let many: Vec<DeviceId> = (0..=64u8).map(d).collect();
        assert_eq!(KeepList::new(many.clone()), Err(KeepListError::TooLong(65)));
        assert_eq!(KeepList::new(many[..64].to_vec()).unwrap().len(), 64);
    }

    #[test]
    fn decoding_refuses_long_unsorted_and_duplicate_lists() {
        let enc = |ids: &[DeviceId]| postcard::to_allocvec(&ids.to_vec()).unwrap();
        let ok: Vec<DeviceId> = (0..64u8).map(d).collect();
        assert_eq!(
            postcard::from_bytes::<KeepList>(&enc(&ok)).unwrap().ids(),
            &ok[..]
        );
        let long: Vec<DeviceId> = (0..65u8).map(d).collect();
        assert!(postcard::from_bytes::<KeepList>(&enc(&long)).is_err());
        assert!(postcard::from_bytes::<KeepList>(&enc(&[d(2), d(1)])).is_err());
        assert!(postcard::from_bytes::<KeepList>(&enc(&[d(1), d(1)])).is_err());
        // A count of 2^32 - 1 with nothing behind it: refused from the count.
        assert!(postcard::from_bytes::<KeepList>(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
    }
}
