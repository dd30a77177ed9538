//! An in-memory [`Storage`]: the obviously-correct reference model the
//! SQLite backend is checked against (property tests drive both with the
//! same operations and compare every answer), and a backend for tests and
//! embedding where durability does not matter. Nothing survives a restart.

use super::{
    CounterAudit, Deleted, LiveGroups, Pruned, PullPage, PushOutcome, PushRequest, Quotas, Storage,
    StorageError, StorageStats,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use sync_protocol::{BlobId, DeviceId, GroupId, PulledBlob, PushResult};

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
    /// Last open session or push that stored something, Unix ms.
    last_active: i64,
}

impl Group {
    /// A group created at `now_ms`, starting at the head floor.
    fn new(floor: u64, now_ms: i64) -> Group {
        Group {
            head: floor,
            last_active: now_ms,
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
    /// Highest head pruned; new groups start here.
    head_floor: u64,
    closed: bool,
}

impl Model {
    fn total_bytes(&self) -> u64 {
        self.groups.values().map(Group::bytes).sum()
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
                head_floor: m.head_floor,
                closed: false,
            }),
        }
    }

    /// Whether two stores hold the same groups, blobs, devices and head
    /// floor.
    pub fn same_contents(&self, other: &MemoryStorage) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        let a = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let b = other.model.lock().unwrap_or_else(|p| p.into_inner());
        self.quotas == other.quotas && a.groups == b.groups && a.head_floor == b.head_floor
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
    ) -> Result<u64, StorageError> {
        self.with(|m| {
            let floor = m.head_floor;
            let g = m
                .groups
                .entry(group)
                .or_insert_with(|| Group::new(floor, now_ms));
            g.last_active = now_ms;
            g.touch(device, now_ms);
            Ok(g.head)
        })
    }

    async fn push(&self, req: PushRequest) -> Result<PushOutcome, StorageError> {
        let quotas = self.quotas;
        self.with(|m| {
            let total = m.total_bytes();
            let existed = m.groups.contains_key(&req.group);
            let mut g = m
                .groups
                .get(&req.group)
                .cloned()
                .unwrap_or_else(|| Group::new(m.head_floor, req.now_ms));
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
            if n > 0 {
                let used = g.bytes();
                if used + adding > quotas.max_group_storage {
                    return Err(StorageError::GroupQuotaExceeded {
                        used,
                        adding,
                        limit: quotas.max_group_storage,
                    });
                }
                let count = g.blobs.len() as u64;
                if count + n > quotas.max_group_blobs {
                    return Err(StorageError::GroupBlobsExceeded {
                        count,
                        adding: n,
                        limit: quotas.max_group_blobs,
                    });
                }
                if total + adding > quotas.max_storage {
                    return Err(StorageError::RelayStorageFull {
                        used: total,
                        adding,
                        limit: quotas.max_storage,
                    });
                }
            }
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
                        expires_at: item.expires_at_ms,
                    });
                }
            }
            let head = g.head;
            if n > 0 {
                g.last_active = req.now_ms;
            }
            // Only a push that stores something creates its group.
            if existed || n > 0 {
                m.groups.insert(req.group, g);
            }
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
            let head = m.head(&group);
            if cursor > head {
                return Err(StorageError::CursorBeyondHead { cursor, head });
            }
            let floor = m.head_floor;
            let g = m
                .groups
                .entry(group)
                .or_insert_with(|| Group::new(floor, now_ms));
            let d = g.devices.entry(device).or_default();
            d.last_seen = now_ms;
            d.acked = d.acked.max(cursor);
            Ok(d.acked)
        })
    }

    async fn stats(&self) -> Result<StorageStats, StorageError> {
        self.with(|m| {
            Ok(StorageStats {
                groups: m.groups.len() as u64,
                devices: m.groups.values().map(|g| g.devices.len() as u64).sum(),
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
        self.with(|m| {
            let live: HashSet<GroupId> = live().into_iter().collect();
            let mut pruned = Pruned::default();
            let mut idle: Vec<(i64, GroupId, DeviceId)> = m
                .groups
                .iter()
                .filter(|(gid, _)| !live.contains(gid))
                .flat_map(|(gid, g)| {
                    g.devices
                        .iter()
                        .filter(|(_, d)| d.last_seen < idle_before_ms)
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
            })
        })
    }

    async fn close(&self) {
        self.model.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
    }
}
