//! `revoke DEVICE`: remove a device by rotating the group's key without it
//! (docs/security.md "Devices, roster and key epochs": Remove = Rotate).
//!
//! The flow: resolve DEVICE (a name, or a unique prefix of its id; never
//! this device; an ambiguous one is refused with the candidates), build the
//! `Rotate` (a fresh secret from the OS random generator wrapped to every
//! remaining member), push it into the old epoch's group, push the whole
//! chain with this device's first entry of the new epoch into the new
//! epoch's group, move this device to the new epoch, and ask the relay to
//! close the old group ([`close_old_group`]).

use super::close_old::{CloseOutcome, close_old_group};
use super::epochs::publish;
use crate::output::{Out, json_line, short};
use anyhow::{Result, bail};
use serde::Serialize;
use sync_client::roster::{LocalRoster, RosterState};
use sync_client::util::now_ms;
use sync_client::{Home, RetryPolicy};
use sync_protocol::DeviceId;

/// `revoke --json`.
#[derive(Serialize)]
pub struct RevokeOut {
    /// The removed device (hex).
    pub revoked: String,
    /// Its name.
    pub name: String,
    /// The new key epoch.
    pub epoch: u64,
    /// The new epoch's group id (hex).
    pub group_id: String,
    /// Whether the relay now refuses the removed device in the old group: a
    /// close is recorded there and its keep list does not name the device.
    pub old_group_closed: bool,
    /// What the close of the old group did: `applied` (this close),
    /// `closed_earlier` (an earlier close with the same keep list),
    /// `closed_earlier_other_keep` (an earlier close with another keep
    /// list: a concurrent revocation), `closed_without_this_device` (an
    /// earlier close that does not keep this device), `failed` (no relay
    /// answered; the old group stays open).
    pub old_group_close: &'static str,
    /// Why the close failed, for `failed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_group_close_error: Option<String>,
}

/// Find the member DEVICE names: an exact name, else a unique id prefix.
/// Errors list the candidates (ambiguous) or the members (no match).
pub fn resolve(state: &RosterState, me: &DeviceId, query: &str) -> Result<DeviceId> {
    let by_name: Vec<&DeviceId> = state
        .members
        .iter()
        .filter(|(_, m)| m.name == query)
        .map(|(d, _)| d)
        .collect();
    let q = query.to_ascii_lowercase();
    let candidates: Vec<&DeviceId> = if by_name.is_empty() {
        state
            .members
            .keys()
            .filter(|d| q.len() >= 4 && d.to_string().starts_with(&q))
            .collect()
    } else {
        by_name
    };
    let describe = |d: &DeviceId| {
        let name = state.members.get(d).map(|m| m.name.as_str()).unwrap_or("");
        format!("{name} ({})", short(&d.to_string()))
    };
    match candidates.as_slice() {
        [] => {
            if state
                .removed
                .iter()
                .any(|(d, r)| r.name == query || (q.len() >= 4 && d.to_string().starts_with(&q)))
            {
                bail!("{query} was already removed from the group");
            }
            let all: Vec<String> = state.members.keys().map(describe).collect();
            bail!(
                "no member is named {query:?} or has an id starting with it (ids need at least 4 hex characters); members: {}",
                all.join(", ")
            )
        }
        [one] => {
            if *one == me {
                bail!("this device cannot revoke itself; ask another member to revoke it");
            }
            Ok(**one)
        }
        many => {
            let list: Vec<String> = many.iter().map(|d| describe(d)).collect();
            bail!(
                "{query:?} is ambiguous; give a longer id prefix of one of: {}",
                list.join(", ")
            )
        }
    }
}

pub async fn revoke(home: &Home, query: &str, policy: RetryPolicy, out: Out) -> Result<()> {
    let mut roster = LocalRoster::open(home)?;
    if roster.settle(now_ms())?.is_none() {
        let name = roster.device_name();
        roster.ensure_genesis(&name, now_ms())?;
    }
    let Some(settled) = roster.settle(now_ms())? else {
        bail!("no roster is known yet: run `sync-cli pull` first");
    };
    if let Some(why) = &settled.stuck {
        bail!("{why}");
    }
    let me = roster.me();
    let target = resolve(&settled.state, &me, query)?;
    let name = settled
        .state
        .members
        .get(&target)
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let old = roster.chain.current().secret()?;
    let epoch = roster.revoke(&settled.state, target, now_ms())?;
    roster.save()?;
    let mut state = home.state()?;
    publish(home, &mut roster, &mut state, policy, out).await?;
    let remaining: Vec<DeviceId> = settled
        .state
        .members
        .keys()
        .filter(|d| **d != target)
        .copied()
        .collect();
    let close = close_old_group(home, &old, &remaining, policy).await?;
    let closed = close.refuses(&target);
    let group_id = roster.chain.current().group_id.clone();
    if out.json {
        json_line(&RevokeOut {
            revoked: target.to_string(),
            name,
            epoch,
            group_id,
            old_group_closed: closed,
            old_group_close: close.name(),
            old_group_close_error: match &close {
                CloseOutcome::Failed { reason } => Some(reason.clone()),
                _ => None,
            },
        });
    } else if out.human() {
        println!(
            "revoked {name} ({}): the group moved to key epoch {epoch}; remaining devices follow at their next pull",
            short(&target.to_string())
        );
        if let Some(note) = close_note(&close, closed) {
            eprintln!("note: {note}");
        }
    }
    Ok(())
}

/// What a person is told about the close of the old group, when there is
/// more to say than "closed".
fn close_note(close: &CloseOutcome, closed: bool) -> Option<String> {
    const OPEN: &str = "the removed device can still pull what was pushed there before now (never anything of the new epoch)";
    match close {
        CloseOutcome::Applied | CloseOutcome::ClosedEarlier => None,
        CloseOutcome::ClosedEarlierOtherKeep { .. } if closed => Some(
            "another member closed the old group first (a concurrent revocation); the removed device is refused there".into(),
        ),
        CloseOutcome::ClosedEarlierOtherKeep { .. } => Some(format!(
            "another member closed the old group first (a concurrent revocation) and kept the removed device: {OPEN}, until that close's grace ends"
        )),
        CloseOutcome::ClosedWithoutThisDevice => Some(
            "the old group was closed earlier by a close that does not keep this device (a concurrent revocation of this device?): run `sync-cli pull` and `sync-cli devices`".into(),
        ),
        CloseOutcome::Failed { reason } => Some(format!(
            "the relay could not close the old group ({reason}): {OPEN}; the new epoch is protected all the same"
        )),
    }
}
