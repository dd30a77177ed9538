//! Closing a group at the relay (docs/protocol.md §CloseGroup,
//! docs/security.md "What the relay must do"): the last step of a
//! revocation. After rotating to a new epoch, a member opens a session to
//! the **old** group with the old epoch's keys and asks the relay to close
//! it, keeping the node ids of the remaining members: the relay then
//! refuses every other device (GROUP_CLOSED), lets the kept devices pull
//! what they have not pulled yet (and push, so that a concurrent
//! revocation's roster entries still arrive) until the grace ends (the
//! relay's longest TTL), then deletes the old group's blobs. `sync-cli
//! revoke` calls it (`sync-cli/src/commands/close_old.rs`).

use crate::error::{ClientError, Result};
use crate::session::{ConnectOptions, RelaySession};
use sync_protocol::{CloseGroupOk, DeviceId, KeepList};

/// Close the group `opts.keys` authenticates to (the old epoch's keys) on
/// the relay `opts.relay`, keeping `keep` (any order; duplicates merged; at
/// most [`sync_protocol::MAX_KEEP_LIST`] ids). The relays of a group are
/// instances of one cluster sharing one database, so one relay's answer
/// holds for all. The answer is the close the relay recorded: this one
/// (`applied = true`) or an earlier one, whose keep list may differ (a
/// concurrent revocation, or a removed device that closed first: see
/// docs/security.md); the caller compares `keep`. When `keep` does not
/// name this device, the relay ends the session after answering.
///
/// Errors: [`ClientError::InvalidInput`] (more than 64 ids),
/// [`ClientError::GroupClosed`] (closed already without this device, or
/// its grace ended), [`ClientError::Connect`], [`ClientError::Relay`]
/// (UNAUTHORIZED for keys the group does not accept, RATE_LIMITED, …),
/// [`ClientError::ConnectionLost`], [`ClientError::Protocol`].
pub async fn close_group(opts: &ConnectOptions, keep: &[DeviceId]) -> Result<CloseGroupOk> {
    let keep =
        KeepList::new(keep.to_vec()).map_err(|e| ClientError::InvalidInput(e.to_string()))?;
    let session = RelaySession::connect(opts).await?;
    let answer = session.close_group(keep).await;
    session.close().await;
    answer
}
