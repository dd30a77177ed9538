//! Blobs the relay sent inside the notification (protocol version 3,
//! docs/protocol.md "Version 3: inline delivery"): taken through the same
//! checks and the same [`Receiver`] as a pull answer's page, then
//! acknowledged (coalesced, as a follower's pulls are), so the follower
//! needs no pull round trip.
//!
//! A `Deliver` is used only when it starts at the device's own cursor
//! (`after`); any other is taken as a `Notify` of its head, and the
//! follower pulls. Its blobs are checked exactly as a page of a pull
//! answer ([`apply_page`]: cursors strictly increasing above `after`, the
//! no-echo marker only for this device's own blobs), and besides: at most
//! [`INLINE_MAX_BLOBS`] blobs, none beyond the `head` it announces. So a
//! relay can do nothing with inline blobs it could not do with a pull
//! answer (docs/security.md "Inline delivery").

use super::SyncClient;
use super::pull::apply_page;
use crate::error::{ClientError, Result};
use crate::receive::{PullEvent, Receiver, gap_events, withheld_events};
use crate::session::RelaySession;
use crate::state::StateStore;
use std::path::Path;
use sync_protocol::Deliver;
use sync_protocol::limits::INLINE_MAX_BLOBS;

/// What one inline delivery took.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Taken {
    /// The head the relay announced with it.
    pub head: u64,
    /// Payload bytes of its blobs (what counts against the relay's
    /// per-session inline budget until acknowledged).
    pub bytes: usize,
}

impl SyncClient {
    /// Apply `delivery` into `out_dir` when it starts at the local cursor:
    /// every blob opened, checked and applied as a pulled one, the state
    /// saved, gaps and withheld numbers reported, a
    /// [`PullEvent::Synced`] sent. Returns what was taken (`Some`: the head
    /// the relay vouched for and the payload bytes, which the caller
    /// acknowledges, coalesced: `SyncClient::follow`), or `None` when the
    /// delivery does not start at the cursor (or is empty): then the caller
    /// pulls.
    /// Errors: [`ClientError::Protocol`] for a delivery that breaks the
    /// rules of a pull answer (what was applied before the violation is
    /// kept and saved), [`ClientError::Io`], and the ack's errors.
    pub(crate) async fn take_delivery(
        &self,
        session: &RelaySession,
        delivery: Deliver,
        state: &mut StateStore,
        out_dir: &Path,
        events: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<Option<Taken>> {
        let Deliver { after, blobs, head } = delivery;
        if after != state.state.cursor || blobs.is_empty() {
            return Ok(None);
        }
        if blobs.len() > INLINE_MAX_BLOBS {
            return Err(ClientError::Protocol(format!(
                "the relay sent {} blobs inline, at most {INLINE_MAX_BLOBS} are allowed",
                blobs.len()
            )));
        }
        if let Some(beyond) = blobs.iter().find(|b| b.cursor > head) {
            return Err(ClientError::Protocol(format!(
                "the relay sent cursor {} inline beyond the head {head} it announced",
                beyond.cursor
            )));
        }
        let bytes = blobs.iter().map(|b| b.payload.len()).sum();
        let receiver = Receiver::new(self.keys(), self.device_id(), out_dir);
        receiver.recover(state, events)?;
        let mut last_cursor = after;
        let applied = apply_page(
            blobs,
            &mut last_cursor,
            session.no_echo(),
            state,
            &receiver,
            events,
        );
        // Whatever was applied is saved, even when the page broke a rule.
        state.save()?;
        applied?;
        self.inline_taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for event in gap_events(&state.state)
            .into_iter()
            .chain(withheld_events(&state.state))
        {
            events(event);
        }
        let cursor = state.state.cursor;
        events(PullEvent::Synced { cursor, head });
        Ok(Some(Taken { head, bytes }))
    }

    /// How many inline deliveries this client has applied
    /// ([`SyncClient::follow`] on a version-3 session): each spared a pull.
    pub fn inline_deliveries(&self) -> u64 {
        self.inline_taken.load(std::sync::atomic::Ordering::Relaxed)
    }
}
