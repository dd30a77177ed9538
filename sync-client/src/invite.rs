//! Invites (docs/client.md "Joining"): one copy-pasteable string holding the
//! group's relay addresses (all of them, first preferred), the group secret
//! and an expiry.
//!
//! Format: `0ksync1-` followed by unpadded base64url of
//! `postcard(InviteBody) ‖ BLAKE3(body)[..4]`. The 4-byte checksum catches
//! copy-paste damage; the version in the prefix lets the format evolve.
//! `relays` has always been a list: invites of one relay (all that
//! versions before several relays made) and of several share this format,
//! and a client that reads only the first address still joins.
//! An invite **is** the group secret: anyone holding it can read and write
//! the group until it expires (the expiry only limits joining).

use crate::crypto::GroupSecret;
use crate::error::{ClientError, Result};
use crate::relays::RelayList;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// Prefix of version-1 invites.
pub const INVITE_PREFIX: &str = "0ksync1-";
const CHECKSUM_LEN: usize = 4;

/// A decoded invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Relay addresses (`NODE_ID@HOST:PORT`), first preferred: 1 to
    /// [`crate::relays::MAX_RELAYS`] valid, distinct addresses once decoded.
    pub relays: Vec<String>,
    /// The group secret.
    pub secret: GroupSecret,
    /// Unix seconds after which `join` refuses the invite.
    pub expires_at: u64,
    /// The group's human name, if any.
    pub group_name: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct InviteBody {
    relays: Vec<String>,
    secret: [u8; 32],
    expires_at: u64,
    group_name: Option<String>,
}

impl Invite {
    /// The invite string.
    pub fn encode(&self) -> String {
        let mut body = InviteBody {
            relays: self.relays.clone(),
            secret: *self.secret.as_bytes(),
            expires_at: self.expires_at,
            group_name: self.group_name.clone(),
        };
        let mut bytes = postcard::to_allocvec(&body).unwrap_or_default();
        body.secret.zeroize();
        let sum = blake3::hash(&bytes);
        bytes.extend_from_slice(&sum.as_bytes()[..CHECKSUM_LEN]);
        let out = format!("{INVITE_PREFIX}{}", URL_SAFE_NO_PAD.encode(&bytes));
        bytes.zeroize();
        out
    }

    /// Parse an invite string (surrounding whitespace ignored). Does not
    /// check expiry: see [`Invite::check_not_expired`].
    /// Errors: [`ClientError::InvalidInput`] saying what is wrong.
    pub fn decode(text: &str) -> Result<Invite> {
        let bad = |why: &str| ClientError::InvalidInput(format!("invalid invite: {why}"));
        let text = text.trim();
        let rest = text.strip_prefix(INVITE_PREFIX).ok_or_else(|| {
            if text.starts_with("0ksync") {
                bad("made by a newer version of 0k-sync; upgrade to join")
            } else {
                bad("it does not start with 0ksync1-")
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
        if body.relays.is_empty() {
            return Err(bad("it names no relay"));
        }
        if let Err(e) = RelayList::parse(&body.relays) {
            body.secret.zeroize();
            return Err(bad(&e.to_string()));
        }
        let invite = Invite {
            relays: std::mem::take(&mut body.relays),
            secret: GroupSecret::from_bytes(body.secret),
            expires_at: body.expires_at,
            group_name: body.group_name.take(),
        };
        body.secret.zeroize();
        Ok(invite)
    }

    /// The relays as a [`RelayList`] (checked by [`Invite::decode`]).
    /// Errors: [`ClientError::InvalidInput`] for an invite built with an
    /// empty, too long or invalid list.
    pub fn relay_list(&self) -> Result<RelayList> {
        RelayList::parse(&self.relays)
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

    fn invite() -> Invite {
        Invite {
            relays: vec![
                "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@127.0.0.1:4433"
                    .into(),
            ],
            secret: GroupSecret::from_bytes([7; 32]),
            expires_at: 2_000_000_000,
            group_name: Some("family".into()),
        }
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
    fn damage_is_detected() {
        let text = invite().encode();
        // Change one character in the middle.
        let mut chars: Vec<char> = text.chars().collect();
        let i = chars.len() / 2;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let damaged: String = chars.into_iter().collect();
        assert!(Invite::decode(&damaged).is_err());
        assert!(Invite::decode(&text[..text.len() - 3]).is_err());
        assert!(Invite::decode("hello").is_err());
        assert!(
            Invite::decode("0ksync2-abc")
                .unwrap_err()
                .to_string()
                .contains("newer")
        );
    }

    /// An invite of one relay, as every version before several relays made
    /// it (encoded by the code at a65e833).
    const ONE_RELAY: &str = "0ksync1-AU8xZDNjMmRjYjMzMzhlZmFmN2ZhYTQ5MmFlYjhiNGU3OWUxYjY5NzExN2VkNTc4ODIyNTVmODJiODZmNThlZjY1QDEyNy4wLjAuMTo0NDMzBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBweAqNa5BwEGZmFtaWx57hiBbA";
    /// The same invite with a second relay.
    const TWO_RELAYS: &str = "0ksync1-Ak8xZDNjMmRjYjMzMzhlZmFmN2ZhYTQ5MmFlYjhiNGU3OWUxYjY5NzExN2VkNTc4ODIyNTVmODJiODZmNThlZjY1QDEyNy4wLjAuMTo0NDMzWTVjMWUyZGNiMzMzOGVmYWY3ZmFhNDkyYWViOGI0ZTc5ZTFiNjk3MTE3ZWQ1Nzg4MjI1NWY4MmI4NmY1OGVmNjVAcmVsYXktYi5leGFtcGxlLm9yZzo0NDMzBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBweAqNa5BwEGZmFtaWx5bYzXOg";
    const RELAY_B: &str =
        "5c1e2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@relay-b.example.org:4433";

    #[test]
    fn an_invite_of_one_relay_from_before_still_decodes_and_encodes_the_same() {
        assert_eq!(Invite::decode(ONE_RELAY).unwrap(), invite());
        assert_eq!(invite().encode(), ONE_RELAY);
    }

    #[test]
    fn an_invite_carries_every_relay_in_order() {
        let mut two = invite();
        two.relays.push(RELAY_B.into());
        assert_eq!(two.encode(), TWO_RELAYS, "golden bytes");
        let decoded = Invite::decode(TWO_RELAYS).unwrap();
        assert_eq!(decoded, two);
        assert_eq!(
            decoded.relay_list().unwrap().to_strings(),
            [invite().relays[0].clone(), RELAY_B.to_string()]
        );
    }

    /// An invite whose body is `relays` (checksummed, so only the list is
    /// wrong).
    fn with_relays(relays: Vec<String>) -> String {
        let body = InviteBody {
            relays,
            secret: [7; 32],
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
        let e = err(vec![RELAY_B.into(), RELAY_B.into()]);
        assert!(e.contains("twice"), "{e}");
        assert!(err(Vec::new()).contains("names no relay"));
        // Eight is fine.
        let eight: Vec<String> = (0..8)
            .map(|i| format!("{id}@127.0.0.1:{}", 1000 + i))
            .collect();
        assert_eq!(Invite::decode(&with_relays(eight)).unwrap().relays.len(), 8);
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
