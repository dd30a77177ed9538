//! `init`: create a group, found its roster and print a first invite
//! (`invite` and `join` live in `invites.rs` and `join.rs`).

use crate::output::{Out, short};
use anyhow::{Context, Result};
use sync_client::roster::LocalRoster;
use sync_client::roster::chain::{ChainFile, EpochKey};
use sync_client::session::DEFAULT_CONNECT_TIMEOUT;
use sync_client::util::{now_ms, parse_duration};
use sync_client::{ConnectOptions, GroupSecret, Home, RelayList, RelaySession};
use sync_protocol::AccessToken;

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
    // The first invite: its mailbox is a group too, created with the same
    // token on a relay in token mode. The group exists now whatever
    // happens to the invite: without one (relay unreachable, or in token
    // mode without a token), init still succeeds and says how to make one.
    if let Err(e) = super::invites::create(home, expires, qr, token, out).await
        && !out.quiet
    {
        eprintln!(
            "warning: no invite printed: {e:#}\n  make one when the relay can be reached: \
                 sync-cli invite (with --token on a relay that creates groups only with a token)"
        );
    }
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
