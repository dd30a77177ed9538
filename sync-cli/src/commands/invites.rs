//! One-time invites on the inviter's side (docs/security.md "Invites as
//! one-time enrolment credentials"): `invite` makes one (and creates its
//! mailbox at the relay), `invite --list` / `--cancel ID` manage them, and
//! [`answer_all`] — run by every `pull` (and each round of `pull --follow`)
//! after the roster is published — answers requests in the mailboxes of
//! pending invites: `Add` published in the group, the current epoch's
//! secret wrapped to the joiner, the mailbox closed.

use crate::output::{Out, json_line, qr, short};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::io::IsTerminal;
use sync_client::crypto::envelope::BlobKind;
use sync_client::mailbox::{self, Answer, MailboxKeys};
use sync_client::pending_invites::{InviteState, Invites, PendingInvite};
use sync_client::roster::LocalRoster;
use sync_client::roster::enrol::Enrolment;
use sync_client::util::{human_duration, now_ms, now_s, parse_duration};
use sync_client::{ClientError, Home, Invite, RetryPolicy, StateStore};
use sync_protocol::{AccessToken, DeviceId};

/// `--json` output of `init` and `invite`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct InviteOut {
    /// The invite string (a one-time credential: keep it secret until used).
    pub invite: String,
    /// The invite's id (for `invite --list` and `--cancel`).
    pub id: String,
    /// Unix seconds after which it cannot be used to join.
    pub expires_at: u64,
    /// The group's current id (hex).
    pub group_id: String,
    /// The first (preferred) relay address.
    pub relay: String,
    /// Every relay address the invite carries, first preferred.
    pub relays: Vec<String>,
}

/// One invite of `invite --list --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ListedInvite {
    /// Its id.
    pub id: String,
    /// When it was made, Unix seconds.
    pub created_at: u64,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// `pending`, `used`, `cancelled` or `expired`.
    pub state: InviteState,
    /// The device that used it (node id, hex), once used.
    pub device: Option<String>,
    /// That device's name.
    pub device_name: Option<String>,
}

/// `invite --list --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct InviteList {
    /// Every invite this device remembers, oldest first.
    pub invites: Vec<ListedInvite>,
}

/// The home's relays with the one that worked last first (the invite itself
/// keeps the group's order).
fn relays_current_first(home: &Home) -> Result<sync_client::RelayList> {
    let relays = home.relays()?;
    let current = home.relay()?.to_string();
    let mut list = vec![current.clone()];
    list.extend(relays.to_strings().into_iter().filter(|r| *r != current));
    Ok(sync_client::RelayList::parse(&list)?)
}

/// Make an invite valid for `expires` (a duration), create its mailbox at
/// the relay (with `token` on a relay in token mode), remember it in
/// `invites.json` and print it.
pub async fn create(
    home: &Home,
    expires: &str,
    qr_code: bool,
    token: Option<AccessToken>,
    out: Out,
) -> Result<()> {
    let ttl = parse_duration(expires)?;
    let mut roster = LocalRoster::open(home)?;
    let name = roster.device_name();
    roster.ensure_genesis(&name, now_ms())?;
    let settled = roster.settle(now_ms())?.ok_or_else(|| {
        anyhow!("no roster has reached this device yet: run `sync-cli pull` first")
    })?;
    anyhow::ensure!(
        settled.is_member(&roster.me()),
        "this device is not a member of the group's roster, so it cannot invite: \
         run `sync-cli pull` (a member adds it) or ask a member for the invite"
    );
    roster.save()?;
    let relays = home.relays()?;
    let invite = Invite::generate(
        &relays,
        settled.state.roster,
        now_s() + ttl,
        home.group()?.name,
    );
    let mailbox = invite.mailbox();
    let mut invites = Invites::load(home.dir())?;
    let pending = PendingInvite::new(&mailbox, now_s(), invite.expires_at);
    // Check the cap before creating anything at the relay.
    invites.add(pending.clone())?;
    let session = mailbox::connect(&relays_current_first(home)?, &mailbox, &home.device_key()?, token)
        .await
        .map_err(|e| {
            let token_hint = matches!(&e, ClientError::Relay(m)
                if m.error_code() == sync_protocol::ErrorCode::AccessTokenRequired);
            let err = anyhow::Error::new(e).context("cannot create the invite's mailbox at the relay");
            if token_hint {
                err.context(
                    "the relay creates groups only with an access token, and each invite's mailbox is a \
                     group: pass --token (or SYNC_TOKEN)",
                )
            } else {
                err
            }
        })?;
    session.close().await;
    invites.save(home.dir())?;
    print(home, &invite, &pending.id, ttl, qr_code, out)
}

