//! An in-memory [`Storage`]: the obviously-correct reference model the
//! SQLite backend is checked against (property tests drive both with the
//! same operations and compare every answer), and a backend for tests and
//! embedding where durability does not matter. Nothing survives a restart.

use crate::quota::{Adding, Budget, GroupUse, OwnerUse, check_push};
use crate::{
    CloseOutcome, CounterAudit, Deleted, GroupClosure, LiveGroups, NewGroup, NewToken,
    OpenedSession, Owner, Pruned, PullPage, PushOutcome, PushRequest, Quotas, Storage,
    StorageError, StorageStats, TokenHash, TokenInfo,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use sync_protocol::{BlobId, DeviceId, GroupId, KeepList, PulledBlob, PushResult};

#[derive(Clone, PartialEq)]
struct Stored {
    blob_id: BlobId,
    sender: DeviceId,
    payload: Vec<u8>,
    created_at: i64,
    expires_at: i64,
}

#[derive(Clone, Default, PartialEq)]
struct Device {
    acked: u64,
    last_seen: i64,
}

#[derive(Clone, Default, PartialEq)]
struct Group {
    head: u64,
    blobs: BTreeMap<u64, Stored>,
    devices: BTreeMap<DeviceId, Device>,
    owner: Option<Owner>,
    /// Last open session or push that stored something, Unix ms.
    last_active: i64,
    /// Its close, once closed (never removed).
    closure: Option<GroupClosure>,
}

#[derive(Clone, PartialEq)]
struct Token {
    label: Option<String>,
    created_at: i64,
    max_groups: u64,
    max_storage: u64,
    revoked_at: Option<i64>,
}

/// An owner's new-group window: (start, groups created in it).
type Window = (i64, u64);

impl Group {
    /// A group created at `now_ms` for `owner`, starting at the head floor.
    fn new(floor: u64, now_ms: i64, owner: Option<Owner>) -> Group {
        Group {
            head: floor,
            last_active: now_ms,
            owner,
            ..Group::default()
        }
    }

    fn bytes(&self) -> u64 {
        self.blobs.values().map(|b| b.payload.len() as u64).sum()
    }

    fn cursor_of(&self, id: &BlobId) -> Option<u64> {
        self.blobs
            .iter()
            .find(|(_, b)| b.blob_id == *id)
            .map(|(c, _)| *c)
    }

    fn touch(&mut self, device: DeviceId, now_ms: i64) {
        self.devices.entry(device).or_default().last_seen = now_ms;
    }
}

#[derive(Default)]
struct Model {
    groups: BTreeMap<GroupId, Group>,
    tokens: BTreeMap<TokenHash, Token>,
    /// Owner rows: an owner gets one with its first group (an address's
    /// holds its new-group window; a token's is (0, 0)) and loses it when
    /// pruned with no group left and its window ended.
    owners: BTreeMap<Owner, Window>,
    /// Highest head pruned; new groups start here.
    head_floor: u64,
    closed: bool,
}

impl Model {
    fn total_bytes(&self) -> u64 {
        self.groups.values().map(Group::bytes).sum()
    }

    /// Groups and payload bytes of `owner`, counted from the groups.
    fn owned(&self, owner: Owner) -> (u64, u64) {
        self.groups
            .values()
            .filter(|g| g.owner == Some(owner))
            .fold((0, 0), |(n, b), g| (n + 1, b + g.bytes()))
    }

    fn token_info(&self, hash: &TokenHash, t: &Token) -> TokenInfo {
        let (groups, bytes_used) = self.owned(Owner::Token(*hash));
        TokenInfo {
            id: hash.public_id(),
            label: t.label.clone(),
            created_at_ms: t.created_at,
            max_groups: t.max_groups,
            max_storage: t.max_storage,
            revoked_at_ms: t.revoked_at,
            groups,
            bytes_used,
        }
    }

    fn token_by_id(&self, id: &str) -> Option<TokenHash> {
        self.tokens.keys().find(|h| h.public_id() == id).copied()
    }

    /// Decide whether `new_group` may create a group now (and record the
    /// address window if so).
    fn admit(
        &mut self,
        new_group: NewGroup,
        now_ms: i64,
        quotas: &Quotas,
    ) -> Result<Option<Owner>, StorageError> {
        match new_group {
            NewGroup::Refuse => Err(StorageError::AccessTokenRequired),
            NewGroup::Unowned => Ok(None),
            NewGroup::Token(hash) => {
                let t = self
                    .tokens
                    .get(&hash)
                    .filter(|t| t.revoked_at.is_none())
                    .ok_or(StorageError::AccessTokenInvalid)?;
                let (count, _) = self.owned(Owner::Token(hash));
                if count >= t.max_groups {
                    return Err(StorageError::TokenGroupLimit {
                        count,
                        limit: t.max_groups,
                    });
                }
                self.owners.entry(Owner::Token(hash)).or_insert((0, 0));
                Ok(Some(Owner::Token(hash)))
            }
            NewGroup::Address(key) => {
                let owner = Owner::Address(key);
                let q = quotas.address;
                if self.owned(owner).0 == 0 {
                    let owning: std::collections::BTreeSet<Owner> = self
                        .groups
                        .values()
                        .filter_map(|g| g.owner)
                        .filter(|o| matches!(o, Owner::Address(_)))
                        .collect();
                    if owning.len() as u64 >= q.max_addresses {
                        return Err(StorageError::AddressesFull {
                            limit: q.max_addresses,
                        });
                    }
                }
                let (mut start, mut n) = self.owners.get(&owner).copied().unwrap_or((0, 0));
                if n == 0 || now_ms.saturating_sub(start) >= q.window_ms {
                    (start, n) = (now_ms, 0);
                }
                if n >= q.new_groups_per_window {
                    return Err(StorageError::AddressGroupRate {
                        count: n,
                        limit: q.new_groups_per_window,
                        retry_after_ms: (start.saturating_add(q.window_ms) - now_ms).max(1) as u64,
                    });
                }
                self.owners.insert(owner, (start, n + 1));
                Ok(Some(owner))
            }
        }
    }

    fn head(&self, group: &GroupId) -> u64 {
        self.groups
            .get(group)
            .map(|g| g.head)
            .unwrap_or(self.head_floor)
    }
}

/// The in-memory backend. See the module docs.
pub struct MemoryStorage {
    quotas: Quotas,
    model: Mutex<Model>,
}

impl MemoryStorage {
    /// An empty store enforcing `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        MemoryStorage {
            quotas,
            model: Mutex::new(Model::default()),
        }
    }

    /// An open store holding a copy of this one's contents, also after
    /// [`Storage::close`] (what reopening a durable backend shows). The model
    /// check forks the reference model to reopen it and to try several
    /// orders of concurrent writes.
    pub fn fork(&self) -> MemoryStorage {
        let m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        MemoryStorage {
            quotas: self.quotas,
            model: Mutex::new(Model {
                groups: m.groups.clone(),
                tokens: m.tokens.clone(),
                owners: m.owners.clone(),
                head_floor: m.head_floor,
                closed: false,
            }),
        }
    }

    /// Whether two stores hold the same groups, blobs, devices, tokens,
    /// owner rows and head floor.
    pub fn same_contents(&self, other: &MemoryStorage) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        let a = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let b = other.model.lock().unwrap_or_else(|p| p.into_inner());
        self.quotas == other.quotas
            && a.groups == b.groups
            && a.tokens == b.tokens
            && a.owners == b.owners
            && a.head_floor == b.head_floor
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Model) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut m = self.model.lock().unwrap_or_else(|p| p.into_inner());
        if m.closed {
            return Err(StorageError::Closed);
        }
        f(&mut m)
    }
}

