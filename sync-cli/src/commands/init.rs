//! `init`, `invite`, `join`: group membership.

use anyhow::Result;
use sync_client::util::{human_duration, now_s, parse_duration};
use sync_client::{GroupSecret, Home, Invite, RelayAddr};

fn make_invite(home: &Home, expires: &str) -> Result<(String, u64)> {
    let ttl = parse_duration(expires)?;
    let group = home.group()?;
    let invite = Invite {
        relays: vec![group.relay],
        secret: home.secret()?,
        expires_at: now_s() + ttl,
        group_name: group.name,
    };
    Ok((invite.encode(), ttl))
}

fn print_invite(invite: &str, ttl: u64) {
    println!("{invite}");
    eprintln!(
        "This invite is a secret: anyone who has it can read and write the group. \
         It can be used to join for {}. On another device: sync-cli join <invite>",
        human_duration(ttl)
    );
}

pub fn init(home: &Home, relay: &str, name: Option<String>, expires: &str) -> Result<()> {
    let relay: RelayAddr = relay.parse()?;
    parse_duration(expires)?;
    let secret = GroupSecret::generate();
    home.create(&relay, &secret, name)?;
    let group_id = secret.keys().group_id();
    eprintln!(
        "Created group {} on relay {} in {}",
        crate::output::short(&group_id.to_string()),
        relay,
        home.dir().display()
    );
    let (invite, ttl) = make_invite(home, expires)?;
    print_invite(&invite, ttl);
    Ok(())
}

pub fn invite(home: &Home, expires: &str) -> Result<()> {
    let (invite, ttl) = make_invite(home, expires)?;
    print_invite(&invite, ttl);
    Ok(())
}

pub fn join(home: &Home, text: &str) -> Result<()> {
    let invite = Invite::decode(text)?;
    invite.check_not_expired(now_s())?;
    let relay: RelayAddr = invite.relays[0].parse()?;
    home.create(&relay, &invite.secret, invite.group_name.clone())?;
    eprintln!(
        "Joined group {}{} via relay {}. Pull with: sync-cli pull --out DIR",
        crate::output::short(&invite.secret.keys().group_id().to_string()),
        invite
            .group_name
            .map(|n| format!(" ({n})"))
            .unwrap_or_default(),
        relay
    );
    Ok(())
}
