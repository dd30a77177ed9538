//! Pulling: everything after the local cursor, applied through
//! [`Receiver`]; following (pull whenever NOTIFY says the head moved, riding
//! through reconnects); and [`SyncClient::subscribe`], the same as a stream
//! of events.

use super::acks::AckCoalescer;
use super::{LinkState, SyncClient};
use crate::error::{ClientError, Result};
use crate::receive::{PullEvent, Receiver, gap_events, withheld_events};
use crate::session::RelaySession;
use crate::state::StateStore;
use serde::Serialize;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use sync_protocol::limits::{INLINE_BUDGET, INLINE_MAX_FRAMES};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Blobs asked for per pull request.
pub const PULL_LIMIT: u32 = 1000;

/// What a `pull` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PullSummary {
    /// Local cursor after the pull: the cursor of the last blob the relay
    /// delivered (never a head it merely announced).
    pub cursor: u64,
    /// Group head reported by the relay (as the relay says; not trusted).
    pub head: u64,
    /// Blobs received (including this device's own, which are not applied
    /// again, and on a version-2 session the markers standing for them).
    pub blobs: u64,
    /// Files completed (conflict copies included).
    pub files: u64,
    /// Of those, files saved beside a local file of the same name (conflict
    /// copies).
    pub conflicts: u64,
    /// Older versions of files not written.
    pub outdated: u64,
    /// Blobs rejected.
    pub rejected: u64,
    /// Ranges of sequence numbers reported withheld (`withheld` events):
    /// other members saw them, the relay never delivered them here.
    pub withheld: u64,
}

