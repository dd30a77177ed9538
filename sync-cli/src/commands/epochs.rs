//! Key epochs in the CLI (docs/security.md "Devices, roster and key
//! epochs"): a pull visits every epoch's group this device holds, oldest
//! first, feeding the roster what it receives; after each, the roster
//! settles and catches up (unwrapping the next epoch's secret adds that
//! epoch's group to the visit); then what the device owes the group is
//! published: answers to enrolment requests, its own enrolment request, a
//! re-key when the roster asks for one, queued entries and whole chains.

use super::notices::Notice;
use crate::output::{Out, connect, short};
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::path::Path;
use sync_client::crypto::GroupSecret;
use sync_client::crypto::envelope::BlobKind;
use sync_client::roster::chain::EpochKey;
use sync_client::roster::{EntryId, LocalRoster, Settled};
use sync_client::util::now_ms;
use sync_client::{ClientError, Home, PullEvent, PullSummary, RetryPolicy, StateStore, SyncClient};
use sync_protocol::GroupId;

/// The group of `group.toml` (what a state without `group` means).
pub fn home_group(home: &Home) -> Result<String> {
    Ok(home.secret()?.keys().group_id().to_string())
}

/// Connect to the group of `secret` through the home's relays.
pub async fn connect_to(
    home: &Home,
    secret: &GroupSecret,
    policy: RetryPolicy,
    out: Out,
) -> Result<(SyncClient, crate::output::RetryStatus)> {
    let mut opts = home.connect_options(None)?;
    opts.keys = secret.keys();
    opts.connect_timeout = opts.connect_timeout.min(policy.stall_timeout);
    Ok(connect(home, &opts, policy, out).await?)
}

/// What the roster code reports while pulling.
pub struct Reporter {
    out: Out,
    /// Entries received in this run (reported when the fold ignores them).
    pub fresh: BTreeSet<EntryId>,
}

impl Reporter {
    pub fn new(out: Out) -> Reporter {
        Reporter {
            out,
            fresh: BTreeSet::new(),
        }
    }

    fn warn(&self, notice: Notice) {
        notice.warn(self.out);
    }

    fn note(&self, notice: Notice) {
        notice.note(self.out);
    }

    /// Take a roster blob or an enrolment request received in `group`.
    pub fn absorb(
        &mut self,
        roster: &mut LocalRoster,
        group: &GroupId,
        sender: &str,
        enrolment: bool,
        data: &[u8],
    ) {
        if enrolment {
            if let Err(why) = roster.absorb_enrolment(sender, group, data) {
                self.warn(Notice::RosterRefused {
                    id: None,
                    sender: Some(sender.to_string()),
                    reason: Some(why.to_string()),
                    message: format!("enrolment request from {} refused: {why}", short(sender)),
                });
            }
        } else {
            let got = roster.absorb(data);
            self.fresh.extend(got.ids);
            if let Some(why) = got.refused {
                self.warn(Notice::RosterRefused {
                    id: None,
                    sender: Some(sender.to_string()),
                    reason: Some(why.to_string()),
                    message: format!("roster entries from {} refused: {why}", short(sender)),
                });
            }
        }
        if let Err(e) = roster.save() {
            self.warn(Notice::RosterRefused {
                id: None,
                sender: None,
                reason: None,
                message: format!("cannot save the roster: {e}"),
            });
        }
    }

    /// Report what settling did: epochs reached, this device's removal,
    /// entries of this run the fold ignored (forged, by removed devices…).
    pub fn settled(&mut self, settled: &Settled) {
        for epoch in &settled.moved {
            self.note(Notice::Epoch {
                epoch: *epoch,
                rekey: false,
                message: format!("moved to key epoch {epoch} of the group"),
            });
        }
        if let Some(why) = &settled.stuck {
            self.warn(Notice::Removed {
                reason: why.clone(),
                message: format!(
                    "{why}; this device cannot read what the group pushes from now on"
                ),
            });
        }
        for ignored in &settled.state.ignored {
            if self.fresh.remove(&ignored.id) {
                let id = ignored.id.to_string();
                self.warn(Notice::RosterIgnored {
                    message: format!(
                        "roster entry {} ({}) ignored: {}",
                        id.get(..16).unwrap_or(&id),
                        ignored.kind,
                        ignored.reason
                    ),
                    kind: ignored.kind.to_string(),
                    reason: ignored.reason.to_string(),
                    id,
                });
            }
        }
    }
}

