//! Wake-ups for other instances, sent off the push's acknowledgement path
//! (docs/deploy.md "Several relays on one PostgreSQL").
//!
//! A committed push hands its `(group, head)` to the store's one
//! [`Notifier`] ([`Notifier::pushed`]: a map insert, no I/O) and its
//! `PushOk` goes out at once; the notifier's task sends the wake-ups
//! (`pg_notify`, payload [`crate::listen::payload`]) in rounds: each round
//! takes every pending group out of the map and sends them all in one
//! statement (`SELECT pg_notify($1, p) FROM UNNEST($2::TEXT[]) AS p`, at
//! most [`MAX_PER_STATEMENT`] a statement). Pushes that commit while a
//! round is on its way are sent by the next round, one wake-up per group
//! with the latest head (a listener re-reads the head from the table
//! anyway, so the heads in between carry nothing). A burst of pushes thus
//! costs a few notify round trips, not one each.
//!
//! Memory: one map entry per group with a wake-up not yet sent, drained
//! by every round, so it never holds more entries than there are groups
//! with recent pushes. A round that fails (the database away) drops its
//! wake-ups with a warning: a lost wake-up only adds latency, bounded by
//! the relay's fallback poll (`[storage] head_poll_interval_s`).

use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_protocol::GroupId;
use sync_storage::StorageError;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Most wake-ups one statement carries (each payload is at most 87
/// bytes: about 87 KB of parameters).
pub const MAX_PER_STATEMENT: usize = 1000;

/// How long [`Notifier::close`] waits for the last round before it stops
/// the task.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// What the notifier has sent since the store opened (monotonic counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WakeUpStats {
    /// Statements sent (successful or not): notify round trips.
    pub statements: u64,
    /// Wake-ups (one group, one head) in statements that succeeded.
    pub sent: u64,
    /// Wake-ups dropped because their statement failed.
    pub dropped: u64,
}

/// Where a round's wake-ups go: the payloads of one statement.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Send `payloads` (at most [`MAX_PER_STATEMENT`]) in one statement.
    fn send<'a>(&'a self, payloads: &'a [String]) -> BoxFuture<'a, Result<(), StorageError>>;

    /// After the last round: release what the sink holds (default: nothing).
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The notifier's own pool ([`PgSink::pool`]): one connection, opened
/// when the first round needs it (and again after it drops), with
/// `synchronous_commit = off` for its sessions. A wake-up is no data (a
/// listener re-reads the head from the table, and a lost one costs at most
/// the fallback poll), so its commit need not wait for the WAL flush: with
/// the server's default (`on`) a `pg_notify` transaction waits for its own
/// flush, holding PostgreSQL's notify-queue lock meanwhile, and adds that
/// flush to the WAL queue every push's commit waits in. Apart from the
/// `max_connections` pool, so a round never takes a connection from the
/// pushes (count N relays × (`max_connections` + 2) against the server's
/// limit: this one and the listener's).
pub(crate) fn sink_pool(connect: &PgConnectOptions, acquire_timeout: Duration) -> sqlx::PgPool {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect_lazy_with(
            connect
                .clone()
                .application_name(SINK_APPLICATION_NAME)
                .options([("synchronous_commit", "off")]),
        )
}

/// `application_name` of the notifier's connection (what
/// `pg_stat_activity` shows for it).
pub const SINK_APPLICATION_NAME: &str = "sync-relay-notifier";

/// The database as a [`Sink`]: `pg_notify` on `channel` through `pool`
/// ([`sink_pool`]).
pub(crate) struct PgSink {
    pub(crate) pool: sqlx::PgPool,
    pub(crate) channel: Arc<str>,
}

