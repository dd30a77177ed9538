//! Memory budgets for what peers make the relay hold (issue 10, items 3–4).
//!
//! Every byte a peer can make the relay buffer in its own code is reserved
//! here **before** it is read or built, in two tiers:
//!
//! - per session: request bodies being read (at most
//!   `limits.session_request_frames` × `max_frame` bytes) and, separately,
//!   response frames being written (at most `limits.session_response_frames`
//!   × `max_frame`);
//! - relay-wide: both together over all sessions (at most
//!   `limits.max_bytes_in_flight`).
//!
//! A **request** that does not fit is refused at once (RATE_LIMITED when the
//! session is over its share, OVERLOADED when the relay is), never queued: a
//! queued request would leave its body in the QUIC receive window, where it
//! could block the stream that holds the budget. A **response** waits for its
//! session's share (the session's own earlier responses free it, or their
//! write deadline cuts the session off) and for the relay-wide budget for at
//! most `limits.request_timeout_s`, then gets OVERLOADED.
//!
//! What QUIC itself buffers is bounded by the transport windows
//! ([`crate::endpoint::transport_config`]); connections that have not sent
//! their `Hello` are counted by [`PendingHellos`].

use crate::metrics::Metrics;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Retry hint (ms) for a request refused because its session already has
/// `session_request_frames` of request bodies being read: one of them is
/// usually done within this.
pub const SESSION_BUSY_RETRY_MS: u32 = 250;
/// Retry hint (ms) for a request refused because the relay-wide budget is
/// spent.
pub const RELAY_BUSY_RETRY_MS: u32 = 1_000;

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The session's own share is in use (answer RATE_LIMITED).
    Session,
    /// The relay-wide budget is in use (answer OVERLOADED).
    Relay,
}

impl Exhausted {
    /// The `kind` label of `budget_refusals_total`.
    pub fn name(self) -> &'static str {
        match self {
            Exhausted::Session => "session",
            Exhausted::Relay => "relay",
        }
    }
}

/// The relay-wide byte budget, shared by every session.
#[derive(Debug, Clone)]
pub struct RelayBudget {
    bytes: Arc<Semaphore>,
    in_flight: Gauge,
}

impl RelayBudget {
    /// A budget of `max_bytes` bytes (capped at what a semaphore can count);
    /// `in_flight` is kept at the reserved total (the `bytes_in_flight`
    /// metric).
    pub fn new(max_bytes: u64, metrics: &Metrics) -> Self {
        let permits = usize::try_from(max_bytes)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        RelayBudget {
            bytes: Arc::new(Semaphore::new(permits)),
            in_flight: metrics.bytes_in_flight.clone(),
        }
    }

    /// Bytes not reserved right now.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Reserve `bytes` of the relay-wide budget now or never (`None`):
    /// for a frame the relay may replace by a smaller one when the budget
    /// is spent (an inline `Deliver`, sent as a bare `Notify` instead).
    pub fn try_take(&self, bytes: usize) -> Option<RelayReservation> {
        let permit = Arc::clone(&self.bytes)
            .try_acquire_many_owned(permits(bytes))
            .ok()?;
        self.in_flight.inc_by(permit.num_permits() as i64);
        Some(RelayReservation {
            permit,
            in_flight: self.in_flight.clone(),
        })
    }
}

/// Bytes held of the relay-wide budget only ([`RelayBudget::try_take`]);
/// given back on drop.
#[derive(Debug)]
pub struct RelayReservation {
    permit: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Drop for RelayReservation {
    fn drop(&mut self) {
        self.in_flight.dec_by(self.permit.num_permits() as i64);
    }
}

/// One session's shares of the byte budget.
#[derive(Debug)]
pub struct SessionBudget {
    relay: RelayBudget,
    requests: Arc<Semaphore>,
    responses: Arc<Semaphore>,
}

/// Bytes held for one request body or response frame; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    session: OwnedSemaphorePermit,
    relay: OwnedSemaphorePermit,
    in_flight: Gauge,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.relay.num_permits()
    }

    /// Give back everything above `bytes` (a response frame turned out
    /// smaller than the `max_frame` reserved for it).
    pub fn shrink_to(&mut self, bytes: usize) {
        let excess = self.bytes().saturating_sub(bytes);
        if excess > 0 {
            drop(self.session.split(excess));
            drop(self.relay.split(excess));
            self.in_flight.dec_by(excess as i64);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_flight.dec_by(self.relay.num_permits() as i64);
    }
}

