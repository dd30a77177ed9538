//! Retry policy (issue: reconnect): exponential backoff with **full jitter**
//! (each wait is uniform in `[0, min(max_delay, initial · 2^attempt)]`, as in
//! "Exponential Backoff And Jitter", AWS Architecture Blog, 2015), a cap,
//! a maximum number of attempts, and the stall timeout after which a
//! transfer that makes no progress is abandoned and retried.

use std::time::Duration;

/// How the client retries a lost connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Ceiling of the first wait. Default 250 ms.
    pub initial: Duration,
    /// Largest ceiling. Default 30 s.
    pub max_delay: Duration,
    /// Reconnect attempts before giving up; `None` = no limit on the count.
    /// Default 12 (about 3 minutes at the cap).
    pub max_attempts: Option<u32>,
    /// Give up reconnecting once this long has passed since the connection
    /// was lost (or since the first attempt), whatever the count: no wait
    /// or connect attempt reaches past it. `None` (the default) = no limit
    /// on the time. `sync-cli` uses 30 s for one-shot commands.
    pub give_up_after: Option<Duration>,
    /// A request that sees no bytes from the relay for this long is
    /// abandoned and retried on a new connection. Default 15 s.
    pub stall_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            max_attempts: Some(12),
            give_up_after: None,
            stall_timeout: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The ceiling of wait number `attempt` (0-based):
    /// `min(max_delay, initial · 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max_delay)
    }

    /// Full jitter: `unit` (uniform in `[0, 1)`) scales the ceiling.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        self.ceiling(attempt).mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A source of uniform numbers in `[0, 1)` for the jitter.
pub type Jitter = Box<dyn FnMut() -> f64 + Send>;

/// Uniform `[0, 1)` from the OS CSPRNG.
pub fn os_jitter() -> Jitter {
    Box::new(|| {
        let bytes: [u8; 8] = crate::crypto::random_bytes();
        (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// The waits of one retry sequence.
pub struct Backoff {
    policy: RetryPolicy,
    attempt: u32,
    jitter: Jitter,
}

impl Backoff {
    /// A fresh sequence with OS jitter.
    pub fn new(policy: RetryPolicy) -> Self {
        Self::with_jitter(policy, os_jitter())
    }

    /// A fresh sequence with a given jitter source (tests).
    pub fn with_jitter(policy: RetryPolicy, jitter: Jitter) -> Self {
        Backoff {
            policy,
            attempt: 0,
            jitter,
        }
    }

    /// The next wait, or `None` once `max_attempts` waits were handed out.
    pub fn next_delay(&mut self) -> Option<Duration> {
        if self
            .policy
            .max_attempts
            .is_some_and(|max| self.attempt >= max)
        {
            return None;
        }
        let d = self.policy.delay(self.attempt, (self.jitter)());
        self.attempt += 1;
        Some(d)
    }

    /// Waits handed out so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

// The waits the client's retry loops actually take are tested on those
// loops in `client/tests.rs`.
#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_attempts: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            initial: Duration::from_millis(250),
            max_delay: Duration::from_secs(30),
            max_attempts,
            give_up_after: None,
            stall_timeout: Duration::from_secs(15),
        }
    }

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let p = policy(None);
        let ms: Vec<u128> = (0..10).map(|a| p.ceiling(a).as_millis()).collect();
        assert_eq!(
            ms,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        let mut b = Backoff::new(policy(None));
        let mut seen = Vec::new();
        for a in 0..200 {
            let d = b.next_delay().unwrap();
            assert!(d <= policy(None).ceiling(a));
            seen.push(d.as_secs_f64() / policy(None).ceiling(a).as_secs_f64());
        }
        let mean = seen.iter().sum::<f64>() / seen.len() as f64;
        assert!(
            (0.35..0.65).contains(&mean),
            "uniform jitter averages 1/2: {mean}"
        );
    }

    #[test]
    fn gives_up_after_max_attempts() {
        let mut b = Backoff::with_jitter(policy(Some(3)), Box::new(|| 0.5));
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert!(b.next_delay().is_some());
        assert_eq!(b.next_delay(), None);
        assert_eq!(b.attempts(), 3);
    }
}
