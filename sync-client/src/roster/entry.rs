//! Roster entry types and their canonical body encoding (docs/security.md
//! "Devices, roster and key epochs", "Entry formats").
//!
//! ```text
//! body    = version 0x01 ‖ kind u8 ‖ roster [32] ‖ epoch u64 ‖ anchor [32]
//!           ‖ author [32] ‖ created_at_ms u64 ‖ payload
//! Genesis (0) = group_id [32] ‖ hpke_key [32] ‖ name
//! Add     (1) = device [32] ‖ hpke_key [32] ‖ name
//! Rename  (2) = device [32] ‖ name
//! Rotate  (3) = new_group_id [32] ‖ n u8 ‖ removed [32] × n
//!               ‖ m u8 ‖ (device [32] ‖ enc [32] ‖ ciphertext [48]) × m
//! name    = len u8 (1..=32) ‖ UTF-8 (rules of device names in file versions)
//! ```
//!
//! Integers are big-endian. `removed` and the wraps are sorted by device id,
//! strictly ascending (so each device appears once and the encoding is
//! canonical). A genesis has an all-zero `roster` and `anchor` and epoch 0.

use super::RosterError;
use super::codec::{Reader, Writer};
use crate::crypto::envelope::{MAX_DEVICE_NAME_LEN, validate_device_name};
use std::fmt;
use sync_protocol::{DeviceId, GroupId};

/// Version byte of every entry body this client writes and reads.
pub const ENTRY_VERSION: u8 = 0x01;
/// Most devices a roster holds at once, and so most wraps or removals in one
/// rotation.
pub const MAX_MEMBERS: usize = 64;
/// Bytes of one wrapped secret on the wire: device, HPKE `enc`, ciphertext.
pub const WRAP_LEN: usize = 32 + 32 + WRAP_CIPHERTEXT_LEN;
/// Bytes of a wrapped secret's ciphertext: 32-byte secret + 16-byte tag.
pub const WRAP_CIPHERTEXT_LEN: usize = 48;
/// Bytes of a body before its payload.
pub const BODY_HEADER_LEN: usize = 1 + 1 + 32 + 8 + 32 + 32 + 8;
/// Upper bound of an encoded body (a rotation with [`MAX_MEMBERS`] removals
/// and wraps is the largest).
pub const MAX_BODY_LEN: usize =
    BODY_HEADER_LEN + 32 + 1 + MAX_MEMBERS * 32 + 1 + MAX_MEMBERS * WRAP_LEN;

/// An entry's id: `BLAKE3-derive_key("0k-sync/1 roster entry id", body)`.
/// The genesis entry's id is the roster's id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EntryId(pub [u8; 32]);

impl fmt::Debug for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryId({})", hex::encode(&self.0[..8]))
    }
}

impl fmt::Display for EntryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// An X25519 public key for HPKE (RFC 9180 DHKEM(X25519, HKDF-SHA256)).
pub type HpkePublicKey = [u8; 32];

/// One roster entry (unsigned). See the module docs for its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The roster it belongs to (its genesis id); zero in a genesis.
    pub roster: EntryId,
    /// The key epoch it was made in (a rotation closes this epoch).
    pub epoch: u64,
    /// The entry that opened `epoch`: the genesis for epoch 0, else the
    /// rotation that won epoch − 1. Zero in a genesis.
    pub anchor: EntryId,
    /// The signing device (its iroh node id, an Ed25519 public key).
    pub author: DeviceId,
    /// When the author made it, Unix ms, as the author claims: shown, and
    /// orders renames within an epoch; nothing else is ordered by it.
    pub created_at_ms: u64,
    /// What it does.
    pub kind: EntryKind,
}

