//! `init`, `invite`, `join`: group membership.

use crate::output::{Out, json_line, qr, short};
use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::io::IsTerminal;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use sync_client::roster::LocalRoster;
use sync_client::roster::chain::{ChainFile, EpochKey};
use sync_client::session::DEFAULT_CONNECT_TIMEOUT;
use sync_client::util::{human_duration, now_ms, now_s, parse_duration};
use sync_client::{ConnectOptions, GroupSecret, Home, Invite, RelayList, RelaySession};
use sync_protocol::AccessToken;
use zeroize::Zeroizing;

/// `--json` output of `init` and `invite`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct InviteOut {
    /// The invite string (a secret).
    pub invite: String,
    /// Unix seconds after which it cannot be used to join.
    pub expires_at: u64,
    /// The group id (hex).
    pub group_id: String,
    /// The first (preferred) relay address.
    pub relay: String,
    /// Every relay address the invite carries, first preferred.
    pub relays: Vec<String>,
}

/// `--json` output of `join`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinOut {
    /// The group id (hex).
    pub group_id: String,
    /// The group's name, if the invite carried one.
    pub group_name: Option<String>,
    /// The first (preferred) relay address.
    pub relay: String,
    /// Every relay address of the group, first preferred.
    pub relays: Vec<String>,
    /// This device's node id (hex).
    pub device_id: String,
}

fn make_invite(home: &Home, expires: &str) -> Result<(Invite, u64)> {
    let ttl = parse_duration(expires)?;
    let group = home.group()?;
    let invite = Invite {
        relays: home.relays()?.to_strings(),
        secret: home.current_secret()?,
        expires_at: now_s() + ttl,
        group_name: group.name,
    };
    Ok((invite, ttl))
}

fn print_invite(invite: &Invite, ttl: u64, force_qr: bool, out: Out) {
    let text = invite.encode();
    if out.json {
        json_line(&InviteOut {
            invite: text,
            expires_at: invite.expires_at,
            group_id: invite.secret.keys().group_id().to_string(),
            relay: invite.relays[0].clone(),
            relays: invite.relays.clone(),
        });
        return;
    }
    // The invite alone on stdout, so `INVITE=$(sync-cli invite)` works.
    println!("{text}");
    if out.quiet {
        return;
    }
    if (force_qr || std::io::stderr().is_terminal())
        && let Some(code) = qr(&text)
    {
        eprintln!("{code}");
    }
    eprintln!(
        "This invite is a secret: anyone who has it can read and write the group. \
         It can be used to join for {}. On another device: sync-cli join <invite>",
        human_duration(ttl)
    );
}

/// Create the group `secret` on the relay now, with `token`: one session,
/// opened and closed, on the first of `relays` that can be reached (they
/// share one database, so one creates it for all). The token is used for
/// this and not kept anywhere. A relay that answers and refuses ends it.
async fn create_on_relay(
    home: &Home,
    relays: &RelayList,
    secret: &GroupSecret,
    token: AccessToken,
) -> Result<()> {
    let mut last = None;
    for relay in relays.as_slice() {
        let opts = ConnectOptions {
            relay: relay.clone(),
            keys: secret.keys(),
            device_key: home.device_key()?,
            device_name: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            access_token: Some(token),
        };
        match RelaySession::connect(&opts).await {
            Ok(session) => {
                session.close().await;
                return Ok(());
            }
            Err(e) if e.is_transport() => last = Some(e),
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "relay {relay} did not create the group (this home has none)"
                )));
            }
        }
    }
    let e = last.expect("at least one relay");
    Err(anyhow::Error::new(e).context("no relay could create the group (this home has none)"))
}

#[allow(clippy::too_many_arguments)]
pub async fn init(
    home: &Home,
    relays: &[String],
    name: Option<String>,
    expires: &str,
    qr: bool,
    token: Option<&str>,
    device_name: Option<String>,
    out: Out,
) -> Result<()> {
    let relays = RelayList::parse(relays)?;
    parse_duration(expires)?;
    let token = token
        .map(|t| AccessToken::parse(t).context("invalid --token (or SYNC_TOKEN)"))
        .transpose()?;
    anyhow::ensure!(
        !home.is_initialized(),
        "{} already belongs to a group; use another --home for another group",
        home.dir().display()
    );
    let secret = GroupSecret::generate();
    if let Some(token) = token {
        create_on_relay(home, &relays, &secret, token).await?;
    }
    home.create(&relays, &secret, name)?;
    found_roster(home, &secret, device_name)?;
    if out.human() {
        eprintln!(
            "Created group {} on relay {} in {}",
            short(&secret.keys().group_id().to_string()),
            relays.to_strings().join(", "),
            home.dir().display()
        );
    }
    let (invite, ttl) = make_invite(home, expires)?;
    print_invite(&invite, ttl, qr, out);
    Ok(())
}

