//! `SyncClient` (docs/client.md): a relay session plus the group's keys — seals
//! what it pushes, opens what it pulls — that rides through bad networks.
//!
//! Every request runs through [`SyncClient::call`]: if the connection is
//! lost, stalls (no bytes from the relay for `stall_timeout`), or the relay
//! is shutting down, the client reconnects with exponential backoff and full
//! jitter ([`RetryPolicy`]) and repeats the request on the new session.
//! Repeating is safe: pushes carry the same blob ids (the relay stores each
//! once) and pulls restart from the local cursor. RATE_LIMITED answers are
//! waited out for the relay's `retry_after_ms`. After `max_attempts` failed
//! reconnects the call fails with [`ClientError::GaveUp`].
//!
//! Every wait the relay asks for is capped on this side: one wait, and all
//! the RATE_LIMITED waits of one request together, at most
//! [`MAX_RATE_LIMIT_WAIT`]; a retry hint at `Hello` or with OVERLOADED /
//! INTERNAL at most [`MAX_RATE_LIMIT_WAIT`] too. The size of the chunks a file
//! is cut into is at most [`MAX_CHUNK_BLOB_SIZE`] whatever `Welcome` says.
//!
//! - [`push`]: messages, files (chunked, pipelined, resumable via journals);
//! - [`push_batch`]: many small files, a batch to a journal and a request;
//! - [`pull`]: pull, follow (NOTIFY-driven live sync), subscribe.

pub mod acks;
pub mod inline;
pub mod pull;
pub mod push;
pub mod push_batch;
mod voids;

pub use pull::{PullSummary, Subscription, SubscriptionEvent};
pub use push::{ChunkAck, PushOptions, PushedFile};
pub use push_batch::SmallFile;

use crate::backoff::{Backoff, Jitter, RetryPolicy, os_jitter};
use crate::crypto::{GroupKeys, envelope};
use crate::error::{ClientError, Result};
use crate::relay_addr::RelayAddr;
use crate::relays::RelayList;
use crate::session::{ConnectOptions, RelaySession};
use futures::future::BoxFuture;
use iroh::Endpoint;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_protocol::{DeviceId, ErrorCode};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Longest total wait for RATE_LIMITED answers of one request before the
/// error is returned (and so the longest single wait the relay can ask
/// for).
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);

/// Largest sealed blob this client makes, whatever the relay's `Welcome`
/// announces (32 MiB): a relay cannot make the client allocate more per
/// chunk. Blobs are also kept within the relay's `max_frame` (less the
/// frame's own overhead), so one always fits a `Push`.
pub const MAX_CHUNK_BLOB_SIZE: usize = 32 * 1024 * 1024;

/// The blob size to seal for: the relay's `max_blob_size`, capped by
/// [`MAX_CHUNK_BLOB_SIZE`] and by what fits one frame of `max_frame` bytes
/// (itself capped by the protocol's ceiling).
pub fn blob_size_for(welcome: &sync_protocol::Welcome) -> usize {
    use sync_protocol::limits::{BATCH_OVERHEAD, MAX_FRAME_CEILING, PUSH_ITEM_OVERHEAD};
    let frame = welcome.max_frame.min(MAX_FRAME_CEILING) as usize;
    (welcome.max_blob_size as usize)
        .min(MAX_CHUNK_BLOB_SIZE)
        .min(frame.saturating_sub(BATCH_OVERHEAD + PUSH_ITEM_OVERHEAD))
}

/// The state of the client's connection, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Connected; `generation` counts connections made (1 = first).
    Connected {
        /// Connection number.
        generation: u64,
    },
    /// Waiting before reconnect attempt `attempt`.
    Reconnecting {
        /// Attempt number, from 1.
        attempt: u32,
        /// The wait before it.
        delay: Duration,
        /// Why the connection was lost.
        error: String,
        /// True when the relay could not be reached (no answer, connection
        /// lost); false when it answered but refused for now (busy).
        unreachable: bool,
    },
}

