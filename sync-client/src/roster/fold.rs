//! The fold of roster entries into a [`RosterState`] (docs/security.md
//! "Devices, roster and key epochs", "Order and convergence").
//!
//! The fold is a function of the **set** of entries: it never looks at the
//! order they arrived in, so every device that holds the same entries sees
//! the same roster, whatever the relay delivered first. Epoch by epoch,
//! starting at the genesis:
//!
//! 1. Entries of the epoch are those naming its number and its anchor (the
//!    genesis, then each winning rotation). Others are *orphaned*.
//! 2. **Adds** are applied to a fixpoint: an add counts when its author is
//!    a member (the founder, or a device added earlier in this fold) and its
//!    device is neither a member nor ever removed. Adds only grow the set,
//!    so the order of application does not matter; two adds of one device
//!    keep the one with the smaller entry id.
//! 3. **Renames** count when author and device are members; the last by
//!    (epoch, created_at_ms, entry id) wins.
//! 4. **Rotations** valid for the epoch close it. Every valid rotation's
//!    removals are applied (removals are a union: two devices revoking two
//!    others concurrently both take effect). The **winner**, whose secret
//!    opens the next epoch, is the rotation with the smallest entry id among
//!    those whose author is not removed by any of them (among all of them
//!    if every author is). The next epoch's members are the winner's
//!    recipients minus every removal. A removed device that still holds the
//!    new secret (a concurrent rotation removed it, the winner did not) is
//!    listed in [`RosterState::must_rotate`]: devices must rotate again before
//!    pushing anything.
//! 5. **Settled epochs**: once a rotation of the epoch is confirmed (a
//!    recipient other than its author, removed by no rotation of the epoch
//!    but those of devices this rotation removes, made an entry of the next
//!    epoch anchored on it), the winner is chosen among confirmed rotations
//!    only, and a rotation whose author the winner removes keeps at most its
//!    removal of the winner's author. A late rotation (pushed after members
//!    moved on, or injected by a cheating relay) then cannot re-anchor the
//!    next epoch.

use super::entry::{EntryId, EntryKind, HpkePublicKey, WrappedSecret};
use super::signed::SignedEntry;
use super::wrap::WrapContext;
use super::{DeviceKeys, MAX_ENTRIES, RosterError, short};
use crate::crypto::GroupSecret;
use std::collections::{BTreeMap, BTreeSet};
use sync_protocol::{DeviceId, GroupId};

/// A member of the current epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its HPKE public key.
    pub hpke_key: HpkePublicKey,
    /// Its name (the latest rename, else the one it was added with).
    pub name: String,
    /// Who added it (`None` for the founder).
    pub added_by: Option<DeviceId>,
    /// When, Unix ms, as the adder claimed.
    pub added_at_ms: u64,
    /// The epoch it was added in.
    pub added_in_epoch: u64,
}

/// A device removed from the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    /// The author of the rotation that removed it (the smallest entry id
    /// among the rotations removing it).
    pub by: DeviceId,
    /// The epoch closed by that rotation.
    pub epoch: u64,
    /// Its last name.
    pub name: String,
}

/// One epoch of the roster's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochRecord {
    /// Its number (0 = the group secret of the invite).
    pub epoch: u64,
    /// The entry that opened it (the genesis, or the winning rotation).
    pub anchor: EntryId,
    /// Its group id at the relay.
    pub group_id: GroupId,
    /// The winning rotation's author (`None` for epoch 0).
    pub opened_by: Option<DeviceId>,
    /// The secret wrapped to each recipient by the winning rotation.
    pub wraps: Vec<WrappedSecret>,
    /// Valid rotations of the previous epoch that lost to the winner.
    pub losers: Vec<EntryId>,
}

/// An entry the fold did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    /// The entry.
    pub id: EntryId,
    /// Its kind ("add", "rotate", …).
    pub kind: &'static str,
    /// Why it was not applied.
    pub reason: RosterError,
}