impl SyncClient {
    /// Pull everything after the local cursor, applying it into `out_dir`,
    /// until the relay has nothing more; then report sequence gaps and
    /// withheld numbers and acknowledge the cursor. The state is saved periodically and at the end of each request, so an
    /// interruption (crash, lost connection) resumes from the last frame.
    /// Lost connections and stalls are retried per the [`RetryPolicy`].
    /// Errors: [`ClientError::Relay`], [`ClientError::GaveUp`],
    /// [`ClientError::Protocol`], [`ClientError::Io`] (local writes).
    ///
    /// [`RetryPolicy`]: crate::backoff::RetryPolicy
    pub async fn pull(
        &self,
        state: &mut StateStore,
        out_dir: &Path,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<PullSummary> {
        let summary = self.pull_unacked(state, out_dir, events).await?;
        if summary.cursor > 0 {
            self.send_ack(summary.cursor).await?;
        }
        Ok(summary)
    }

    async fn send_ack(&self, cursor: u64) -> Result<()> {
        self.call(|s| async move { s.ack(cursor).await }).await?;
        Ok(())
    }

    /// As [`SyncClient::pull`] without the acknowledgement (the follower
    /// coalesces them: [`super::acks`]).
    async fn pull_unacked(
        &self,
        state: &mut StateStore,
        out_dir: &Path,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<PullSummary> {
        let receiver = Receiver::new(self.keys(), self.device_id(), out_dir);
        receiver.recover(state, events)?;
        let mut summary = PullSummary::default();
        let mut count = |e: PullEvent, summary: &mut PullSummary| {
            match &e {
                PullEvent::File { .. } => summary.files += 1,
                PullEvent::Conflict { .. } => {
                    summary.files += 1;
                    summary.conflicts += 1;
                }
                PullEvent::Outdated { .. } => summary.outdated += 1,
                PullEvent::Rejected { .. } => summary.rejected += 1,
                PullEvent::Withheld { .. } => summary.withheld += 1,
                _ => {}
            }
            events(e);
        };
        loop {
            // One request per round through the client's retry loop
            // (`SyncClient::call`): reconnects, stalls and RATE_LIMITED are
            // handled, and bounded, there as for every other request.
            // The round's future borrows the state through `shared`, not
            // through the closure, so each retry can make a new one.
            let round = {
                let mut sink = |e| count(e, &mut summary);
                let shared = tokio::sync::Mutex::new((&mut *state, &mut sink));
                let shared = &shared;
                let receiver = &receiver;
                self.call(|session| async move {
                    let mut guard = shared.lock().await;
                    let (state, sink) = &mut *guard;
                    pull_round(&session, state, receiver, *sink).await
                })
                .await?
            };
            summary.blobs += round.received;
            summary.head = summary.head.max(round.head);
            // Done when a round brought nothing, or reached the head the
            // relay announced with it: asking again only to hear "nothing"
            // would cost a round trip per pull, and under a steady stream
            // of pushes a follower would never leave its pull loop to take
            // inline deliveries (each round finding the next blob).
            if round.received == 0 || state.state.cursor >= round.head {
                break;
            }
        }
        for event in gap_events(&state.state)
            .into_iter()
            .chain(withheld_events(&state.state))
        {
            count(event, &mut summary);
        }
        summary.cursor = state.state.cursor;
        Ok(summary)
    }

    /// Pull now and then whenever NOTIFY announces a head past the local
    /// cursor, until `stop` resolves. Reconnects by itself after relay
    /// restarts and network drops (per the retry policy; give it
    /// `max_attempts: None` to never give up) and pulls again on every new
    /// connection, so nothing pushed meanwhile is missed.
    pub async fn follow(
        &self,
        state: &mut StateStore,
        out_dir: &Path,
        events: &mut (dyn FnMut(PullEvent) + Send),
        stop: impl Future<Output = ()>,
    ) -> Result<()> {
        tokio::pin!(stop);
        let mut link = self.link_state();
        // Acks coalesced (`super::acks`); stopping sends the last one.
        let mut acks = AckCoalescer::new(self.ack_interval());
        // Frames and payload bytes taken inline since the last ack (see
        // `ack_delivery`).
        let mut inline_unacked = (0usize, 0usize);
        loop {
            let summary = tokio::select! {
                _ = &mut stop => return self.final_ack(&mut acks, state).await,
                s = self.pull_unacked(state, out_dir, events) => s?,
            };
            if let Some(cursor) = acks.offer(summary.cursor, Instant::now()) {
                self.send_ack(cursor).await?;
                acks.acked(cursor, Instant::now());
                inline_unacked = (0, 0);
            }
            events(PullEvent::Synced {
                cursor: summary.cursor,
                head: summary.head,
            });
            // Wait until the head moves past what the last pull saw (or the
            // session dies). The cursor alone is no measure: it stays at the
            // last blob delivered, below a head whose newest blobs expired.
            let mut seen = summary.head.max(state.state.cursor);
            loop {
                let slot = self.slot();
                let mut heads = slot.session.heads();
                // The head first, then the blobs the relay sent inline
                // (docs/protocol.md "Version 3: inline delivery"): a
                // `Deliver` is queued before its head is published, so
                // every delivery behind the head read here is taken before
                // deciding to pull; one that takes the device to its head
                // spares the pull.
                let head = *heads.borrow_and_update();
                while let Some(delivery) = slot.session.try_delivery() {
                    if let Some(taken) = self
                        .take_delivery(&slot.session, delivery, state, out_dir, events)
                        .await?
                    {
                        seen = seen.max(taken.head);
                        self.ack_delivery(
                            &mut acks,
                            &mut inline_unacked,
                            state.state.cursor,
                            taken.bytes,
                        )
                        .await?;
                    }
                }
                if head > seen {
                    break;
                }
                let stall = self.policy.stall_timeout;
                let ack_due = acks.due_at();
                tokio::select! {
                    biased;
                    _ = &mut stop => return self.final_ack(&mut acks, state).await,
                    Some(delivery) = slot.session.next_delivery() => {
                        if let Some(taken) = self.take_delivery(&slot.session, delivery, state, out_dir, events).await? {
                            seen = seen.max(taken.head);
                            self.ack_delivery(&mut acks, &mut inline_unacked, state.state.cursor, taken.bytes).await?;
                        }
                    }
                    _ = tokio::time::sleep_until(ack_due.unwrap_or_else(Instant::now).into()), if ack_due.is_some() => {
                        if let Some(cursor) = acks.take_pending() {
                            self.send_ack(cursor).await?;
                            acks.acked(cursor, Instant::now());
                            inline_unacked = (0, 0);
                        }
                    }
                    changed = heads.changed() => {
                        if changed.is_err() {
                            self.reconnect_reporting(slot.generation, ClientError::ConnectionLost("the relay closed the session".into()), &mut link, events).await?;
                            break;
                        }
                    }
                    _ = slot.session.stalled(stall) => {
                        self.reconnect_reporting(slot.generation, ClientError::Stalled(stall), &mut link, events).await?;
                        break;
                    }
                }
            }
        }
    }

    /// After an inline delivery took the cursor to `cursor`: ack as the
    /// coalescer says ([`super::acks`]), or at once when the deliveries
    /// taken since the last ack (`unacked`: frames and payload bytes, plus
    /// this one's `bytes`) reach half of the relay's in-flight caps
    /// ([`INLINE_MAX_FRAMES`], [`INLINE_BUDGET`]): the relay sends the next
    /// `Deliver` without waiting for a request only within those caps
    /// (docs/protocol.md "Version 3: inline delivery"), so holding the ack
    /// longer would make it wait for one, or send a `Notify` and have the
    /// follower pull.
    async fn ack_delivery(
        &self,
        acks: &mut AckCoalescer,
        unacked: &mut (usize, usize),
        cursor: u64,
        bytes: usize,
    ) -> Result<()> {
        unacked.0 += 1;
        unacked.1 = unacked.1.saturating_add(bytes);
        let now = Instant::now();
        let due = if unacked.0 >= INLINE_MAX_FRAMES / 2 || unacked.1 >= INLINE_BUDGET / 2 {
            acks.last_owed(cursor)
        } else {
            acks.offer(cursor, now)
        };
        if let Some(cursor) = due {
            self.send_ack(cursor).await?;
            acks.acked(cursor, Instant::now());
            *unacked = (0, 0);
        }
        Ok(())
    }

    /// The last ack a follower owes when it stops: its cursor now (a pull
    /// cut short by the stop may have moved it past the last offered),
    /// saved before it is sent. Errors: [`ClientError::Io`] (the state
    /// could not be saved: nothing is acked), and those of the ack.
    async fn final_ack(&self, acks: &mut AckCoalescer, state: &mut StateStore) -> Result<()> {
        // Stopping may have cut a pull round short between its periodic
        // saves: what the relay is told is applied must be on disk first
        // (acknowledged blobs may be deleted from the relay).
        state.save()?;
        if let Some(cursor) = acks.last_owed(state.state.cursor) {
            self.send_ack(cursor).await?;
        }
        Ok(())
    }

    async fn reconnect_reporting(
        &self,
        generation: u64,
        cause: ClientError,
        link: &mut tokio::sync::watch::Receiver<LinkState>,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<()> {
        let reconnect = self.reconnect(generation, cause);
        tokio::pin!(reconnect);
        loop {
            tokio::select! {
                r = &mut reconnect => return r,
                Ok(()) = link.changed() => {
                    if let LinkState::Reconnecting { attempt, delay, error, .. } = link.borrow_and_update().clone() {
                        events(PullEvent::Reconnecting {
                            attempt,
                            delay_ms: delay.as_millis() as u64,
                            error,
                        });
                    }
                }
            }
        }
    }

    /// Follow in a background task and hand out its events: the live view
    /// of the group driven by NOTIFY (new files and messages, progress,
    /// gaps, rejections, reconnects). The state comes back from
    /// [`Subscription::stop`].
    pub fn subscribe(self: &Arc<Self>, state: StateStore, out_dir: PathBuf) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let client = Arc::clone(self);
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut state = state;
            let sender = tx.clone();
            let result = client
                .follow(
                    &mut state,
                    &out_dir,
                    &mut |e| {
                        let _ = sender.send(SubscriptionEvent::Event(e));
                    },
                    token.cancelled_owned(),
                )
                .await;
            if let Err(e) = result {
                let _ = tx.send(SubscriptionEvent::Failed(e));
            }
            state
        });
        Subscription { rx, stop, task }
    }
}

