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
//! session's in-flight caps ([`INLINE_BUDGET`] payload bytes and
//! [`INLINE_MAX_FRAMES`] frames sent inline and not yet acknowledged); else
//! the bare `Notify`, and the device pulls. A `Notify` is paced by the
//! device's requests as above; a `Deliver` by those caps: while they allow
//! it, the next `Deliver` goes without waiting for a request, so a device
//! that coalesces its acks is not held up by its own coalescing, and what
//! one that reads nothing can be sent stays capped.

use crate::budget::RelayBudget;
use crate::metrics::Metrics;
use crate::recent::CachedBlob;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_protocol::limits::{
    HANDSHAKE_MAX_FRAME, INLINE_BUDGET, INLINE_MAX_FRAMES, NOTIFY_MAX_FRAME,
};
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

    /// A pull answer ended at `cursor` (its last blob): once the device
    /// has applied it, that is where it is. Takes effect as a `Pull` does,
    /// without acknowledging anything (its blobs are not inline bytes in
    /// flight; a `Deliver` sent meanwhile from an older position is one
    /// the device will not take, and its own next request sets the
    /// position again).
    pub fn answered(&self, cursor: u64) {
        self.position.store(cursor, Ordering::Relaxed);
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
    /// Frames and payload bytes still in flight once the device
    /// acknowledged `acked`.
    fn used(&mut self, acked: u64) -> (usize, usize) {
        while self.0.front().is_some_and(|&(last, _)| last <= acked) {
            self.0.pop_front();
        }
        (self.0.len(), self.0.iter().map(|&(_, bytes)| bytes).sum())
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
    // When the last frame was sent, and how many requests had been seen
    // before it was written (a request that arrives while it is written
    // counts as the next one).
    let mut sent: Option<(Instant, u64)> = None;
    // Whether that frame was a `Deliver`: the next may follow without a
    // request, within the in-flight caps.
    let mut last_inline = false;
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
            let seen = activity.count();
            let requested = match sent {
                None => true,
                Some((at, before)) => seen > before || at.elapsed() >= QUIET_RESEND,
            };
            let attempt = match &inline {
                Some(inline) if requested || last_inline => {
                    Some(try_inline(inline, activity, &mut in_flight, head))
                }
                _ => None,
            };
            match attempt {
                Some(Ok(ready)) => match ready.write(&mut out).await {
                    Ok((position, bytes)) => {
                        activity.position.store(position, Ordering::Relaxed);
                        in_flight.0.push_back((position, bytes));
                        metrics.inline_deliveries.inc();
                        last_inline = true;
                    }
                    Err(()) => return,
                },
                Some(Err(_)) | None if !requested => {
                    // Past the inline caps: wait for the device's next
                    // request (or the resend deadline).
                    if let Some((at, _)) = sent {
                        tokio::select! {
                            _ = wake => {}
                            _ = tokio::time::sleep_until(at + QUIET_RESEND) => {}
                        }
                    }
                    continue;
                }
                attempt => {
                    if let Some(Err(reason)) = attempt {
                        metrics
                            .inline_fallbacks
                            .get_or_create(&crate::metrics::ReasonLabel { reason })
                            .inc();
                    }
                    let frame = Message::Notify(Notify { head });
                    if write_message(&mut out, &frame, HANDSHAKE_MAX_FRAME)
                        .await
                        .is_err()
                    {
                        return;
                    }
                    metrics.notifications_sent.inc();
                    last_inline = false;
                }
            }
            last_sent = head;
            sent = Some((Instant::now(), seen));
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

/// The `Deliver` to send for `head`, or why a bare `Notify` goes instead
/// (the `inline_fallbacks` reason): the device's position is unknown or
/// past `head` (`position`), a blob in between is not cached (large,
/// evicted, pushed elsewhere, expired: `not_cached`), the session's
/// in-flight caps ([`INLINE_BUDGET`], [`INLINE_MAX_FRAMES`]: `budget`) or
/// the relay's byte budget (`relay_budget`) would be exceeded.
fn try_inline(
    inline: &Inline<'_>,
    activity: &Activity,
    in_flight: &mut InFlight,
    head: u64,
) -> Result<Ready, &'static str> {
    let after = activity
        .position()
        .filter(|&p| p < head)
        .ok_or("position")?;
    let (frames, used) = in_flight.used(activity.acked.load(Ordering::Relaxed));
    if frames >= INLINE_MAX_FRAMES {
        return Err("budget");
    }
    let blobs = (inline.recent)(after, head).ok_or("not_cached")?;
    let (deliver, bytes) = deliver_for(inline.device, after, head, &blobs);
    if used + bytes > INLINE_BUDGET {
        return Err("budget");
    }
    let position = deliver.blobs.last().map(|b| b.cursor).ok_or("position")?;
    let frame = encode_frame(&Message::Deliver(deliver));
    if frame.len() > NOTIFY_MAX_FRAME as usize + 4 {
        return Err("budget");
    }
    let reserved = inline.budget.try_take(frame.len()).ok_or("relay_budget")?;
    Ok(Ready {
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
        assert_eq!(f.used(3), (2, 150));
        assert_eq!(f.used(4), (1, 50));
        assert_eq!(f.used(9), (0, 0));
    }

    /// Frames on the stream, with the time each arrived.
    async fn frames(reader: &mut tokio::io::DuplexStream) -> Vec<Message> {
        let mut out = Vec::new();
        while let Ok(Ok(Some(m))) = tokio::time::timeout(
            Duration::from_millis(10),
            read_message(reader, NOTIFY_MAX_FRAME),
        )
        .await
        {
            out.push(m);
        }
        out
    }

    /// Inline deliveries are paced by the in-flight caps, not by requests:
    /// a device that takes them and holds its acks (coalescing) gets each
    /// new blob at once, up to `INLINE_MAX_FRAMES` unacknowledged frames;
    /// then a bare `Notify` once it asks again, and inline again once it
    /// acknowledged them.
    #[tokio::test(start_paused = true)]
    async fn deliveries_go_without_requests_up_to_the_frame_cap() {
        let (tx, mut rx) = watch::channel(0u64);
        let (writer, mut reader) = tokio::io::duplex(1 << 22);
        let activity = Arc::new(Activity::default());
        activity.pulled(0);
        let metrics = Metrics::new();
        let budget = RelayBudget::new(1 << 30, &metrics);
        let recent = |after: u64, head: u64| {
            Some(
                (after + 1..=head)
                    .map(|c| cached(c, 2, 100))
                    .collect::<Vec<_>>(),
            )
        };
        let a = Arc::clone(&activity);
        let task = tokio::spawn(async move {
            let inline = Inline {
                device: DeviceId([1; 32]),
                recent: &recent,
                budget: &budget,
            };
            forward_notify(
                writer,
                &mut rx,
                0,
                &a,
                &metrics,
                &|_, _| false,
                Some(inline),
            )
            .await
        });
        let cap = INLINE_MAX_FRAMES as u64;
        for head in 1..=cap {
            tx.send(head).unwrap();
            tokio::task::yield_now().await;
            let got = frames(&mut reader).await;
            assert!(
                matches!(got.as_slice(), [Message::Deliver(d)] if d.after == head - 1 && d.head == head),
                "head {head}: one Deliver at once, no request needed: {got:?}"
            );
        }
        // At the cap: nothing until the device asks again (or a second).
        tx.send(cap + 1).unwrap();
        tokio::task::yield_now().await;
        assert!(frames(&mut reader).await.is_empty(), "held at the cap");
        activity.request();
        tokio::task::yield_now().await;
        let got = frames(&mut reader).await;
        assert!(
            matches!(got.as_slice(), [Message::Notify(n)] if n.head == cap + 1),
            "a bare Notify once it asks: {got:?}"
        );
        // Acknowledged: inline again, from where the device said it is.
        activity.acked(cap);
        activity.request();
        tx.send(cap + 2).unwrap();
        tokio::task::yield_now().await;
        let got = frames(&mut reader).await;
        assert!(
            matches!(got.as_slice(), [Message::Deliver(d)] if d.after == cap && d.head == cap + 2),
            "inline again after the ack: {got:?}"
        );
        drop(tx);
        task.await.unwrap();
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
