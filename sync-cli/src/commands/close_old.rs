//! The relay-side step of `revoke` (docs/security.md "What the relay must
//! do", docs/protocol.md §CloseGroup): after the rotation is published, ask
//! the relay to close the **old** epoch's group, keeping the remaining
//! members. The removed device then gets GROUP_CLOSED from that group; the
//! kept devices may still pull (and push roster entries of a concurrent
//! revocation) until the grace ends.
//!
//! The close is sent to the group's relays in failover order (the one that
//! worked last first); the first that answers decides: the relays of a
//! group are instances of one cluster sharing one database, so one close
//! closes the group on all of them. A relay that cannot be reached is
//! reported, never fatal: the new epoch's secret, which the removed device
//! never received, is what protects data from now on.

use anyhow::Result;
use sync_client::close_group::close_group;
use sync_client::{GroupSecret, Home, RetryPolicy};
use sync_protocol::DeviceId;

/// What closing the old group achieved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    /// This close was recorded: the removed device is refused from now on.
    Applied,
    /// The group was closed earlier with the same keep list (another
    /// member revoked the same device at the same time).
    ClosedEarlier,
    /// The group was closed earlier with another keep list (a concurrent
    /// revocation of another device, or a removed device that closed it
    /// first). `keep` is the recorded list.
    ClosedEarlierOtherKeep {
        /// The recorded keep list.
        keep: Vec<DeviceId>,
    },
    /// The group was closed earlier by a close that does not keep this
    /// device (or its grace ended): the relay says only GROUP_CLOSED.
    ClosedWithoutThisDevice,
    /// No relay answered the close (unreachable, or refused it): the old
    /// group stays open at the relay until someone closes it.
    Failed {
        /// The last relay's error.
        reason: String,
    },
}

impl CloseOutcome {
    /// The name `revoke --json` reports as `old_group_close`.
    pub fn name(&self) -> &'static str {
        match self {
            CloseOutcome::Applied => "applied",
            CloseOutcome::ClosedEarlier => "closed_earlier",
            CloseOutcome::ClosedEarlierOtherKeep { .. } => "closed_earlier_other_keep",
            CloseOutcome::ClosedWithoutThisDevice => "closed_without_this_device",
            CloseOutcome::Failed { .. } => "failed",
        }
    }

    /// Whether the relay is known to refuse `removed` in the old group now:
    /// a close is recorded and its keep list does not name `removed`.
    pub fn refuses(&self, removed: &DeviceId) -> bool {
        match self {
            CloseOutcome::Applied | CloseOutcome::ClosedEarlier => true,
            CloseOutcome::ClosedEarlierOtherKeep { keep } => !keep.contains(removed),
            CloseOutcome::ClosedWithoutThisDevice | CloseOutcome::Failed { .. } => false,
        }
    }
}

/// Close the group of `old` (the previous epoch's secret) at the home's
/// relays, keeping `remaining` (the members after the rotation, this
/// device among them). Never fails for the relay's sake: an unreachable or
/// refusing relay is [`CloseOutcome::Failed`]. Errors: the home's relay
/// list or device key cannot be read.
pub async fn close_old_group(
    home: &Home,
    old: &GroupSecret,
    remaining: &[DeviceId],
    policy: RetryPolicy,
) -> Result<CloseOutcome> {
    let relays = home.relays()?;
    let mut opts = home.connect_options(None)?;
    opts.keys = old.keys();
    opts.connect_timeout = opts.connect_timeout.min(policy.stall_timeout);
    let start = relays.position(&opts.relay).unwrap_or(0);
    let mut want: Vec<DeviceId> = remaining.to_vec();
    want.sort();
    want.dedup();
    let mut reason = String::from("no relay");
    for i in relays.rotation(start) {
        opts.relay = relays.get(i).clone();
        match close_group(&opts, &want).await {
            Ok(answer) if answer.applied => return Ok(CloseOutcome::Applied),
            Ok(answer) if answer.keep.ids() == want.as_slice() => {
                return Ok(CloseOutcome::ClosedEarlier);
            }
            Ok(answer) => {
                return Ok(CloseOutcome::ClosedEarlierOtherKeep {
                    keep: answer.keep.ids().to_vec(),
                });
            }
            Err(e) if e.is_group_closed() => return Ok(CloseOutcome::ClosedWithoutThisDevice),
            Err(e) => {
                tracing::warn!(relay = %opts.relay, error = %e, "closing the old group failed");
                reason = format!("{}: {e}", opts.relay);
            }
        }
    }
    Ok(CloseOutcome::Failed { reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_removed_device_is_refused_only_when_a_close_without_it_is_recorded() {
        let (me, removed) = (DeviceId([1; 32]), DeviceId([2; 32]));
        assert!(CloseOutcome::Applied.refuses(&removed));
        assert!(CloseOutcome::ClosedEarlier.refuses(&removed));
        let other = |keep: Vec<DeviceId>| CloseOutcome::ClosedEarlierOtherKeep { keep };
        assert!(other(vec![me]).refuses(&removed));
        assert!(!other(vec![me, removed]).refuses(&removed));
        assert!(!CloseOutcome::ClosedWithoutThisDevice.refuses(&removed));
        let failed = CloseOutcome::Failed {
            reason: "unreachable".into(),
        };
        assert!(!failed.refuses(&removed));
        assert_eq!(failed.name(), "failed");
    }
}
