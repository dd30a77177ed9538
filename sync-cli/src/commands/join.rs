//! `join`: enrol this device with a one-time invite (docs/security.md
//! "Invites as one-time enrolment credentials"). The device posts its
//! request (node id, HPKE key, name, signed) in the invite's mailbox and
//! waits, bounded by `--timeout` and the invite's expiry, for a member's
//! answer: the roster, folded here from the invite's genesis, must add this
//! device, and the wrapped secret must open to the current epoch's group.
//! Only then is the home written.

use crate::output::{Out, json_line, short};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use sync_client::crypto::envelope::BlobKind;
use sync_client::mailbox::{self, Accepted, Answer, accept_answer, closed_message};
use sync_client::roster::chain::{ChainFile, EpochKey};
use sync_client::roster::enrol::Enrolment;
use sync_client::roster::local::default_device_name;
use sync_client::roster::{LocalRoster, MAX_ENTRIES, SignedEntry};
use sync_client::util::{human_duration, now_ms, now_s, parse_duration};
use sync_client::{ClientError, Home, Invite, RelaySession};
use zeroize::Zeroizing;

/// `--json` output of `join`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct JoinOut {
    /// The group's current id (hex).
    pub group_id: String,
    /// The group's name, if the invite carried one.
    pub group_name: Option<String>,
    /// The first (preferred) relay address.
    pub relay: String,
    /// Every relay address of the group, first preferred.
    pub relays: Vec<String>,
    /// This device's node id (hex).
    pub device_id: String,
    /// The key epoch this device joined in.
    pub epoch: u64,
}

/// Time between two reads of the mailbox while waiting.
const POLL: Duration = Duration::from_millis(500);

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
                    "warning: {} is readable by other users; the invite in it admits a device to the group",
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

fn closed_or(e: ClientError, what: &str) -> anyhow::Error {
    match closed_message(&e) {
        Some(m) => anyhow!(m),
        None => anyhow::Error::new(e).context(what.to_string()),
    }
}

/// What the joiner gathered from the mailbox so far.
#[derive(Default)]
struct Gathered {
    entries: Vec<SignedEntry>,
    ids: BTreeSet<sync_client::roster::EntryId>,
    answers: Vec<Answer>,
    refused: Option<String>,
}

impl Gathered {
    fn take(&mut self, me: sync_protocol::DeviceId, read: mailbox::MailboxRead) {
        if let Some(why) = read.refused.into_iter().last() {
            self.refused = Some(why);
        }
        for blob in read.blobs {
            if blob.sender == me {
                continue;
            }
            match blob.kind {
                BlobKind::Roster => match mailbox::entries_of(&blob.body) {
                    Ok(entries) => {
                        for e in entries {
                            if self.entries.len() < MAX_ENTRIES && self.ids.insert(e.id()) {
                                self.entries.push(e);
                            }
                        }
                    }
                    Err(e) => self.refused = Some(format!("roster entries refused: {e}")),
                },
                BlobKind::Enrolment => match Answer::decode(&blob.body) {
                    Ok(a) if self.answers.len() < 64 => self.answers.push(a),
                    Ok(_) => {}
                    Err(e) => self.refused = Some(format!("answer refused: {e}")),
                },
                _ => {}
            }
        }
    }

    /// The first answer that checks out.
    fn accepted(
        &mut self,
        invite: &Invite,
        keys: &sync_client::roster::DeviceKeys,
    ) -> Option<Accepted> {
        for a in &self.answers {
            match accept_answer(invite.roster, keys, &self.entries, a) {
                Ok(ok) => return Some(ok),
                Err(e) => self.refused = Some(format!("answer refused: {e}")),
            }
        }
        None
    }
}

