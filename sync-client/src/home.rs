//! A device home directory (docs/protocol.md "Blob payloads", §6), mode 0700, files 0600:
//!
//! | file | holds |
//! |---|---|
//! | `device.key` | the device's iroh secret key (hex) — its node id |
//! | `group.toml` | relay address, group secret (hex), group name |
//! | `state.json`, `seq.json` | local sync state ([`crate::state`]) |
//! | `pull.lock`, `seq.lock` | advisory locks |
//!
//! `group.toml` holds the group secret: anyone who reads it can read and
//! write the group. Default location: `$XDG_CONFIG_HOME/0k-sync` (or the
//! platform's config dir), overridden by `--home` / `SYNC_HOME`.

use crate::crypto::GroupSecret;
use crate::error::{ClientError, Result};
use crate::relay_addr::RelayAddr;
use crate::session::{ConnectOptions, DEFAULT_CONNECT_TIMEOUT};
use crate::state::StateStore;
use crate::util::{ensure_private_dir, write_atomic};
use iroh::SecretKey;
use serde::{Deserialize, Serialize};
use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use zeroize::Zeroize;

const DEVICE_KEY: &str = "device.key";
const GROUP_FILE: &str = "group.toml";
const STATE_FILE: &str = "state.json";
const PULL_LOCK: &str = "pull.lock";

/// The contents of `group.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// Relay address, `NODE_ID@HOST:PORT`.
    pub relay: String,
    /// Group secret, 64 hex characters. Secret!
    pub secret: String,
    /// Human name of the group.
    pub name: Option<String>,
    /// When this device created or joined the group, Unix seconds.
    pub joined_at: u64,
}

/// A device home.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
}

/// Held while a pull runs; released on drop.
#[derive(Debug)]
pub struct PullLock(#[allow(dead_code)] File);

impl Home {
    /// The default home: `<config dir>/0k-sync`.
    pub fn default_dir() -> Option<PathBuf> {
        dirs::config_dir().map(|d| d.join("0k-sync"))
    }

    /// The home at `dir` (nothing is read or created yet).
    pub fn at(dir: impl Into<PathBuf>) -> Home {
        Home { dir: dir.into() }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when the home belongs to a group (`group.toml` exists).
    pub fn is_initialized(&self) -> bool {
        self.dir.join(GROUP_FILE).exists()
    }

    /// Make this home a member of a group: create the directory (0700), the
    /// device key if missing, and `group.toml` (0600).
    /// Errors: [`ClientError::Home`] if the home already has a group.
    pub fn create(
        &self,
        relay: &RelayAddr,
        secret: &GroupSecret,
        name: Option<String>,
    ) -> Result<()> {
        if self.is_initialized() {
            return Err(ClientError::Home(format!(
                "{} already belongs to a group; use another --home for another group",
                self.dir.display()
            )));
        }
        ensure_private_dir(&self.dir)?;
        self.device_key()?;
        let mut group = GroupFile {
            relay: relay.to_string(),
            secret: hex::encode(secret.as_bytes()),
            name,
            joined_at: crate::util::now_s(),
        };
        let text = toml::to_string(&group)
            .map_err(|e| ClientError::Home(format!("cannot encode group file: {e}")))?;
        group.secret.zeroize();
        write_atomic(&self.dir.join(GROUP_FILE), text.as_bytes())
    }

    /// The device's secret key, created (0600) on first use.
    pub fn device_key(&self) -> Result<SecretKey> {
        let path = self.dir.join(DEVICE_KEY);
        match fs::read_to_string(&path) {
            Ok(text) => {
                let bytes: [u8; 32] = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        ClientError::Home(format!("{}: not a device key", path.display()))
                    })?;
                Ok(SecretKey::from_bytes(&bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ensure_private_dir(&self.dir)?;
                let key = SecretKey::generate();
                write_atomic(
                    &path,
                    format!("{}\n", hex::encode(key.to_bytes())).as_bytes(),
                )?;
                Ok(key)
            }
            Err(e) => Err(ClientError::io(&path)(e)),
        }
    }

    /// `group.toml`. Errors: [`ClientError::Home`] when missing or invalid.
    pub fn group(&self) -> Result<GroupFile> {
        let path = self.dir.join(GROUP_FILE);
        let text = fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                ClientError::Home(format!(
                    "{} has no group yet: run `sync-cli init --relay NODE_ID@HOST:PORT` or `sync-cli join INVITE`",
                    self.dir.display()
                ))
            } else {
                ClientError::io(&path)(e)
            }
        })?;
        toml::from_str(&text)
            .map_err(|e| ClientError::Home(format!("{}: invalid group file: {e}", path.display())))
    }

    /// The group secret from `group.toml`.
    pub fn secret(&self) -> Result<GroupSecret> {
        let mut group = self.group()?;
        let bytes: Option<[u8; 32]> = hex::decode(&group.secret)
            .ok()
            .and_then(|b| b.try_into().ok());
        group.secret.zeroize();
        bytes.map(GroupSecret::from_bytes).ok_or_else(|| {
            ClientError::Home(format!(
                "{}: group secret is not 64 hex characters",
                self.dir.join(GROUP_FILE).display()
            ))
        })
    }

    /// The relay address from `group.toml`.
    pub fn relay(&self) -> Result<RelayAddr> {
        self.group()?.relay.parse()
    }

    /// The sync state files.
    pub fn state(&self) -> Result<StateStore> {
        StateStore::open(self.dir.join(STATE_FILE))
    }

    /// Take the home's pull lock so one pull runs at a time.
    /// Errors: [`ClientError::Home`] when another pull holds it.
    pub fn lock_pull(&self) -> Result<PullLock> {
        let path = self.dir.join(PULL_LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(ClientError::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(PullLock(file)),
            Err(fs::TryLockError::WouldBlock) => Err(ClientError::Home(format!(
                "another pull is running in {}; stop it or use it (`pull --follow` keeps pulling)",
                self.dir.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(ClientError::io(&path)(e)),
        }
    }

    /// Everything needed to connect this device to its relay.
    pub fn connect_options(&self, device_name: Option<String>) -> Result<ConnectOptions> {
        Ok(ConnectOptions {
            relay: self.relay()?,
            keys: self.secret()?.keys(),
            device_key: self.device_key()?,
            device_name,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            access_token: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const ID: &str = "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65";

    #[test]
    fn create_writes_private_files_and_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        assert!(!home.is_initialized());
        assert!(matches!(home.group(), Err(ClientError::Home(_))));
        let relay: RelayAddr = format!("{ID}@127.0.0.1:4433").parse().unwrap();
        let secret = GroupSecret::from_bytes([4; 32]);
        home.create(&relay, &secret, Some("fam".into())).unwrap();
        assert!(home.is_initialized());
        assert_eq!(home.relay().unwrap(), relay);
        assert_eq!(home.secret().unwrap(), secret);
        let key1 = home.device_key().unwrap();
        assert_eq!(key1.public(), home.device_key().unwrap().public());
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(home.dir()), 0o700);
        assert_eq!(mode(&home.dir().join(GROUP_FILE)), 0o600);
        assert_eq!(mode(&home.dir().join(DEVICE_KEY)), 0o600);
        assert!(
            home.create(&relay, &secret, None).is_err(),
            "one group per home"
        );
    }

    #[test]
    fn one_pull_at_a_time() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let lock = home.lock_pull().unwrap();
        assert!(matches!(home.lock_pull(), Err(ClientError::Home(_))));
        drop(lock);
        home.lock_pull().unwrap();
    }
}
