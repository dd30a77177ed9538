//! The answer to each item of a push (docs/protocol.md §Push, `PushOk`):
//! one rule for every backend, so their answers cannot drift apart.

use crate::NewBlob;
use std::collections::HashMap;
use sync_protocol::{BlobId, PushResult};

/// One answer per item of `items`, in request order. An id already stored
/// in the group (`existing`: id → its cursor) is a duplicate with its stored
/// cursor; the first occurrence of every other id is new and takes the next
/// cursor from `first_new` on, in request order (the order every backend
/// stores new blobs in); a repeat within the batch is a duplicate with its
/// first occurrence's cursor. Allocates at most one map entry per item.
pub fn push_results(
    items: &[NewBlob],
    existing: &HashMap<BlobId, u64>,
    first_new: u64,
) -> Vec<PushResult> {
    let mut new_cursors: HashMap<BlobId, u64> = HashMap::new();
    let mut next = first_new;
    items
        .iter()
        .map(|item| {
            if let Some(&cursor) = existing.get(&item.blob_id) {
                return PushResult {
                    blob_id: item.blob_id,
                    cursor,
                    duplicate: true,
                };
            }
            match new_cursors.get(&item.blob_id) {
                Some(&cursor) => PushResult {
                    blob_id: item.blob_id,
                    cursor,
                    duplicate: true,
                },
                None => {
                    let cursor = next;
                    next += 1;
                    new_cursors.insert(item.blob_id, cursor);
                    PushResult {
                        blob_id: item.blob_id,
                        cursor,
                        duplicate: false,
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(id: u8) -> NewBlob {
        NewBlob {
            blob_id: BlobId([id; 16]),
            payload: vec![id],
            expires_at_ms: i64::MAX,
        }
    }

    #[test]
    fn stored_ids_repeats_and_new_ids_get_their_cursors_in_request_order() {
        let existing = HashMap::from([(BlobId([9; 16]), 4)]);
        let items = [blob(1), blob(9), blob(2), blob(1), blob(3), blob(9)];
        let got: Vec<(u8, u64, bool)> = push_results(&items, &existing, 11)
            .iter()
            .map(|r| (r.blob_id.0[0], r.cursor, r.duplicate))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 11, false),
                (9, 4, true),
                (2, 12, false),
                (1, 11, true),
                (3, 13, false),
                (9, 4, true),
            ]
        );
    }

    #[test]
    fn an_empty_push_has_no_answers() {
        assert!(push_results(&[], &HashMap::new(), 1).is_empty());
    }
}
