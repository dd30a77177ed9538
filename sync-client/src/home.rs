//! A device home directory (docs/protocol.md "Blob payloads", §6), mode 0700, files 0600:
//!
//! | file | holds |
//! |---|---|
//! | `device.key` | the device's iroh secret key (hex) — its node id, and the key that signs its roster entries |
//! | `device-hpke.key` | seed of the device's HPKE key pair (hex), for receiving epoch secrets ([`crate::roster::device`]) |
//! | `roster.bin` | the roster entries the device holds ([`crate::roster::store`]) |
//! | `epochs.json` | the secret of every key epoch the device holds, its outbox of roster entries ([`crate::roster::chain`]) |
//! | `group.toml` | relay addresses (first preferred), group secret (hex), group name |
//! | `current-relay` | the relay that worked last (tried first) |
//! | `state.json`, `seq.json` | local sync state ([`crate::state`]) |
//! | `pull.lock`, `seq.lock` | advisory locks |
//!
//! `group.toml` holds the group secret: anyone who reads it can read and
//! write the group. Default location: `$XDG_CONFIG_HOME/0k-sync` (or the
//! platform's config dir), overridden by `--home` / `SYNC_HOME`.

use crate::crypto::GroupSecret;
use crate::error::{ClientError, Result};
use crate::relay_addr::RelayAddr;
use crate::relays::RelayList;
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
const CURRENT_RELAY: &str = "current-relay";

/// The contents of `group.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupFile {
    /// The group's relays, `NODE_ID@HOST:PORT`, first preferred: instances
    /// of one relay cluster (docs/client.md "Several relays").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub relays: Vec<String>,
    /// The one relay address of a `group.toml` written before `relays`
    /// (read, never written: [`Home::group`] moves it into `relays`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
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
        relays: &RelayList,
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
            relays: relays.to_strings(),
            relay: None,
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

    /// The device's roster keys: its node key ([`Home::device_key`]) and
    /// its HPKE key pair (`device-hpke.key`, created on first use).
    /// Errors: [`ClientError::Home`] for an unreadable or invalid key file.
    pub fn device_keys(&self) -> Result<crate::roster::DeviceKeys> {
        crate::roster::DeviceKeys::load_or_create(&self.dir, &self.device_key()?)
            .map_err(|e| ClientError::Home(e.to_string()))
    }

    /// `group.toml`, its relays in `relays` (a file from before `relays`
    /// has its one `relay` moved there). Errors: [`ClientError::Home`] when
    /// missing or invalid.
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
        let mut group: GroupFile = toml::from_str(&text).map_err(|e| {
            ClientError::Home(format!("{}: invalid group file: {e}", path.display()))
        })?;
        if let Some(relay) = group.relay.take() {
            group.relays.insert(0, relay);
        }
        Ok(group)
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

    /// The secret of the group pushes go to: the current key epoch's
    /// (`epochs.json`, [`crate::roster::chain`]), or `group.toml`'s in a
    /// home without a chain. Errors: [`ClientError::Home`].
    pub fn current_secret(&self) -> Result<GroupSecret> {
        crate::roster::chain::current_secret(&self.dir, || self.secret())
    }

    /// The group's relays from `group.toml`, first preferred.
    /// Errors: [`ClientError::Home`] when the list is empty, too long or
    /// holds an invalid address.
    pub fn relays(&self) -> Result<RelayList> {
        RelayList::parse(&self.group()?.relays)
            .map_err(|e| ClientError::Home(format!("{}: {e}", self.dir.join(GROUP_FILE).display())))
    }

    /// The relay to try first: the one that worked last (`current-relay`)
    /// if it is still one of the group's relays, else the first of them.
    pub fn relay(&self) -> Result<RelayAddr> {
        let relays = self.relays()?;
        let remembered = fs::read_to_string(self.dir.join(CURRENT_RELAY))
            .ok()
            .and_then(|t| t.trim().parse::<RelayAddr>().ok())
            .filter(|r| relays.position(r).is_some());
        Ok(remembered.unwrap_or_else(|| relays.get(0).clone()))
    }

    /// Remember `relay` as the one that worked last (written only when it
    /// changes). Errors: [`ClientError::Io`].
    pub fn remember_relay(&self, relay: &RelayAddr) -> Result<()> {
        let path = self.dir.join(CURRENT_RELAY);
        let line = format!("{relay}\n");
        if fs::read_to_string(&path).is_ok_and(|t| t == line) {
            return Ok(());
        }
        write_atomic(&path, line.as_bytes())
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

    /// Everything needed to connect this device to its relays: `relay` is
    /// the one to try first ([`Home::relay`]); pass [`Home::relays`] to
    /// [`crate::SyncClient::connect_failover`] for the others.
    pub fn connect_options(&self, device_name: Option<String>) -> Result<ConnectOptions> {
        Ok(ConnectOptions {
            relay: self.relay()?,
            keys: self.current_secret()?.keys(),
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
        let relays = RelayList::one(relay.clone());
        let secret = GroupSecret::from_bytes([4; 32]);
        home.create(&relays, &secret, Some("fam".into())).unwrap();
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
            home.create(&relays, &secret, None).is_err(),
            "one group per home"
        );
    }

    #[test]
    fn keeps_every_relay_in_order_and_tries_the_remembered_one_first() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path().join("h"));
        let a = format!("{ID}@127.0.0.1:1");
        let b = format!("{ID}@127.0.0.1:2");
        let relays = RelayList::parse(&[&a, &b]).unwrap();
        home.create(&relays, &GroupSecret::from_bytes([4; 32]), None)
            .unwrap();
        let text = fs::read_to_string(home.dir().join(GROUP_FILE)).unwrap();
        assert!(
            text.contains(&format!("relays = [\"{a}\", \"{b}\"]")),
            "{text}"
        );
        assert_eq!(home.relays().unwrap(), relays);
        assert_eq!(home.relay().unwrap().to_string(), a, "first preferred");
        home.remember_relay(relays.get(1)).unwrap();
        assert_eq!(home.relay().unwrap().to_string(), b, "the one that worked");
        // A remembered relay no longer in the list is ignored.
        home.remember_relay(&format!("{ID}@127.0.0.1:3").parse().unwrap())
            .unwrap();
        assert_eq!(home.relay().unwrap().to_string(), a);
    }

    #[test]
    fn a_group_file_from_before_relays_lists_its_one_relay() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::at(tmp.path());
        let old = format!(
            "relay = \"{ID}@127.0.0.1:4433\"\nsecret = \"{}\"\nname = \"fam\"\njoined_at = 1\n",
            "04".repeat(32)
        );
        fs::write(home.dir().join(GROUP_FILE), old).unwrap();
        assert_eq!(
            home.relays().unwrap().to_strings(),
            [format!("{ID}@127.0.0.1:4433")]
        );
        assert_eq!(home.secret().unwrap(), GroupSecret::from_bytes([4; 32]));
        // Neither key: a clear error, not a panic.
        fs::write(
            home.dir().join(GROUP_FILE),
            format!("secret = \"{}\"\njoined_at = 1\n", "04".repeat(32)),
        )
        .unwrap();
        let err = home.relays().unwrap_err().to_string();
        assert!(err.contains("no relay"), "{err}");
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
