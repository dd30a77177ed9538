//! A device's roster in its home (docs/security.md "Devices, roster and
//! key epochs"): the entries it holds (`roster.bin`), the chain of epoch
//! secrets and what it still has to publish (`epochs.json`,
//! [`super::chain`]), and the steps every command shares:
//!
//! - [`LocalRoster::absorb`] / [`LocalRoster::absorb_enrolment`]: take
//!   what a pull received (signatures checked, duplicates dropped);
//! - [`LocalRoster::settle`]: choose the roster, fold, place the held
//!   secrets on the chain and **catch up**: unwrap each next epoch's
//!   secret with this device's HPKE key, queue a confirming entry in the
//!   epoch it reaches;
//! - [`LocalRoster::answer_enrolments`], [`LocalRoster::ensure_genesis`],
//!   [`LocalRoster::revoke`]: make entries and queue them for publication
//!   ([`LocalRoster::outgoing`]), each in the group it belongs to. Nothing
//!   leaves the outbox until it was pushed, so a crash loses no entry.

use super::chain::{ChainFile, EpochKey, MAX_PENDING, PendingEnrolment, hex32};
use super::enrol::Enrolment;
use super::entry::{EntryId, EntryKind};
use super::signed::{MAX_SIGNED_LEN, SignedEntry};
use super::store::{ROSTER_FILE, load, save};
use super::{DeviceKeys, MAX_ENTRIES, RosterError, RosterState, build, fold, short};
use crate::crypto::GroupSecret;
use crate::error::{ClientError, Result};
use crate::home::Home;
use std::collections::BTreeSet;
use std::path::PathBuf;
use sync_protocol::{DeviceId, GroupId};

/// What absorbing one roster blob did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Absorbed {
    /// Entries new to this device.
    pub ids: Vec<EntryId>,
    /// Why the rest of the blob was refused (bad signature, damaged bytes),
    /// if it was.
    pub refused: Option<String>,
}

/// The outcome of [`LocalRoster::settle`].
#[derive(Debug, Clone)]
pub struct Settled {
    /// The folded roster.
    pub state: RosterState,
    /// Epochs this device moved into now (catch-up).
    pub moved: Vec<u64>,
    /// Why the next epoch's secret could not be unwrapped (this device was
    /// removed, or a rotation wrapped it garbage), if so.
    pub stuck: Option<String>,
}

impl Settled {
    /// Whether `device` is a member of the current epoch.
    pub fn is_member(&self, device: &DeviceId) -> bool {
        self.state.members.contains_key(device)
    }
}

/// Bytes of roster entries per blob body: whole entries only.
pub const ENTRIES_PER_BLOB_BYTES: usize = 64 * 1024;

/// A device's roster, chain and outbox, loaded from its home.
pub struct LocalRoster {
    home: Home,
    keys: DeviceKeys,
    /// `epochs.json`.
    pub chain: ChainFile,
    entries: Vec<SignedEntry>,
    ids: BTreeSet<EntryId>,
}

impl std::fmt::Debug for LocalRoster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalRoster")
            .field("device", &self.keys.device_id())
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

fn roster_err(e: RosterError) -> ClientError {
    ClientError::Home(e.to_string())
}

impl LocalRoster {
    /// Load the roster of `home`. A home without `epochs.json` holds one
    /// epoch, the secret of `group.toml`, as epoch 0 (a group from before
    /// rosters, or made by `init`). Errors: [`ClientError::Home`] for
    /// damaged files (never reset silently), [`ClientError::Io`].
    pub fn open(home: &Home) -> Result<LocalRoster> {
        let keys = home.device_keys()?;
        let chain = match ChainFile::load(home.dir())? {
            Some(c) => c,
            None => ChainFile::new(EpochKey::new(Some(0), &home.secret()?)),
        };
        let path = home.dir().join(ROSTER_FILE);
        let entries = match load(&path).map_err(roster_err)? {
            Some((_, entries)) => entries,
            None => Vec::new(),
        };
        let ids = entries.iter().map(|e| e.id()).collect();
        Ok(LocalRoster {
            home: home.clone(),
            keys,
            chain,
            entries,
            ids,
        })
    }

    /// Persist `epochs.json` and `roster.bin`. Errors: [`ClientError::Io`].
    pub fn save(&self) -> Result<()> {
        let roster = self.roster_id().unwrap_or_default();
        save(&self.path(), roster, &self.entries).map_err(roster_err)?;
        self.chain.save(self.home.dir())
    }