/// The roster after folding a set of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterState {
    /// The roster's id (its genesis entry's id).
    pub roster: EntryId,
    /// The current epoch.
    pub epoch: u64,
    /// The entry that opened the current epoch.
    pub anchor: EntryId,
    /// The current epoch's group id.
    pub group_id: GroupId,
    /// Members of the current epoch.
    pub members: BTreeMap<DeviceId, Member>,
    /// Every device ever removed (a removed device key is never admitted again).
    pub removed: BTreeMap<DeviceId, Removal>,
    /// Every epoch, from 0 to the current one.
    pub epochs: Vec<EpochRecord>,
    /// Devices that hold the current epoch's secret but are not members: a
    /// rotation is due before anything is pushed in this epoch.
    pub must_rotate: BTreeSet<DeviceId>,
    /// Devices that were members of the previous epoch but got no wrap from
    /// the winning rotation (added concurrently with it): their adder adds
    /// them again in this epoch.
    pub dropped: BTreeSet<DeviceId>,
    /// Entries not applied, sorted by id, with the reason.
    pub ignored: Vec<Ignored>,
}

impl RosterState {
    /// The current epoch's record.
    pub fn current(&self) -> &EpochRecord {
        // `epochs` always holds epoch 0 and grows with `epoch`.
        &self.epochs[self.epochs.len() - 1]
    }

    /// The context of wraps opening epoch `epoch` (≥ 1).
    pub fn wrap_context(&self, epoch: u64) -> Option<WrapContext> {
        let record = self.epochs.get(usize::try_from(epoch).ok()?)?;
        (epoch > 0).then_some(WrapContext {
            roster: self.roster,
            epoch,
            group_id: record.group_id,
        })
    }

    /// Unwrap the secret of epoch `epoch` (≥ 1) with this device's keys.
    /// Errors: [`RosterError::Unwrap`] when the epoch does not exist or has
    /// no wrap for this device, or the wrap does not open.
    pub fn epoch_secret(&self, epoch: u64, keys: &DeviceKeys) -> Result<GroupSecret, RosterError> {
        let ctx = self.wrap_context(epoch).ok_or_else(|| {
            RosterError::Unwrap(format!("the roster has no epoch {epoch} to open"))
        })?;
        let me = keys.device_id();
        let record = &self.epochs[epoch as usize];
        let wrapped = record
            .wraps
            .iter()
            .find(|w| w.device == me)
            .ok_or_else(|| {
                RosterError::Unwrap(format!(
                    "epoch {epoch}'s rotation wraps no secret to this device ({})",
                    short(&me)
                ))
            })?;
        super::wrap::unwrap(wrapped, keys, &ctx)
    }
}

fn ignore(e: &SignedEntry, reason: RosterError) -> Ignored {
    Ignored {
        id: e.id(),
        kind: e.entry().kind.label(),
        reason,
    }
}

/// Why `author` may not make an entry in `epoch` (`None` when it may).
fn author_problem(
    author: &DeviceId,
    epoch: u64,
    members: &BTreeMap<DeviceId, Member>,
    removed: &BTreeMap<DeviceId, Removal>,
) -> Option<RosterError> {
    if members.contains_key(author) {
        None
    } else if removed.contains_key(author) {
        Some(RosterError::Removed(short(author)))
    } else {
        Some(RosterError::NotMember(short(author), epoch))
    }
}

