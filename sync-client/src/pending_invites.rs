//! The invites a device made and their state, in `<home>/invites.json`
//! (docs/security.md "Invites as one-time enrolment credentials"): each
//! invite's mailbox secret (to read and close its mailbox), when it was
//! made and expires, and what became of it. Written atomically, mode 0600
//! (it holds secrets), like the other state files.

use crate::crypto::GroupSecret;
use crate::error::{ClientError, Result};
use crate::mailbox::MailboxKeys;
use crate::util::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

/// File name in the home.
pub const INVITES_FILE: &str = "invites.json";
/// Layout version of `invites.json`.
pub const INVITES_VERSION: u32 = 1;
/// Most invites pending at once (each costs a group at the relay).
pub const MAX_PENDING_INVITES: usize = 64;
/// Most invites kept in the file; the oldest finished ones go first.
pub const MAX_KEPT_INVITES: usize = 256;

/// What became of an invite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InviteState {
    /// Not used yet, not expired, not cancelled.
    Pending,
    /// A device used it and was added.
    Used,
    /// Cancelled with `sync-cli invite --cancel`.
    Cancelled,
    /// Expired before it was used.
    Expired,
}

impl InviteState {
    /// The word shown in lists.
    pub fn as_str(self) -> &'static str {
        match self {
            InviteState::Pending => "pending",
            InviteState::Used => "used",
            InviteState::Cancelled => "cancelled",
            InviteState::Expired => "expired",
        }
    }
}

/// One invite this device made.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInvite {
    /// Its id ([`MailboxKeys::invite_id`]).
    pub id: String,
    /// The mailbox's group secret (hex).
    pub mailbox_secret: String,
    /// When it was made, Unix seconds.
    pub created_at: u64,
    /// When it expires, Unix seconds.
    pub expires_at: u64,
    /// What became of it.
    pub state: InviteState,
    /// The device that used it (hex node id), once used.
    #[serde(default)]
    pub device: Option<String>,
    /// That device's name.
    #[serde(default)]
    pub device_name: Option<String>,
    /// Whether its mailbox was closed at the relay (after use, cancel or
    /// expiry); `pull` retries closing until it is.
    #[serde(default)]
    pub closed: bool,
}

impl std::fmt::Debug for PendingInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingInvite")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl PendingInvite {
    /// A new pending invite for `mailbox`.
    pub fn new(mailbox: &MailboxKeys, created_at: u64, expires_at: u64) -> PendingInvite {
        PendingInvite {
            id: mailbox.invite_id(),
            mailbox_secret: hex::encode(mailbox.secret().as_bytes()),
            created_at,
            expires_at,
            state: InviteState::Pending,
            device: None,
            device_name: None,
            closed: false,
        }
    }

    /// Its mailbox. Errors: [`ClientError::Home`] for a damaged secret.
    pub fn mailbox(&self) -> Result<MailboxKeys> {
        let mut bytes: Option<[u8; 32]> = hex::decode(&self.mailbox_secret)
            .ok()
            .and_then(|b| b.try_into().ok());
        let secret = bytes.map(GroupSecret::from_bytes);
        if let Some(b) = bytes.as_mut() {
            b.zeroize();
        }
        secret.map(MailboxKeys::from_secret).ok_or_else(|| {
            ClientError::Home(format!("{INVITES_FILE}: invite {} is damaged", self.id))
        })
    }

    /// Whether it is pending and `now_s` is past its expiry.
    pub fn is_expired(&self, now_s: u64) -> bool {
        self.state == InviteState::Pending && now_s > self.expires_at
    }
}

#[derive(Serialize, Deserialize)]
struct InvitesFile {
    version: u32,
    invites: Vec<PendingInvite>,
}

/// The invites of a home.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invites {
    /// Oldest first.
    pub invites: Vec<PendingInvite>,
}

impl Invites {
    fn path(dir: &Path) -> PathBuf {
        dir.join(INVITES_FILE)
    }

