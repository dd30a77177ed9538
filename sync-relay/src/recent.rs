//! Recently committed small blobs of a live group, kept in memory so the
//! forwarders of its sessions can send them inline (docs/protocol.md
//! "Version 3: inline delivery") without a storage read per session.
//!
//! Only blobs whose push has **committed** are added (the push handler adds
//! them after storage answered, before it publishes the new head), only
//! those of at most [`INLINE_MAX_BLOB`] bytes, and only while the group has
//! live sessions here. Per group at most [`INLINE_MAX_BLOBS`] blobs and
//! [`INLINE_BUDGET`] payload bytes are kept, oldest dropped first; relay-wide
//! at most [`RELAY_CACHE_BYTES`] (a blob that does not fit is not kept). A
//! cursor that is not here (pushed through another relay instance, too
//! large, dropped) only means a forwarder sends a bare `Notify` and the
//! device pulls, as before version 3.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use sync_protocol::limits::{INLINE_BUDGET, INLINE_MAX_BLOB, INLINE_MAX_BLOBS};
use sync_protocol::{BlobId, DeviceId, PulledBlob};

/// Most payload bytes (bytes) kept by all groups' caches together: 32 MiB.
pub const RELAY_CACHE_BYTES: usize = 32 * 1024 * 1024;

/// One committed blob, as a pull would return it.
#[derive(Debug)]
pub struct CachedBlob {
    /// The blob as stored (cursor, id, sender, created_at, payload).
    pub blob: PulledBlob,
    /// When it expires, Unix ms: past that a pull would not return it, so
    /// neither may an inline delivery.
    pub expires_at_ms: i64,
}

/// The recent blobs of one group, in increasing cursor order.
#[derive(Debug, Default)]
pub struct RecentBlobs {
    blobs: VecDeque<Arc<CachedBlob>>,
    bytes: usize,
}

/// Relay-wide byte count of every group's [`RecentBlobs`].
#[derive(Debug, Default)]
pub struct CacheBytes(AtomicUsize);

impl CacheBytes {
    /// Payload bytes cached now, all groups together.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn try_take(&self, n: usize) -> bool {
        self.0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&t| t <= RELAY_CACHE_BYTES)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.0.fetch_sub(n, Ordering::Relaxed);
    }
}

impl RecentBlobs {
    /// Add a committed blob. Ignored when its payload is over
    /// [`INLINE_MAX_BLOB`], when its cursor is not above the newest kept
    /// (cursors only grow), or when the relay-wide cache is full; older
    /// blobs make room under the per-group limits.
    pub fn add(&mut self, blob: CachedBlob, total: &CacheBytes) {
        let size = blob.blob.payload.len();
        if size > INLINE_MAX_BLOB
            || self
                .blobs
                .back()
                .is_some_and(|b| b.blob.cursor >= blob.blob.cursor)
        {
            return;
        }
        while !self.blobs.is_empty()
            && (self.blobs.len() >= INLINE_MAX_BLOBS || self.bytes + size > INLINE_BUDGET)
        {
            self.pop_oldest(total);
        }
        if !total.try_take(size) {
            return;
        }
        self.bytes += size;
        self.blobs.push_back(Arc::new(blob));
    }

    fn pop_oldest(&mut self, total: &CacheBytes) {
        if let Some(old) = self.blobs.pop_front() {
            let size = old.blob.payload.len();
            self.bytes -= size;
            total.give(size);
        }
    }

    /// Give every kept byte back to `total` (the group's last session went).
    pub fn clear(&mut self, total: &CacheBytes) {
        while !self.blobs.is_empty() {
            self.pop_oldest(total);
        }
    }