fn permits(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl SessionBudget {
    /// Shares of `request_bytes` and `response_bytes` for a new session,
    /// drawing on `relay`.
    pub fn new(relay: &RelayBudget, request_bytes: usize, response_bytes: usize) -> Self {
        SessionBudget {
            relay: relay.clone(),
            requests: Arc::new(Semaphore::new(request_bytes.min(Semaphore::MAX_PERMITS))),
            responses: Arc::new(Semaphore::new(response_bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    fn reservation(
        &self,
        session: OwnedSemaphorePermit,
        relay: OwnedSemaphorePermit,
    ) -> Reservation {
        self.relay.in_flight.inc_by(relay.num_permits() as i64);
        Reservation {
            session,
            relay,
            in_flight: self.relay.in_flight.clone(),
        }
    }

    /// Reserve `bytes` for a request body about to be read, now or never.
    /// Errors: which tier is spent.
    pub fn try_request(&self, bytes: usize) -> Result<Reservation, Exhausted> {
        let n = permits(bytes);
        let session = Arc::clone(&self.requests)
            .try_acquire_many_owned(n)
            .map_err(|_| Exhausted::Session)?;
        let relay = Arc::clone(&self.relay.bytes)
            .try_acquire_many_owned(n)
            .map_err(|_| Exhausted::Relay)?;
        Ok(self.reservation(session, relay))
    }

    /// Grow `reservation` to `bytes`, now or never (`false`: it is
    /// unchanged).
    pub fn try_grow(&self, reservation: &mut Reservation, bytes: usize) -> bool {
        let n = permits(bytes.saturating_sub(reservation.bytes()));
        if n == 0 {
            return true;
        }
        let Ok(session) = Arc::clone(&self.responses).try_acquire_many_owned(n) else {
            return false;
        };
        let Ok(relay) = Arc::clone(&self.relay.bytes).try_acquire_many_owned(n) else {
            return false;
        };
        reservation.session.merge(session);
        reservation.relay.merge(relay);
        self.relay.in_flight.inc_by(i64::from(n));
        true
    }

    /// Reserve `bytes` for a response frame about to be built: waits for
    /// the session's share as long as it takes, then for the relay-wide
    /// budget at most `relay_wait`. Errors: [`Exhausted::Relay`] when that
    /// wait ran out.
    pub async fn response(
        &self,
        bytes: usize,
        relay_wait: Duration,
    ) -> Result<Reservation, Exhausted> {
        let n = permits(bytes);
        let session = Arc::clone(&self.responses)
            .acquire_many_owned(n)
            .await
            .map_err(|_| Exhausted::Session)?;
        let relay = tokio::time::timeout(
            relay_wait,
            Arc::clone(&self.relay.bytes).acquire_many_owned(n),
        )
        .await
        .map_err(|_| Exhausted::Relay)?
        .map_err(|_| Exhausted::Relay)?;
        Ok(self.reservation(session, relay))
    }
}

/// Why an answer frame was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The stream or connection failed (the device went away).
    #[error("stream error: {0}")]
    Stream(#[from] std::io::Error),
    /// The frame is over the session's `max_frame` (a relay bug; nothing
    /// was written).
    #[error("answer frame of {len} bytes exceeds max_frame {max}")]
    TooLarge {
        /// Body bytes.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// The device did not take the frame within its deadline.
    #[error("the device took no answer of {len} bytes within {allowed:?}")]
    Deadline {
        /// Frame bytes.
        len: usize,
        /// The deadline it had.
        allowed: Duration,
    },
}

/// Write one encoded frame (length prefix included) to `out` within
/// `allowed` ([`crate::context::RelayContext::transfer_deadline`] of its
/// length). A device that stops reading fills its QUIC windows and then
/// blocks the write: the deadline is what ends it.
pub async fn write_frame<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    frame: &[u8],
    max_frame: u32,
    allowed: Duration,
) -> Result<(), WriteError> {
    use tokio::io::AsyncWriteExt;
    let body = frame
        .len()
        .saturating_sub(sync_protocol::limits::FRAME_HEADER_LEN);
    if body > max_frame as usize {
        return Err(WriteError::TooLarge {
            len: body,
            max: max_frame,
        });
    }
    match tokio::time::timeout(allowed, out.write_all(frame)).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(WriteError::Deadline {
            len: frame.len(),
            allowed,
        }),
    }
}

/// [`write_frame`] for a frame whose payloads are borrowed from its message
/// ([`sync_protocol::encode_frame_segments`]): the same checks and deadline,
/// without the copy of every payload into one frame buffer.
pub async fn write_frame_segments<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    frame: &sync_protocol::FrameSegments<'_>,
    max_frame: u32,
    allowed: Duration,
) -> Result<(), WriteError> {
    let body = frame
        .len()
        .saturating_sub(sync_protocol::limits::FRAME_HEADER_LEN);
    if body > max_frame as usize {
        return Err(WriteError::TooLarge {
            len: body,
            max: max_frame,
        });
    }
    match tokio::time::timeout(allowed, sync_protocol::write_segments(out, frame)).await {
        Ok(written) => Ok(written?),
        Err(_) => Err(WriteError::Deadline {
            len: frame.len(),
            allowed,
        }),
    }
}

/// Counts connections that have not had their `Hello` answered yet (TLS
/// handshake included), up to a cap: over it, a new connection is refused
/// before its handshake.
#[derive(Debug)]
pub struct PendingHellos {
    count: AtomicUsize,
    max: usize,
}

/// One counted connection; uncounted on drop.
#[derive(Debug)]
pub struct PendingHello(Arc<PendingHellos>);

impl PendingHellos {
    /// A counter allowing `max` connections at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(PendingHellos {
            count: AtomicUsize::new(0),
            max,
        })
    }

    /// Count one more connection, unless `max` are already counted.
    pub fn try_enter(self: &Arc<Self>) -> Option<PendingHello> {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| PendingHello(Arc::clone(self)))
    }

    /// Connections counted now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for PendingHello {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_refused_by_the_tier_that_is_spent() {
        let metrics = Metrics::new();
        let relay = RelayBudget::new(1000, &metrics);
        let a = SessionBudget::new(&relay, 600, 100);
        let b = SessionBudget::new(&relay, 600, 100);
        let held = a.try_request(500).unwrap();
        assert_eq!(a.try_request(200).unwrap_err(), Exhausted::Session);
        let held_b = b.try_request(500).unwrap();
        assert_eq!(metrics.bytes_in_flight.get(), 1000);
        assert_eq!(b.try_request(1).unwrap_err(), Exhausted::Relay);
        // A refused request holds nothing.
        assert_eq!(relay.available(), 0);
        drop(held);
        assert_eq!(relay.available(), 500);
        b.try_request(100).unwrap();
        drop(held_b);
        assert_eq!(relay.available(), 1000);
        assert_eq!(metrics.bytes_in_flight.get(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn responses_wait_for_their_share_and_shrink() {
        let metrics = Metrics::new();
        let relay = RelayBudget::new(1000, &metrics);
        let s = SessionBudget::new(&relay, 100, 400);
        let wait = Duration::from_secs(5);
        let mut first = s.response(400, wait).await.unwrap();
        first.shrink_to(150);
        assert_eq!(first.bytes(), 150);
        assert_eq!(relay.available(), 850);
        assert_eq!(metrics.bytes_in_flight.get(), 150);
        // 300 does not fit the session's remaining 250 until `first` goes.
        let second = s.response(300, wait);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut second)
                .await
                .is_err()
        );
        drop(first);
        let mut second = second.await.unwrap();
        assert_eq!(second.bytes(), 300);
        assert_eq!(metrics.bytes_in_flight.get(), 300);
        // Growing takes what is free, now or never.
        assert!(s.try_grow(&mut second, 400));
        assert_eq!((second.bytes(), metrics.bytes_in_flight.get()), (400, 400));
        assert!(!s.try_grow(&mut second, 401), "over the session's 400");
        assert_eq!((second.bytes(), metrics.bytes_in_flight.get()), (400, 400));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_gives_up_on_a_spent_relay_budget_after_the_wait() {
        let metrics = Metrics::new();
        let relay = RelayBudget::new(500, &metrics);
        let a = SessionBudget::new(&relay, 500, 500);
        let b = SessionBudget::new(&relay, 500, 500);
        let _held = a.response(500, Duration::from_secs(1)).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            b.response(10, Duration::from_secs(5)).await.unwrap_err(),
            Exhausted::Relay
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        // The session share taken for the failed attempt was given back.
        assert_eq!(b.responses.available_permits(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_nobody_reads_ends_at_its_deadline() {
        use tokio::io::AsyncReadExt;
        let frame = vec![0u8; 4096];
        let allowed = Duration::from_secs(3);
        // The reader exists but never reads: 1 KiB of buffer, then nothing.
        let (mut writer, _unread) = tokio::io::duplex(1024);
        let started = tokio::time::Instant::now();
        match write_frame(&mut writer, &frame, 8192, allowed).await {
            Err(WriteError::Deadline { len: 4096, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(started.elapsed(), allowed);
        // A reader that keeps reading gets the whole frame.
        let (mut writer, mut reader) = tokio::io::duplex(1024);
        let drain = tokio::spawn(async move {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        write_frame(&mut writer, &frame, 8192, allowed)
            .await
            .unwrap();
        drop(writer);
        assert_eq!(drain.await.unwrap(), 4096);
        assert!(matches!(
            write_frame(&mut tokio::io::sink(), &frame, 100, allowed).await,
            Err(WriteError::TooLarge {
                len: 4092,
                max: 100
            })
        ));
    }

    #[test]
    fn pending_hellos_are_capped_and_counted_down_on_drop() {
        let p = PendingHellos::new(2);
        let a = p.try_enter().unwrap();
        let _b = p.try_enter().unwrap();
        assert!(p.try_enter().is_none());
        assert_eq!(p.count(), 2);
        drop(a);
        assert!(p.try_enter().is_some());
    }
}
