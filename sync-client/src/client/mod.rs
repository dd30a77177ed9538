//! `SyncClient` (DESIGN §6): a relay session plus the group's keys — seals
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
//! - [`push`]: messages, files (chunked, pipelined, resumable via journals);
//! - [`pull`]: pull, follow (NOTIFY-driven live sync), subscribe.

pub mod pull;
pub mod push;

pub use pull::{PullSummary, Subscription};
pub use push::{ChunkAck, PushOptions, PushedFile};

use crate::backoff::{Backoff, Jitter, RetryPolicy, os_jitter};
use crate::crypto::{GroupKeys, envelope};
use crate::error::{ClientError, Result};
use crate::session::{ConnectOptions, RelaySession};
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_protocol::{DeviceId, ErrorCode};
use tokio::sync::watch;

/// Longest total wait for RATE_LIMITED answers of one request before the
/// error is returned.
pub const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(300);

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
    },
}

/// How the retry loops wait and draw their jitter: tokio's clock and the
/// OS CSPRNG ([`Pacing::real`], the only one outside this module's unit
/// tests). The tests substitute fixed jitter and a sleeper that records
/// each wait, to check the waits the loops really take.
#[derive(Clone)]
struct Pacing {
    /// A jitter source for each new backoff sequence.
    jitter: fn() -> Jitter,
    /// Waits for the given time.
    sleep: Arc<dyn Fn(Duration) -> BoxFuture<'static, ()> + Send + Sync>,
}

impl Pacing {
    fn real() -> Self {
        Pacing {
            jitter: os_jitter,
            sleep: Arc::new(|d| Box::pin(tokio::time::sleep(d))),
        }
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
    session: Arc<RelaySession>,
}

/// A connected device.
pub struct SyncClient {
    opts: ConnectOptions,
    policy: RetryPolicy,
    pacing: Pacing,
    keys: GroupKeys,
    slot: Mutex<Slot>,
    reconnect_lock: tokio::sync::Mutex<()>,
    link: watch::Sender<LinkState>,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("relay", &self.opts.relay.to_string())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Errors the relay sends at `Hello` that a later attempt may not get.
fn retryable_at_connect(err: &ClientError) -> bool {
    err.is_transport()
        || err.relay_code().is_some_and(|c| {
            matches!(
                c,
                ErrorCode::RateLimited | ErrorCode::Overloaded | ErrorCode::Internal
            )
        })
}

fn retry_hint(err: &ClientError) -> Duration {
    match err {
        ClientError::Relay(e) => Duration::from_millis(u64::from(e.retry_after_ms.unwrap_or(0))),
        _ => Duration::ZERO,
    }
}

/// Connect, retrying per `policy`; `cause` is the failure that made a
/// reconnect necessary (None for the first connect, which tries at once).
async fn connect_retrying(
    opts: &ConnectOptions,
    policy: RetryPolicy,
    pacing: &Pacing,
    link: &watch::Sender<LinkState>,
    cause: Option<ClientError>,
) -> Result<RelaySession> {
    let mut backoff = pacing.backoff(policy);
    let mut last = cause;
    loop {
        if let Some(err) = &last {
            let Some(delay) = backoff.next_delay() else {
                return Err(ClientError::GaveUp {
                    attempts: backoff.attempts(),
                    last: Box::new(last.take().expect("set")),
                });
            };
            let delay = delay.max(retry_hint(err));
            link.send_replace(LinkState::Reconnecting {
                attempt: backoff.attempts(),
                delay,
                error: err.to_string(),
            });
            tracing::info!(attempt = backoff.attempts(), delay_ms = delay.as_millis() as u64, error = %err, "reconnecting");
            pacing.sleep(delay).await;
        }
        match RelaySession::connect(opts).await {
            Ok(session) => return Ok(session),
            Err(e) if retryable_at_connect(&e) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
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
        Self::connect_paced(opts, policy, Pacing::real()).await
    }

    async fn connect_paced(
        opts: &ConnectOptions,
        policy: RetryPolicy,
        pacing: Pacing,
    ) -> Result<SyncClient> {
        let (link, _) = watch::channel(LinkState::Connected { generation: 1 });
        let session = connect_retrying(opts, policy, &pacing, &link, None).await?;
        link.send_replace(LinkState::Connected { generation: 1 });
        Ok(SyncClient {
            opts: opts.clone(),
            policy,
            pacing,
            keys: opts.keys.clone(),
            slot: Mutex::new(Slot {
                generation: 1,
                session: Arc::new(session),
            }),
            reconnect_lock: tokio::sync::Mutex::new(()),
            link,
        })
    }

    fn slot(&self) -> Slot {
        self.slot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current session (limits, raw requests). It may be replaced by a
    /// reconnect at any time.
    pub fn session(&self) -> Arc<RelaySession> {
        self.slot().session
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

    /// Bytes of file content per chunk: the most whose envelope fits the
    /// relay's `max_blob_size`.
    pub fn chunk_size(&self) -> usize {
        envelope::max_body_for(self.session().welcome().max_blob_size as usize).max(1)
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
        old.session.close().await;
        let session = connect_retrying(
            &self.opts,
            self.policy,
            &self.pacing,
            &self.link,
            Some(cause),
        )
        .await?;
        let generation = old.generation + 1;
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Slot {
            generation,
            session: Arc::new(session),
        };
        self.link.send_replace(LinkState::Connected { generation });
        Ok(())
    }

    /// Run `op` on the current session, reconnecting and repeating it on
    /// transport failures and stalls, and waiting out RATE_LIMITED (and,
    /// with backoff, OVERLOADED / INTERNAL) answers. `op` must be safe to
    /// repeat.
    pub async fn call<T, F, Fut>(&self, mut op: F) -> Result<T>
    where
        F: FnMut(Arc<RelaySession>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut rate_waited = Duration::ZERO;
        let mut busy = self.pacing.backoff(self.policy);
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
                    if e.error_code() == ErrorCode::RateLimited
                        && rate_waited < MAX_RATE_LIMIT_WAIT =>
                {
                    let wait =
                        Duration::from_millis(u64::from(e.retry_after_ms.unwrap_or(1000).max(1)));
                    tracing::debug!(wait_ms = wait.as_millis() as u64, "rate limited; waiting");
                    self.pacing.sleep(wait).await;
                    rate_waited += wait;
                }
                Err(ClientError::Relay(e))
                    if matches!(e.error_code(), ErrorCode::Overloaded | ErrorCode::Internal) =>
                {
                    let hint = Duration::from_millis(u64::from(e.retry_after_ms.unwrap_or(0)));
                    match busy.next_delay() {
                        Some(d) => self.pacing.sleep(d.max(hint)).await,
                        None => return Err(ClientError::Relay(e)),
                    }
                }
                other => return other,
            }
        }
    }

    /// Close the session cleanly.
    pub async fn close(&self) {
        self.session().close().await;
    }
}

#[cfg(test)]
mod tests;