/// Write this device's chain (`epochs.json`): `secret` in epoch `epoch`
/// (`None`: an invite's secret, placed on the chain once the roster
/// arrives), and its name in the roster.
fn write_chain(
    home: &Home,
    secret: &GroupSecret,
    epoch: Option<u64>,
    device_name: Option<String>,
) -> Result<ChainFile> {
    if let Some(n) = &device_name {
        sync_client::crypto::envelope::validate_device_name(n)
            .map_err(|why| anyhow::anyhow!("invalid --device-name {n:?}: {why}"))?;
    }
    let mut chain = ChainFile::new(EpochKey::new(epoch, secret));
    chain.device_name = device_name;
    chain.save(home.dir())?;
    Ok(chain)
}

/// `init` founds the group's roster: its genesis, with this device as the
/// first member, queued for the group (the first `pull` publishes it;
/// docs/security.md "Devices, roster and key epochs").
fn found_roster(home: &Home, secret: &GroupSecret, device_name: Option<String>) -> Result<()> {
    write_chain(home, secret, Some(0), device_name)?;
    let mut roster = LocalRoster::open(home)?;
    let name = roster.device_name();
    roster.ensure_genesis(&name, now_ms())?;
    roster.save()?;
    Ok(())
}

pub fn invite(home: &Home, expires: &str, qr: bool, out: Out) -> Result<()> {
    let (invite, ttl) = make_invite(home, expires)?;
    print_invite(&invite, ttl, qr, out);
    Ok(())
}

/// Read the invite: the argument, standard input (`-`) or a file. Only
/// the first line counts; surrounding whitespace is ignored.
fn read_invite(arg: Option<&str>, file: Option<&Path>) -> Result<Zeroizing<String>> {
    let mut text = Zeroizing::new(String::new());
    match (arg, file) {
        (_, Some(path)) => {
            *text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the invite from {}", path.display()))?;
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                eprintln!(
                    "warning: {} is readable by other users; the invite in it is a secret of the group",
                    path.display()
                );
            }
        }
        (Some("-"), None) => {
            std::io::stdin()
                .read_line(&mut text)
                .context("cannot read the invite from standard input")?;
        }
        (Some(arg), None) => text.push_str(arg),
        (None, None) => {
            bail!("give the invite, `-` to read it from standard input, or --file PATH")
        }
    }
    let line = Zeroizing::new(text.lines().next().unwrap_or("").trim().to_string());
    if line.is_empty() {
        bail!("no invite given (the input was empty)");
    }
    Ok(line)
}

pub fn join(
    home: &Home,
    arg: Option<&str>,
    file: Option<&Path>,
    device_name: Option<String>,
    out: Out,
) -> Result<()> {
    let text = read_invite(arg, file)?;
    let invite = Invite::decode(&text)?;
    invite.check_not_expired(now_s())?;
    let relays = invite.relay_list()?;
    let relay = relays.get(0).clone();
    home.create(&relays, &invite.secret, invite.group_name.clone())?;
    // The invite's secret is some epoch of the group's roster: which one is
    // learnt when the roster arrives. The first pull posts this device's
    // enrolment request; a member that pulls it adds the device.
    write_chain(home, &invite.secret, None, device_name)?;
    let group_id = invite.secret.keys().group_id().to_string();
    if out.json {
        json_line(&JoinOut {
            group_id,
            group_name: invite.group_name,
            relay: relay.to_string(),
            relays: relays.to_strings(),
            device_id: home.device_key()?.public().to_string(),
        });
    } else if out.human() {
        eprintln!(
            "Joined group {}{} via relay {}. Pull with: sync-cli pull --out DIR",
            short(&group_id),
            invite
                .group_name
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            relays.to_strings().join(", ")
        );
    }
    Ok(())
}
