//! The chain of epoch secrets a device holds, and what it still has to
//! publish, in `<home>/epochs.json` (mode 0600, written atomically;
//! docs/security.md "Devices, roster and key epochs", "Where entries live,
//! and catching up").
//!
//! Every epoch's secret is kept, so blobs pushed before a rotation stay
//! readable. A home without the file (from before rosters, or fresh) holds
//! one epoch: the secret of `group.toml`, which is epoch 0 for a group made
//! by `init` or before rosters, and an epoch still to be placed for a
//! device that joined with an invite made after a rotation (its number is
//! learnt from the roster). The file is written on the first change, so
//! existing homes are upgraded in place.

use crate::crypto::GroupSecret;
use crate::error::{ClientError, Result};
use crate::util::write_atomic;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use sync_protocol::GroupId;
use zeroize::Zeroize;

/// File name in a device home.
pub const CHAIN_FILE: &str = "epochs.json";
/// Layout version of [`ChainFile`].
pub const CHAIN_VERSION: u32 = 1;
/// Most enrolment requests kept waiting (bounds the file against a member
/// posting thousands).
pub const MAX_PENDING: usize = 64;

/// One epoch's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochKey {
    /// The epoch's number, once known (`None`: the secret of an invite not
    /// yet placed on the roster's chain).
    pub epoch: Option<u64>,
    /// Its group id (hex).
    pub group_id: String,
    /// Its secret (hex). Secret!
    pub secret: String,
}

impl EpochKey {
    /// The key of `secret` in epoch `epoch`.
    pub fn new(epoch: Option<u64>, secret: &GroupSecret) -> EpochKey {
        EpochKey {
            epoch,
            group_id: secret.keys().group_id().to_string(),
            secret: hex::encode(secret.as_bytes()),
        }
    }

    /// The secret. Errors: [`ClientError::Home`] when not 64 hex characters.
    pub fn secret(&self) -> Result<GroupSecret> {
        let mut bytes: Option<[u8; 32]> = hex::decode(&self.secret)
            .ok()
            .and_then(|b| b.try_into().ok());
        let secret = bytes.map(GroupSecret::from_bytes);
        if let Some(b) = bytes.as_mut() {
            b.zeroize();
        }
        secret.ok_or_else(|| ClientError::Home(format!("{CHAIN_FILE}: an epoch secret is invalid")))
    }

    /// Its group id.
    pub fn group(&self) -> Result<GroupId> {
        hex32(&self.group_id)
            .map(GroupId)
            .ok_or_else(|| ClientError::Home(format!("{CHAIN_FILE}: a group id is invalid")))
    }
}

/// 32 bytes from 64 hex characters.
pub fn hex32(text: &str) -> Option<[u8; 32]> {
    hex::decode(text).ok().and_then(|b| b.try_into().ok())
}

/// An enrolment request seen and not yet answered with an `Add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingEnrolment {
    /// The device (hex).
    pub device: String,
    /// Its HPKE public key (hex).
    pub hpke_key: String,
    /// The name it asked for.
    pub name: String,
}

/// The contents of `epochs.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainFile {
    /// [`CHAIN_VERSION`].
    pub version: u32,
    /// The roster id this device follows (hex), once known.
    #[serde(default)]
    pub roster: Option<String>,
    /// Epoch secrets, oldest first; the last is the current epoch, where
    /// pushes go.
    pub epochs: Vec<EpochKey>,
    /// Roster entries (ids, hex) this device made and has not yet pushed
    /// into the current epoch's group.
    #[serde(default)]
    pub outbox: Vec<String>,
    /// Group ids (hex) into which the whole roster chain is still to be
    /// pushed (after a rotation this device made).
    #[serde(default)]
    pub chain_to: Vec<String>,
    /// The group (hex) this device posted its enrolment request in.
    #[serde(default)]
    pub enrolment_posted: Option<String>,
    /// Enrolment requests of other devices seen, not yet answered.
    #[serde(default)]
    pub pending: Vec<PendingEnrolment>,
    /// This device's name in the roster, when given at `init` / `join`.
    #[serde(default)]
    pub device_name: Option<String>,
}

