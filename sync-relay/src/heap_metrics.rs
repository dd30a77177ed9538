//! Heap metrics of the relay process (docs/deploy.md "Prometheus"): bytes the
//! allocator has handed out and bytes it holds in resident pages, read from
//! jemalloc (`stats.allocated`, `stats.resident`, after an `epoch` advance so
//! the figures are current) at each scrape. They tell live heap from RSS:
//! RSS also counts the allocator's retained pages, thread stacks and code.
//!
//! Registered only when the relay is built with feature `jemalloc` (the
//! default on unix): on the system allocator there is nothing to read.

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// The heap's figures (`sync_relay_heap_…`), in bytes.
#[derive(Default)]
pub struct HeapMetrics {
    /// jemalloc `stats.allocated`: bytes in live allocations.
    pub allocated: Gauge,
    /// jemalloc `stats.resident`: bytes in physically resident pages the
    /// allocator maps (live data, metadata, dirty pages not yet purged).
    pub resident: Gauge,
}

/// One reading of the allocator's statistics, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// `stats.allocated`.
    pub allocated: u64,
    /// `stats.resident`.
    pub resident: u64,
}

/// Read jemalloc's current statistics (advancing its `epoch` first: the
/// figures are cached until then). `None` without feature `jemalloc`, or if
/// jemalloc refuses the query. In a process whose global allocator is not
/// jemalloc this reads jemalloc's own (near-empty) heap.
pub fn read() -> Option<HeapStats> {
    #[cfg(all(feature = "jemalloc", unix, not(target_env = "msvc")))]
    {
        use tikv_jemalloc_ctl::{epoch, stats};
        epoch::advance().ok()?;
        Some(HeapStats {
            allocated: stats::allocated::read().ok()? as u64,
            resident: stats::resident::read().ok()? as u64,
        })
    }
    #[cfg(not(all(feature = "jemalloc", unix, not(target_env = "msvc"))))]
    {
        None
    }
}

impl HeapMetrics {
    /// Register the gauges in `registry` (prefix `sync_relay` comes from the
    /// registry), when the heap can be read at all.
    pub fn register(&self, registry: &mut Registry) {
        if read().is_none() {
            return;
        }
        registry.register_with_unit(
            "heap_allocated",
            "Bytes in live heap allocations (jemalloc stats.allocated)",
            Unit::Bytes,
            self.allocated.clone(),
        );
        registry.register_with_unit(
            "heap_resident",
            "Bytes in resident pages mapped by the allocator (jemalloc stats.resident)",
            Unit::Bytes,
            self.resident.clone(),
        );
    }

    /// Refresh the gauges from the allocator (called at each scrape).
    pub fn update(&self) {
        if let Some(s) = read() {
            self.allocated
                .set(i64::try_from(s.allocated).unwrap_or(i64::MAX));
            self.resident
                .set(i64::try_from(s.resident).unwrap_or(i64::MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With jemalloc built in, the figures read and follow an allocation
    /// the size of which cannot be missed.
    #[cfg(all(feature = "jemalloc", unix, not(target_env = "msvc")))]
    #[test]
    fn heap_figures_are_read() {
        let s = read().expect("jemalloc stats");
        assert!(s.resident >= s.allocated, "{s:?}");
    }
}
