//! The NOTIFY stream of one session (docs/protocol.md, §5.5): forwards the group's
//! head as `Notify` frames, **coalesced by the reader's own pace**.
//!
//! QUIC flow control alone would let a session that never reads buffer a
//! stream window's worth of stale notifications. So after sending a
//! `Notify`, the forwarder sends the next one only once the device has made
//! a request since (a device that was told "new data" pulls, and its request
//! is the sign it is ready for more), or after [`QUIET_RESEND`] at the
//! latest. A device that follows sees every head change without delay; one
//! that reads slowly or not at all gets at most one notification per
//! [`QUIET_RESEND`], always the newest head — never a backlog.
//!
//! A head that only the device's own pushes moved is not sent at all on a
//! version-2 session (docs/protocol.md "Version 2: no echo"): the device
//! learnt it from its `PushOk`, and pulling would bring nothing but the
//! marker of its own blobs.
//!
//! On a version-3 session (docs/protocol.md "Version 3: inline delivery")
//! the forwarder sends, in place of the `Notify`, a `Deliver` with the new
//! blobs after the device's position when they are all small, all in the
//! group's cache of committed blobs ([`crate::recent`]) and fit the
//! session's in-flight budget ([`INLINE_BUDGET`] bytes sent inline and not
//! yet acknowledged); else the bare `Notify`, and the device pulls. The
//! pacing above holds for both.

use crate::budget::RelayBudget;
use crate::metrics::Metrics;
use crate::recent::CachedBlob;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_protocol::limits::{HANDSHAKE_MAX_FRAME, INLINE_BUDGET, NOTIFY_MAX_FRAME};
use sync_protocol::{Deliver, DeviceId, Message, Notify, PulledBlob, encode_frame, write_message};
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest a changed head waits for the device's next request before it is
/// sent anyway.
pub const QUIET_RESEND: Duration = Duration::from_secs(1);

/// [`Activity`]'s position before the device has said where it is.
const UNKNOWN: u64 = u64::MAX;

/// Counts the requests of a session and wakes the forwarder on each; and
/// what the device said it holds (for inline delivery).
#[derive(Debug)]
pub struct Activity {
    requests: AtomicU64,
    wake: tokio::sync::Notify,
    /// The cursor the device is believed to hold everything up to
    /// ([`UNKNOWN`] until its first `Pull` or `Ack`).
    position: AtomicU64,
    /// The highest cursor the device acknowledged (`Ack`, or a `Pull`'s
    /// `after`) in this session: inline bytes up to it are no longer in
    /// flight.
    acked: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            requests: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            position: AtomicU64::new(UNKNOWN),
            acked: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Record one request of the device.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    /// The device asked for blobs after `after` (a `Pull`): that is where
    /// it is, whatever was believed before, and it holds everything up to
    /// `after`. Call before [`Activity::request`].
    pub fn pulled(&self, after: u64) {
        self.position.store(after, Ordering::Relaxed);
        self.acked.fetch_max(after, Ordering::Relaxed);
    }

    /// The device acknowledged `cursor` (an `Ack`). Call before
    /// [`Activity::request`].
    pub fn acked(&self, cursor: u64) {
        self.acked.fetch_max(cursor, Ordering::Relaxed);
        let _ = self
            .position
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                (p == UNKNOWN || p < cursor).then_some(cursor)
            });
    }

    fn position(&self) -> Option<u64> {
        Some(self.position.load(Ordering::Relaxed)).filter(|&p| p != UNKNOWN)
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// What a version-3 session's forwarder needs to send blobs inline.
pub struct Inline<'a> {
    /// The session's device: its own blobs go only as a marker.
    pub device: DeviceId,
    /// The group's cached blobs in `after + 1 ..= head`, when all are there
    /// ([`crate::notify::NotifyHub::recent`]).
    pub recent: &'a (dyn Fn(u64, u64) -> Option<Vec<Arc<CachedBlob>>> + Send + Sync),
    /// The relay-wide byte budget a `Deliver` frame is reserved from.
    pub budget: &'a RelayBudget,
}

/// Inline payload bytes sent and not yet acknowledged, per `Deliver`.
#[derive(Debug, Default)]
struct InFlight(VecDeque<(u64, usize)>);

impl InFlight {
    /// Bytes still in flight once the device acknowledged `acked`.
    fn used(&mut self, acked: u64) -> usize {
        while self.0.front().is_some_and(|&(last, _)| last <= acked) {
            self.0.pop_front();
        }
        self.0.iter().map(|&(_, bytes)| bytes).sum()
    }
}

