//! Making roster entries: the founder's genesis, adding and renaming a
//! device, and rotating the epoch (docs/security.md "Devices, roster and
//! key epochs", "Entry formats"). Each checks what the fold would check, so
//! a device never publishes an entry its own fold would ignore.

use super::entry::{Entry, EntryId, EntryKind, HpkePublicKey};
use super::signed::SignedEntry;
use super::wrap::{WrapContext, wrap, wrap_with_rng};
use super::{DeviceKeys, RosterError, RosterState, short};
use crate::crypto::GroupSecret;
use hpke::rand_core::CryptoRng;
use sync_protocol::{DeviceId, GroupId};

/// The genesis of a new roster, founded by `keys`' device for the group
/// whose epoch-0 id is `group_id`. Its id is the roster's id.
/// Errors: [`RosterError::Malformed`] for an invalid name.
pub fn genesis(
    keys: &DeviceKeys,
    group_id: GroupId,
    name: &str,
    now_ms: u64,
) -> Result<SignedEntry, RosterError> {
    let entry = Entry {
        roster: EntryId::default(),
        epoch: 0,
        anchor: EntryId::default(),
        author: keys.device_id(),
        created_at_ms: now_ms,
        kind: EntryKind::Genesis {
            group_id,
            hpke_key: keys.hpke_public(),
            name: name.to_string(),
        },
    };
    SignedEntry::sign(entry, keys.signing_key())
}

fn entry_in(state: &RosterState, keys: &DeviceKeys, now_ms: u64, kind: EntryKind) -> Entry {
    Entry {
        roster: state.roster,
        epoch: state.epoch,
        anchor: state.anchor,
        author: keys.device_id(),
        created_at_ms: now_ms,
        kind,
    }
}

fn require_member(state: &RosterState, device: &DeviceId) -> Result<(), RosterError> {
    if state.members.contains_key(device) {
        Ok(())
    } else if state.removed.contains_key(device) {
        Err(RosterError::Removed(short(device)))
    } else {
        Err(RosterError::NotMember(short(device), state.epoch))
    }
}

/// Add `device` (HPKE key `hpke_key`, name `name`) in the current epoch.
/// Errors: the author is not a member; the device is a member or was
/// removed; an invalid name.
pub fn add(
    state: &RosterState,
    keys: &DeviceKeys,
    device: DeviceId,
    hpke_key: HpkePublicKey,
    name: &str,
    now_ms: u64,
) -> Result<SignedEntry, RosterError> {
    require_member(state, &keys.device_id())?;
    if state.removed.contains_key(&device) {
        return Err(RosterError::Removed(short(&device)));
    }
    if state.members.contains_key(&device) {
        return Err(RosterError::Refused(format!(
            "{} is already a member",
            short(&device)
        )));
    }
    if super::fold::is_group_or_roster_id(state, &device) {
        return Err(RosterError::Refused(
            "its device id is the group's or the roster's id, not a device key".into(),
        ));
    }
    if !super::wrap::usable_key(&hpke_key) {
        return Err(RosterError::Refused(
            "its HPKE key is not a usable X25519 public key (small order)".into(),
        ));
    }
    let kind = EntryKind::Add {
        device,
        hpke_key,
        name: name.to_string(),
    };
    SignedEntry::sign(entry_in(state, keys, now_ms, kind), keys.signing_key())
}

/// Rename member `device`. Errors: author or device not a member; an
/// invalid name.
pub fn rename(
    state: &RosterState,
    keys: &DeviceKeys,
    device: DeviceId,
    name: &str,
    now_ms: u64,
) -> Result<SignedEntry, RosterError> {
    require_member(state, &keys.device_id())?;
    require_member(state, &device)?;
    let kind = EntryKind::Rename {
        device,
        name: name.to_string(),
    };
    SignedEntry::sign(entry_in(state, keys, now_ms, kind), keys.signing_key())
}

/// Close the current epoch: remove `removed` and wrap a fresh random
/// secret to every other member (the author included). Returns the entry
/// and the new epoch's secret. Errors: the author is not a member or removes
/// itself; a removed device is not a member.
pub fn rotate(
    state: &RosterState,
    keys: &DeviceKeys,
    removed: &[DeviceId],
    now_ms: u64,
) -> Result<(SignedEntry, GroupSecret), RosterError> {
    let secret = GroupSecret::generate();
    let entry = rotation(state, keys, removed, &secret, now_ms, |s, d, k, c| {
        wrap(s, d, k, c)
    })?;
    Ok((entry, secret))
}

/// [`rotate`] with a given secret and random generator (golden vectors).
pub fn rotate_with(
    state: &RosterState,
    keys: &DeviceKeys,
    removed: &[DeviceId],
    secret: &GroupSecret,
    now_ms: u64,
    rng: &mut impl CryptoRng,
) -> Result<SignedEntry, RosterError> {
    rotation(state, keys, removed, secret, now_ms, |s, d, k, c| {
        wrap_with_rng(s, d, k, c, rng)
    })
}

fn rotation(
    state: &RosterState,
    keys: &DeviceKeys,
    removed: &[DeviceId],
    secret: &GroupSecret,
    now_ms: u64,
    mut wrap_one: impl FnMut(
        &GroupSecret,
        DeviceId,
        &HpkePublicKey,
        &WrapContext,
    ) -> Result<super::WrappedSecret, RosterError>,
) -> Result<SignedEntry, RosterError> {
    let me = keys.device_id();
    require_member(state, &me)?;
    if removed.contains(&me) {
        return Err(RosterError::Refused(
            "a device cannot remove itself; ask another member to revoke it".into(),
        ));
    }
    for d in removed {
        require_member(state, d)?;
    }
    let mut removed: Vec<DeviceId> = removed.to_vec();
    removed.sort();
    removed.dedup();
    let new_group_id = secret.keys().group_id();
    let ctx = WrapContext {
        roster: state.roster,
        epoch: state.epoch + 1,
        group_id: new_group_id,
    };
    // `members` is a BTreeMap: wraps come out sorted by device.
    let mut wraps = Vec::new();
    for (device, member) in &state.members {
        if !removed.contains(device) {
            wraps.push(wrap_one(secret, *device, &member.hpke_key, &ctx)?);
        }
    }
    let kind = EntryKind::Rotate {
        new_group_id,
        removed,
        wraps,
    };
    SignedEntry::sign(entry_in(state, keys, now_ms, kind), keys.signing_key())
}
