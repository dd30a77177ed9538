//! Voiding unused sequence numbers (docs/client.md "Sequence numbers",
//! docs/security.md "Blocks of sequence numbers"): a `Void` blob for every
//! range of a given-up block that was never used, so receivers report no gap
//! for them.

use super::SyncClient;
use crate::crypto::envelope::BlobKind;
use crate::crypto::random_bytes;
use crate::error::Result;
use crate::state::StateStore;
use sync_protocol::BlobId;

impl SyncClient {
    /// Give up this store's block of sequence numbers (a clean close of a
    /// long-lived client, [`StateStore::use_seq_blocks`]) and push a `Void`
    /// of its unused rest, with those of any block left by a process that
    /// ended without releasing its own. Call it before dropping the store;
    /// without it the next process of the home voids the rest instead.
    /// Errors: [`crate::ClientError::Io`], [`crate::ClientError::Home`],
    /// [`crate::ClientError::Relay`], [`crate::ClientError::GaveUp`] (the
    /// block stays recorded and is voided by a later process).
    pub async fn release_seqs(&self, state: &mut StateStore) -> Result<()> {
        state.release_seqs()?;
        self.push_voids(state).await
    }

    /// Push the `Void`s of every given-up block ([`StateStore::pending_voids`])
    /// and forget the blocks once the relay has them. Each `Void` takes its
    /// own number by an exact reservation, so voiding never opens a block.
    pub(crate) async fn push_voids(&self, state: &mut StateStore) -> Result<()> {
        // Each round forgets at least the blocks it voided; a round's own
        // locked reservations may claim more (of processes that died
        // meanwhile), bounded by the blocks recorded in `seq.json`.
        loop {
            let pending = state.pending_voids()?;
            if pending.is_empty() {
                return Ok(());
            }
            let count = pending.iter().map(|p| p.ranges.len() as u64).sum::<u64>();
            let mut items = Vec::new();
            if count > 0 {
                let first = state.reserve_seqs_exact(count)?;
                for (i, &(first_seq, last_seq)) in
                    pending.iter().flat_map(|p| &p.ranges).enumerate()
                {
                    let kind = BlobKind::Void {
                        file_id: None,
                        first_seq,
                        last_seq,
                    };
                    items.push(self.seal(
                        state,
                        BlobId(random_bytes()),
                        kind,
                        first + i as u64,
                        &[],
                        None,
                    )?);
                }
            }
            for batch in items.chunks(self.session().welcome().max_batch.max(1) as usize) {
                self.push_items(batch.to_vec()).await?;
            }
            let ids: Vec<String> = pending.into_iter().map(|p| p.id).collect();
            state.voided(&ids)?;
        }
    }

    /// [`SyncClient::push_voids`] after a push: a failure is logged, not
    /// returned (the push itself succeeded; the blocks stay recorded and a
    /// later push or process voids them).
    pub(crate) async fn push_voids_after_push(&self, state: &mut StateStore) {
        if let Err(e) = self.push_voids(state).await {
            tracing::warn!(error = %e, "could not void unused sequence numbers yet");
        }
    }
}
