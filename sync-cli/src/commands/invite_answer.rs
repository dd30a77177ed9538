//! Answering one-time invites (docs/security.md "Invites as one-time
//! enrolment credentials"): [`answer_all`] — run by every `pull` (and each
//! round of `pull --follow`) after the roster is published, and by
//! `invite --answer` — reads the mailboxes of pending invites; the first
//! valid request gets its `Add` published in the group, the current
//! epoch's secret wrapped to it, and the mailbox closed keeping it.

use super::invites::{close_mailbox, relays_current_first};
use super::notices::Notice;
use crate::output::{Out, short};
use anyhow::{Context, Result, anyhow, bail};
use sync_client::crypto::envelope::BlobKind;
use sync_client::mailbox::{self, Answer, MailboxKeys};
use sync_client::pending_invites::{InviteState, Invites, PendingInvite};
use sync_client::roster::LocalRoster;
use sync_client::roster::enrol::Enrolment;
use sync_client::util::{now_ms, now_s};
use sync_client::{ClientError, Home, RetryPolicy, StateStore};
use sync_protocol::DeviceId;

/// `invite --answer`: [`answer_all`] without pulling files (the pull lock
/// is held, as by `pull`). The roster must have caught up (a `pull` does
/// that) for an invite to be answered.
pub async fn answer(home: &Home, policy: RetryPolicy, out: Out) -> Result<()> {
    home.connect_options(None)?;
    let _lock = home.lock_pull()?;
    let mut roster = LocalRoster::open(home)?;
    let base = super::epochs::home_group(home)?;
    let mut state = home.state()?;
    let current = roster.chain.current().group_id.clone();
    state.state.switch_group(&current, &base);
    answer_all(home, &mut roster, &mut state, policy, out).await?;
    state.save()?;
    roster.save()?;
    Ok(())
}

/// What answering one invite did.
enum Outcome {
    /// Nobody asked yet.
    Waiting,
    /// A device was added and answered.
    Added { device: String, name: String },
    /// Its mailbox was closed by someone else (a holder of the invite).
    ClosedElsewhere,
    /// A request came after the invite expired.
    ExpiredRequest { device: String, name: String },
}

/// Print `notice` as a warning (`warn`) or as information.
fn say(out: Out, notice: Notice, warn: bool) {
    if warn {
        notice.warn(out)
    } else {
        notice.note(out)
    }
}

/// Answer the pending invites (run by `pull` after the roster is
/// published): for each, read its mailbox; the first valid request is
/// added to the roster (`Add`, published in the current epoch's group),
/// answered with the whole roster and the current epoch's secret wrapped to
/// the joiner, and the mailbox closed keeping the joiner. Expired invites
/// are marked expired and their mailboxes closed with no one kept; the
/// mailboxes of cancelled invites are closed if that failed before.
/// Problems with one invite are reported and do not fail the pull.
pub async fn answer_all(
    home: &Home,
    roster: &mut LocalRoster,
    state: &mut StateStore,
    policy: RetryPolicy,
    out: Out,
) -> Result<()> {
    let mut invites = Invites::load(home.dir())?;
    if invites.invites.iter().all(|i| i.closed) {
        return Ok(());
    }
    let now = now_s();
    for idx in 0..invites.invites.len() {
        let invite = &mut invites.invites[idx];
        if invite.closed {
            continue;
        }
        let id = invite.id.clone();
        if invite.is_expired(now) {
            invite.state = InviteState::Expired;
            say(
                out,
                Notice::InviteExpired {
                    id: id.clone(),
                    device: None,
                    name: None,
                    message: format!("invite {id} expired unused; its mailbox is being closed"),
                },
                false,
            );
        }
        if invite.state == InviteState::Pending {
            match answer_one(home, roster, state, invite, policy, out).await {
                Ok(Outcome::Waiting) => {}
                Ok(Outcome::Added { device, name }) => {
                    invite.state = InviteState::Used;
                    invite.device = Some(device.clone());
                    invite.device_name = Some(name.clone());
                    say(
                        out,
                        Notice::InviteUsed {
                            id: id.clone(),
                            device: device.clone(),
                            name: name.clone(),
                            message: format!(
                                "added device {name} ({}) with invite {id}",
                                short(&device)
                            ),
                        },
                        false,
                    );
                }
                Ok(Outcome::ClosedElsewhere) => {
                    invite.state = InviteState::Cancelled;
                    invite.closed = true;
                    say(
                        out,
                        Notice::InviteClosed {
                            id: id.clone(),
                            message: format!(
                                "invite {id}: its mailbox was closed by another holder of the invite \
                             (GROUP_CLOSED); nobody was added with it"
                            ),
                        },
                        true,
                    );
                }
                Ok(Outcome::ExpiredRequest { device, name }) => {
                    invite.state = InviteState::Expired;
                    say(
                        out,
                        Notice::InviteExpired {
                            id: id.clone(),
                            device: Some(device.clone()),
                            name: Some(name.clone()),
                            message: format!(
                                "invite {id} expired before it was answered: device {name} ({}) that \
                             used it was not added; make a new invite",
                                short(&device)
                            ),
                        },
                        true,
                    );
                }
                Err(e) => say(
                    out,
                    Notice::InviteError {
                        id: id.clone(),
                        message: format!("invite {id} not answered now: {e:#}"),
                    },
                    true,
                ),
            }
        }
        // The new state is saved before the mailbox is closed.
        invites.save(home.dir())?;
        let invite = &mut invites.invites[idx];
        if invite.state != InviteState::Pending && !invite.closed {
            let keep: Vec<DeviceId> = match (&invite.state, &invite.device) {
                (InviteState::Used, Some(d)) => sync_client::roster::chain::hex32(d)
                    .map(DeviceId)
                    .into_iter()
                    .collect(),
                _ => Vec::new(),
            };
            if let Err(e) = close_mailbox(home, invite, &keep).await {
                say(
                    out,
                    Notice::InviteError {
                        id: id.clone(),
                        message: format!("invite {id}: {e:#} (retried at the next pull)"),
                    },
                    true,
                );
            }
        }
        invites.save(home.dir())?;
    }
    Ok(())
}