fn print(home: &Home, invite: &Invite, id: &str, ttl: u64, force_qr: bool, out: Out) -> Result<()> {
    let text = invite.encode();
    if out.json {
        json_line(&InviteOut {
            invite: text,
            id: id.to_string(),
            expires_at: invite.expires_at,
            group_id: home.current_secret()?.keys().group_id().to_string(),
            relay: invite.relays[0].clone(),
            relays: invite.relays.clone(),
        });
        return Ok(());
    }
    // The invite alone on stdout, so `INVITE=$(sync-cli invite)` works.
    println!("{text}");
    if out.quiet {
        return Ok(());
    }
    if (force_qr || std::io::stderr().is_terminal())
        && let Some(code) = qr(&text)
    {
        eprintln!("{code}");
    }
    eprintln!(
        "Invite {id}: admits one device, for {}. On the new device: sync-cli join <invite>; \
         while it waits, run `sync-cli pull` here to add it. Cancel with: sync-cli invite --cancel {id}",
        human_duration(ttl)
    );
    Ok(())
}

/// `invite --list`: the invites this device made.
pub fn list(home: &Home, out: Out) -> Result<()> {
    let invites = Invites::load(home.dir())?;
    let now = now_s();
    let listed: Vec<ListedInvite> = invites
        .invites
        .iter()
        .map(|i| ListedInvite {
            id: i.id.clone(),
            created_at: i.created_at,
            expires_at: i.expires_at,
            state: if i.is_expired(now) {
                InviteState::Expired
            } else {
                i.state
            },
            device: i.device.clone(),
            device_name: i.device_name.clone(),
        })
        .collect();
    if out.json {
        json_line(&InviteList { invites: listed });
        return Ok(());
    }
    if listed.is_empty() {
        if out.human() {
            eprintln!("no invites (make one with `sync-cli invite`)");
        }
        return Ok(());
    }
    println!(
        "{:<16}  {:<9}  {:<12}  {:<12}  device",
        "id", "state", "created", "expires"
    );
    for i in listed {
        let device = match (&i.device_name, &i.device) {
            (Some(n), Some(d)) => format!("{n} ({})", short(d)),
            _ => String::new(),
        };
        println!(
            "{:<16}  {:<9}  {:<12}  {:<12}  {device}",
            i.id,
            i.state.as_str(),
            when(i.created_at, now),
            when(i.expires_at, now),
        );
    }
    Ok(())
}

/// A moment relative to now: "3h ago", "in 21h".
fn when(unix_s: u64, now: u64) -> String {
    if unix_s <= now {
        format!("{} ago", human_duration(now - unix_s))
    } else {
        format!("in {}", human_duration(unix_s - now))
    }
}

