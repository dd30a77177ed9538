//! Invites (docs/security.md "Invites as one-time enrolment credentials"):
//! one copy-pasteable string holding the group's relay addresses (all of
//! them, first preferred), the roster id, an expiry and a random one-time
//! **enrolment secret**. It does not hold the group's secret: the joiner and
//! the inviter derive from the enrolment secret a short-lived *mailbox*
//! group at the relay ([`crate::mailbox`]), where the joiner asks to be
//! added and the inviter answers once, then closes the mailbox.
//!
//! Format (version 2): `0ksync2-` followed by unpadded base64url of
//! `postcard(InviteBody) ‖ BLAKE3(body)[..4]`. The 4-byte checksum catches
//! copy-paste damage. Version-1 invites (`0ksync1-`, which carried the
//! group secret itself) are refused with a message naming the version.

use crate::error::{ClientError, Result};
use crate::relays::RelayList;
use crate::roster::EntryId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Prefix of the invites this client makes and reads (version 2).
pub const INVITE_PREFIX: &str = "0ksync2-";
/// Prefix of version-1 invites (they carried the group secret): refused.
pub const INVITE_V1_PREFIX: &str = "0ksync1-";
const CHECKSUM_LEN: usize = 4;

/// A decoded invite.
#[derive(Clone, PartialEq, Eq)]
pub struct Invite {
    /// Relay addresses (`NODE_ID@HOST:PORT`), first preferred: 1 to
    /// [`crate::relays::MAX_RELAYS`] valid, distinct addresses once decoded.
    pub relays: Vec<String>,
    /// The id of the group's roster (its genesis entry): the joiner accepts
    /// only a roster with this genesis.
    pub roster: EntryId,
    /// The one-time enrolment secret (32 random bytes): derives the
    /// mailbox ([`crate::mailbox::MailboxKeys::derive`]).
    pub enrolment_secret: [u8; 32],
    /// Unix seconds after which neither side uses the invite.
    pub expires_at: u64,
    /// The group's human name, if any.
    pub group_name: Option<String>,
}

impl std::fmt::Debug for Invite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invite")
            .field("relays", &self.relays)
            .field("roster", &self.roster)
            .field("expires_at", &self.expires_at)
            .field("group_name", &self.group_name)
            .finish_non_exhaustive()
    }
}

impl Drop for Invite {
    fn drop(&mut self) {
        self.enrolment_secret.zeroize();
    }
}

#[derive(Serialize, Deserialize)]
struct InviteBody {
    relays: Vec<String>,
    roster: [u8; 32],
    enrolment_secret: [u8; 32],
    expires_at: u64,
    group_name: Option<String>,
}

impl Invite {
    /// A new invite with a fresh enrolment secret from the OS random
    /// generator.
    pub fn generate(
        relays: &RelayList,
        roster: EntryId,
        expires_at: u64,
        group_name: Option<String>,
    ) -> Invite {
        Invite {
            relays: relays.to_strings(),
            roster,
            enrolment_secret: crate::crypto::random_bytes(),
            expires_at,
            group_name,
        }
    }