/// How the retry loops wait, tell time and draw their jitter: tokio's
/// clock and the OS CSPRNG ([`Pacing::real`], the only one outside this
/// module's unit tests). The tests substitute fixed jitter, a sleeper that
/// records each wait, and a clock that advances by the waits recorded, to
/// check the waits the loops really take and when they give up.
#[derive(Clone)]
struct Pacing {
    /// A jitter source for each new backoff sequence.
    jitter: fn() -> Jitter,
    /// Waits for the given time.
    sleep: Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>,
    /// Time since an arbitrary origin.
    now: Arc<dyn Fn() -> Duration + Send + Sync>,
}

impl Pacing {
    fn real() -> Self {
        let origin = tokio::time::Instant::now();
        Pacing {
            jitter: os_jitter,
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
            now: Arc::new(move || origin.elapsed()),
        }
    }

    fn now(&self) -> Duration {
        (self.now)()
    }

    fn backoff(&self, policy: RetryPolicy) -> Backoff {
        Backoff::with_jitter(policy, (self.jitter)())
    }

    async fn sleep(&self, d: Duration) {
        (self.sleep)(d).await
    }
}

#[derive(Clone)]
struct Slot {
    generation: u64,
    /// Index of the session's relay in the client's [`RelayList`].
    relay: usize,
    session: Arc<RelaySession>,
}

/// A connected device.
///
/// Each connect attempt binds a fresh iroh endpoint (as
/// [`RelaySession::connect`] does: no path state survives a failed or lost
/// connection). Endpoints that are done with — failed attempts, replaced
/// sessions — are closed in the background by tasks the client tracks;
/// [`SyncClient::close`] waits for them, so nothing is dropped unclosed.
pub struct SyncClient {
    opts: ConnectOptions,
    relays: RelayList,
    /// The highest group head seen on any relay (see [`Dial::floor`]).
    head_floor: AtomicU64,
    /// The relay of the current session.
    current: watch::Sender<RelayAddr>,
    closer: TaskTracker,
    policy: RetryPolicy,
    pacing: Pacing,
    keys: GroupKeys,
    slot: Mutex<Slot>,
    reconnect_lock: tokio::sync::Mutex<()>,
    link: watch::Sender<LinkState>,
    /// Inline deliveries applied ([`SyncClient::inline_deliveries`]).
    inline_taken: AtomicU64,
    /// How long a follower may hold an ack, ms (default 0: at once).
    ack_interval_ms: AtomicU64,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("relays", &self.relays.to_strings())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Errors the relay sends at `Hello` that a later attempt may not get.
/// STORAGE_UNAVAILABLE is one: the relay's database may be back by then.
fn retryable_at_connect(err: &ClientError) -> bool {
    err.is_transport()
        || err.relay_code().is_some_and(|c| {
            matches!(
                c,
                ErrorCode::RateLimited
                    | ErrorCode::Overloaded
                    | ErrorCode::Internal
                    | ErrorCode::StorageUnavailable
            )
        })
}

/// Relay errors a request is retried on (with backoff, at least the
/// relay's hint) within the policy's bounds: the relay is busy, failed, or
/// its database is away for now.
fn busy_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Overloaded | ErrorCode::Internal | ErrorCode::StorageUnavailable
    )
}

/// The relay's `retry_after_ms` hint of an error (zero without one),
/// never more than [`MAX_RATE_LIMIT_WAIT`].
fn retry_hint(err: &ClientError) -> Duration {
    match err {
        ClientError::Relay(e) => hint_of(e),
        _ => Duration::ZERO,
    }
}

/// An error frame's `retry_after_ms` (zero without one), never more than
/// [`MAX_RATE_LIMIT_WAIT`].
fn hint_of(e: &sync_protocol::ErrorMsg) -> Duration {
    Duration::from_millis(u64::from(e.retry_after_ms.unwrap_or(0))).min(MAX_RATE_LIMIT_WAIT)
}

/// How long to wait before closing an endpoint is given up: enough for
/// a connection to a dead peer to finish draining (about 3 probe timeouts).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest time given to one connect attempt, even at the end of the
/// policy's `give_up_after`.
const MIN_ATTEMPT: Duration = Duration::from_secs(1);