    /// Every blob with a cursor in `after + 1 ..= head`, when all of them
    /// are here and none has expired at `now_ms`; else `None`.
    pub fn range(&self, after: u64, head: u64, now_ms: i64) -> Option<Vec<Arc<CachedBlob>>> {
        if head <= after {
            return None;
        }
        let want = usize::try_from(head - after).ok()?;
        if want > self.blobs.len() {
            return None;
        }
        let start = self.blobs.partition_point(|b| b.blob.cursor <= after);
        let out: Vec<Arc<CachedBlob>> = self.blobs.range(start..).take(want).cloned().collect();
        let contiguous = out.len() == want
            && out
                .iter()
                .zip(after + 1..)
                .all(|(b, c)| b.blob.cursor == c && b.expires_at_ms > now_ms);
        contiguous.then_some(out)
    }
}

/// The blob ids of `blobs`, for logs and tests.
pub fn ids(blobs: &[Arc<CachedBlob>]) -> Vec<BlobId> {
    blobs.iter().map(|b| b.blob.blob_id).collect()
}

/// A cached blob with the given fields (tests and the push handler).
pub fn cached(
    cursor: u64,
    blob_id: BlobId,
    sender: DeviceId,
    created_at: u64,
    payload: Vec<u8>,
    expires_at_ms: i64,
) -> CachedBlob {
    CachedBlob {
        blob: PulledBlob {
            cursor,
            blob_id,
            sender,
            created_at,
            payload,
        },
        expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(cursor: u64, size: usize) -> CachedBlob {
        cached(
            cursor,
            BlobId([cursor as u8; 16]),
            DeviceId([1; 32]),
            0,
            vec![0; size],
            i64::MAX,
        )
    }

    #[test]
    fn a_range_is_given_only_when_every_cursor_is_here() {
        let total = CacheBytes::default();
        let mut r = RecentBlobs::default();
        for c in [3, 4, 5, 7] {
            r.add(blob(c, 10), &total);
        }
        assert_eq!(r.range(2, 5, 0).map(|v| v.len()), Some(3));
        assert_eq!(r.range(3, 4, 0).map(|v| v.len()), Some(1));
        assert!(r.range(1, 4, 0).is_none(), "cursor 2 is not here");
        assert!(r.range(5, 7, 0).is_none(), "cursor 6 is not here");
        assert!(r.range(4, 4, 0).is_none(), "nothing new");
        assert_eq!(r.range(6, 7, 0).map(|v| v.len()), Some(1));
        assert!(r.range(6, 8, 0).is_none(), "beyond the newest");
        assert_eq!(total.get(), 40);
        r.clear(&total);
        assert_eq!(total.get(), 0);
    }

    #[test]
    fn large_expired_and_old_blobs_are_not_given() {
        let total = CacheBytes::default();
        let mut r = RecentBlobs::default();
        r.add(blob(1, INLINE_MAX_BLOB + 1), &total);
        assert!(r.range(0, 1, 0).is_none(), "too large to keep");
        let mut short = blob(2, 1);
        short.expires_at_ms = 100;
        r.add(short, &total);
        assert!(r.range(1, 2, 99).is_some());
        assert!(r.range(1, 2, 100).is_none(), "expired");
        // The per-group byte limit drops the oldest first.
        for c in 3..=6 {
            r.add(blob(c, INLINE_MAX_BLOB), &total);
        }
        assert!(r.range(1, 6, 0).is_none());
        assert!(r.range(2, 6, 0).is_some(), "four of 16 KiB fill 64 KiB");
        assert_eq!(total.get(), INLINE_BUDGET);
        r.add(blob(6, 1), &total);
        assert_eq!(total.get(), INLINE_BUDGET, "a cursor not above the newest");
    }

    #[test]
    fn the_relay_wide_limit_is_kept() {
        let total = CacheBytes::default();
        assert!(total.try_take(RELAY_CACHE_BYTES - 5));
        let mut r = RecentBlobs::default();
        r.add(blob(1, 10), &total);
        assert!(r.range(0, 1, 0).is_none(), "no room relay-wide");
        r.add(blob(2, 5), &total);
        assert!(r.range(1, 2, 0).is_some());
        assert_eq!(total.get(), RELAY_CACHE_BYTES);
    }
}