/// What an entry does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// Creates the roster: the author is its first member.
    Genesis {
        /// The group id of epoch 0 (derived from the group secret).
        group_id: GroupId,
        /// The founder's HPKE public key.
        hpke_key: HpkePublicKey,
        /// The founder's name.
        name: String,
    },
    /// Admits a device into the current epoch.
    Add {
        /// The new device's node id.
        device: DeviceId,
        /// Its HPKE public key (wrapped secrets are sealed to it).
        hpke_key: HpkePublicKey,
        /// Its name.
        name: String,
    },
    /// Renames a member.
    Rename {
        /// The member.
        device: DeviceId,
        /// Its new name.
        name: String,
    },
    /// Closes the epoch: removes devices and hands a fresh epoch secret to
    /// every remaining member.
    Rotate {
        /// The group id of the next epoch (derived from its secret).
        new_group_id: GroupId,
        /// Devices removed, sorted, distinct.
        removed: Vec<DeviceId>,
        /// The next epoch's secret wrapped to each remaining member (the
        /// author included), sorted by device, distinct.
        wraps: Vec<WrappedSecret>,
    },
}

/// An epoch secret sealed to one device with HPKE (see [`super::wrap`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedSecret {
    /// The recipient.
    pub device: DeviceId,
    /// HPKE encapsulated key (the sender's ephemeral X25519 public key).
    pub enc: [u8; 32],
    /// ChaCha20-Poly1305 ciphertext of the 32-byte secret with its tag.
    pub ciphertext: [u8; WRAP_CIPHERTEXT_LEN],
}

const KIND_GENESIS: u8 = 0;
const KIND_ADD: u8 = 1;
const KIND_RENAME: u8 = 2;
const KIND_ROTATE: u8 = 3;

impl EntryKind {
    /// A short name for messages.
    pub fn label(&self) -> &'static str {
        match self {
            EntryKind::Genesis { .. } => "genesis",
            EntryKind::Add { .. } => "add",
            EntryKind::Rename { .. } => "rename",
            EntryKind::Rotate { .. } => "rotate",
        }
    }
}

fn check_name(name: &str) -> Result<(), RosterError> {
    validate_device_name(name).map_err(|why| RosterError::Malformed(format!("device name: {why}")))
}

fn strictly_ascending<'a>(
    ids: impl Iterator<Item = &'a DeviceId>,
    what: &str,
) -> Result<(), RosterError> {
    let mut last: Option<&DeviceId> = None;
    for id in ids {
        if last.is_some_and(|l| l >= id) {
            return Err(RosterError::Malformed(format!(
                "{what} are not sorted by device id or name a device twice"
            )));
        }
        last = Some(id);
    }
    Ok(())
}

impl Entry {
    /// Check the rules an encoding must follow (names, sorted lists,
    /// counts, genesis fields). Errors: [`RosterError::Malformed`] /
    /// [`RosterError::TooLong`].
    pub fn validate(&self) -> Result<(), RosterError> {
        let genesis = matches!(self.kind, EntryKind::Genesis { .. });
        if genesis
            && (self.roster != EntryId::default()
                || self.anchor != EntryId::default()
                || self.epoch != 0)
        {
            return Err(RosterError::Malformed(
                "a genesis entry has a zero roster id and anchor and epoch 0".into(),
            ));
        }
        if !genesis && self.roster == EntryId::default() {
            return Err(RosterError::Malformed("entry names no roster".into()));
        }
        match &self.kind {
            EntryKind::Genesis { name, .. }
            | EntryKind::Add { name, .. }
            | EntryKind::Rename { name, .. } => check_name(name),
            EntryKind::Rotate { removed, wraps, .. } => {
                for (what, len) in [("removed devices", removed.len()), ("wraps", wraps.len())] {
                    if len > MAX_MEMBERS {
                        return Err(RosterError::TooLong {
                            what,
                            len,
                            max: MAX_MEMBERS,
                        });
                    }
                }
                strictly_ascending(removed.iter(), "removed devices")?;
                strictly_ascending(wraps.iter().map(|w| &w.device), "wraps")
            }
        }
    }