    fn path(&self) -> PathBuf {
        self.home.dir().join(ROSTER_FILE)
    }

    /// This device's keys.
    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }

    /// This device's id.
    pub fn me(&self) -> DeviceId {
        self.keys.device_id()
    }

    /// The roster this device follows, once known.
    pub fn roster_id(&self) -> Option<EntryId> {
        self.chain.roster.as_deref().and_then(hex32).map(EntryId)
    }

    /// Every entry held.
    pub fn entries(&self) -> &[SignedEntry] {
        &self.entries
    }

    fn insert(&mut self, e: SignedEntry) -> Result<bool> {
        if self.ids.contains(&e.id()) {
            return Ok(false);
        }
        if self.entries.len() >= MAX_ENTRIES {
            return Err(roster_err(RosterError::TooManyEntries));
        }
        self.ids.insert(e.id());
        self.entries.push(e);
        Ok(true)
    }

    /// Take the entries of a roster blob's body (signed entries,
    /// concatenated): each is decoded and its signature verified; the first
    /// that fails stops the blob (its length cannot be trusted) and is
    /// reported. Whether an entry *applies* is the fold's decision.
    pub fn absorb(&mut self, mut data: &[u8]) -> Absorbed {
        let mut out = Absorbed::default();
        while !data.is_empty() {
            match SignedEntry::decode_prefix(data) {
                Ok((e, rest)) => {
                    let id = e.id();
                    match self.insert(e) {
                        Ok(true) => out.ids.push(id),
                        Ok(false) => {}
                        Err(err) => {
                            out.refused = Some(err.to_string());
                            return out;
                        }
                    }
                    data = rest;
                }
                Err(err) => {
                    out.refused = Some(err.to_string());
                    return out;
                }
            }
        }
        out
    }

    /// Take an enrolment request sent by `sender` (hex) in group `group`:
    /// verified, then kept until a member answers it
    /// ([`LocalRoster::answer_enrolments`]). Errors: why it is refused.
    pub fn absorb_enrolment(
        &mut self,
        sender: &str,
        group: &GroupId,
        data: &[u8],
    ) -> std::result::Result<(), String> {
        let device = hex32(sender)
            .map(DeviceId)
            .ok_or_else(|| "sender is not a node id".to_string())?;
        let req = Enrolment::decode(device, group, data).map_err(|e| e.to_string())?;
        let pending = PendingEnrolment {
            device: sender.to_string(),
            hpke_key: hex::encode(req.hpke_key),
            name: req.name,
        };
        self.chain.pending.retain(|p| p.device != pending.device);
        if self.chain.pending.len() >= MAX_PENDING {
            return Err(format!(
                "more than {MAX_PENDING} enrolment requests wait; this one is dropped"
            ));
        }
        self.chain.pending.push(pending);
        Ok(())
    }

    /// Geneses this device may take as its roster: for a chain starting at
    /// epoch 0, only those naming its group id.
    fn genesis_candidates(&self) -> Vec<EntryId> {
        let first = &self.chain.epochs[0];
        let mut ids: Vec<EntryId> = self
            .entries
            .iter()
            .filter(|e| match &e.entry().kind {
                EntryKind::Genesis { group_id, .. } => {
                    first.epoch != Some(0) || group_id.to_string() == first.group_id
                }
                _ => false,
            })
            .map(|e| e.id())
            .collect();
        ids.sort();
        ids
    }

    /// Choose the roster: the one already followed once it has rotated
    /// (a genesis arriving later, e.g. planted by a removed device, changes
    /// nothing); before any rotation the smallest genesis id held, so two
    /// devices upgrading one group at the same moment converge on one.
    fn choose_roster(&mut self) {
        if let Some(current) = self.roster_id()
            && fold(current, &self.entries).is_ok_and(|s| s.epochs.len() > 1)
        {
            return;
        }
        if let Some(smallest) = self.genesis_candidates().first() {
            self.chain.roster = Some(smallest.to_string());
        }
    }

    /// Choose the roster, fold it, place the held secrets on its chain and
    /// catch up: unwrap each next epoch's secret while this device holds a
    /// wrap, queueing a confirming entry in the epoch it reaches (design
    /// step 5: a recipient other than the rotation's author moved on).
    /// `None` when no roster is known yet. Call [`LocalRoster::save`]
    /// after. Errors: the fold's ([`RosterError::NoGenesis`],
    /// [`RosterError::TooManyEntries`]) as [`ClientError::Home`].
    pub fn settle(&mut self, now_ms: u64) -> Result<Option<Settled>> {
        self.choose_roster();
        let Some(roster) = self.roster_id() else {
            return Ok(None);
        };
        let state = fold(roster, &self.entries).map_err(roster_err)?;
        // Place every held secret: on the roster's chain (labelled with its
        // epoch, in epoch order, last = current) or off it (a rotation that
        // lost, or an invite's secret not placed yet; kept first, still
        // pulled, so nothing pushed there is lost).
        let mut on_chain: Vec<EpochKey> = Vec::new();
        let mut off_chain: Vec<EpochKey> = Vec::new();
        for mut key in std::mem::take(&mut self.chain.epochs) {
            match state
                .epochs
                .iter()
                .find(|r| r.group_id.to_string() == key.group_id)
            {
                Some(rec) => {
                    key.epoch = Some(rec.epoch);
                    on_chain.push(key);
                }
                None => {
                    key.epoch = None;
                    off_chain.push(key);
                }
            }
        }
        // Catch up: unwrap each epoch's secret this device lacks and holds
        // a wrap for.
        let mut moved = Vec::new();
        let mut last_error = None;
        for e in 1..=state.epoch {
            if on_chain.iter().any(|k| k.epoch == Some(e)) {
                continue;
            }
            match state.epoch_secret(e, &self.keys) {
                Ok(secret) => {
                    on_chain.push(EpochKey::new(Some(e), &secret));
                    moved.push(e);
                }
                Err(err) => last_error = Some(err.to_string()),
            }
        }
        on_chain.sort_by_key(|k| k.epoch);
        let reached = on_chain.last().and_then(|k| k.epoch);
        let stuck = if reached == Some(state.epoch) {
            None
        } else {
            Some(match state.removed.get(&self.me()) {
                Some(r) => format!(
                    "this device was removed from the group by {} (closing epoch {})",
                    short(&r.by),
                    r.epoch
                ),
                None => last_error.unwrap_or_else(|| {
                    format!(
                        "this device holds no key of the group's epoch {}",
                        state.epoch
                    )
                }),
            })
        };
        self.chain.epochs = off_chain;
        self.chain.epochs.extend(on_chain);
        if self.chain.epochs.is_empty() {
            return Err(ClientError::Home("no epoch key left".into()));
        }
        let me = self.me();
        if !moved.is_empty()
            && state.current().opened_by != Some(me)
            && let Some(member) = state.members.get(&me)
        {
            let confirm = build::rename(&state, &self.keys, me, &member.name.clone(), now_ms)
                .map_err(roster_err)?;
            self.queue(confirm)?;
        }
        Ok(Some(Settled {
            state,
            moved,
            stuck,
        }))
    }

    /// Keep `entry` and queue it for the current epoch's group.
    fn queue(&mut self, entry: SignedEntry) -> Result<()> {
        let id = entry.id().to_string();
        self.insert(entry)?;
        let group = self.chain.current().group_id.clone();
        self.chain.outbox.push(format!("{group}:{id}"));
        Ok(())
    }

    /// Make this device the founder of a roster for its group, when none is
    /// known yet: at `init`, and for a group from before rosters the first
    /// time a roster command runs on one of its devices
    /// (docs/security.md "Groups from before rosters"). Returns whether a
    /// genesis was made. Errors: [`ClientError::InvalidInput`] when this
    /// device's first held secret is not epoch 0 (it joined after a
    /// rotation and has not received the roster yet), or the name is invalid.
    pub fn ensure_genesis(&mut self, name: &str, now_ms: u64) -> Result<bool> {
        self.choose_roster();
        if self.roster_id().is_some() {
            return Ok(false);
        }
        let first = self.chain.epochs[0].clone();
        if first.epoch != Some(0) {
            return Err(ClientError::InvalidInput(
                "no roster has reached this device yet: run `sync-cli pull` first".into(),
            ));
        }
        let genesis = build::genesis(&self.keys, first.group()?, name, now_ms)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.chain.roster = Some(genesis.id().to_string());
        let id = genesis.id().to_string();
        self.insert(genesis)?;
        self.chain.outbox.push(format!("{}:{id}", first.group_id));
        Ok(true)
    }

    /// Answer the enrolment requests seen: while this device is a member,
    /// each request of a device neither a member nor removed gets an `Add`
    /// (queued). Requests of members and removed devices are dropped.
    /// Returns the devices added and, for each request refused, why.
    pub fn answer_enrolments(
        &mut self,
        state: &RosterState,
        now_ms: u64,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let me = self.me();
        if !state.members.contains_key(&me) {
            return Ok((Vec::new(), Vec::new()));
        }
        let mut added = Vec::new();
        let mut refused = Vec::new();
        for p in std::mem::take(&mut self.chain.pending) {
            let (Some(device), Some(hpke)) = (hex32(&p.device), hex32(&p.hpke_key)) else {
                continue;
            };
            let device = DeviceId(device);
            if state.members.contains_key(&device) {
                continue;
            }
            match build::add(state, &self.keys, device, hpke, &p.name, now_ms) {
                Ok(entry) => {
                    self.queue(entry)?;
                    added.push(p.name);
                }
                Err(e) => refused.push(format!("{} ({}): {e}", p.name, short(&device))),
            }
        }
        Ok((added, refused))
    }

    /// Add `device` (an invite's joiner, docs/security.md "Invites as
    /// one-time enrolment credentials") in the current epoch, queued for
    /// its group. Returns `false` when it is a member already (an answer
    /// being repeated after a crash). Errors: [`ClientError::InvalidInput`]
    /// when this device is not a member, the device was removed, its key is
    /// unusable or the name invalid.
    pub fn add_device(
        &mut self,
        state: &RosterState,
        device: DeviceId,
        hpke_key: [u8; 32],
        name: &str,
        now_ms: u64,
    ) -> Result<bool> {
        if state.members.contains_key(&device) {
            return Ok(false);
        }
        let entry = build::add(state, &self.keys, device, hpke_key, name, now_ms)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.queue(entry)?;
        Ok(true)
    }

    /// Every entry held, as roster blob bodies (whole entries, at most
    /// [`ENTRIES_PER_BLOB_BYTES`] each): what an invite's answer carries.
    pub fn all_bodies(&self) -> Vec<Vec<u8>> {
        let all: Vec<&SignedEntry> = self.entries.iter().collect();
        bodies(&all)
    }

    /// Revoke `device`: a rotation of the current epoch removing it (a
    /// fresh secret from the OS random generator, wrapped to every other
    /// member), queued for the old epoch's group; the new epoch becomes
    /// current, and the whole chain — with a first entry of this device in
    /// the new epoch — is queued for its group. Returns the new epoch's
    /// number. Errors: [`ClientError::InvalidInput`] (not a member, removing
    /// itself, not caught up: this device's current secret is not the
    /// roster's current epoch).
    pub fn revoke(&mut self, state: &RosterState, device: DeviceId, now_ms: u64) -> Result<u64> {
        if self.chain.current().epoch != Some(state.epoch) {
            return Err(ClientError::InvalidInput(
                "this device has not reached the roster's current epoch: run `sync-cli pull` first"
                    .into(),
            ));
        }
        let (rotation, secret) = build::rotate(state, &self.keys, &[device], now_ms)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.queue(rotation)?;
        self.enter(secret, state.epoch + 1)?;
        let Some(roster) = self.roster_id() else {
            return Err(ClientError::InvalidInput("no roster".into()));
        };
        let next = fold(roster, &self.entries).map_err(roster_err)?;
        if let Some(me) = next.members.get(&self.me()) {
            let first = build::rename(&next, &self.keys, self.me(), &me.name.clone(), now_ms + 1)
                .map_err(roster_err)?;
            self.insert(first)?;
        }
        Ok(state.epoch + 1)
    }

    /// A plain re-key of the current epoch (removing no one): what a member
    /// does when the roster lists devices in `must_rotate`. Returns the new
    /// epoch's number. Errors: as [`LocalRoster::revoke`].
    pub fn rekey(&mut self, state: &RosterState, now_ms: u64) -> Result<u64> {
        if self.chain.current().epoch != Some(state.epoch) {
            return Err(ClientError::InvalidInput(
                "this device has not reached the roster's current epoch".into(),
            ));
        }
        let (rotation, secret) = build::rotate(state, &self.keys, &[], now_ms)
            .map_err(|e| ClientError::InvalidInput(e.to_string()))?;
        self.queue(rotation)?;
        self.enter(secret, state.epoch + 1)?;
        Ok(state.epoch + 1)
    }

    /// Make `secret` the current epoch and queue the whole chain for its group.
    fn enter(&mut self, secret: GroupSecret, epoch: u64) -> Result<()> {
        let key = EpochKey::new(Some(epoch), &secret);
        self.chain.chain_to.push(key.group_id.clone());
        self.chain.epochs.push(key);
        Ok(())
    }

    /// What is waiting to be published: per group (hex), the blob bodies of
    /// entries to push there (whole entries, at most
    /// [`ENTRIES_PER_BLOB_BYTES`] per blob), in chain order. A group whose
    /// queue holds only a genesis is left out until something else joins it. After pushing
    /// a group's blobs, call [`LocalRoster::published`].
    pub fn outgoing(&self) -> Vec<(String, Vec<Vec<u8>>)> {
        fn add<'a>(
            groups: &mut Vec<(String, Vec<&'a SignedEntry>)>,
            group: &str,
            e: &'a SignedEntry,
        ) {
            match groups.iter_mut().find(|g| g.0 == group) {
                Some(g) => {
                    if !g.1.iter().any(|x| x.id() == e.id()) {
                        g.1.push(e)
                    }
                }
                None => groups.push((group.to_string(), vec![e])),
            }
        }
        let mut groups: Vec<(String, Vec<&SignedEntry>)> = Vec::new();
        for group in &self.chain.chain_to {
            for e in &self.entries {
                add(&mut groups, group, e);
            }
        }
        for item in &self.chain.outbox {
            if let Some((group, id)) = item.split_once(':')
                && let Some(e) = self.entries.iter().find(|e| e.id().to_string() == id)
            {
                add(&mut groups, group, e);
            }
        }
        // A lone genesis waits for the first entry another device needs
        // (the `Add` answering its enrolment request): a group used by one
        // device costs no roster blob.
        groups
            .into_iter()
            .filter(|(g, entries)| {
                self.chain.chain_to.contains(g)
                    || entries
                        .iter()
                        .any(|e| !matches!(e.entry().kind, EntryKind::Genesis { .. }))
            })
            .map(|(g, entries)| (g, bodies(&entries)))
            .collect()
    }

    /// This device's name in the roster: the one given at `init` / `join`
    /// (`epochs.json`), else the host name, else `device-` and its id.
    pub fn device_name(&self) -> String {
        default_device_name(self.chain.device_name.clone(), &self.me())
    }

    /// The enrolment request to post in the current epoch's group (its
    /// group id, hex, and the blob body), when this device is not a member
    /// of the roster (or none is known) and has not posted one there.
    /// After pushing it, call [`LocalRoster::enrolment_posted`].
    pub fn enrolment_due(&self, settled: Option<&Settled>) -> Result<Option<(String, Vec<u8>)>> {
        let me = self.me();
        if settled.is_some_and(|s| s.is_member(&me) || s.state.removed.contains_key(&me)) {
            return Ok(None);
        }
        let current = self.chain.current();
        if self.chain.enrolment_posted.as_deref() == Some(current.group_id.as_str()) {
            return Ok(None);
        }
        let body = Enrolment::encode(&self.keys, &current.group()?, &self.device_name())
            .map_err(roster_err)?;
        Ok(Some((current.group_id.clone(), body)))
    }

    /// The enrolment request was pushed into `group` (hex).
    pub fn enrolment_posted(&mut self, group: &str) {
        self.chain.enrolment_posted = Some(group.to_string());
    }

    /// Everything queued for `group` (hex) was pushed.
    pub fn published(&mut self, group: &str) {
        self.chain.chain_to.retain(|g| g != group);
        self.chain
            .outbox
            .retain(|item| item.split_once(':').is_none_or(|(g, _)| g != group));
    }
}

/// A device's name in the roster: `given`, else the host name (when it is a
/// valid device name), else `device-` and the first 8 hex digits of its id.
pub fn default_device_name(given: Option<String>, me: &DeviceId) -> String {
    given
        .or_else(|| {
            crate::util::host_name()
                .filter(|n| crate::crypto::envelope::validate_device_name(n).is_ok())
        })
        .unwrap_or_else(|| format!("device-{}", &short(me)[..8]))
}

/// Blob bodies holding `entries`, whole entries only.
fn bodies(entries: &[&SignedEntry]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut body = Vec::new();
    for e in entries {
        let bytes = e.encode();
        if !body.is_empty() && body.len() + bytes.len() > ENTRIES_PER_BLOB_BYTES {
            out.push(std::mem::take(&mut body));
        }
        body.extend_from_slice(&bytes);
    }
    if !body.is_empty() {
        out.push(body);
    }
    const { assert!(MAX_SIGNED_LEN < ENTRIES_PER_BLOB_BYTES) };
    out
}