/// Delete blobs chosen by `pick` (at most `limit`), oldest first.
fn delete_where(
    m: &mut Model,
    limit: u32,
    mut pick: impl FnMut(&GroupId, &Group, u64, &Stored) -> bool,
) -> Deleted {
    let mut victims: Vec<(i64, GroupId, u64)> = Vec::new();
    for (gid, g) in &m.groups {
        for (cursor, b) in &g.blobs {
            if pick(gid, g, *cursor, b) {
                victims.push((b.expires_at, *gid, *cursor));
            }
        }
    }
    victims.sort();
    victims.truncate(limit as usize);
    let mut d = Deleted::default();
    for (_, gid, cursor) in victims {
        if let Some(b) = m.groups.get_mut(&gid).and_then(|g| g.blobs.remove(&cursor)) {
            d.blobs += 1;
            d.bytes += b.payload.len() as u64;
        }
    }
    d
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn open_session(
        &self,
        group: GroupId,
        device: DeviceId,
        now_ms: i64,
        new_group: NewGroup,
    ) -> Result<OpenedSession, StorageError> {
        let quotas = self.quotas;
        self.with(|m| {
            if !m.groups.contains_key(&group) {
                let owner = m.admit(new_group, now_ms, &quotas)?;
                let floor = m.head_floor;
                m.groups.insert(group, Group::new(floor, now_ms, owner));
            }
            let g = m.groups.get_mut(&group).expect("present or created above");
            if g.closure
                .as_ref()
                .is_some_and(|c| !c.admits(&device, now_ms))
            {
                return Err(StorageError::GroupClosed);
            }
            g.last_active = now_ms;
            g.touch(device, now_ms);
            Ok(OpenedSession {
                head: g.head,
                owner: g.owner,
            })
        })
    }

    async fn create_token(&self, token: NewToken) -> Result<TokenInfo, StorageError> {
        self.with(|m| {
            let id = token.hash.public_id();
            if m.token_by_id(&id).is_some() {
                return Err(StorageError::TokenIdTaken(id));
            }
            let t = Token {
                label: token.label,
                created_at: token.created_at_ms,
                max_groups: token.max_groups,
                max_storage: token.max_storage,
                revoked_at: None,
            };
            let info = m.token_info(&token.hash, &t);
            m.tokens.insert(token.hash, t);
            Ok(info)
        })
    }

    async fn revoke_token(&self, id: &str, now_ms: i64) -> Result<TokenInfo, StorageError> {
        self.with(|m| {
            let hash = m
                .token_by_id(id)
                .ok_or_else(|| StorageError::TokenNotFound(id.to_string()))?;
            let t = m.tokens.get_mut(&hash).expect("found above");
            t.revoked_at.get_or_insert(now_ms);
            let t = t.clone();
            Ok(m.token_info(&hash, &t))
        })
    }

    async fn tokens(&self) -> Result<Vec<TokenInfo>, StorageError> {
        self.with(|m| {
            let mut all: Vec<TokenInfo> =
                m.tokens.iter().map(|(h, t)| m.token_info(h, t)).collect();
            all.sort_by(|a, b| (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id)));
            Ok(all)
        })
    }

    async fn push(&self, req: PushRequest) -> Result<PushOutcome, StorageError> {
        let quotas = self.quotas;
        self.with(|m| {
            let total = m.total_bytes();
            // Only `open_session` creates groups.
            let mut g = m
                .groups
                .get(&req.group)
                .cloned()
                .ok_or(StorageError::UnknownGroup)?;
            // New items: the first occurrence of an id not yet stored.
            let mut new_ids = Vec::new();
            let mut seen = HashSet::new();
            for item in &req.items {
                if g.cursor_of(&item.blob_id).is_none() && seen.insert(item.blob_id) {
                    new_ids.push(item.blob_id);
                }
            }
            let mut counted = HashSet::new();
            let adding: u64 = req
                .items
                .iter()
                .filter(|i| new_ids.contains(&i.blob_id) && counted.insert(i.blob_id))
                .map(|i| i.payload.len() as u64)
                .sum();
            let n = new_ids.len() as u64;
            // A closed group takes new blobs only from the devices its close
            // keeps, until its grace ends (a retry of stored ones is still
            // answered with their cursors); theirs expire with the rest.
            let expiry_cap = match &g.closure {
                Some(c) if n > 0 && !c.admits(&req.sender, req.now_ms) => {
                    return Err(StorageError::GroupClosed);
                }
                Some(c) => c.grace_until_ms,
                None => i64::MAX,
            };
            let owner_use = g.owner.map(|o| {
                let (_, used) = m.owned(o);
                let (limit, revoked) = match o {
                    Owner::Token(h) => match m.tokens.get(&h) {
                        Some(t) => (t.max_storage, t.revoked_at.is_some()),
                        None => (0, true),
                    },
                    Owner::Address(_) => (quotas.address.max_storage, false),
                };
                OwnerUse {
                    kind: o.kind(),
                    budget: Budget { used, limit },
                    revoked,
                }
            });
            let group_use = GroupUse {
                bytes: g.bytes(),
                blobs: g.blobs.len() as u64,
            };
            let relay = Budget {
                used: total,
                limit: quotas.max_storage,
            };
            let add = Adding {
                bytes: adding,
                blobs: n,
            };
            check_push(&quotas, group_use, owner_use, relay, add)?;
            let mut assigned: HashMap<BlobId, u64> = HashMap::new();
            let mut results = Vec::new();
            for item in &req.items {
                if let Some(c) = g.cursor_of(&item.blob_id) {
                    results.push(PushResult {
                        blob_id: item.blob_id,
                        cursor: c,
                        duplicate: true,
                    });
                } else if let Some(&c) = assigned.get(&item.blob_id) {
                    results.push(PushResult {
                        blob_id: item.blob_id,
                        cursor: c,
                        duplicate: true,
                    });
                } else {
                    g.head += 1;
                    assigned.insert(item.blob_id, g.head);
                    results.push(PushResult {
                        blob_id: item.blob_id,
                        cursor: g.head,
                        duplicate: false,
                    });
                }
            }
            for item in &req.items {
                if let Some(&c) = assigned.get(&item.blob_id) {
                    g.blobs.entry(c).or_insert_with(|| Stored {
                        blob_id: item.blob_id,
                        sender: req.sender,
                        payload: item.payload.clone(),
                        created_at: req.now_ms,
                        expires_at: item.expires_at_ms.min(expiry_cap),
                    });
                }
            }
            let head = g.head;
            if n > 0 {
                g.last_active = req.now_ms;
            }
            m.groups.insert(req.group, g);
            Ok(PushOutcome { results, head })
        })
    }

    async fn head(&self, group: GroupId) -> Result<u64, StorageError> {
        self.with(|m| Ok(m.head(&group)))
    }

    async fn pull_page(
        &self,
        group: GroupId,
        after: u64,
        max_blobs: u32,
        max_bytes: usize,
        now_ms: i64,
    ) -> Result<PullPage, StorageError> {
        self.with(|m| {
            let max_blobs = max_blobs.max(1) as usize;
            let mut page = PullPage {
                blobs: Vec::new(),
                complete: true,
            };
            let Some(g) = m.groups.get(&group) else {
                return Ok(page);
            };
            let mut bytes = 0;
            for (cursor, b) in g
                .blobs
                .range(after + 1..)
                .filter(|(_, b)| b.expires_at > now_ms)
            {
                if page.blobs.len() == max_blobs
                    || (!page.blobs.is_empty() && bytes + b.payload.len() > max_bytes)
                {
                    page.complete = false;
                    break;
                }
                bytes += b.payload.len();
                page.blobs.push(PulledBlob {
                    cursor: *cursor,
                    blob_id: b.blob_id,
                    sender: b.sender,
                    created_at: b.created_at as u64,
                    payload: b.payload.clone(),
                });
            }
            Ok(page)
        })
    }

    async fn ack(
        &self,
        group: GroupId,
        device: DeviceId,
        cursor: u64,
        now_ms: i64,
    ) -> Result<u64, StorageError> {
        self.with(|m| {
            // Only `open_session` creates groups.
            let g = m.groups.get_mut(&group).ok_or(StorageError::UnknownGroup)?;
            if cursor > g.head {
                return Err(StorageError::CursorBeyondHead {
                    cursor,
                    head: g.head,
                });
            }
            let d = g.devices.entry(device).or_default();
            d.last_seen = now_ms;
            d.acked = d.acked.max(cursor);
            Ok(d.acked)
        })
    }

    async fn close_group(
        &self,
        group: GroupId,
        keep: KeepList,
        now_ms: i64,
        grace_ms: i64,
    ) -> Result<CloseOutcome, StorageError> {
        self.with(|m| {
            let g = m.groups.get_mut(&group).ok_or(StorageError::UnknownGroup)?;
            if let Some(closure) = &g.closure {
                return Ok(CloseOutcome {
                    closure: closure.clone(),
                    applied: false,
                });
            }
            let closure = GroupClosure {
                closed_at_ms: now_ms,
                grace_until_ms: now_ms.saturating_add(grace_ms),
                keep,
            };
            for b in g.blobs.values_mut() {
                b.expires_at = b.expires_at.min(closure.grace_until_ms);
            }
            g.closure = Some(closure.clone());
            Ok(CloseOutcome {
                closure,
                applied: true,
            })
        })
    }

    async fn closure(&self, group: GroupId) -> Result<Option<GroupClosure>, StorageError> {
        self.with(|m| Ok(m.groups.get(&group).and_then(|g| g.closure.clone())))
    }

    async fn stats(&self) -> Result<StorageStats, StorageError> {
        self.with(|m| {
            Ok(StorageStats {
                groups: m.groups.len() as u64,
                devices: m.groups.values().map(|g| g.devices.len() as u64).sum(),
                owners: m.owners.len() as u64,
                blobs: m.groups.values().map(|g| g.blobs.len() as u64).sum(),
                bytes: m.total_bytes(),
            })
        })
    }

    async fn delete_expired(&self, now_ms: i64, limit: u32) -> Result<Deleted, StorageError> {
        self.with(|m| Ok(delete_where(m, limit, |_, _, _, b| b.expires_at <= now_ms)))
    }

    async fn delete_acked(&self, seen_since_ms: i64, limit: u32) -> Result<Deleted, StorageError> {
        self.with(|m| {
            let floors: HashMap<GroupId, u64> = m
                .groups
                .iter()
                .filter_map(|(gid, g)| {
                    g.devices
                        .values()
                        .filter(|d| d.last_seen >= seen_since_ms)
                        .map(|d| d.acked)
                        .min()
                        .map(|f| (*gid, f))
                })
                .collect();
            Ok(delete_where(m, limit, |gid, _, cursor, _| {
                floors.get(gid).is_some_and(|f| cursor <= *f)
            }))
        })
    }

    async fn prune_idle(
        &self,
        idle_before_ms: i64,
        limit: u32,
        live: LiveGroups,
    ) -> Result<Pruned, StorageError> {
        let window_ms = self.quotas.address.window_ms;
        self.with(|m| {
            let live_devices: HashSet<(GroupId, DeviceId)> = live().into_iter().collect();
            let live: HashSet<GroupId> = live_devices.iter().map(|(g, _)| *g).collect();
            let mut pruned = Pruned::default();
            let mut idle: Vec<(i64, GroupId, DeviceId)> = m
                .groups
                .iter()
                .flat_map(|(gid, g)| {
                    g.devices
                        .iter()
                        .filter(|(did, d)| {
                            d.last_seen < idle_before_ms && !live_devices.contains(&(*gid, **did))
                        })
                        .map(|(did, d)| (d.last_seen, *gid, *did))
                })
                .collect();
            idle.sort();
            idle.truncate(limit as usize);
            for (_, gid, did) in idle {
                if let Some(g) = m.groups.get_mut(&gid) {
                    g.devices.remove(&did);
                    pruned.devices += 1;
                }
            }
            let mut empty: Vec<(i64, GroupId)> = m
                .groups
                .iter()
                .filter(|(gid, g)| {
                    !live.contains(gid)
                        && g.closure.is_none()
                        && g.blobs.is_empty()
                        && g.devices.is_empty()
                        && g.last_active < idle_before_ms
                })
                .map(|(gid, g)| (g.last_active, *gid))
                .collect();
            empty.sort();
            empty.truncate(limit as usize);
            for (_, gid) in empty {
                if let Some(g) = m.groups.remove(&gid) {
                    m.head_floor = m.head_floor.max(g.head);
                    pruned.groups += 1;
                }
            }
            // Owner rows with no group left whose window ended (a token's
            // has none), by window start, then owner bytes.
            let owning: HashSet<Owner> = m.groups.values().filter_map(|g| g.owner).collect();
            let mut idle_owners: Vec<(i64, Vec<u8>, Owner)> = m
                .owners
                .iter()
                .filter(|(o, (start, _))| {
                    !owning.contains(o)
                        && (matches!(o, Owner::Token(_))
                            || start.saturating_add(window_ms) <= idle_before_ms)
                })
                .map(|(o, (start, _))| (*start, o.bytes().to_vec(), *o))
                .collect();
            idle_owners.sort();
            idle_owners.truncate(limit as usize);
            for (_, _, o) in idle_owners {
                m.owners.remove(&o);
                pruned.owners += 1;
            }
            Ok(pruned)
        })
    }

    async fn maintenance(&self) -> Result<(), StorageError> {
        self.with(|_| Ok(()))
    }

    async fn audit(&self) -> Result<CounterAudit, StorageError> {
        self.with(|m| {
            let bytes = m.total_bytes();
            let blobs = m.groups.values().map(|g| g.blobs.len() as u64).sum();
            Ok(CounterAudit {
                counted_bytes: bytes,
                actual_bytes: bytes,
                counted_blobs: blobs,
                actual_blobs: blobs,
                mismatched_groups: 0,
                mismatched_owners: 0,
            })
        })
    }

    async fn close(&self) {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    /// No pool: zeros.
    fn pool_stats(&self) -> crate::PoolStats {
        crate::PoolStats::default()
    }
}