    /// Load `dir/invites.json` (none: empty). Errors: [`ClientError::Home`]
    /// for a damaged file or another version (never reset silently),
    /// [`ClientError::Io`].
    pub fn load(dir: &Path) -> Result<Invites> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Invites::default()),
            Err(e) => return Err(ClientError::io(&path)(e)),
        };
        let file: InvitesFile = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Home(format!("{}: corrupt: {e}", path.display())))?;
        if file.version != INVITES_VERSION {
            return Err(ClientError::Home(format!(
                "{}: version {} is not supported (expected {INVITES_VERSION}); upgrade 0k-sync",
                path.display(),
                file.version
            )));
        }
        Ok(Invites {
            invites: file.invites,
        })
    }

    /// Write `dir/invites.json` atomically (0600). Errors: [`ClientError::Io`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        let file = InvitesFile {
            version: INVITES_VERSION,
            invites: self.invites.clone(),
        };
        let mut json = serde_json::to_vec_pretty(&file)
            .map_err(|e| ClientError::Home(format!("cannot encode {INVITES_FILE}: {e}")))?;
        let written = write_atomic(&Self::path(dir), &json);
        json.zeroize();
        written
    }

    /// Add `invite`. Errors: [`ClientError::InvalidInput`] when
    /// [`MAX_PENDING_INVITES`] are pending. The oldest finished invites are
    /// forgotten beyond [`MAX_KEPT_INVITES`].
    pub fn add(&mut self, invite: PendingInvite) -> Result<()> {
        let pending = self
            .invites
            .iter()
            .filter(|i| i.state == InviteState::Pending)
            .count();
        if pending >= MAX_PENDING_INVITES {
            return Err(ClientError::InvalidInput(format!(
                "{pending} invites are pending already (at most {MAX_PENDING_INVITES}); \
                 cancel some (`sync-cli invite --list`, `--cancel ID`)"
            )));
        }
        self.invites.push(invite);
        while self.invites.len() > MAX_KEPT_INVITES {
            let Some(i) = self
                .invites
                .iter()
                .position(|i| i.state != InviteState::Pending && i.closed)
            else {
                break;
            };
            self.invites.remove(i);
        }
        Ok(())
    }

    /// The invite whose id starts with `prefix` (at least 4 characters).
    /// Errors: [`ClientError::InvalidInput`] for none, several, or a
    /// prefix too short.
    pub fn find_mut(&mut self, prefix: &str) -> Result<&mut PendingInvite> {
        let prefix = prefix.to_ascii_lowercase();
        if prefix.len() < 4 {
            return Err(ClientError::InvalidInput(
                "give at least 4 characters of the invite's id (`sync-cli invite --list`)".into(),
            ));
        }
        let hits: Vec<usize> = (0..self.invites.len())
            .filter(|&i| self.invites[i].id.starts_with(&prefix))
            .collect();
        match hits.as_slice() {
            [i] => Ok(&mut self.invites[*i]),
            [] => Err(ClientError::InvalidInput(format!(
                "no invite {prefix} (`sync-cli invite --list` shows them)"
            ))),
            _ => Err(ClientError::InvalidInput(format!(
                "several invites start with {prefix}; give more of the id"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(n: u8) -> PendingInvite {
        let m = MailboxKeys::derive(&crate::roster::EntryId([1; 32]), &[n; 32]);
        PendingInvite::new(&m, 100, 200)
    }

    #[test]
    fn invites_round_trip_privately_and_a_damaged_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Invites::load(dir.path()).unwrap(), Invites::default());
        let mut all = Invites::default();
        all.add(invite(1)).unwrap();
        all.add(invite(2)).unwrap();
        all.save(dir.path()).unwrap();
        let back = Invites::load(dir.path()).unwrap();
        assert_eq!(back, all);
        assert_eq!(
            back.invites[0].mailbox().unwrap().group_id(),
            invite(1).mailbox().unwrap().group_id()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(INVITES_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(INVITES_FILE), b"{oops").unwrap();
        assert!(matches!(
            Invites::load(dir.path()),
            Err(ClientError::Home(_))
        ));
    }

    #[test]
    fn pending_invites_are_capped_and_found_by_prefix() {
        let mut all = Invites::default();
        for n in 0..MAX_PENDING_INVITES as u8 {
            all.add(invite(n)).unwrap();
        }
        let e = all.add(invite(200)).unwrap_err().to_string();
        assert!(e.contains("pending already"), "{e}");
        let id = all.invites[3].id.clone();
        assert_eq!(all.find_mut(&id[..8]).unwrap().id, id);
        assert!(all.find_mut("abc").is_err());
        assert!(
            all.find_mut("zzzzzz")
                .unwrap_err()
                .to_string()
                .contains("no invite")
        );
        assert!(!invite(1).is_expired(200));
        assert!(invite(1).is_expired(201));
    }
}