/// One connect attempt within `timeout`, on endpoints of its own: an
/// unanswered dial is made again from a fresh endpoint
/// ([`RelaySession::connect`]). The endpoint of each failed dial is closed
/// by a task of `closer`.
async fn connect_once(
    opts: &ConnectOptions,
    closer: &TaskTracker,
    timeout: Duration,
) -> Result<RelaySession> {
    let mut opts = opts.clone();
    opts.connect_timeout = timeout;
    RelaySession::connect_discarding(&opts, |endpoint| {
        closer.spawn(close_endpoint(endpoint));
        Box::pin(async {})
    })
    .await
}

/// What a connect dials: the group's relays, where its first round
/// starts, and the lowest head a relay of this group may announce.
struct Dial<'a> {
    opts: &'a ConnectOptions,
    relays: &'a RelayList,
    /// Index of the relay tried first in every round.
    start: usize,
    /// Highest head this client has seen for the group (docs/client.md
    /// "Several relays"): a relay announcing less is not of the cluster.
    floor: &'a AtomicU64,
}

/// Connect to one of the group's relays, retrying per `policy`.
///
/// Each **round** dials every relay once, in [`RelayList::rotation`] order
/// from `dial.start`, without waiting between them: a relay that is
/// unreachable, or refuses for now (RATE_LIMITED, OVERLOADED, INTERNAL,
/// STORAGE_UNAVAILABLE at `Hello`), hands over to the next at once (for
/// STORAGE_UNAVAILABLE that costs one handshake: relays of one cluster share
/// the database and answer the same, and a relay of another cluster is
/// refused by the head floor anyway; docs/client.md "Several relays"). Between rounds the client waits
/// per the backoff (each wait counts as one attempt for `max_attempts`), and
/// a relay that gave a retry hint is not dialed again before it has passed.
/// `cause` is the failure that made a reconnect necessary and the relay it
/// concerns (None for the first connect, which dials at once). With
/// `policy.give_up_after`, no wait and no attempt reaches past that time
/// from the start of this call. A permanent refusal (UNAUTHORIZED, …) ends
/// the call with that relay's error; so does a relay whose `Welcome` head
/// is below `dial.floor` ([`ClientError::RelayBehind`]).
/// Returns the index of the relay connected to and its session.
async fn connect_retrying(
    dial: Dial<'_>,
    policy: RetryPolicy,
    pacing: &Pacing,
    link: &watch::Sender<LinkState>,
    cause: Option<(usize, ClientError)>,
    closer: &TaskTracker,
) -> Result<(usize, RelaySession)> {
    let started = pacing.now();
    let left = || {
        policy
            .give_up_after
            .map(|limit| limit.saturating_sub(pacing.now().saturating_sub(started)))
    };
    let relays = dial.relays;
    // Per relay: the time (on the pacing clock) before which its retry
    // hint asks not to be dialed again.
    let mut not_before = vec![Duration::ZERO; relays.len()];
    let mut backoff = pacing.backoff(policy);
    let mut last = cause.map(|(i, e)| {
        not_before[i % relays.len()] = started + retry_hint(&e);
        e
    });
    loop {
        if let Some(err) = &last {
            let now = pacing.now();
            let hinted = not_before
                .iter()
                .min()
                .map_or(Duration::ZERO, |t| t.saturating_sub(now));
            let delay = backoff.next_delay().map(|d| d.max(hinted));
            let Some(delay) = delay.filter(|d| left().is_none_or(|left| *d < left)) else {
                return Err(ClientError::GaveUp {
                    attempts: backoff.attempts(),
                    last: Box::new(last.take().expect("set")),
                });
            };
            link.send_replace(LinkState::Reconnecting {
                attempt: backoff.attempts(),
                delay,
                error: err.to_string(),
                unreachable: err.is_transport(),
            });
            tracing::info!(attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, error = %err, "reconnecting");
            pacing.sleep(delay).await;
        }
        for i in relays.rotation(dial.start) {
            if not_before[i] > pacing.now() {
                continue;
            }
            let timeout = match left() {
                Some(left) if last.is_some() && left.is_zero() => break,
                Some(left) => dial.opts.connect_timeout.min(left.max(MIN_ATTEMPT)),
                None => dial.opts.connect_timeout,
            };
            let mut opts = dial.opts.clone();
            opts.relay = relays.get(i).clone();
            match connect_once(&opts, closer, timeout).await {
                Ok(session) => {
                    let head = session.welcome().head_cursor;
                    let known = dial.floor.fetch_max(head, Ordering::SeqCst);
                    if head < known {
                        session.close_connection();
                        if let Some(endpoint) = session.endpoint() {
                            closer.spawn(close_endpoint(endpoint));
                        }
                        return Err(ClientError::RelayBehind {
                            relay: opts.relay.to_string(),
                            head,
                            known,
                        });
                    }
                    if relays.len() > 1 {
                        tracing::info!(relay = %opts.relay, "connected");
                    }
                    return Ok((i, session));
                }
                Err(e) if retryable_at_connect(&e) => {
                    not_before[i] = pacing.now() + retry_hint(&e);
                    if relays.len() > 1 {
                        tracing::info!(relay = %opts.relay, error = %e, "relay failed; trying the next");
                    }
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Close an endpoint, waiting at most [`CLOSE_TIMEOUT`] for it to drain.
async fn close_endpoint(endpoint: Endpoint) {
    if tokio::time::timeout(CLOSE_TIMEOUT, endpoint.close())
        .await
        .is_err()
    {
        tracing::debug!("the endpoint did not finish closing in time");
    }
}

/// Wait (at most [`CLOSE_TIMEOUT`]) for every endpoint handed to `closer`
/// to finish closing.
async fn wait_closed(closer: &TaskTracker) {
    closer.close();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closer.wait()).await;
    closer.reopen();
}

impl SyncClient {
    /// Connect with the default [`RetryPolicy`]. Errors: as
    /// [`RelaySession::connect`] for permanent failures (UNAUTHORIZED, bad
    /// address); [`ClientError::GaveUp`] when the relay stays unreachable.
    pub async fn connect(opts: &ConnectOptions) -> Result<SyncClient> {
        Self::connect_with(opts, RetryPolicy::default()).await
    }

    /// Connect with a given retry policy.
    pub async fn connect_with(opts: &ConnectOptions, policy: RetryPolicy) -> Result<SyncClient> {
        let (link, _) = watch::channel(LinkState::Connected { generation: 1 });
        Self::connect_paced(opts, policy, Pacing::real(), link).await
    }

    /// Connect with a given retry policy, reporting every connection state
    /// change — the waits of the first connect included — on `link` (e.g. to
    /// show "relay unreachable, retrying in 4 s"). [`SyncClient::link_state`]
    /// subscribes to the same channel.
    pub async fn connect_reporting(
        opts: &ConnectOptions,
        policy: RetryPolicy,
        link: watch::Sender<LinkState>,
    ) -> Result<SyncClient> {
        Self::connect_paced(opts, policy, Pacing::real(), link).await
    }

    /// Connect to one of the group's `relays` (instances of one cluster,
    /// docs/client.md "Several relays"), trying `opts.relay` first (e.g. the
    /// one that worked last) when it is in the list, then the others in
    /// list order; every later reconnect fails over the same way, starting
    /// with the relay after the one that failed. Reports like
    /// [`SyncClient::connect_reporting`]; [`SyncClient::relay`] tells which
    /// relay is in use. `head_floor` is a cursor this device already holds
    /// (its saved pull cursor): a relay announcing a lower head does not
    /// hold the group's history. Errors: as
    /// [`SyncClient::connect_reporting`], and [`ClientError::RelayBehind`]
    /// (not retried, nor failed over from: a relay outside the cluster is
    /// a configuration to fix, not an outage).
    pub async fn connect_failover(
        opts: &ConnectOptions,
        relays: RelayList,
        head_floor: u64,
        policy: RetryPolicy,
        link: watch::Sender<LinkState>,
    ) -> Result<SyncClient> {
        Self::connect_any(opts, relays, head_floor, policy, Pacing::real(), link).await
    }

    async fn connect_paced(
        opts: &ConnectOptions,
        policy: RetryPolicy,
        pacing: Pacing,
        link: watch::Sender<LinkState>,
    ) -> Result<SyncClient> {
        let relays = RelayList::one(opts.relay.clone());
        Self::connect_any(opts, relays, 0, policy, pacing, link).await
    }

    async fn connect_any(
        opts: &ConnectOptions,
        relays: RelayList,
        head_floor: u64,
        policy: RetryPolicy,
        pacing: Pacing,
        link: watch::Sender<LinkState>,
    ) -> Result<SyncClient> {
        let closer = TaskTracker::new();
        let head_floor = AtomicU64::new(head_floor);
        let dial = Dial {
            opts,
            relays: &relays,
            start: relays.position(&opts.relay).unwrap_or(0),
            floor: &head_floor,
        };
        let (relay, session) =
            match connect_retrying(dial, policy, &pacing, &link, None, &closer).await {
                Ok(connected) => connected,
                Err(e) => {
                    wait_closed(&closer).await;
                    return Err(e);
                }
            };
        link.send_replace(LinkState::Connected { generation: 1 });
        let (current, _) = watch::channel(relays.get(relay).clone());
        Ok(SyncClient {
            opts: opts.clone(),
            relays,
            head_floor,
            current,
            closer,
            policy,
            pacing,
            keys: opts.keys.clone(),
            slot: Mutex::new(Slot {
                generation: 1,
                relay,
                session: Arc::new(session),
            }),
            reconnect_lock: tokio::sync::Mutex::new(()),
            link,
            inline_taken: AtomicU64::new(0),
            // Coalesced by default (docs/client.md "Acks while
            // following"): the relay sends inline deliveries ahead of acks
            // within its in-flight caps, and `follow` acks at once at half
            // of them, so holding an ack delays no delivery.
            ack_interval_ms: AtomicU64::new(acks::ACK_INTERVAL.as_millis() as u64),
        })
    }

    /// How long a following device may hold its newest cursor before
    /// acknowledging it (default [`acks::ACK_INTERVAL`], 200 ms; 0 acks at
    /// once; see docs/client.md "Acks while following"). Longer means fewer
    /// ack writes at the relay and blobs kept there a little longer;
    /// stopping always sends the last ack.
    pub fn set_ack_interval(&self, interval: std::time::Duration) {
        let ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
        self.ack_interval_ms.store(ms, Ordering::Relaxed);
    }

    fn ack_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.ack_interval_ms.load(Ordering::Relaxed))
    }

    fn slot(&self) -> Slot {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current session (limits, raw requests). It may be replaced by a
    /// reconnect at any time.
    pub fn session(&self) -> Arc<RelaySession> {
        self.slot().session
    }

    /// The relay of the current session.
    pub fn relay(&self) -> RelayAddr {
        self.current.borrow().clone()
    }

    /// The relay of the current session, updated on every failover.
    pub fn relay_changes(&self) -> watch::Receiver<RelayAddr> {
        self.current.subscribe()
    }

    /// The group's relays this client fails over between.
    pub fn relays(&self) -> &RelayList {
        &self.relays
    }

    /// The retry policy in use.
    pub fn policy(&self) -> RetryPolicy {
        self.policy
    }

    /// Connection state changes (connected, reconnecting).
    pub fn link_state(&self) -> watch::Receiver<LinkState> {
        self.link.subscribe()
    }

    /// This device's node id.
    pub fn device_id(&self) -> DeviceId {
        DeviceId(*self.opts.device_key.public().as_bytes())
    }

    /// The group's keys.
    pub(crate) fn keys(&self) -> &GroupKeys {
        &self.keys
    }

    /// Largest sealed blob to make: see [`blob_size_for`].
    pub fn max_blob_size(&self) -> usize {
        blob_size_for(self.session().welcome())
    }

    /// Bytes of file content per chunk: the most whose envelope fits
    /// [`SyncClient::max_blob_size`].
    pub fn chunk_size(&self) -> usize {
        envelope::max_body_for(self.max_blob_size()).max(1)
    }

    /// The group's head as NOTIFY reports it on the current session;
    /// `changed()` fails when that session is gone.
    pub fn heads(&self) -> watch::Receiver<u64> {
        self.session().heads()
    }

    /// Replace the session of `generation` by a new one (unless another
    /// task already did). Errors: [`ClientError::GaveUp`], or a permanent
    /// failure such as UNAUTHORIZED.
    pub(crate) async fn reconnect(&self, generation: u64, cause: ClientError) -> Result<()> {
        let _one_at_a_time = self.reconnect_lock.lock().await;
        let old = self.slot();
        if old.generation != generation {
            return Ok(());
        }
        tracing::info!(error = %cause, "connection to the relay lost");
        // Whatever the lost session was told of (heads, acknowledged
        // pushes, pulled cursors) the next relay must hold too.
        self.head_floor
            .fetch_max(old.session.seen_head(), Ordering::SeqCst);
        old.session.close_connection();
        if let Some(endpoint) = old.session.endpoint() {
            self.closer.spawn(close_endpoint(endpoint));
        }
        // Fail over: the relay after the one that failed is tried first.
        let dial = Dial {
            opts: &self.opts,
            relays: &self.relays,
            start: old.relay + 1,
            floor: &self.head_floor,
        };
        let (relay, session) = connect_retrying(
            dial,
            self.policy,
            &self.pacing,
            &self.link,
            Some((old.relay, cause)),
            &self.closer,
        )
        .await?;
        let generation = old.generation + 1;
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Slot {
            generation,
            relay,
            session: Arc::new(session),
        };
        self.current.send_replace(self.relays.get(relay).clone());
        self.link.send_replace(LinkState::Connected { generation });
        Ok(())
    }

    /// Run `op` on the current session, reconnecting and repeating it on
    /// transport failures and stalls, and waiting out RATE_LIMITED (and,
    /// with backoff, OVERLOADED / INTERNAL) answers. `op` must be safe to
    /// repeat. This is the client's one retry loop: pushes, pulls and acks
    /// all run through it.
    ///
    /// Every wait is bounded here, whatever the relay says: one
    /// RATE_LIMITED wait and their sum per call at most
    /// [`MAX_RATE_LIMIT_WAIT`] and the policy's `give_up_after` (the error
    /// is returned once that is spent), an OVERLOADED / INTERNAL /
    /// STORAGE_UNAVAILABLE hint at most [`MAX_RATE_LIMIT_WAIT`] too, and
    /// their retries end with `max_attempts` or `give_up_after`.
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(Arc<RelaySession>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut rate_waited = Duration::ZERO;
        let rate_budget = self
            .policy
            .give_up_after
            .map_or(MAX_RATE_LIMIT_WAIT, |d| d.min(MAX_RATE_LIMIT_WAIT));
        let mut busy = self.pacing.backoff(self.policy);
        let started = self.pacing.now();
        loop {
            let slot = self.slot();
            let result = tokio::select! {
                r = op(Arc::clone(&slot.session)) => r,
                _ = slot.session.stalled(self.policy.stall_timeout) => {
                    Err(ClientError::Stalled(self.policy.stall_timeout))
                }
            };
            match result {
                Err(e) if e.is_transport() => self.reconnect(slot.generation, e).await?,
                Err(ClientError::Relay(e))
                    if e.error_code() == ErrorCode::RateLimited && rate_waited < rate_budget =>
                {
                    let asked =
                        Duration::from_millis(u64::from(e.retry_after_ms.unwrap_or(1000).max(1)));
                    let wait = asked.min(rate_budget - rate_waited);
                    tracing::debug!(wait_ms = wait.as_millis() as u64, "rate limited; waiting");
                    self.pacing.sleep(wait).await;
                    rate_waited += wait;
                }
                Err(ClientError::Relay(e)) if busy_code(e.error_code()) => {
                    let hint = hint_of(&e);
                    let spent = self.pacing.now().saturating_sub(started);
                    let delay = busy
                        .next_delay()
                        .map(|d| d.max(hint))
                        .filter(|d| self.policy.give_up_after.is_none_or(|l| spent + *d < l));
                    match delay {
                        Some(d) => self.pacing.sleep(d).await,
                        None => return Err(ClientError::Relay(e)),
                    }
                }
                other => return other,
            }
        }
    }

    /// Close the session and every endpoint cleanly (waits a few seconds
    /// at most, for connections to a dead relay to drain). Call it before
    /// dropping the client, on errors too: a dropped endpoint is aborted.
    pub async fn close(&self) {
        let session = self.session();
        session.close_connection();
        if let Some(endpoint) = session.endpoint() {
            self.closer.spawn(close_endpoint(endpoint));
        }
        wait_closed(&self.closer).await;
    }
}

#[cfg(test)]
mod tests;