    /// The canonical body bytes. Errors: those of [`Entry::validate`].
    pub fn encode(&self) -> Result<Vec<u8>, RosterError> {
        self.validate()?;
        let mut w = Writer::default();
        w.u8(ENTRY_VERSION);
        w.u8(match self.kind {
            EntryKind::Genesis { .. } => KIND_GENESIS,
            EntryKind::Add { .. } => KIND_ADD,
            EntryKind::Rename { .. } => KIND_RENAME,
            EntryKind::Rotate { .. } => KIND_ROTATE,
        });
        w.bytes(&self.roster.0);
        w.u64(self.epoch);
        w.bytes(&self.anchor.0);
        w.bytes(&self.author.0);
        w.u64(self.created_at_ms);
        match &self.kind {
            EntryKind::Genesis {
                group_id,
                hpke_key,
                name,
            } => {
                w.bytes(&group_id.0);
                w.bytes(hpke_key);
                w.short_str(name);
            }
            EntryKind::Add {
                device,
                hpke_key,
                name,
            } => {
                w.bytes(&device.0);
                w.bytes(hpke_key);
                w.short_str(name);
            }
            EntryKind::Rename { device, name } => {
                w.bytes(&device.0);
                w.short_str(name);
            }
            EntryKind::Rotate {
                new_group_id,
                removed,
                wraps,
            } => {
                w.bytes(&new_group_id.0);
                w.u8(removed.len() as u8);
                for d in removed {
                    w.bytes(&d.0);
                }
                w.u8(wraps.len() as u8);
                for wrap in wraps {
                    w.bytes(&wrap.device.0);
                    w.bytes(&wrap.enc);
                    w.bytes(&wrap.ciphertext);
                }
            }
        }
        Ok(w.finish())
    }

    /// Decode a body. Errors: [`RosterError`] saying what is wrong
    /// (truncated, trailing bytes, unknown version or kind, a count over its
    /// limit, a rule of [`Entry::validate`]). Never panics, and allocates
    /// at most what the input's own length allows.
    pub fn decode(body: &[u8]) -> Result<Entry, RosterError> {
        if body.len() > MAX_BODY_LEN {
            return Err(RosterError::TooLong {
                what: "entry body",
                len: body.len(),
                max: MAX_BODY_LEN,
            });
        }
        let mut r = Reader::new(body);
        let version = r.u8("version")?;
        if version != ENTRY_VERSION {
            return Err(RosterError::UnsupportedVersion(version));
        }
        let kind = r.u8("kind")?;
        let roster = EntryId(r.array("roster id")?);
        let epoch = r.u64("epoch")?;
        let anchor = EntryId(r.array("anchor")?);
        let author = DeviceId(r.array("author")?);
        let created_at_ms = r.u64("created_at_ms")?;
        let kind = match kind {
            KIND_GENESIS => EntryKind::Genesis {
                group_id: GroupId(r.array("group id")?),
                hpke_key: r.array("HPKE key")?,
                name: r.short_str(MAX_DEVICE_NAME_LEN, "name")?,
            },
            KIND_ADD => EntryKind::Add {
                device: DeviceId(r.array("device")?),
                hpke_key: r.array("HPKE key")?,
                name: r.short_str(MAX_DEVICE_NAME_LEN, "name")?,
            },
            KIND_RENAME => EntryKind::Rename {
                device: DeviceId(r.array("device")?),
                name: r.short_str(MAX_DEVICE_NAME_LEN, "name")?,
            },
            KIND_ROTATE => {
                let new_group_id = GroupId(r.array("new group id")?);
                let n = r.count(MAX_MEMBERS, 32, "removed devices")?;
                let mut removed = Vec::with_capacity(n);
                for _ in 0..n {
                    removed.push(DeviceId(r.array("removed device")?));
                }
                let m = r.count(MAX_MEMBERS, WRAP_LEN, "wraps")?;
                let mut wraps = Vec::with_capacity(m);
                for _ in 0..m {
                    wraps.push(WrappedSecret {
                        device: DeviceId(r.array("wrap device")?),
                        enc: r.array("wrap enc")?,
                        ciphertext: r.array("wrap ciphertext")?,
                    });
                }
                EntryKind::Rotate {
                    new_group_id,
                    removed,
                    wraps,
                }
            }
            other => return Err(RosterError::UnknownKind(other)),
        };
        r.end()?;
        let entry = Entry {
            roster,
            epoch,
            anchor,
            author,
            created_at_ms,
            kind,
        };
        entry.validate()?;
        Ok(entry)
    }
}

/// The id of an entry with this body.
pub fn entry_id(body: &[u8]) -> EntryId {
    EntryId(blake3::derive_key(super::ENTRY_ID_CONTEXT, body))
}