impl ChainFile {
    /// A chain of one epoch.
    pub fn new(first: EpochKey) -> ChainFile {
        ChainFile {
            version: CHAIN_VERSION,
            roster: None,
            epochs: vec![first],
            outbox: Vec::new(),
            chain_to: Vec::new(),
            enrolment_posted: None,
            pending: Vec::new(),
            device_name: None,
        }
    }

    /// The path in home `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CHAIN_FILE)
    }

    /// Read the chain of home `dir`; `None` when there is no file.
    /// Errors: [`ClientError::Io`], [`ClientError::Home`] (corrupt, empty,
    /// unknown version).
    pub fn load(dir: &Path) -> Result<Option<ChainFile>> {
        let path = Self::path(dir);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ClientError::io(&path)(e)),
        };
        let chain: ChainFile = serde_json::from_slice(&bytes)
            .map_err(|e| ClientError::Home(format!("{}: corrupt: {e}", path.display())))?;
        if chain.version != CHAIN_VERSION {
            return Err(ClientError::Home(format!(
                "{}: version {} is not supported (expected {CHAIN_VERSION}); upgrade 0k-sync",
                path.display(),
                chain.version
            )));
        }
        if chain.epochs.is_empty() {
            return Err(ClientError::Home(format!(
                "{}: holds no epoch",
                path.display()
            )));
        }
        Ok(Some(chain))
    }

    /// Write to home `dir` (0600, atomic). Errors: [`ClientError::Io`].
    pub fn save(&self, dir: &Path) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self)
            .map_err(|e| ClientError::Home(format!("cannot encode {CHAIN_FILE}: {e}")))?;
        let written = write_atomic(&Self::path(dir), &json);
        json.zeroize();
        written
    }

    /// The current epoch (the last).
    pub fn current(&self) -> &EpochKey {
        // `load` and `new` guarantee at least one epoch.
        &self.epochs[self.epochs.len() - 1]
    }

    /// The key of group `group` (hex), if held.
    pub fn key_of(&self, group: &str) -> Option<&EpochKey> {
        self.epochs.iter().find(|k| k.group_id == group)
    }
}

/// The secret pushes use: the current epoch's from `epochs.json`, or
/// `fallback` (the secret of `group.toml`) when the home has no chain.
pub fn current_secret(
    dir: &Path,
    fallback: impl FnOnce() -> Result<GroupSecret>,
) -> Result<GroupSecret> {
    match ChainFile::load(dir)? {
        Some(chain) => chain.current().secret(),
        None => fallback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_round_trips_and_its_last_epoch_is_current() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ChainFile::load(dir.path()).unwrap(), None);
        let s0 = GroupSecret::from_bytes([1; 32]);
        let s1 = GroupSecret::from_bytes([2; 32]);
        let mut chain = ChainFile::new(EpochKey::new(Some(0), &s0));
        chain.epochs.push(EpochKey::new(Some(1), &s1));
        chain.save(dir.path()).unwrap();
        let back = ChainFile::load(dir.path()).unwrap().unwrap();
        assert_eq!(back, chain);
        assert_eq!(back.current().secret().unwrap(), s1);
        let fallback = || Ok(s0.clone());
        assert_eq!(current_secret(dir.path(), fallback).unwrap(), s1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(ChainFile::path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_chain_is_an_error_not_a_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            ChainFile::path(dir.path()),
            b"{\"version\":1,\"epochs\":[]}",
        )
        .unwrap();
        assert!(matches!(
            ChainFile::load(dir.path()),
            Err(ClientError::Home(_))
        ));
        std::fs::write(ChainFile::path(dir.path()), b"{oops").unwrap();
        assert!(matches!(
            ChainFile::load(dir.path()),
            Err(ClientError::Home(_))
        ));
    }
}