async fn answer_one(
    home: &Home,
    roster: &mut LocalRoster,
    state: &mut StateStore,
    invite: &PendingInvite,
    policy: RetryPolicy,
    out: Out,
) -> Result<Outcome> {
    let mailbox: MailboxKeys = invite.mailbox()?;
    let relays = relays_current_first(home)?;
    let session = match mailbox::connect(&relays, &mailbox, &home.device_key()?, None).await {
        Ok(s) => s,
        Err(ClientError::GroupClosed(_)) => return Ok(Outcome::ClosedElsewhere),
        Err(e) => return Err(anyhow::Error::new(e).context("cannot reach the invite's mailbox")),
    };
    let read = mailbox::read(&session, &mailbox, 0).await;
    let read = match read {
        Ok(r) => r,
        Err(ClientError::GroupClosed(_)) => {
            session.close().await;
            return Ok(Outcome::ClosedElsewhere);
        }
        Err(e) => {
            session.close().await;
            return Err(anyhow::Error::new(e).context("reading the invite's mailbox"));
        }
    };
    let me = roster.me();
    let group = mailbox.group_id();
    let mut request = None;
    for blob in &read.blobs {
        if blob.sender == me || blob.kind != BlobKind::Enrolment {
            continue;
        }
        match Enrolment::decode(blob.sender, &group, &blob.body) {
            Ok(req) => {
                request = Some((req, blob.stored_at_ms));
                break;
            }
            Err(e) => say(
                out,
                Notice::RosterRefused {
                    id: Some(invite.id.clone()),
                    sender: Some(blob.sender.to_string()),
                    reason: Some(e.to_string()),
                    message: format!(
                        "invite {}: request from {} refused: {e}",
                        invite.id,
                        short(&blob.sender.to_string())
                    ),
                },
                true,
            ),
        }
    }
    let Some((req, stored_at_ms)) = request else {
        session.close().await;
        return Ok(Outcome::Waiting);
    };
    let device = req.device.to_string();
    if stored_at_ms / 1000 > invite.expires_at {
        session.close().await;
        return Ok(Outcome::ExpiredRequest {
            device,
            name: req.name,
        });
    }
    // Add the device, and publish the Add before answering: the joiner's
    // first pull must find it in the group.
    let settled = roster
        .settle(now_ms())?
        .ok_or_else(|| anyhow!("no roster on this device"))?;
    if roster.chain.current().epoch != Some(settled.state.epoch) {
        session.close().await;
        bail!("this device has not reached the roster's current epoch");
    }
    if let Err(e) = roster.add_device(
        &settled.state,
        req.device,
        req.hpke_key,
        &req.name,
        now_ms(),
    ) {
        session.close().await;
        return Err(anyhow::Error::new(e).context(format!(
            "device {} ({}) cannot be added",
            req.name,
            short(&device)
        )));
    }
    roster.save()?;
    super::epochs::publish(home, roster, state, policy, out).await?;
    let settled = roster
        .settle(now_ms())?
        .ok_or_else(|| anyhow!("no roster on this device"))?;
    roster.save()?;
    let secret = roster.chain.current().secret()?;
    let answer = Answer::make(
        &settled.state,
        settled.state.epoch,
        &secret,
        req.device,
        &req.hpke_key,
    )
    .map_err(|e| anyhow!("cannot wrap the group's key to {}: {e}", req.name))?;
    let mut posted = Ok(());
    for body in roster.all_bodies() {
        posted = mailbox::post(&session, &mailbox, BlobKind::Roster, &body).await;
        if posted.is_err() {
            break;
        }
    }
    if posted.is_ok() {
        posted = mailbox::post(&session, &mailbox, BlobKind::Enrolment, &answer.encode()).await;
    }
    session.close().await;
    posted.context("posting the answer in the invite's mailbox")?;
    Ok(Outcome::Added {
        device,
        name: req.name,
    })
}