/// `invite --cancel ID`: the invite is cancelled here, then its mailbox is
/// closed at the relay with an empty keep list (a later `join` meets
/// GROUP_CLOSED). If the relay cannot be reached, the next `pull` closes it.
pub async fn cancel(home: &Home, id: &str, out: Out) -> Result<()> {
    let mut invites = Invites::load(home.dir())?;
    let invite = invites.find_mut(id)?;
    match invite.state {
        InviteState::Used => bail!(
            "invite {} was already used by {} ({}); to remove that device: sync-cli revoke {}",
            invite.id,
            invite.device_name.as_deref().unwrap_or("?"),
            short(invite.device.as_deref().unwrap_or("?")),
            invite.device_name.as_deref().unwrap_or("DEVICE"),
        ),
        InviteState::Cancelled if invite.closed => {
            if out.human() {
                eprintln!("invite {} was already cancelled", invite.id);
            }
            return Ok(());
        }
        _ => {}
    }
    invite.state = InviteState::Cancelled;
    let id = invite.id.clone();
    invites.save(home.dir())?;
    let closed = close_mailbox(home, invites.find_mut(&id)?, &[]).await;
    invites.save(home.dir())?;
    match closed {
        Ok(()) => {
            if out.json {
                json_line(&serde_json::json!({"event": "cancelled", "id": id}));
            } else if out.human() {
                eprintln!("cancelled invite {id}; its mailbox at the relay is closed");
            }
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "invite {id} is cancelled on this device (it will never be answered), but its mailbox \
             could not be closed at the relay; the next `sync-cli pull` closes it"
        ))),
    }
}

/// Close `invite`'s mailbox keeping `keep`; GROUP_CLOSED means it is
/// closed already. Marks it closed on success.
async fn close_mailbox(home: &Home, invite: &mut PendingInvite, keep: &[DeviceId]) -> Result<()> {
    let mailbox = invite.mailbox()?;
    let session = match mailbox::connect(
        &relays_current_first(home)?,
        &mailbox,
        &home.device_key()?,
        None,
    )
    .await
    {
        Ok(s) => s,
        Err(ClientError::GroupClosed(_)) => {
            invite.closed = true;
            return Ok(());
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot reach the invite's mailbox")),
    };
    let keep = sync_protocol::KeepList::new(keep.to_vec()).map_err(|e| anyhow!("{e}"))?;
    let answer = session.close_group(keep).await;
    session.close().await;
    match answer {
        Ok(_) | Err(ClientError::GroupClosed(_)) => {
            invite.closed = true;
            Ok(())
        }
        Err(e) => Err(anyhow::Error::new(e).context("closing the invite's mailbox")),
    }
}

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

fn say(out: Out, event: &str, text: String, json: serde_json::Value, warn: bool) {
    if out.json {
        let mut v = json;
        v["event"] = event.into();
        v["message"] = text.into();
        json_line(&v);
    } else if warn && !out.quiet {
        eprintln!("warning: {text}");
    } else if out.human() {
        eprintln!("{text}");
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
                "invite_expired",
                format!("invite {id} expired unused; its mailbox is being closed"),
                serde_json::json!({"id": id}),
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
                        "invite_used",
                        format!("added device {name} ({}) with invite {id}", short(&device)),
                        serde_json::json!({"id": id, "device": device, "name": name}),
                        false,
                    );
                }
                Ok(Outcome::ClosedElsewhere) => {
                    invite.state = InviteState::Cancelled;
                    invite.closed = true;
                    say(
                        out,
                        "invite_closed",
                        format!(
                            "invite {id}: its mailbox was closed by another holder of the invite \
                             (GROUP_CLOSED); nobody was added with it"
                        ),
                        serde_json::json!({"id": id}),
                        true,
                    );
                }
                Ok(Outcome::ExpiredRequest { device, name }) => {
                    invite.state = InviteState::Expired;
                    say(
                        out,
                        "invite_expired",
                        format!(
                            "invite {id} expired before it was answered: device {name} ({}) that \
                             used it was not added; make a new invite",
                            short(&device)
                        ),
                        serde_json::json!({"id": id, "device": device, "name": name}),
                        true,
                    );
                }
                Err(e) => say(
                    out,
                    "invite_error",
                    format!("invite {id} not answered now: {e:#}"),
                    serde_json::json!({"id": id}),
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
                    "invite_error",
                    format!("invite {id}: {e:#} (retried at the next pull)"),
                    serde_json::json!({"id": id}),
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
                "roster_refused",
                format!(
                    "invite {}: request from {} refused: {e}",
                    invite.id,
                    short(&blob.sender.to_string())
                ),
                serde_json::json!({"id": invite.id, "sender": blob.sender.to_string(), "reason": e.to_string()}),
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
