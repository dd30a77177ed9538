//! The relay's memory over one attack, for the adversarial and peer-limit
//! suites: the baseline is taken after an honest round trip (a warmed-up
//! relay, not a cold one), the relay's address space is capped
//! [`ADDRESS_SPACE_HEADROOM`] above its size then (so a huge allocation that
//! RSS would not show kills it), and the check reads the **peak** RSS
//! (VmHWM) since the baseline, so memory held only for a moment counts too.

use crate::{RelayProcess, honest_round_trip};

/// Address space the relay may add after warming up (bytes): far above what
/// any bounded attack costs, far below a claimed multi-GiB allocation.
pub const ADDRESS_SPACE_HEADROOM: u64 = 512 << 20;

/// The relay's memory from [`MemoryWatch::start`] on.
pub struct MemoryWatch {
    baseline_kib: u64,
}

impl MemoryWatch {
    /// Warm the relay up with an honest round trip, cap its address space,
    /// reset its peak RSS and take the baseline.
    pub async fn start(relay: &RelayProcess) -> MemoryWatch {
        honest_round_trip(relay).await;
        relay.limit_address_space(ADDRESS_SPACE_HEADROOM);
        relay.reset_peak_rss();
        MemoryWatch {
            baseline_kib: relay.rss_kib(),
        }
    }

    /// Peak growth (MiB) since the baseline; panics with the end of the
    /// relay's log if it died.
    pub fn grew_mib(&self, relay: &mut RelayProcess, what: &str) -> f64 {
        if let Some(status) = relay.exit_status() {
            let log = relay.log();
            // The last lines of the log, without backtrace frames.
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| {
                    let l = l.trim_start();
                    !(l.starts_with("at ")
                        || l.split(':')
                            .next()
                            .is_some_and(|n| n.parse::<u32>().is_ok()))
                })
                .rev()
                .take(15)
                .collect();
            panic!(
                "{what}: the relay died ({status}); last log lines:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let peak = relay.peak_rss_kib();
        let grew = peak.saturating_sub(self.baseline_kib) as f64 / 1024.0;
        eprintln!(
            "{what}: baseline {} KiB, peak {peak} KiB (+{grew:.1} MiB), now {} KiB, VmSize {} KiB",
            self.baseline_kib,
            relay.rss_kib(),
            relay.proc_status_kib("VmSize")
        );
        grew
    }

    /// Assert the relay still runs and its peak RSS since [`Self::start`]
    /// stayed within `budget_mib` of the baseline.
    pub fn check(&self, relay: &mut RelayProcess, budget_mib: f64, what: &str) {
        let grew = self.grew_mib(relay, what);
        assert!(
            grew <= budget_mib,
            "{what}: relay RSS peaked {grew:.1} MiB above its warmed-up baseline of {} MiB \
             (budget {budget_mib} MiB)",
            self.baseline_kib / 1024
        );
    }
}