/// `join`: see the module's doc.
pub async fn join(
    home: &Home,
    arg: Option<&str>,
    file: Option<&Path>,
    device_name: Option<String>,
    timeout: &str,
    out: Out,
) -> Result<()> {
    let timeout = Duration::from_secs(parse_duration(timeout)?);
    let text = read_invite(arg, file)?;
    let invite = Invite::decode(&text)?;
    invite.check_not_expired(now_s())?;
    anyhow::ensure!(
        !home.is_initialized(),
        "{} already belongs to a group; use another --home for another group",
        home.dir().display()
    );
    if let Some(n) = &device_name {
        sync_client::crypto::envelope::validate_device_name(n)
            .map_err(|why| anyhow!("invalid --device-name {n:?}: {why}"))?;
    }
    let relays = invite.relay_list()?;
    let keys = home.device_keys()?;
    let me = keys.device_id();
    let name = default_device_name(device_name.clone(), &me);
    let mailbox = invite.mailbox();
    let request = Enrolment::encode(&keys, &mailbox.group_id(), &name)
        .map_err(|e| anyhow!("cannot make the enrolment request: {e}"))?;
    let device_key = home.device_key()?;
    let connect = || mailbox::connect(&relays, &mailbox, &device_key, None);
    let mut session: RelaySession = connect()
        .await
        .map_err(|e| closed_or(e, "cannot reach the invite's mailbox at the relay"))?;
    mailbox::post(&session, &mailbox, BlobKind::Enrolment, &request)
        .await
        .map_err(|e| closed_or(e, "cannot post the enrolment request"))?;
    let started = Instant::now();
    let until_expiry = Duration::from_secs(invite.expires_at.saturating_sub(now_s()));
    let limit = timeout.min(until_expiry + Duration::from_secs(1));
    if out.human() {
        eprintln!(
            "Asked to join as {name} ({}); waiting up to {} for a member to answer \
             (on the device that made the invite: sync-cli pull)…",
            short(&me.to_string()),
            human_duration(limit.as_secs().max(1))
        );
    }
    let mut gathered = Gathered::default();
    let mut cursor = 0;
    let accepted = loop {
        match mailbox::read(&session, &mailbox, cursor).await {
            Ok(read) => {
                cursor = read.cursor;
                gathered.take(me, read);
                if let Some(ok) = gathered.accepted(&invite, &keys) {
                    break ok;
                }
            }
            Err(e) if e.is_transport() => {
                session.close().await;
                session = connect()
                    .await
                    .map_err(|e| closed_or(e, "lost the invite's mailbox at the relay"))?;
            }
            Err(e) => return Err(closed_or(e, "reading the invite's mailbox")),
        }
        if now_s() > invite.expires_at {
            session.close().await;
            invite.check_not_expired(now_s())?;
        }
        if started.elapsed() >= limit {
            session.close().await;
            let why = gathered
                .refused
                .map(|w| format!(" (last refusal: {w})"))
                .unwrap_or_default();
            bail!(
                "no member answered within {}{why}; the request stays in the mailbox until the \
                 invite expires: run `sync-cli pull` on the device that made the invite, then \
                 `sync-cli join` again (or with a longer --timeout)",
                human_duration(limit.as_secs().max(1))
            );
        }
        tokio::time::sleep(POLL).await;
    };
    session.close().await;
    write_home(home, &invite, &accepted, &gathered.entries, device_name)?;
    let group_id = accepted.secret.keys().group_id().to_string();
    if out.json {
        json_line(&JoinOut {
            group_id,
            group_name: invite.group_name.clone(),
            relay: relays.get(0).to_string(),
            relays: relays.to_strings(),
            device_id: me.to_string(),
            epoch: accepted.state.epoch,
        });
    } else if out.human() {
        eprintln!(
            "Joined group {}{} as {name} via relay {}. Pull with: sync-cli pull --out DIR",
            short(&group_id),
            invite
                .group_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            relays.to_strings().join(", ")
        );
    }
    Ok(())
}

/// Write the home of a device that was answered: `group.toml` (the current
/// epoch's secret), `epochs.json` (that epoch, the invite's roster) and
/// `roster.bin` (the entries received).
fn write_home(
    home: &Home,
    invite: &Invite,
    accepted: &Accepted,
    entries: &[SignedEntry],
    device_name: Option<String>,
) -> Result<()> {
    home.create(
        &invite.relay_list()?,
        &accepted.secret,
        invite.group_name.clone(),
    )?;
    let mut chain = ChainFile::new(EpochKey::new(Some(accepted.state.epoch), &accepted.secret));
    chain.roster = Some(invite.roster.to_string());
    chain.device_name = device_name;
    chain.save(home.dir())?;
    let mut roster = LocalRoster::open(home)?;
    for e in entries {
        let got = roster.absorb(&e.encode());
        if let Some(why) = got.refused {
            bail!("cannot keep the roster: {why}");
        }
    }
    roster.settle(now_ms())?;
    roster.save()?;
    Ok(())
}
