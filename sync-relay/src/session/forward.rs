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

use crate::metrics::Metrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_protocol::limits::HANDSHAKE_MAX_FRAME;
use sync_protocol::{Message, Notify, write_message};
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest a changed head waits for the device's next request before it is
/// sent anyway.
pub const QUIET_RESEND: Duration = Duration::from_secs(1);

/// Counts the requests of a session and wakes the forwarder on each.
#[derive(Debug, Default)]
pub struct Activity {
    requests: AtomicU64,
    wake: tokio::sync::Notify,
}

impl Activity {
    /// Record one request of the device.
    pub fn request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_waiters();
    }

    fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

/// Forward heads from `rx` to `out` until either side goes away.
/// `last_sent` is the head the device already knows (from `Welcome`).
/// `only_own(after, head)` says whether every cursor in `after + 1 ..= head`
/// is the device's own ([`crate::notify::NotifyHub::only_own`]; always
/// `false` for a version-1 session): such a head is taken as known, not sent.
pub async fn forward_notify<W: AsyncWrite + Unpin>(
    mut out: W,
    rx: &mut watch::Receiver<u64>,
    mut last_sent: u64,
    activity: &Activity,
    metrics: &Metrics,
    only_own: &(dyn Fn(u64, u64) -> bool + Send + Sync),
) {
    // When the last Notify was sent, and how many requests had been seen.
    let mut sent: Option<(Instant, u64)> = None;
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
                let frame = Message::Notify(Notify { head });
                if write_message(&mut out, &frame, HANDSHAKE_MAX_FRAME)
                    .await
                    .is_err()
                {
                    return;
                }
                metrics.notifications_sent.inc();
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

    #[tokio::test(start_paused = true)]
    async fn a_device_that_keeps_requesting_sees_every_head_at_once() {
        let (tx, mut rx) = watch::channel(0u64);
        let (writer, mut reader) = tokio::io::duplex(1 << 16);
        let activity = std::sync::Arc::new(Activity::default());
        let metrics = Metrics::new();
        let a = std::sync::Arc::clone(&activity);
        let task = tokio::spawn(async move {
            forward_notify(writer, &mut rx, 0, &a, &metrics, &|_, _| false).await
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
        let task =
            async { forward_notify(writer, &mut rx, 0, &activity, &metrics, &|_, _| false).await };
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
        let task =
            tokio::spawn(
                async move { forward_notify(writer, &mut rx, 0, &a, &metrics, &own).await },
            );
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