/// Fold `entries` (in any order, duplicates allowed) into the roster whose
/// genesis id is `roster`. Entries that do not apply are listed in
/// [`RosterState::ignored`] with the reason. Errors:
/// [`RosterError::NoGenesis`] when the genesis is missing,
/// [`RosterError::TooManyEntries`] past [`MAX_ENTRIES`] distinct entries.
pub fn fold(roster: EntryId, entries: &[SignedEntry]) -> Result<RosterState, RosterError> {
    let mut by_id: BTreeMap<EntryId, &SignedEntry> = BTreeMap::new();
    for e in entries {
        by_id.entry(e.id()).or_insert(e);
        if by_id.len() > MAX_ENTRIES {
            return Err(RosterError::TooManyEntries);
        }
    }
    let genesis = by_id
        .remove(&roster)
        .ok_or(RosterError::NoGenesis(roster))?;
    let EntryKind::Genesis {
        group_id,
        hpke_key,
        name,
    } = &genesis.entry().kind
    else {
        return Err(RosterError::NoGenesis(roster));
    };
    let founder = genesis.entry().author;
    let mut state = RosterState {
        roster,
        epoch: 0,
        anchor: roster,
        group_id: *group_id,
        members: BTreeMap::from([(
            founder,
            Member {
                hpke_key: *hpke_key,
                name: name.clone(),
                added_by: None,
                added_at_ms: genesis.entry().created_at_ms,
                added_in_epoch: 0,
            },
        )]),
        removed: BTreeMap::new(),
        epochs: vec![EpochRecord {
            epoch: 0,
            anchor: roster,
            group_id: *group_id,
            opened_by: None,
            wraps: Vec::new(),
            losers: Vec::new(),
        }],
        must_rotate: BTreeSet::new(),
        dropped: BTreeSet::new(),
        ignored: Vec::new(),
    };

    let mut batches: BTreeMap<(u64, EntryId), Vec<&SignedEntry>> = BTreeMap::new();
    for e in by_id.into_values() {
        let en = e.entry();
        if matches!(en.kind, EntryKind::Genesis { .. }) {
            let reason = RosterError::Refused("a second genesis entry".into());
            state.ignored.push(ignore(e, reason));
        } else if en.roster != roster {
            state
                .ignored
                .push(ignore(e, RosterError::OtherRoster(en.roster)));
        } else {
            batches.entry((en.epoch, en.anchor)).or_default().push(e);
        }
    }

    // (epoch, created_at_ms, id) → (author, device, name)
    let mut renames: BTreeMap<(u64, u64, EntryId), (DeviceId, DeviceId, String)> = BTreeMap::new();
    loop {
        let batch = batches
            .remove(&(state.epoch, state.anchor))
            .unwrap_or_default();
        let (adds, rest): (Vec<&SignedEntry>, Vec<&SignedEntry>) = batch
            .into_iter()
            .partition(|e| matches!(e.entry().kind, EntryKind::Add { .. }));
        apply_adds(&mut state, adds);
        let mut rotations = Vec::new();
        for e in rest {
            let en = e.entry();
            if let Some(reason) =
                author_problem(&en.author, state.epoch, &state.members, &state.removed)
            {
                state.ignored.push(ignore(e, reason));
                continue;
            }
            match &en.kind {
                EntryKind::Rename { device, name } => {
                    if state.members.contains_key(device) {
                        renames.insert(
                            (state.epoch, en.created_at_ms, e.id()),
                            (en.author, *device, name.clone()),
                        );
                    } else {
                        let reason = RosterError::Refused(format!(
                            "renames {}, which is not a member",
                            short(device)
                        ));
                        state.ignored.push(ignore(e, reason));
                    }
                }
                EntryKind::Rotate { .. } => match check_rotation(&state, e) {
                    Ok(()) => rotations.push(e),
                    Err(reason) => state.ignored.push(ignore(e, reason)),
                },
                // Adds were partitioned out, geneses filtered above.
                EntryKind::Add { .. } | EntryKind::Genesis { .. } => {}
            }
        }
        if rotations.is_empty() {
            break;
        }
        // device → authors of the rotations of this epoch that remove it
        let mut named: BTreeMap<DeviceId, BTreeSet<DeviceId>> = BTreeMap::new();
        for r in &rotations {
            if let EntryKind::Rotate { removed, .. } = &r.entry().kind {
                for d in removed {
                    named.entry(*d).or_default().insert(r.entry().author);
                }
            }
        }
        let confirmed: Vec<&SignedEntry> = rotations
            .iter()
            .filter(|r| is_confirmed(r, state.epoch, &named, &batches))
            .copied()
            .collect();
        close_epoch(&mut state, &rotations, &confirmed);
    }
    for e in batches.into_values().flatten() {
        let reason = RosterError::Orphaned(e.entry().epoch);
        state.ignored.push(ignore(e, reason));
    }
    for (author, device, name) in renames.into_values() {
        // A removed device's names for others are dropped: it may have made
        // them late (dated in an epoch it was a member of, with any clock)
        // to mislead the owner into revoking the wrong device.
        if author != device && state.removed.contains_key(&author) {
            continue;
        }
        if let Some(m) = state.members.get_mut(&device) {
            m.name = name;
        } else if let Some(r) = state.removed.get_mut(&device) {
            r.name = name;
        }
    }
    state.ignored.sort_by_key(|i| i.id);
    Ok(state)
}

