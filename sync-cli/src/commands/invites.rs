//! One-time invites on the inviter's side (docs/security.md "Invites as
//! one-time enrolment credentials"): `invite` makes one (and creates its
//! mailbox at the relay), `invite --list` / `--cancel ID` manage them.
//! Answering the joiners is in `invite_answer.rs`.

use crate::output::{Out, json_line, qr, short};
use anyhow::{Result, anyhow, bail};
use serde::Serialize;
use std::io::IsTerminal;
use sync_client::mailbox;
use sync_client::pending_invites::{InviteState, Invites, PendingInvite};
use sync_client::roster::LocalRoster;
use sync_client::util::{human_duration, now_ms, now_s, parse_duration};
use sync_client::{ClientError, Home, Invite};
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
pub(super) fn relays_current_first(home: &Home) -> Result<sync_client::RelayList> {
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
pub(super) async fn close_mailbox(
    home: &Home,
    invite: &mut PendingInvite,
    keep: &[DeviceId],
) -> Result<()> {
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