    /// The invite string.
    pub fn encode(&self) -> String {
        let mut body = InviteBody {
            relays: self.relays.clone(),
            roster: self.roster.0,
            enrolment_secret: self.enrolment_secret,
            expires_at: self.expires_at,
            group_name: self.group_name.clone(),
        };
        // postcard into a Vec fails only on allocation failure.
        let mut bytes = postcard::to_allocvec(&body).unwrap_or_default();
        body.enrolment_secret.zeroize();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        let out = format!("{INVITE_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes));
        bytes.zeroize();
        out
    }

    /// Parse an invite string (surrounding whitespace ignored). Does not
    /// check expiry: see [`Invite::check_not_expired`].
    /// Errors: [`ClientError::InvalidInput`] saying what is wrong (a
    /// version-1 invite names its version).
    pub fn decode(text: &str) -> Result<Invite> {
        let bad = |why: &str| ClientError::InvalidInput(format!("invalid invite: {why}"));
        let text = text.trim();
        if text.starts_with(INVITE_V1_PREFIX) {
            return Err(bad(
                "it is a version-1 invite (0ksync1-, which carried the group's secret); \
                 this version of 0k-sync accepts only one-time version-2 invites (0ksync2-): \
                 ask a group member for a new one (`sync-cli invite`)",
            ));
        }
        let rest = text.strip_prefix(INVITE_PREFIX).ok_or_else(|| {
            if text.starts_with("0ksync") {
                bad("made by a newer version of 0k-sync; upgrade to join")
            } else {
                bad("it does not start with 0ksync2-")
            }
        })?;
        let mut bytes = URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|_| bad("damaged (not base64url); copy it again in full"))?;
        if bytes.len() < CHECKSUM_LEN {
            return Err(bad("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
        if &blake3::hash(body).as_bytes()[..CHECKSUM_LEN] != sum {
            bytes.zeroize();
            return Err(bad("checksum mismatch; copy it again in full"));
        }
        let decoded: Result<InviteBody> =
            postcard::from_bytes(body).map_err(|_| bad("malformed contents"));
        bytes.zeroize();
        let mut body = decoded?;
        let invite = Invite {
            relays: std::mem::take(&mut body.relays),
            roster: EntryId(body.roster),
            enrolment_secret: body.enrolment_secret,
            expires_at: body.expires_at,
            group_name: body.group_name.take(),
        };
        body.enrolment_secret.zeroize();
        if invite.relays.is_empty() {
            return Err(bad("it names no relay"));
        }
        if let Err(e) = RelayList::parse(&invite.relays) {
            return Err(bad(&e.to_string()));
        }
        Ok(invite)
    }

    /// The relays as a [`RelayList`] (checked by [`Invite::decode`]).
    /// Errors: [`ClientError::InvalidInput`] for an invite built with an
    /// empty, too long or invalid list.
    pub fn relay_list(&self) -> Result<RelayList> {
        RelayList::parse(&self.relays)
    }

    /// The mailbox this invite derives.
    pub fn mailbox(&self) -> crate::mailbox::MailboxKeys {
        crate::mailbox::MailboxKeys::derive(&self.roster, &self.enrolment_secret)
    }

    /// Errors with [`ClientError::InvalidInput`] if `now_s` is past the expiry.
    pub fn check_not_expired(&self, now_s: u64) -> Result<()> {
        if now_s > self.expires_at {
            return Err(ClientError::InvalidInput(format!(
                "this invite expired {} ago; ask a group member for a new one (`sync-cli invite`)",
                crate::util::human_duration(now_s - self.expires_at)
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY_A: &str =
        "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@127.0.0.1:4433";
    const RELAY_B: &str =
        "5c1e2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@relay-b.example.org:4433";

    fn invite() -> Invite {
        Invite {
            relays: vec![RELAY_A.into(), RELAY_B.into()],
            roster: EntryId([3; 32]),
            enrolment_secret: [7; 32],
            expires_at: 2_000_000_000,
            group_name: Some("family".into()),
        }
    }

    /// Golden bytes of a version-2 invite (relays A and B, roster 0x03…,
    /// enrolment secret 0x07…, expiry 2·10⁹, name "family").
    const GOLDEN: &str = "0ksync2-Ak8xZDNjMmRjYjMzMzhlZmFmN2ZhYTQ5MmFlYjhiNGU3OWUxYjY5NzExN2VkNTc4ODIyNTVmODJiODZmNThlZjY1QDEyNy4wLjAuMTo0NDMzWTVjMWUyZGNiMzMzOGVmYWY3ZmFhNDkyYWViOGI0ZTc5ZTFiNjk3MTE3ZWQ1Nzg4MjI1NWY4MmI4NmY1OGVmNjVAcmVsYXktYi5leGFtcGxlLm9yZzo0NDMzAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHB4Co1rkHAQZmYW1pbHk67ab2";

    #[test]
    fn invite_bytes_are_stable() {
        assert_eq!(invite().encode(), GOLDEN, "golden bytes");
        assert_eq!(Invite::decode(GOLDEN).unwrap(), invite());
    }

    #[test]
    fn round_trips() {
        let text = invite().encode();
        assert!(text.starts_with(INVITE_PREFIX));
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_eq!(Invite::decode(&format!("  {text}\n")).unwrap(), invite());
    }

    #[test]
    fn the_invite_does_not_carry_a_group_secret_and_each_is_fresh() {
        let relays = RelayList::parse(&[RELAY_A.to_string()]).unwrap();
        let a = Invite::generate(&relays, EntryId([3; 32]), 1, None);
        let b = Invite::generate(&relays, EntryId([3; 32]), 1, None);
        assert_ne!(a.enrolment_secret, b.enrolment_secret);
        assert_ne!(a.mailbox().group_id(), b.mailbox().group_id());
    }

    #[test]
    fn damage_is_detected() {
        let text = invite().encode();
        let mut chars: Vec<char> = text.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let damaged: String = chars.into_iter().collect();
        assert!(Invite::decode(&damaged).is_err());
        assert!(Invite::decode(&text[..text.len() - 3]).is_err());
        assert!(Invite::decode("hello").is_err());
        assert!(
            Invite::decode("0ksync3-abc")
                .unwrap_err()
                .to_string()
                .contains("newer")
        );
    }

    /// A version-1 invite (it carried the group secret), as the code at
    /// 52f35f1 encoded it.
    const V1: &str = "0ksync1-AU8xZDNjMmRjYjMzMzhlZmFmN2ZhYTQ5MmFlYjhiNGU3OWUxYjY5NzExN2VkNTc4ODIyNTVmODJiODZmNThlZjY1QDEyNy4wLjAuMTo0NDMzBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBweAqNa5BwEGZmFtaWx57hiBbA";

    #[test]
    fn a_version_1_invite_is_refused_naming_its_version() {
        let e = Invite::decode(V1).unwrap_err().to_string();
        assert!(e.contains("version-1 invite"), "{e}");
        assert!(e.contains("sync-cli invite"), "{e}");
    }

    fn with_relays(relays: Vec<String>) -> String {
        let body = InviteBody {
            relays,
            roster: [3; 32],
            enrolment_secret: [7; 32],
            expires_at: 2_000_000_000,
            group_name: None,
        };
        let mut bytes = postcard::to_allocvec(&body).unwrap();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        format!("{INVITE_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes))
    }

    #[test]
    fn bad_relay_lists_are_refused_with_the_reason() {
        let id = "5c1e2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65";
        let many: Vec<String> = (0..9)
            .map(|i| format!("{id}@127.0.0.1:{}", 1000 + i))
            .collect();
        let err = |relays: Vec<String>| {
            Invite::decode(&with_relays(relays))
                .unwrap_err()
                .to_string()
        };
        assert!(err(many).contains("at most 8"));
        let e = err(vec![RELAY_B.into(), "not-an-address".into()]);
        assert!(
            e.contains("invalid invite") && e.contains("not-an-address"),
            "{e}"
        );
        assert!(err(vec![RELAY_B.into(), RELAY_B.into()]).contains("twice"));
        assert!(err(Vec::new()).contains("names no relay"));
    }

    #[test]
    fn expiry_is_enforced() {
        let i = invite();
        i.check_not_expired(i.expires_at).unwrap();
        let err = i
            .check_not_expired(i.expires_at + 7200)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expired 2h"), "{err}");
    }
}