/// Step 2 of the module docs: adds to a fixpoint. An add whose HPKE key is
/// of small order is refused first (checked once per entry): no secret can
/// be wrapped to it, so such a member would block every rotation.
fn apply_adds(state: &mut RosterState, adds: Vec<&SignedEntry>) {
    let (adds, unusable): (Vec<&SignedEntry>, Vec<&SignedEntry>) =
        adds.into_iter().partition(|a| match &a.entry().kind {
            EntryKind::Add { hpke_key, .. } => super::wrap::usable_key(hpke_key),
            _ => false,
        });
    for a in unusable {
        let reason = RosterError::Refused(
            "its HPKE key is not a usable X25519 public key (small order)".into(),
        );
        state.ignored.push(ignore(a, reason));
    }
    let (mut adds, group_ids): (Vec<&SignedEntry>, Vec<&SignedEntry>) =
        adds.into_iter().partition(|a| match &a.entry().kind {
            EntryKind::Add { device, .. } => !is_group_or_roster_id(state, device),
            _ => false,
        });
    for a in group_ids {
        let reason = RosterError::Refused(
            "its device id is the group's or the roster's id, not a device key".into(),
        );
        state.ignored.push(ignore(a, reason));
    }
    loop {
        // Smallest entry id first (the batch is in id order).
        let mut chosen: BTreeMap<DeviceId, &SignedEntry> = BTreeMap::new();
        for a in &adds {
            let en = a.entry();
            if let EntryKind::Add { device, .. } = &en.kind
                && state.members.contains_key(&en.author)
                && !state.members.contains_key(device)
                && !state.removed.contains_key(device)
            {
                chosen.entry(*device).or_insert(a);
            }
        }
        let mut applied = BTreeSet::new();
        for (device, a) in chosen {
            if state.members.len() >= super::entry::MAX_MEMBERS {
                break;
            }
            let en = a.entry();
            if let EntryKind::Add { hpke_key, name, .. } = &en.kind {
                state.members.insert(
                    device,
                    Member {
                        hpke_key: *hpke_key,
                        name: name.clone(),
                        added_by: Some(en.author),
                        added_at_ms: en.created_at_ms,
                        added_in_epoch: state.epoch,
                    },
                );
                applied.insert(a.id());
            }
        }
        if applied.is_empty() {
            break;
        }
        adds.retain(|a| !applied.contains(&a.id()));
    }
    for a in adds {
        let en = a.entry();
        let reason = match &en.kind {
            EntryKind::Add { device, .. } if state.removed.contains_key(device) => {
                RosterError::Removed(short(device))
            }
            _ => match author_problem(&en.author, state.epoch, &state.members, &state.removed) {
                Some(reason) => reason,
                None => match &en.kind {
                    EntryKind::Add { device, .. } if state.members.contains_key(device) => {
                        RosterError::Refused(format!("{} is already a member", short(device)))
                    }
                    _ => RosterError::Refused(format!(
                        "the roster is full ({} devices)",
                        super::entry::MAX_MEMBERS
                    )),
                },
            },
        };
        state.ignored.push(ignore(a, reason));
    }
}

/// Whether `device` is the roster id or the group id of an epoch so far:
/// such a "device" key is the group signing key, which every holder of
/// that epoch's secret (devices removed later included) can derive.
pub(crate) fn is_group_or_roster_id(state: &RosterState, device: &DeviceId) -> bool {
    device.0 == state.roster.0 || state.epochs.iter().any(|r| r.group_id.0 == device.0)
}

/// The rules a rotation of the current epoch must follow (its author was
/// checked by the caller).
fn check_rotation(state: &RosterState, e: &SignedEntry) -> Result<(), RosterError> {
    let en = e.entry();
    let EntryKind::Rotate {
        new_group_id,
        removed,
        wraps,
    } = &en.kind
    else {
        return Err(RosterError::Refused("not a rotation".into()));
    };
    let refuse = |why: String| Err(RosterError::Refused(why));
    if let Some(d) = removed.iter().find(|d| !state.members.contains_key(d)) {
        return refuse(format!("removes {}, which is not a member", short(d)));
    }
    if removed.contains(&en.author) {
        return refuse("its author removes itself".into());
    }
    for w in wraps {
        if !state.members.contains_key(&w.device) || removed.contains(&w.device) {
            return refuse(format!(
                "wraps the secret to {}, which is not a remaining member",
                short(&w.device)
            ));
        }
    }
    if !wraps.iter().any(|w| w.device == en.author) {
        return refuse("it wraps no secret to its own author".into());
    }
    if let Some(old) = state.epochs.iter().find(|r| r.group_id == *new_group_id) {
        return refuse(format!("it reuses the group id of epoch {}", old.epoch));
    }
    Ok(())
}