/// The `Deliver` of `blobs` (every cursor in `after + 1 ..= head`, in
/// order) for `device`, and its payload bytes: `device`'s own blobs are
/// left out, the last of them kept as an empty-payload marker when the
/// range ends with it (docs/protocol.md "Version 2: no echo").
pub fn deliver_for(
    device: DeviceId,
    after: u64,
    head: u64,
    blobs: &[Arc<CachedBlob>],
) -> (Deliver, usize) {
    let mut out = Vec::with_capacity(blobs.len());
    let mut bytes = 0;
    for (i, cached) in blobs.iter().enumerate() {
        let b = &cached.blob;
        let last = i + 1 == blobs.len();
        if b.sender == device {
            if last {
                out.push(PulledBlob {
                    payload: Vec::new(),
                    ..b.clone()
                });
            }
            continue;
        }
        bytes += b.payload.len();
        out.push(b.clone());
    }
    (
        Deliver {
            after,
            blobs: out,
            head,
        },
        bytes,
    )
}

/// Forward heads from `rx` to `out` until either side goes away.
/// `last_sent` is the head the device already knows (from `Welcome`).
/// `only_own(after, head)` says whether every cursor in `after + 1 ..= head`
/// is the device's own ([`crate::notify::NotifyHub::only_own`]; always
/// `false` for a version-1 session): such a head is taken as known, not sent.
/// With `inline` (a version-3 session) new blobs go inline when they can.
pub async fn forward_notify<W: AsyncWrite + Unpin>(
    mut out: W,
    rx: &mut watch::Receiver<u64>,
    mut last_sent: u64,
    activity: &Activity,
    metrics: &Metrics,
    only_own: &(dyn Fn(u64, u64) -> bool + Send + Sync),
    inline: Option<Inline<'_>>,
) {
    // When the last Notify was sent, and how many requests had been seen.
    let mut sent: Option<(Instant, u64)> = None;
    let mut in_flight = InFlight::default();
    loop {
        // Registered before the request count is read, so a request that
        // arrives in between still wakes us.
        let wake = activity.wake.notified();
        tokio::pin!(wake);
        wake.as_mut().enable();
        let head = *rx.borrow_and_update();
        if head > last_sent && only_own(last_sent, head) {
            last_sent = head;
        }
        if head > last_sent {
            let ready = match sent {
                None => true,
                Some((at, seen)) => activity.count() > seen || at.elapsed() >= QUIET_RESEND,
            };
            if ready {
                let delivered = match &inline {
                    Some(inline) => {
                        match try_inline(inline, activity, &mut in_flight, head, metrics) {
                            Some(ready) => Some(ready.write(&mut out).await),
                            None => None,
                        }
                    }
                    None => None,
                };
                match delivered {
                    Some(Ok((position, bytes))) => {
                        activity.position.store(position, Ordering::Relaxed);
                        in_flight.0.push_back((position, bytes));
                        metrics.inline_deliveries.inc();
                    }
                    Some(Err(())) => return,
                    None => {
                        let frame = Message::Notify(Notify { head });
                        if write_message(&mut out, &frame, HANDSHAKE_MAX_FRAME)
                            .await
                            .is_err()
                        {
                            return;
                        }
                        metrics.notifications_sent.inc();
                    }
                }
                last_sent = head;
                sent = Some((Instant::now(), activity.count()));
            } else if let Some((at, _)) = sent {
                // Wait for the device's next request or the resend deadline.
                tokio::select! {
                    _ = wake => {}
                    _ = tokio::time::sleep_until(at + QUIET_RESEND) => {}
                }
                continue;
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// A `Deliver` frame ready to write, with its reservation.
struct Ready {
    frame: Vec<u8>,
    position: u64,
    bytes: usize,
    _reserved: crate::budget::RelayReservation,
}

impl Ready {
    /// Write the frame; the position and bytes it puts in flight.
    async fn write<W: AsyncWrite + Unpin>(self, out: &mut W) -> Result<(u64, usize), ()> {
        use tokio::io::AsyncWriteExt;
        match out.write_all(&self.frame).await {
            Ok(()) => Ok((self.position, self.bytes)),
            Err(_) => Err(()),
        }
    }
}

/// The `Deliver` to send for `head`, or `Ok(None)` for a bare `Notify`:
/// the device's position is unknown or past `head`, a blob in between is
/// not cached (large, evicted, pushed elsewhere, expired), the session's
/// in-flight budget or the relay's would be exceeded.
fn try_inline(
    inline: &Inline<'_>,
    activity: &Activity,
    in_flight: &mut InFlight,
    head: u64,
    metrics: &Metrics,
) -> Option<Ready> {
    let fallback = |reason: &'static str| {
        metrics
            .inline_fallbacks
            .get_or_create(&crate::metrics::ReasonLabel { reason })
            .inc();
        None
    };
    let Some(after) = activity.position().filter(|&p| p < head) else {
        return fallback("position");
    };
    let Some(blobs) = (inline.recent)(after, head) else {
        return fallback("not_cached");
    };
    let (deliver, bytes) = deliver_for(inline.device, after, head, &blobs);
    let used = in_flight.used(activity.acked.load(Ordering::Relaxed));
    if used + bytes > INLINE_BUDGET {
        return fallback("budget");
    }
    let Some(position) = deliver.blobs.last().map(|b| b.cursor) else {
        return fallback("position");
    };
    let frame = encode_frame(&Message::Deliver(deliver));
    if frame.len() > NOTIFY_MAX_FRAME as usize + 4 {
        return fallback("budget");
    }
    let Some(reserved) = inline.budget.try_take(frame.len()) else {
        return fallback("relay_budget");
    };
    Some(Ready {
        frame,
        position,
        bytes,
        _reserved: reserved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sync_protocol::read_message;

    async fn notifies(reader: &mut tokio::io::DuplexStream) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(Ok(Some(Message::Notify(n)))) =
            tokio::time::timeout(Duration::from_millis(10), read_message(reader, 4096)).await
        {
            out.push(n.head);
        }
        out
    }

    fn cached(cursor: u64, sender: u8, size: usize) -> Arc<CachedBlob> {
        Arc::new(crate::recent::cached(
            cursor,
            sync_protocol::BlobId([cursor as u8; 16]),
            DeviceId([sender; 32]),
            0,
            vec![sender; size],
            i64::MAX,
        ))
    }

    #[test]
    fn a_delivery_leaves_out_own_blobs_but_marks_where_they_end() {
        let me = DeviceId([1; 32]);
        let range = [cached(5, 1, 10), cached(6, 2, 20), cached(7, 1, 30)];
        let (d, bytes) = deliver_for(me, 4, 7, &range);
        assert_eq!((d.after, d.head, bytes), (4, 7, 20));
        let got: Vec<(u64, usize)> = d
            .blobs
            .iter()
            .map(|b| (b.cursor, b.payload.len()))
            .collect();
        assert_eq!(got, vec![(6, 20), (7, 0)], "own 5 left out, own 7 a marker");
        let (d, bytes) = deliver_for(me, 4, 6, &range[..2]);
        assert_eq!(bytes, 20);
        assert_eq!(
            d.blobs.iter().map(|b| b.cursor).collect::<Vec<_>>(),
            vec![6]
        );
    }

    #[test]
    fn the_position_is_where_the_device_last_pulled_from_or_acknowledged() {
        let a = Activity::default();
        assert_eq!(a.position(), None, "unknown until the device says");
        a.acked(3);
        assert_eq!(a.position(), Some(3));
        a.acked(2);
        assert_eq!(a.position(), Some(3), "an older ack does not move it back");
        a.pulled(1);
        assert_eq!(a.position(), Some(1), "a pull says where the device is");
        assert_eq!(a.acked.load(Ordering::Relaxed), 3);
        let mut f = InFlight::default();
        f.0.extend([(4, 100), (6, 50)]);
        assert_eq!(f.used(3), 150);
        assert_eq!(f.used(4), 50);
        assert_eq!(f.used(9), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_device_that_keeps_requesting_sees_every_head_at_once() {
        let (tx, mut rx) = watch::channel(0u64);
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let activity = std::sync::Arc::new(Activity::default());
        let metrics = Metrics::new();
        let a = std::sync::Arc::clone(&activity);
        let task = tokio::spawn(async move {
            forward_notify(writer, &mut rx, 0, &a, &metrics, &|_, _| false, None).await
        });
        for head in 1..=5 {
            tx.send(head).unwrap();
            tokio::task::yield_now().await;
            assert_eq!(notifies(&mut reader).await, vec![head], "no waiting");
            activity.request(); // the device pulls
        }
        drop(tx);
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_device_gets_the_newest_head_once_per_second() {
        let (tx, mut rx) = watch::channel(0u64);
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let activity = Activity::default();
        let metrics = Metrics::new();
        let task = async {
            forward_notify(writer, &mut rx, 0, &activity, &metrics, &|_, _| false, None).await
        };
        let pushes = async {
            for head in 1..=2000u64 {
                tx.send(head).unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            let seen = notifies(&mut reader).await;
            drop(tx);
            seen
        };
        let (_, seen) = tokio::join!(task, pushes);
        assert_eq!(seen.first(), Some(&1));
        assert_eq!(seen.last(), Some(&2000), "ends on the newest head");
        assert!(seen.len() <= 4, "one per second, not 2000: {seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn heads_moved_only_by_the_devices_own_pushes_are_not_sent() {
        let (tx, mut rx) = watch::channel(0u64);
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let activity = std::sync::Arc::new(Activity::default());
        let metrics = Metrics::new();
        let a = std::sync::Arc::clone(&activity);
        // Cursors 1..=2 and 4 are the device's own; 3 and 5 someone else's.
        let own = |after: u64, head: u64| (after + 1..=head).all(|c| [1, 2, 4].contains(&c));
        let task = tokio::spawn(async move {
            forward_notify(writer, &mut rx, 0, &a, &metrics, &own, None).await
        });
        let mut seen = Vec::new();
        for head in 1..=5 {
            tx.send(head).unwrap();
            tokio::task::yield_now().await;
            seen.extend(notifies(&mut reader).await);
            activity.request();
        }
        assert_eq!(seen, vec![3, 5], "only heads that moved past others' blobs");
        drop(tx);
        task.await.unwrap();
    }
}
