//! The mailbox of a one-time invite (docs/security.md "Invites as one-time
//! enrolment credentials"): a short-lived group at the relay, derived from
//! the invite's enrolment secret, where the joiner posts its request and
//! the inviter its answer. To the relay it is an ordinary group (no wire
//! change); the inviter closes it after answering (`CloseGroup`, keep list
//! = the joiner), so a second use of the invite meets GROUP_CLOSED.
//!
//! - Derivation: mailbox secret = `BLAKE3-derive_key("0k-sync/1 invite
//!   mailbox", roster id ‖ enrolment secret)`, a [`GroupSecret`] whose group
//!   id, Hello proofs and blob key derive as every group secret's do. The
//!   invite id shown by `sync-cli invite --list` is the first 8 bytes of the
//!   mailbox's group id, in hex (public: the relay sees the group id).
//! - Request (joiner → inviter): a blob of kind `Enrolment` whose body is a
//!   [`Enrolment`] signed by the joiner over the **mailbox's** group id.
//! - Answer (inviter → joiner): blobs of kind `Roster` holding the whole
//!   roster (every entry the inviter holds, the joiner's `Add` included),
//!   and one blob of kind `Enrolment` holding an [`Answer`]: the current
//!   epoch's number and group id, and its secret wrapped to the joiner's
//!   HPKE key exactly as a rotation wraps an epoch secret
//!   ([`crate::roster::wrap`]).
//!
//! Every blob is sealed with the mailbox's blob key (the ordinary
//! envelope); the joiner trusts an answer only after folding the roster
//! from the invite's genesis ([`accept_answer`]): an `Add` signed by a
//! non-member (whoever else holds the invite) is ignored by the fold, and a
//! wrap that does not open to the announced epoch's group id is refused.

use crate::GroupKeys;
use crate::crypto::GroupSecret;
use crate::crypto::envelope::{self, BlobHeader, BlobKind, Compression};
use crate::crypto::view::GroupView;
use crate::error::{ClientError, Result};
use crate::roster::codec::{Reader, Writer};
use crate::roster::entry::WRAP_CIPHERTEXT_LEN;
use crate::roster::{
    DeviceKeys, EntryId, RosterError, RosterState, SignedEntry, WrapContext, WrappedSecret, fold,
    unwrap, wrap,
};
use crate::session::RelaySession;
use sync_protocol::{BlobId, DeviceId, GroupId, PushItem};
use zeroize::Zeroize;

/// BLAKE3 `derive_key` context of a mailbox secret.
pub const MAILBOX_CONTEXT: &str = "0k-sync/1 invite mailbox";
/// Version byte of an [`Answer`].
pub const ANSWER_VERSION: u8 = 0x01;
/// Bytes of an encoded [`Answer`].
pub const ANSWER_LEN: usize = 1 + 8 + 32 + 32 + WRAP_CIPHERTEXT_LEN;
/// Most blobs read from a mailbox in one visit: whoever holds the invite can
/// post there, so what a reader keeps is bounded.
pub const MAX_MAILBOX_BLOBS: usize = 1024;

/// A mailbox's keys.
#[derive(Clone)]
pub struct MailboxKeys {
    secret: GroupSecret,
}

impl MailboxKeys {
    /// The mailbox of the invite `enrolment_secret` for roster `roster`.
    pub fn derive(roster: &EntryId, enrolment_secret: &[u8; 32]) -> MailboxKeys {
        let mut input = [0u8; 64];
        input[..32].copy_from_slice(&roster.0);
        input[32..].copy_from_slice(enrolment_secret);
        let mut bytes = blake3::derive_key(MAILBOX_CONTEXT, &input);
        input.zeroize();
        let secret = GroupSecret::from_bytes(bytes);
        bytes.zeroize();
        MailboxKeys { secret }
    }

    /// A mailbox from its stored secret (the inviter's `invites.json`).
    pub fn from_secret(secret: GroupSecret) -> MailboxKeys {
        MailboxKeys { secret }
    }

    /// The mailbox's group secret.
    pub fn secret(&self) -> &GroupSecret {
        &self.secret
    }

    /// The mailbox's group keys (group id, proofs, blob key).
    pub fn keys(&self) -> GroupKeys {
        self.secret.keys()
    }

    /// The mailbox's group id at the relay.
    pub fn group_id(&self) -> GroupId {
        self.secret.keys().group_id()
    }

    /// The invite's id: the mailbox group id's first 8 bytes, hex.
    pub fn invite_id(&self) -> String {
        hex::encode(&self.group_id().0[..8])
    }
}

/// The inviter's answer: the current epoch and its secret wrapped to the
/// joiner. `0x01 ‖ epoch u64 BE ‖ group id [32] ‖ enc [32] ‖ ciphertext [48]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The epoch whose secret is wrapped.
    pub epoch: u64,
    /// That epoch's group id.
    pub group_id: GroupId,
    /// HPKE encapsulated key.
    pub enc: [u8; 32],
    /// HPKE ciphertext of the 32-byte secret.
    pub ciphertext: [u8; WRAP_CIPHERTEXT_LEN],
}