/// What a [`Subscription`] yields.
#[derive(Debug)]
pub enum SubscriptionEvent {
    /// Something happened.
    Event(PullEvent),
    /// Following stopped for good (e.g. gave up reconnecting).
    Failed(ClientError),
}

/// A running [`SyncClient::subscribe`].
pub struct Subscription {
    rx: mpsc::UnboundedReceiver<SubscriptionEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<StateStore>,
}

impl Subscription {
    /// The next event; `None` after the subscription ended.
    pub async fn next(&mut self) -> Option<SubscriptionEvent> {
        self.rx.recv().await
    }

    /// Stop following and get the state back (saved up to the last frame).
    pub async fn stop(self) -> Result<StateStore> {
        self.stop.cancel();
        self.task
            .await
            .map_err(|e| ClientError::Home(format!("subscription task failed: {e}")))
    }
}

struct Round {
    received: u64,
    head: u64,
}

/// State saves during a pull: every [`SAVE_EVERY_FRAMES`] frames or
/// [`SAVE_INTERVAL`], whichever comes first, and at the end of each round.
/// Re-applying what a crash made us forget is harmless (chunk writes are
/// idempotent and sequence numbers are saved with the cursor), so the saves
/// only bound how much is pulled again after a crash.
const SAVE_EVERY_FRAMES: u32 = 16;
/// See [`SAVE_EVERY_FRAMES`].
const SAVE_INTERVAL: Duration = Duration::from_millis(500);

/// Most `PullBatch` frames with no blob and `more = true` accepted in a row
/// in one answer. An honest relay never sends one (it ends the answer
/// instead); a relay that keeps sending them gets a protocol error rather
/// than a client spinning forever.
pub const MAX_EMPTY_BATCHES: u32 = 4;