/// Whether rotation `r` of epoch `epoch` is *confirmed*: the entries hold
/// one of epoch `epoch + 1` anchored on `r` whose author is one of `r`'s
/// recipients other than its author (a member that moved on with `r`),
/// in good standing as `r` sees it: every rotation of the epoch that
/// removes it is by a device `r` removes (so a device removed by a
/// concurrent rotation cannot confirm a losing rotation that wrapped to
/// it). `named` maps each device to the authors of the epoch's rotations
/// that remove it; `batches` holds the entries of epochs not folded yet,
/// by (epoch, anchor).
fn is_confirmed(
    r: &SignedEntry,
    epoch: u64,
    named: &BTreeMap<DeviceId, BTreeSet<DeviceId>>,
    batches: &BTreeMap<(u64, EntryId), Vec<&SignedEntry>>,
) -> bool {
    let EntryKind::Rotate { wraps, removed, .. } = &r.entry().kind else {
        return false;
    };
    let in_good_standing = |c: &DeviceId| {
        named
            .get(c)
            .is_none_or(|authors| authors.iter().all(|a| removed.contains(a)))
    };
    let Some(next) = batches.get(&(epoch.saturating_add(1), r.id())) else {
        return false;
    };
    next.iter().any(|e| {
        let author = e.entry().author;
        author != r.entry().author
            && in_good_standing(&author)
            && wraps.iter().any(|w| w.device == author)
    })
}

/// Step 4 of the module docs: close the epoch with its valid rotations
/// (in entry id order, at least one), of which `confirmed` are confirmed
/// ([`is_confirmed`]). When any is, the winner is chosen among those only:
/// a rotation that arrives after members moved on can never re-anchor the
/// next epoch (change its secret, orphan its entries).
fn close_epoch(state: &mut RosterState, rotations: &[&SignedEntry], confirmed: &[&SignedEntry]) {
    fn removals(e: &SignedEntry) -> &[DeviceId] {
        match &e.entry().kind {
            EntryKind::Rotate { removed, .. } => removed,
            _ => &[],
        }
    }
    let union: BTreeSet<DeviceId> = rotations
        .iter()
        .flat_map(|e| removals(e).iter().copied())
        .collect();
    let candidates = if confirmed.is_empty() {
        rotations
    } else {
        confirmed
    };
    let winner = candidates
        .iter()
        .find(|e| !union.contains(&e.entry().author))
        .unwrap_or(&candidates[0]);
    // Once the epoch is settled, a rotation whose author the winner removes
    // keeps at most its removal of the winner's author (a mutual removal,
    // which a race and a late entry cannot be told apart by); the rest of
    // what it names is dropped.
    let settled_winner = (!confirmed.is_empty()).then_some(*winner);
    let effective = |e: &SignedEntry| -> Vec<DeviceId> {
        match settled_winner {
            Some(w) if removals(w).contains(&e.entry().author) => removals(e)
                .iter()
                .filter(|d| **d == w.entry().author)
                .copied()
                .collect(),
            _ => removals(e).to_vec(),
        }
    };
    let union: BTreeSet<DeviceId> = rotations.iter().flat_map(|e| effective(e)).collect();
    let EntryKind::Rotate {
        new_group_id,
        wraps,
        ..
    } = &winner.entry().kind
    else {
        return;
    };
    for d in &union {
        // The first rotation (smallest id) that removes `d`.
        let by = rotations
            .iter()
            .find(|e| effective(e).contains(d))
            .map(|e| e.entry().author)
            .unwrap_or(winner.entry().author);
        let name = state
            .members
            .get(d)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        state.removed.insert(
            *d,
            Removal {
                by,
                epoch: state.epoch,
                name,
            },
        );
    }
    let holders: BTreeSet<DeviceId> = wraps.iter().map(|w| w.device).collect();
    state.dropped = state
        .members
        .keys()
        .filter(|d| !holders.contains(d) && !union.contains(d))
        .copied()
        .collect();
    state
        .members
        .retain(|d, _| holders.contains(d) && !union.contains(d));
    state.must_rotate = holders.intersection(&union).copied().collect();
    state.epoch += 1;
    state.anchor = winner.id();
    state.group_id = *new_group_id;
    state.epochs.push(EpochRecord {
        epoch: state.epoch,
        anchor: winner.id(),
        group_id: *new_group_id,
        opened_by: Some(winner.entry().author),
        wraps: wraps.clone(),
        losers: rotations
            .iter()
            .filter(|e| e.id() != winner.id())
            .map(|e| e.id())
            .collect(),
    });
}