impl Sink for PgSink {
    fn send<'a>(&'a self, payloads: &'a [String]) -> BoxFuture<'a, Result<(), StorageError>> {
        Box::pin(async move {
            sqlx::query("SELECT pg_notify($1, p) FROM UNNEST($2::TEXT[]) AS p")
                .bind(&*self.channel)
                .bind(payloads)
                .execute(&self.pool)
                .await
                .map_err(crate::dberr)?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }
}

/// State shared by the pushes and the task.
#[derive(Default)]
struct Shared {
    /// Groups with a wake-up not sent yet, with the highest head handed in.
    pending: Mutex<HashMap<GroupId, u64>>,
    /// Raised by every hand-in and by `close`; it keeps one permit, so a
    /// hand-in during a round is seen when the round ends.
    wake: Notify,
    closing: AtomicBool,
    statements: AtomicU64,
    sent: AtomicU64,
    dropped: AtomicU64,
}

/// The store's one wake-up sender (see the module docs). Dropping it stops
/// its task.
pub(crate) struct Notifier {
    shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Notifier {
    /// Start the task (on the current tokio runtime) sending to `sink`.
    pub(crate) fn start(sink: impl Sink) -> Notifier {
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(run(Arc::clone(&shared), sink));
        Notifier {
            shared,
            task: Mutex::new(Some(task)),
        }
    }

    /// A push to `group` committed with head `head`: queue its wake-up
    /// (the latest head per group wins). Never waits on I/O.
    pub(crate) fn pushed(&self, group: GroupId, head: u64) {
        {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let h = pending.entry(group).or_insert(head);
            *h = (*h).max(head);
        }
        self.shared.wake.notify_one();
    }

    /// What has been sent so far.
    pub(crate) fn stats(&self) -> WakeUpStats {
        WakeUpStats {
            statements: self.shared.statements.load(Ordering::Relaxed),
            sent: self.shared.sent.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// Send what is pending (waiting [`CLOSE_FLUSH_TIMEOUT`] at most), then
    /// stop the task.
    pub(crate) async fn close(&self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task
            && tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, &mut task)
                .await
                .is_err()
        {
            tracing::warn!("wake-up sender still busy at close; its last wake-ups are dropped");
            task.abort();
        }
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// The task: wait for a hand-in, send every pending wake-up, again; after
/// `close`, one last round, then end.
async fn run(shared: Arc<Shared>, sink: impl Sink) {
    loop {
        shared.wake.notified().await;
        let closing = shared.closing.load(Ordering::Acquire);
        let round: Vec<String> = {
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending
                .drain()
                .map(|(group, head)| crate::listen::payload(&group, head))
                .collect()
        };
        for chunk in round.chunks(MAX_PER_STATEMENT) {
            shared.statements.fetch_add(1, Ordering::Relaxed);
            match sink.send(chunk).await {
                Ok(()) => {
                    shared.sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    shared
                        .dropped
                        .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    tracing::warn!(error = %e, wake_ups = chunk.len(),
                        "pushes stored, their wake-ups not sent (the fallback poll will find them)");
                }
            }
        }
        if closing {
            sink.close().await;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notifier's sessions commit without waiting for the WAL flush;
    /// the same server's other sessions keep its default.
    #[tokio::test]
    async fn the_sink_pool_commits_asynchronously() {
        let Some(db) = crate::testing::TestDatabase::create().await else {
            return;
        };
        let connect = db.options(sync_storage::Quotas::UNLIMITED).connect;
        let show = "SHOW synchronous_commit";
        let sink = sink_pool(&connect, Duration::from_secs(30));
        let sink_setting: String = sqlx::query_scalar(show).fetch_one(&sink).await.unwrap();
        assert_eq!(sink_setting, "off");
        let other = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(connect)
            .await
            .unwrap();
        let default: String = sqlx::query_scalar(show).fetch_one(&other).await.unwrap();
        assert_eq!(default, "on", "the test server's default");
        sink.close().await;
        other.close().await;
    }
    use tokio::sync::{Semaphore, mpsc};

    /// Records each statement's payloads; each send first takes a permit
    /// of `gate`, so a test decides when a round may finish.
    struct GatedSink {
        gate: Arc<Semaphore>,
        calls: mpsc::UnboundedSender<Vec<String>>,
        fail: bool,
    }

    impl Sink for GatedSink {
        fn send<'a>(&'a self, payloads: &'a [String]) -> BoxFuture<'a, Result<(), StorageError>> {
            Box::pin(async move {
                let _ = self.calls.send(payloads.to_vec());
                let permit = self.gate.acquire().await.map_err(StorageError::database)?;
                permit.forget();
                if self.fail {
                    return Err(StorageError::database("refused by the test"));
                }
                Ok(())
            })
        }
    }

    fn gated(
        fail: bool,
    ) -> (
        Notifier,
        Arc<Semaphore>,
        mpsc::UnboundedReceiver<Vec<String>>,
    ) {
        let gate = Arc::new(Semaphore::new(0));
        let (calls, rx) = mpsc::unbounded_channel();
        let n = Notifier::start(GatedSink {
            gate: Arc::clone(&gate),
            calls,
            fail,
        });
        (n, gate, rx)
    }

    async fn next_call(rx: &mut mpsc::UnboundedReceiver<Vec<String>>) -> Vec<String> {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a statement in time")
            .expect("the task is alive")
    }

    const G: GroupId = GroupId([7; 32]);

    /// 100 pushes to one group while the first round's statement is on
    /// its way: 2 statements in all, and the second carries the last head.
    #[tokio::test]
    async fn a_burst_to_one_group_costs_two_statements_and_ends_with_its_last_head() {
        let (n, gate, mut rx) = gated(false);
        n.pushed(G, 1);
        assert_eq!(
            next_call(&mut rx).await,
            vec![crate::listen::payload(&G, 1)]
        );
        // The first statement is held at the gate; 99 more pushes commit.
        for head in 2..=100 {
            n.pushed(G, head);
        }
        gate.add_permits(1);
        assert_eq!(
            next_call(&mut rx).await,
            vec![crate::listen::payload(&G, 100)],
            "the pushes during the first round are sent by the next"
        );
        gate.add_permits(1);
        n.close().await;
        assert!(rx.try_recv().is_err(), "nothing more was sent");
        assert_eq!(
            n.stats(),
            WakeUpStats {
                statements: 2,
                sent: 2,
                dropped: 0
            }
        );
    }

    /// A head handed in after a higher one (two pushes finishing out of
    /// order) does not lower the wake-up; several groups share a statement.
    #[tokio::test]
    async fn the_highest_head_per_group_wins_and_groups_share_a_statement() {
        let (n, gate, mut rx) = gated(false);
        let h = GroupId([8; 32]);
        n.pushed(G, 1);
        assert_eq!(next_call(&mut rx).await.len(), 1);
        n.pushed(G, 5);
        n.pushed(G, 4);
        n.pushed(h, 2);
        gate.add_permits(2);
        let mut second = next_call(&mut rx).await;
        second.sort();
        let mut expected = vec![crate::listen::payload(&G, 5), crate::listen::payload(&h, 2)];
        expected.sort();
        assert_eq!(second, expected);
        n.close().await;
    }

    /// A failed statement drops its wake-ups (counted, logged) and the
    /// task goes on with the next round.
    #[tokio::test]
    async fn a_failed_round_is_dropped_and_the_task_goes_on() {
        let (n, gate, mut rx) = gated(true);
        n.pushed(G, 1);
        gate.add_permits(1);
        assert_eq!(next_call(&mut rx).await.len(), 1);
        n.pushed(G, 2);
        gate.add_permits(1);
        assert_eq!(
            next_call(&mut rx).await,
            vec![crate::listen::payload(&G, 2)]
        );
        n.close().await;
        assert_eq!(
            n.stats(),
            WakeUpStats {
                statements: 2,
                sent: 0,
                dropped: 2
            }
        );
    }

    /// More groups than one statement carries are split, none lost; the
    /// map is empty after the round.
    #[tokio::test]
    async fn a_round_of_many_groups_is_split_into_statements() {
        let (n, gate, mut rx) = gated(false);
        gate.add_permits(usize::MAX >> 4);
        let groups = MAX_PER_STATEMENT + 1;
        for i in 0..groups {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            n.pushed(GroupId(id), 1);
        }
        n.close().await;
        let mut total = 0;
        while let Ok(call) = rx.try_recv() {
            assert!(call.len() <= MAX_PER_STATEMENT);
            total += call.len();
        }
        assert_eq!(total, groups);
        assert!(n.shared.pending.lock().unwrap().is_empty());
    }
}