/// Check and apply one page of blobs the relay sent (a `PullBatch` frame,
/// or an inline `Deliver`: docs/protocol.md "Version 3: inline delivery"),
/// in order; the number of blobs. Each cursor must be above the one
/// before (`last_cursor`, updated), else [`ClientError::Protocol`] and
/// nothing more of the page is applied. On a version-2 session
/// (`no_echo`) an empty payload labelled with this device's node id is the
/// marker of its own blobs: the cursor moves past it, nothing is opened.
pub(crate) fn apply_page(
    blobs: Vec<sync_protocol::PulledBlob>,
    last_cursor: &mut u64,
    no_echo: bool,
    state: &mut StateStore,
    receiver: &Receiver<'_>,
    events: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<u64> {
    let mut received = 0;
    for blob in blobs {
        if blob.cursor <= *last_cursor {
            return Err(ClientError::Protocol(format!(
                "the relay sent cursor {} after cursor {last_cursor}; cursors must increase",
                blob.cursor
            )));
        }
        *last_cursor = blob.cursor;
        received += 1;
        if no_echo && blob.payload.is_empty() && blob.sender == receiver.me() {
            // Where this device's own blobs end (docs/protocol.md
            // "Version 2: no echo"): nothing to open; the cursor
            // moves past them. A relay that marks another device's
            // blob so withholds it, which gaps and views report as
            // for any withheld blob (docs/security.md).
            state.state.cursor = state.state.cursor.max(blob.cursor);
            continue;
        }
        receiver.apply(blob, state, events)?;
    }
    Ok(received)
}

/// One `Pull` request: apply every frame of the answer, saving the state
/// periodically and at the end.
///
/// The cursor moves only to the cursor of a blob the relay delivered
/// (docs/security.md "The saved cursor"): an empty answer, whatever head it
/// announces, leaves it where it is. A relay that announced a head it cannot
/// back (`u64::MAX`) would otherwise make the device skip everything below
/// it for good, and have every later `Pull` from it refused by an honest
/// relay. The price is that a device whose newest blobs expired asks again
/// from before them (the relay answers with nothing, cheaply).
///
/// The answer is checked as it arrives, so a relay cannot keep the client
/// busy with it: at most [`PULL_LIMIT`] blobs (what was asked for), cursors
/// strictly increasing after the one asked from, and at most
/// [`MAX_EMPTY_BATCHES`] empty `more` frames in a row. A violation ends the
/// round with [`ClientError::Protocol`] (not retried).
async fn pull_round(
    session: &RelaySession,
    state: &mut StateStore,
    receiver: &Receiver<'_>,
    events: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<Round> {
    let after = state.state.cursor;
    // A relay's head never decreases (docs/protocol.md "Push → PushOk"):
    // one below our cursor does not hold this group's history.
    let head = session.seen_head();
    if after > head {
        return Err(ClientError::RelayBehind {
            relay: session.relay().to_string(),
            head,
            known: after,
        });
    }
    let no_echo = session.no_echo();
    let mut response = session.pull(after, PULL_LIMIT).await?;
    let mut round = Round {
        received: 0,
        head: 0,
    };
    let mut last_cursor = after;
    let mut empty_in_a_row = 0u32;
    let mut unsaved = 0u32;
    let mut saved_at = std::time::Instant::now();
    let result = async {
        loop {
            // No per-frame deadline: on a slow link one frame can take
            // minutes. A dead link is caught by the session's stall watchdog
            // (no bytes at all), which runs alongside this round.
            let batch = response.next_batch().await?;
            let Some(batch) = batch else { break };
            round.head = round.head.max(batch.head);
            empty_in_a_row = if batch.blobs.is_empty() && batch.more {
                empty_in_a_row + 1
            } else {
                0
            };
            if empty_in_a_row > MAX_EMPTY_BATCHES {
                return Err(ClientError::Protocol(format!(
                    "the relay sent {empty_in_a_row} empty batches in a row, each announcing more"
                )));
            }
            if round.received + batch.blobs.len() as u64 > u64::from(PULL_LIMIT) {
                return Err(ClientError::Protocol(format!(
                    "the relay sent more than the {PULL_LIMIT} blobs asked for"
                )));
            }
            round.received += apply_page(
                batch.blobs,
                &mut last_cursor,
                no_echo,
                state,
                receiver,
                events,
            )?;
            unsaved += 1;
            if unsaved >= SAVE_EVERY_FRAMES || saved_at.elapsed() >= SAVE_INTERVAL {
                state.save()?;
                unsaved = 0;
                saved_at = std::time::Instant::now();
            }
        }
        Ok::<(), ClientError>(())
    }
    .await;
    // Whatever was applied is saved, even when the round failed midway.
    state.save()?;
    result.map(|()| round)
}