impl Answer {
    /// Wrap `secret` (epoch `epoch` of `state`'s roster, whose group id it
    /// derives) to `device`'s HPKE key. Errors: [`RosterError::Wrap`].
    pub fn make(
        state: &RosterState,
        epoch: u64,
        secret: &GroupSecret,
        device: DeviceId,
        hpke_key: &[u8; 32],
    ) -> std::result::Result<Answer, RosterError> {
        let ctx = WrapContext {
            roster: state.roster,
            epoch,
            group_id: secret.keys().group_id(),
        };
        let w = wrap(secret, device, hpke_key, &ctx)?;
        Ok(Answer {
            epoch,
            group_id: ctx.group_id,
            enc: w.enc,
            ciphertext: w.ciphertext,
        })
    }

    /// The body.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u8(ANSWER_VERSION);
        w.u64(self.epoch);
        w.bytes(&self.group_id.0);
        w.bytes(&self.enc);
        w.bytes(&self.ciphertext);
        w.finish()
    }

    /// Parse a body. Errors: [`RosterError`] for a wrong version, length.
    pub fn decode(bytes: &[u8]) -> std::result::Result<Answer, RosterError> {
        let mut r = Reader::new(bytes);
        let version = r.u8("version")?;
        if version != ANSWER_VERSION {
            return Err(RosterError::UnsupportedVersion(version));
        }
        let epoch = r.u64("epoch")?;
        let group_id = GroupId(r.array("group id")?);
        let enc = r.array("encapsulated key")?;
        let ciphertext = r.array("ciphertext")?;
        r.end()?;
        Ok(Answer {
            epoch,
            group_id,
            enc,
            ciphertext,
        })
    }
}

/// What a joiner accepted: the roster (folded from the invite's genesis)
/// and the current epoch's secret.
pub struct Accepted {
    /// The folded roster, this device a member of its current epoch.
    pub state: RosterState,
    /// The current epoch's secret.
    pub secret: GroupSecret,
}

/// Check an answer for the device `keys`, against the roster `roster` (the
/// invite's): the entries must fold from that genesis to a roster whose
/// current epoch lists this device with its own HPKE key, and the answer
/// must wrap that epoch's secret (opening to its group id).
/// Errors: [`RosterError`] saying which check failed.
pub fn accept_answer(
    roster: EntryId,
    keys: &DeviceKeys,
    entries: &[SignedEntry],
    answer: &Answer,
) -> std::result::Result<Accepted, RosterError> {
    let state = fold(roster, entries)?;
    let me = keys.device_id();
    match state.members.get(&me) {
        Some(m) if m.hpke_key == keys.hpke_public() => {}
        Some(_) => {
            return Err(RosterError::Refused(
                "the roster lists this device with another HPKE key".into(),
            ));
        }
        None => {
            let why = state
                .ignored
                .iter()
                .map(|i| format!("{} ignored: {}", i.kind, i.reason))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(RosterError::Refused(format!(
                "the roster in the mailbox does not add this device{}",
                if why.is_empty() {
                    String::new()
                } else {
                    format!(" ({why})")
                }
            )));
        }
    }
    if answer.epoch != state.epoch || answer.group_id != state.group_id {
        return Err(RosterError::Refused(format!(
            "the answer wraps epoch {} but the roster's current epoch is {}",
            answer.epoch, state.epoch
        )));
    }
    let wrapped = WrappedSecret {
        device: me,
        enc: answer.enc,
        ciphertext: answer.ciphertext,
    };
    let ctx = WrapContext {
        roster,
        epoch: state.epoch,
        group_id: state.group_id,
    };
    let secret = unwrap(&wrapped, keys, &ctx)?;
    Ok(Accepted { state, secret })
}

/// A blob read from a mailbox, opened.
#[derive(Debug, Clone)]
pub struct MailboxBlob {
    /// Its cursor in the mailbox.
    pub cursor: u64,
    /// The sealed sender (equal to the relay's label, checked).
    pub sender: DeviceId,
    /// When the relay stored it, Unix ms.
    pub stored_at_ms: u64,
    /// Its kind (`Roster` or `Enrolment`; others are skipped).
    pub kind: BlobKind,
    /// Its body.
    pub body: Vec<u8>,
}

/// What one read of a mailbox found.
#[derive(Debug, Default)]
pub struct MailboxRead {
    /// Blobs that opened with the mailbox key, in cursor order.
    pub blobs: Vec<MailboxBlob>,
    /// Why the others were refused (not sealed with the mailbox key,
    /// sender mismatch, other kinds).
    pub refused: Vec<String>,
    /// The last cursor seen (to read on from).
    pub cursor: u64,
}

