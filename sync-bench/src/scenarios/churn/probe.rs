//! The honest device of the churn scenario: one session of the churned
//! group that pushes a 1 KiB blob every [`INTERVAL`] for the whole run and
//! records each round trip, tagged with whether the churn was running when
//! it began (issue 10: honest devices keep being served while strangers
//! churn). The round trips of the quiet phases (live sessions back to the
//! probe alone, the heap being read) are the baseline of the same run.

use crate::env::blob_id;
use crate::env::random;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use sync_client::{ConnectOptions, RelaySession};
use sync_protocol::PushItem;
use tokio::time::Instant;

/// Time between the starts of two pushes (4 a second).
pub const INTERVAL: Duration = Duration::from_millis(250);
/// A push not answered within this is an error ("no answer"), not a sample.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// TTL of the probe's blobs, so they do not pile up in the database whose
/// growth the heap readings watch.
const TTL_S: u32 = 120;

/// Round trips and errors since the last [`Probe::take`].
#[derive(Debug, Default)]
pub struct Log {
    /// Round trips of pushes begun while the churn ran.
    pub churn: Vec<Duration>,
    /// Round trips of pushes begun while it did not.
    pub quiet: Vec<Duration>,
    /// Pushes that failed or were not answered within [`ANSWER_TIMEOUT`],
    /// and failed reconnects.
    pub errors: usize,
}

struct Shared {
    churning: AtomicBool,
    log: Mutex<Log>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A poisoned lock only means a panic elsewhere mid-push of a
        // sample; the log is still a valid Vec.
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running probe; its task ends when the probe is dropped.
pub struct Probe {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Probe {
    /// Start pushing on `session` (a device of the group, connected with
    /// `opts`, which reconnects with the same device key if the session
    /// breaks; each break is an error).
    pub fn start(session: RelaySession, opts: ConnectOptions) -> Probe {
        let shared = Arc::new(Shared {
            churning: AtomicBool::new(false),
            log: Mutex::new(Log::default()),
        });
        let task = tokio::spawn(run(Arc::clone(&shared), session, opts));
        Probe { shared, task }
    }

    /// Tag the round trips begun from now on as under churn (`true`) or
    /// quiet.
    pub fn set_churning(&self, on: bool) {
        self.shared.churning.store(on, Ordering::SeqCst);
    }

    /// The log since the last call, emptied.
    pub fn take(&self) -> Log {
        std::mem::take(&mut *self.shared.log())
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(shared: Arc<Shared>, first: RelaySession, opts: ConnectOptions) {
    let mut current = Some(first);
    let mut next = Instant::now();
    for k in 0u64.. {
        next += INTERVAL;
        let s = match current.take() {
            Some(s) if !s.is_closed() => s,
            _ => match RelaySession::connect(&opts).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("churn probe: reconnect: {e:#}");
                    shared.log().errors += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    next = Instant::now();
                    continue;
                }
            },
        };
        let churning = shared.churning.load(Ordering::SeqCst);
        let item = PushItem {
            blob_id: blob_id(8, k),
            payload: random(1024),
            ttl_s: Some(TTL_S),
        };
        let t = Instant::now();
        match tokio::time::timeout(ANSWER_TIMEOUT, s.push(vec![item])).await {
            Ok(Ok(_)) => {
                let rtt = t.elapsed();
                let mut log = shared.log();
                if churning {
                    log.churn.push(rtt);
                } else {
                    log.quiet.push(rtt);
                }
                current = Some(s);
            }
            Ok(Err(e)) => {
                eprintln!("churn probe: push: {e:#}");
                shared.log().errors += 1;
                // Kept if its connection still stands (a refusal such as
                // OVERLOADED); otherwise the next round reconnects.
                current = Some(s);
            }
            Err(_) => {
                eprintln!("churn probe: push not answered within {ANSWER_TIMEOUT:?}");
                shared.log().errors += 1;
            }
        }
        // Behind schedule (a slow push): start the next one now, do not
        // burst to catch up.
        next = next.max(Instant::now());
        tokio::time::sleep_until(next).await;
    }
}