/// Whether `err` is, or wraps, a GROUP_CLOSED answer
/// ([`ClientError::is_group_closed`]).
pub fn is_group_closed(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<ClientError>()
            .is_some_and(ClientError::is_group_closed)
    })
}

/// "key epoch N (group ID…)", or "group ID…" while the epoch is unknown.
fn epoch_name(key: &EpochKey) -> String {
    match key.epoch {
        Some(n) => format!("key epoch {n} ({})", short(&key.group_id)),
        None => format!("group {}", short(&key.group_id)),
    }
}

fn add(total: &mut PullSummary, s: &PullSummary) {
    total.blobs += s.blobs;
    total.files += s.files;
    total.conflicts += s.conflicts;
    total.outdated += s.outdated;
    total.rejected += s.rejected;
    total.withheld += s.withheld;
}

/// Pull one epoch's group, handing roster blobs to `roster`.
#[allow(clippy::too_many_arguments)]
async fn pull_group(
    home: &Home,
    state: &mut StateStore,
    roster: &mut LocalRoster,
    reporter: &mut Reporter,
    secret: &GroupSecret,
    out_dir: &Path,
    policy: RetryPolicy,
    out: Out,
    events: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<PullSummary> {
    let (client, _retries) = connect_to(home, secret, policy, out).await?;
    let group = secret.keys().group_id();
    let result = client
        .pull(state, out_dir, &mut |e| match e {
            PullEvent::Roster {
                sender,
                enrolment,
                data,
                ..
            } => reporter.absorb(roster, &group, &sender, enrolment, &data),
            other => events(other),
        })
        .await;
    client.close().await;
    Ok(result?)
}

/// Pull every epoch's group this device holds, oldest first, catching up
/// through rotations; then publish what the device owes the group
/// ([`publish`]). The summary adds up every group's; its cursor and head
/// are the current epoch's.
pub async fn pull_all(
    home: &Home,
    state: &mut StateStore,
    out_dir: &Path,
    policy: RetryPolicy,
    out: Out,
    events: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<PullSummary> {
    let base = home_group(home)?;
    let mut roster = LocalRoster::open(home)?;
    let mut reporter = Reporter::new(out);
    let mut total = PullSummary::default();
    let mut i = 0;
    while i < roster.chain.epochs.len() {
        let key = roster.chain.epochs[i].clone();
        let secret = key.secret()?;
        let current = i + 1 == roster.chain.epochs.len();
        state.state.switch_group(&key.group_id, &base);
        let pulled = pull_group(
            home,
            state,
            &mut roster,
            &mut reporter,
            &secret,
            out_dir,
            policy,
            out,
            events,
        )
        .await;
        let summary = match pulled {
            Ok(summary) => summary,
            // An earlier epoch's group closed to this device (its grace
            // ended, or a close that does not keep it): what it still
            // served was pulled and recorded; the later epochs hold the rest.
            Err(e) if !current && is_group_closed(&e) => {
                reporter.note(Notice::GroupClosed {
                    epoch: key.epoch,
                    group: key.group_id.clone(),
                    message: format!(
                        "the group of {} is closed at the relay; skipped (later epochs carry on)",
                        epoch_name(&key)
                    ),
                });
                PullSummary::default()
            }
            Err(e) if is_group_closed(&e) => {
                return Err(e.context(format!(
                    "pulling the group of {}, this device's current one",
                    epoch_name(&key)
                )));
            }
            Err(e) => return Err(e),
        };
        add(&mut total, &summary);
        if i + 1 == roster.chain.epochs.len() {
            total.head = summary.head;
        }
        if let Some(settled) = roster.settle(now_ms())? {
            reporter.settled(&settled);
        }
        roster.save()?;
        i += 1;
    }
    let current = roster.chain.current().group_id.clone();
    state.state.switch_group(&current, &base);
    state.save()?;
    total.cursor = state.state.cursor;
    publish(home, &mut roster, state, policy, out).await?;
    // One-time invites: answer requests waiting in their mailboxes.
    super::invite_answer::answer_all(home, &mut roster, state, policy, out).await?;
    Ok(total)
}

/// Publish what this device owes the group: answer enrolment requests
/// (`Add`), re-key when the roster lists devices in `must_rotate`, post its
/// own enrolment request when it is not a member, and push every queued
/// entry and chain into its group. Each group's queue is cleared only
/// after its push succeeded.
pub async fn publish(
    home: &Home,
    roster: &mut LocalRoster,
    state: &mut StateStore,
    policy: RetryPolicy,
    out: Out,
) -> Result<()> {
    let reporter = Reporter::new(out);
    let mut settled = roster.settle(now_ms())?;
    if let Some(s) = &settled {
        let (added, refused) = roster.answer_enrolments(&s.state, now_ms())?;
        // On stderr only, also with --json: enrolments are routine, and
        // `pull --json` lines stay what scripts of earlier versions parse.
        if !out.quiet {
            for name in added {
                eprintln!("added device {name} to the roster (it asked to enrol)");
            }
        }
        for why in refused {
            reporter.warn(Notice::RosterRefused {
                id: None,
                sender: None,
                reason: Some(why.to_string()),
                message: format!("enrolment request not answered: {why}"),
            });
        }
        settled = roster.settle(now_ms())?;
    }
    if let Some(s) = &settled
        && !s.state.must_rotate.is_empty()
        && s.is_member(&roster.me())
        && roster.chain.current().epoch == Some(s.state.epoch)
    {
        let epoch = roster.rekey(&s.state, now_ms())?;
        reporter.note(Notice::Epoch {
            epoch,
            rekey: true,
            message: format!(
                "re-keyed the group (epoch {epoch}): concurrent revocations left a removed device holding the key"
            ),
        });
        settled = roster.settle(now_ms())?;
    }
    let enrolment = roster.enrolment_due(settled.as_ref())?;
    roster.save()?;
    for (group, bodies) in roster.outgoing() {
        let Some(key) = roster.chain.key_of(&group).cloned() else {
            continue;
        };
        let pushed = async {
            let (client, _retries) = connect_to(home, &key.secret()?, policy, out).await?;
            let pushed = client.push_roster(state, BlobKind::Roster, &bodies).await;
            client.close().await;
            anyhow::Ok(pushed?)
        }
        .await;
        match pushed {
            Ok(_) => {}
            // A closed earlier epoch's group takes no more entries from
            // this device: retrying cannot help, so they leave the outbox
            // (docs/security.md "Closing and concurrent rotations").
            Err(e) if is_group_closed(&e) && group != roster.chain.current().group_id => {
                reporter.warn(Notice::RosterUndelivered {
                    epoch: key.epoch,
                    group: group.clone(),
                    entries: bodies.len(),
                    message: format!(
                        "{} roster entries for the group of {} were not delivered: the relay closed that group to this device ({e:#})",
                        bodies.len(),
                        epoch_name(&key)
                    ),
                });
            }
            Err(e) => {
                return Err(e.context(format!(
                    "publishing roster entries in group {}",
                    short(&group)
                )));
            }
        }
        roster.published(&group);
        roster.save()?;
    }
    if let Some((group, body)) = enrolment
        && let Some(key) = roster.chain.key_of(&group).cloned()
    {
        let (client, _retries) = connect_to(home, &key.secret()?, policy, out).await?;
        let pushed = client
            .push_roster(state, BlobKind::Enrolment, &[body])
            .await;
        client.close().await;
        pushed.context("posting this device's enrolment request")?;
        roster.enrolment_posted(&group);
        roster.save()?;
    }
    Ok(())
}