/// Seal `body` as a blob of `kind` from `sender` and push it into the
/// mailbox of `session` (a session opened with the mailbox's keys).
/// Errors: [`ClientError::Envelope`] (too large), the push's errors
/// ([`ClientError::GroupClosed`] once the mailbox is closed).
pub async fn post(
    session: &RelaySession,
    mailbox: &MailboxKeys,
    kind: BlobKind,
    body: &[u8],
) -> Result<()> {
    let blob_id = BlobId(crate::crypto::random_bytes());
    let header = BlobHeader {
        kind,
        sender: session.device_id(),
        // The mailbox is not pulled by the file machinery: no sequence
        // numbers are tracked there.
        seq: 1,
        created_at_ms: crate::util::now_ms(),
        compression: Compression::None,
        body_len: 0,
        view: GroupView::default(),
    };
    let max = session.welcome().max_blob_size as usize;
    let payload = envelope::seal(&mailbox.keys(), &blob_id, header, body, max)?;
    session
        .push(vec![PushItem {
            blob_id,
            payload,
            ttl_s: None,
        }])
        .await?;
    Ok(())
}

/// Read the mailbox of `session` after `after`: every blob is opened with
/// the mailbox key; at most [`MAX_MAILBOX_BLOBS`] are kept.
/// Errors: the pull's ([`ClientError::GroupClosed`] once closed).
pub async fn read(
    session: &RelaySession,
    mailbox: &MailboxKeys,
    after: u64,
) -> Result<MailboxRead> {
    let keys = mailbox.keys();
    let mut out = MailboxRead {
        cursor: after,
        ..MailboxRead::default()
    };
    let me = session.device_id();
    let mut resp = session.pull(after, 256).await?;
    while let Some(batch) = resp.next_batch().await? {
        for b in batch.blobs {
            out.cursor = out.cursor.max(b.cursor);
            if b.sender == me && b.payload.is_empty() {
                // A no-echo marker where this device's own blobs are
                // (docs/protocol.md "Version 2: no echo"): nothing to read.
                continue;
            }
            if out.blobs.len() >= MAX_MAILBOX_BLOBS {
                continue;
            }
            match envelope::open_owned(&keys, &b.blob_id, b.payload) {
                Ok(opened) if opened.header.sender != b.sender => out.refused.push(format!(
                    "blob at cursor {} claims another sender than the relay's label",
                    b.cursor
                )),
                Ok(opened) => match opened.header.kind {
                    kind @ (BlobKind::Roster | BlobKind::Enrolment) => {
                        out.blobs.push(MailboxBlob {
                            cursor: b.cursor,
                            sender: b.sender,
                            stored_at_ms: b.created_at,
                            kind,
                            body: opened.body.as_slice().to_vec(),
                        })
                    }
                    _ => out.refused.push(format!(
                        "blob at cursor {} is not a mailbox message",
                        b.cursor
                    )),
                },
                Err(e) => out
                    .refused
                    .push(format!("blob at cursor {} refused: {e}", b.cursor)),
            }
        }
    }
    Ok(out)
}

/// Open a session to the mailbox on the first of `relays` that answers
/// (instances of one cluster share one database, so any of them holds the
/// mailbox), as the device `device_key`. With `access_token`, a relay in
/// token mode creates the mailbox (a new group); without one, only an
/// existing mailbox is joined there. Errors: the last transport error when
/// no relay answers; the first refusal of a relay that answered
/// ([`ClientError::GroupClosed`], [`ClientError::Relay`]).
pub async fn connect(
    relays: &crate::relays::RelayList,
    mailbox: &MailboxKeys,
    device_key: &iroh::SecretKey,
    access_token: Option<sync_protocol::AccessToken>,
) -> Result<RelaySession> {
    let mut last = None;
    for relay in relays.as_slice() {
        let opts = crate::session::ConnectOptions {
            relay: relay.clone(),
            keys: mailbox.keys(),
            device_key: device_key.clone(),
            device_name: None,
            connect_timeout: crate::session::DEFAULT_CONNECT_TIMEOUT,
            access_token,
        };
        match RelaySession::connect(&opts).await {
            Ok(session) => return Ok(session),
            Err(e) if e.is_transport() => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| ClientError::InvalidInput("no relay to reach".into())))
}

/// Split a roster blob's body into signed entries (each verified).
/// Errors: the first entry that does not decode or verify.
pub fn entries_of(mut body: &[u8]) -> std::result::Result<Vec<SignedEntry>, RosterError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (e, rest) = SignedEntry::decode_prefix(body)?;
        out.push(e);
        body = rest;
    }
    Ok(out)
}

/// Turn a GROUP_CLOSED at a mailbox into the message a user acts on.
pub fn closed_message(e: &ClientError) -> Option<String> {
    matches!(e, ClientError::GroupClosed(_)).then(|| {
        "this invite was already used (or cancelled, or it expired): its mailbox at the relay is \
         closed (GROUP_CLOSED); ask a group member for a new invite (`sync-cli invite`)"
            .to_string()
    })
}

#[cfg(test)]
mod tests;
