//! One folder and the steps of a sync run over it (see the crate doc).

use crate::apply::{Applier, Outcome};
use crate::catchup::{self, Decision, PullSigns};
use crate::entry::{Entry, Hash};
use crate::fold::{FoldNote, Tree, apply_record};
use crate::inbox::{Inbox, InboxItem};
use crate::index::{ConflictRow, Index, OutboxRow, TreeTable};
use crate::plan::{Action, local_ops, reconcile};
use crate::record::{self, MAGIC, OPS_PER_RECORD, Op, Record};
use crate::scan::{Scan, scan};
use crate::{IGNORE_FILE, STAGING_DIR};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use sync_client::{PushOptions, StateStore, SyncClient};
use sync_protocol::{BlobId, PushItem};

/// Errors of a folder sync run.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The index database failed.
    #[error("folder index: {0}")]
    Index(#[from] sqlx::Error),
    /// A local file or directory could not be read or written.
    #[error("{0}")]
    Io(String),
    /// The client library failed (relay, network, local state).
    #[error(transparent)]
    Client(#[from] sync_client::ClientError),
    /// This home syncs another folder.
    #[error("this device's home syncs {0}; a home syncs one folder (use another --home for {1})")]
    OtherFolder(String, String),
}

type Result<T> = std::result::Result<T, FolderError>;

fn io(what: impl std::fmt::Display) -> impl Fn(std::io::Error) -> FolderError {
    move |e| FolderError::Io(format!("{what}: {e}"))
}

/// What a run did (`sync --json`).
#[derive(Debug, Default, Clone, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// Records of other devices folded.
    pub records_received: u64,
    /// Records refused (malformed, over a limit, unknown version).
    pub records_refused: Vec<String>,
    /// Paths written, removed or created here from the group's changes.
    pub applied: Vec<String>,
    /// Local files moved aside as conflict copies (kept; pushed).
    pub moved_aside: Vec<String>,
    /// Conflict copies the fold made of concurrent changes (path, copy).
    pub conflicts: Vec<(String, String)>,
    /// Operations the fold dropped, with why.
    pub dropped: Vec<(String, String)>,
    /// Paths left pending, with why.
    pub pending: Vec<(String, String)>,
    /// Paths not synced (symbolic links, special files, bad names,
    /// changing while read), with why.
    pub skipped: Vec<(String, String)>,
    /// Contents uploaded (relative paths).
    pub uploaded: Vec<String>,
    /// Bytes of content uploaded.
    pub uploaded_bytes: u64,
    /// Blobs the content uploads took.
    pub uploaded_blobs: u64,
    /// Operations pushed.
    pub ops_sent: u64,
    /// Records pushed.
    pub records_sent: u64,
    /// Files hashed by the scans (others came from the cache).
    pub hashed: u64,
    /// A problem with `.0k-syncignore`.
    pub ignore_warning: Option<String>,
    /// The device whose manifest this run's fold started from (a gap
    /// its records could not fill, or a fresh device), and the cursor
    /// the manifest covers.
    pub manifest_from: Option<(String, u64)>,
    /// A gap needs a manifest and none was found in this pull.
    pub manifest_needed: bool,
    /// Contents (hex BLAKE3) the synced state names that are neither
    /// received nor on this disk (expired at the relay before this
    /// device pulled them): asked for.
    pub missing: Vec<String>,
    /// This run asked the group for a manifest.
    pub manifest_requested: bool,
    /// Contents this run asked the group for.
    pub requested: u64,
    /// Contents pushed again because another device asked (paths).
    pub repushed: Vec<String>,
    /// Contents other devices asked for (hashes) in this run's records.
    pub wanted: u64,
    /// Manifest parts pushed.
    pub manifest_parts_sent: u64,
}

/// What `status DIR` shows.
#[derive(Debug, Default, Clone, Serialize, schemars::JsonSchema)]
pub struct Status {
    /// The folder.
    pub root: String,
    /// Local changes not pushed yet (paths).
    pub pending_up: Vec<String>,
    /// Changes of the group not on disk yet (paths).
    pub pending_down: Vec<String>,
    /// Own records pushed but not yet folded (or not yet stored).
    pub outbox: u64,
    /// Conflict copies in the folder.
    pub conflicts: Vec<ConflictRow>,
    /// Paths not synced, with why.
    pub skipped: Vec<(String, String)>,
    /// The last run saw blobs of the group gone for good (a gap its
    /// records cannot fill, or a fresh device) and found no manifest to
    /// start from: it waits for one another device pushes (asked for).
    pub manifest_needed: bool,
    /// Contents other devices asked for, to be pushed again by the next
    /// run (those held here).
    pub wanted: u64,
}

/// A synced folder: its root, index and inbox.
#[derive(Debug)]
pub struct Folder {
    root: PathBuf,
    index: Index,
    inbox: Inbox,
    device: String,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Folder {
    /// Open the folder `root` for the device whose home is `home_dir`
    /// (index in `<home>/folder/`). `device` names this device's conflict
    /// copies. Errors: [`FolderError::OtherFolder`] when the home syncs
    /// another directory.
    pub async fn open(home_dir: &Path, root: &Path, device: &str) -> Result<Folder> {
        std::fs::create_dir_all(root).map_err(io(root.display()))?;
        let root = std::fs::canonicalize(root).map_err(io(root.display()))?;
        let dir = home_dir.join("folder");
        sync_client::util::ensure_private_dir(&dir)?;
        std::fs::create_dir_all(root.join(STAGING_DIR).join("in"))
            .map_err(io(root.join(STAGING_DIR).display()))?;
        let index = Index::open(&dir.join("index.db")).await?;
        let shown = root.to_string_lossy().to_string();
        match index.meta("root").await? {
            Some(r) if r != shown => return Err(FolderError::OtherFolder(r, shown)),
            Some(_) => {}
            None => {
                let mut tx = index.begin().await?;
                Index::set_meta(&mut tx, "root", &shown).await?;
                tx.commit().await?;
            }
        }
        let device = if sync_client::crypto::envelope::validate_device_name(device).is_ok() {
            device.to_string()
        } else {
            "device".to_string()
        };
        Ok(Folder {
            root,
            index,
            inbox: Inbox::at(&dir.join("inbox.bin")),
            device,
        })
    }

    /// The folder's root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The index.
    pub(crate) fn index(&self) -> &Index {
        &self.index
    }

    /// This device's name (names its conflict copies).
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Where the pull puts received transfers (inside the folder, on its
    /// file system, never synced).
    pub fn incoming_dir(&self) -> PathBuf {
        self.root.join(STAGING_DIR).join("in")
    }

    /// Keep a message received by the pull if it is a folder record
    /// (durably, before the pull records its cursor).
    pub fn receive(&self, cursor: u64, sender: &str, seq: u64, body: &[u8]) -> Result<()> {
        let record = body.len() >= MAGIC.len() && body[..6] == MAGIC[..6];
        if !record && !crate::manifest::is_catchup(body) {
            return Ok(());
        }
        self.inbox
            .append(&InboxItem {
                cursor,
                sender: sender.to_string(),
                seq,
                body: body.to_vec(),
            })
            .map_err(io("folder inbox"))
    }

    /// Close the index.
    pub async fn close(&self) {
        self.index.close().await;
    }

    /// Fold the received records, and this device's own records stored at
    /// cursors up to `cursor` (what the pull has passed), into the synced
    /// state, in cursor order (a pull that showed no sign of a gap; see
    /// [`Folder::fold_after_pull`]).
    pub async fn fold(&self, cursor: u64, report: &mut Report) -> Result<()> {
        self.fold_after_pull(cursor, &PullSigns::default(), report)
            .await
    }

    /// [`Folder::fold`], told what the pull showed about blobs gone for
    /// good (`signs`): a device with a gap its records cannot fill, or a
    /// fresh one, starts from the newest usable manifest received and
    /// folds only the records after it ([`crate::catchup`]). Requests of
    /// other devices are kept to be answered at the push.
    pub async fn fold_after_pull(
        &self,
        cursor: u64,
        signs: &PullSigns,
        report: &mut Report,
    ) -> Result<()> {
        let (catchups, items): (Vec<InboxItem>, Vec<InboxItem>) = self
            .inbox
            .read()
            .map_err(io("folder inbox"))?
            .into_iter()
            .partition(|i| crate::manifest::is_catchup(&i.body));
        let mut parts = Vec::new();
        let mut requests = Vec::new();
        for i in &catchups {
            match crate::manifest::decode(&i.body) {
                Ok(crate::manifest::Catchup::Manifest(p)) => {
                    parts.push((i.cursor, i.sender.clone(), p))
                }
                Ok(crate::manifest::Catchup::Request(r)) => requests.push((i, r)),
                Err(e) => report.records_refused.push(e.to_string()),
            }
        }
        let known = self.known().await?;
        let decision = catchup::decide(&known, cursor, signs, &parts);
        drop(parts);
        report.manifest_needed = decision == Decision::NeedManifest;
        let own: Vec<OutboxRow> = self
            .index
            .outbox()
            .await?
            .into_iter()
            .filter(|r| r.cursor.is_some_and(|c| c <= cursor))
            .collect();
        // (cursor, remote item or own row)
        let mut all: Vec<(u64, std::result::Result<InboxItem, OutboxRow>)> = items
            .into_iter()
            .map(|i| (i.cursor, Ok(i)))
            .chain(own.into_iter().map(|r| (r.cursor.unwrap_or(0), Err(r))))
            .collect();
        all.sort_by_key(|(c, _)| *c);
        let before = self.index.tree(TreeTable::Synced).await?;
        let (mut tree, covered) = match &decision {
            Decision::Rebase(base) => {
                report.manifest_from = Some((base.device.clone(), base.upto));
                (base.tree.clone(), base.upto)
            }
            _ => (before.clone(), 0),
        };
        let mut notes = Vec::new();
        let mut tx = self.index.begin().await?;
        for (i, r) in &requests {
            if Index::was_folded(&mut tx, &i.sender, i.seq).await? {
                continue;
            }
            Index::mark_folded(&mut tx, &i.sender, i.seq).await?;
            if r.manifest {
                Index::set_meta(&mut tx, catchup::MANIFEST_ASKED, "1").await?;
            }
            report.wanted += r.hashes.len() as u64;
            let dropped = Index::add_wanted(&mut tx, &r.hashes, catchup::MAX_WANTED).await?;
            if dropped > 0 {
                report.dropped.push((
                    format!("{dropped} contents asked for by {}", r.device),
                    format!("{} are waiting already", catchup::MAX_WANTED),
                ));
            }
        }
        self.note_decision(&mut tx, &decision, cursor, signs)
            .await?;
        for (c, item) in &all {
            if *c <= covered {
                // In the manifest this fold started from.
                match item {
                    Ok(i) => Index::mark_folded(&mut tx, &i.sender, i.seq).await?,
                    Err(r) => Index::remove_outbox(&mut tx, r.id).await?,
                }
                continue;
            }
            let body = match item {
                Ok(i) => {
                    if Index::was_folded(&mut tx, &i.sender, i.seq).await? {
                        continue;
                    }
                    Index::mark_folded(&mut tx, &i.sender, i.seq).await?;
                    report.records_received += 1;
                    &i.body
                }
                Err(r) => {
                    Index::remove_outbox(&mut tx, r.id).await?;
                    &r.record
                }
            };
            match record::decode(body) {
                Ok(rec) => apply_record(&mut tree, &rec, &mut notes),
                Err(e) => report.records_refused.push(e.to_string()),
            }
        }
        for (path, entry) in &tree {
            if before.get(path) != Some(entry) {
                Index::set_entry(&mut tx, TreeTable::Synced, path, Some(entry)).await?;
            }
        }
        for path in before.keys() {
            if !tree.contains_key(path) {
                Index::set_entry(&mut tx, TreeTable::Synced, path, None).await?;
            }
        }
        tx.commit().await?;
        self.inbox.clear().map_err(io("folder inbox"))?;
        for n in notes {
            match n {
                FoldNote::Conflict { path, copy, device } => {
                    self.index
                        .add_conflict(&ConflictRow {
                            copy: copy.clone(),
                            path: path.clone(),
                            device,
                            at_ms: sync_client::util::now_ms(),
                        })
                        .await?;
                    report.conflicts.push((path, copy));
                }
                FoldNote::Dropped { path, reason } => report.dropped.push((path, reason)),
            }
        }
        Ok(())
    }

    /// Record in the index what the fold decided: the cursor folded up
    /// to; after a rebase the gaps it handled; else whether a manifest is
    /// still needed.
    async fn note_decision(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        decision: &Decision,
        cursor: u64,
        signs: &PullSigns,
    ) -> Result<()> {
        Index::set_meta(tx, catchup::FOLDED_UPTO, &cursor.to_string()).await?;
        match decision {
            Decision::Fold => {}
            Decision::Rebase(_) => {
                let gaps = catchup::encode_gaps(&signs.gaps);
                Index::set_meta(tx, catchup::GAPS_HANDLED, &gaps).await?;
                Index::set_meta(tx, catchup::HEAD_HANDLED, &signs.head.to_string()).await?;
                Index::set_meta(tx, catchup::NEED_MANIFEST, "0").await?;
                Index::set_meta(tx, catchup::MANIFEST_REQUESTED_AT, "").await?;
            }
            Decision::NeedManifest => {
                Index::set_meta(tx, catchup::NEED_MANIFEST, "1").await?;
            }
        }
        Ok(())
    }

    async fn scan(&self, report: &mut Report) -> Result<Scan> {
        let cache = self.index.scan_cache().await?;
        let root = self.root.clone();
        let (s, warning) = tokio::task::spawn_blocking(move || scan(&root, &cache, now_ns()))
            .await
            .map_err(|e| FolderError::Io(format!("scan: {e}")))?
            .map_err(io("scan"))?;
        report.hashed += s.hashed;
        report.ignore_warning = warning;
        Ok(s)
    }

    /// Bring the disk to the synced state, keeping every local change
    /// (see [`crate::plan::reconcile`]).
    pub async fn reconcile(&self, report: &mut Report) -> Result<()> {
        let base = self.index.tree(TreeTable::Base).await?;
        let synced = self.index.tree(TreeTable::Synced).await?;
        let s = self.scan(report).await?;
        let when = chrono::Local::now().format("%Y-%m-%d %H.%M").to_string();
        let actions = reconcile(&base, &synced, &s, &self.device, &when);
        let mut applier = Applier::new(&self.root, self.root.join(STAGING_DIR), &s);
        applier
            .index_incoming(&self.incoming_dir())
            .map_err(io("staging"))?;
        let missing = applier.gather(&actions);
        report.missing = missing.iter().map(hex::encode).collect();
        report.missing.sort();
        report.missing.dedup();
        // The index has one connection: nothing else may use it while the
        // transaction is open.
        let mut moved = Vec::new();
        let mut tx = self.index.begin().await?;
        for a in &actions {
            let path = match a {
                Action::MoveAside { path, .. }
                | Action::Write { path, .. }
                | Action::Chmod { path, .. }
                | Action::Remove { path, .. }
                | Action::Mkdir { path }
                | Action::Rmdir { path }
                | Action::Adopt { path, .. }
                | Action::Blocked { path, .. } => path.clone(),
            };
            match applier.apply(a) {
                Outcome::Done(entry) => {
                    if !matches!(a, Action::Adopt { .. }) {
                        report.applied.push(path.clone());
                    }
                    Index::set_entry(&mut tx, TreeTable::Base, &path, entry.as_ref()).await?;
                }
                Outcome::MovedAside(copy) => {
                    report.moved_aside.push(copy.clone());
                    moved.push(ConflictRow {
                        copy,
                        path: path.clone(),
                        device: self.device.clone(),
                        at_ms: sync_client::util::now_ms(),
                    });
                }
                Outcome::Pending(why) => report.pending.push((path, why)),
            }
        }
        tx.commit().await?;
        for c in &moved {
            self.index.add_conflict(c).await?;
        }
        applier.clean(&missing);
        self.index.replace_scan_cache(&s.cache).await?;
        Ok(())
    }

    /// Push this device's changes ([`Folder::push_changes`]), then catch
    /// up ([`Folder::catch_up`]: contents asked for, requests, manifest).
    pub async fn push(
        &self,
        client: &SyncClient,
        state: &mut StateStore,
        ttl_s: Option<u32>,
        report: &mut Report,
    ) -> Result<()> {
        let scan = self.push_changes(client, state, ttl_s, report).await?;
        self.catch_up(client, state, ttl_s, &scan, report).await
    }

    /// Push this device's changes: first any sealed record a crash left
    /// unconfirmed, then the content of new and changed files the group
    /// has no transfer of (chunked and resumable, named by BLAKE3), then
    /// the records. A file whose content changed between the scan and its
    /// upload is left for the next run. Returns the scan.
    pub async fn push_changes(
        &self,
        client: &SyncClient,
        state: &mut StateStore,
        ttl_s: Option<u32>,
        report: &mut Report,
    ) -> Result<Scan> {
        let unconfirmed: Vec<OutboxRow> = self
            .index
            .outbox()
            .await?
            .into_iter()
            .filter(|r| r.cursor.is_none())
            .collect();
        self.push_rows(client, &unconfirmed).await?;
        let base = self.index.tree(TreeTable::Base).await?;
        let s = self.scan(report).await?;
        report.skipped = s.skipped.clone();
        let (ops, new_base) = local_ops(&base, &s);
        // Contents sent in this run (a content is sent once per run; a
        // later run sends it again when a `Put` names it: receivers keep no
        // content they do not hold in a file, so one sent earlier may be
        // gone there and expired at the relay).
        let mut known: HashSet<Hash> = HashSet::new();
        let opts = PushOptions {
            ttl_s,
            // Sent because a `Put` names it: a push journal of the same
            // file from an earlier run must not make it a no-op.
            force: true,
            device_name: Some(self.device.clone()),
        };
        let mut failed: HashSet<String> = HashSet::new();
        // Contents to send, once each: those that fit one chunk go out in
        // batches (one journal, reservation and request for many files),
        // larger ones as chunked, resumable file pushes.
        let chunk_size = client.chunk_size() as u64;
        let mut small: Vec<(String, Hash, u64)> = Vec::new();
        let mut large: Vec<(String, Hash, u64)> = Vec::new();
        for op in &ops {
            let Op::Put {
                path, hash, size, ..
            } = op
            else {
                continue;
            };
            if !known.insert(*hash) {
                continue;
            }
            let to = if *size <= chunk_size {
                &mut small
            } else {
                &mut large
            };
            to.push((path.clone(), *hash, *size));
        }
        let mut up = Uploads {
            report: &mut *report,
            failed: &mut failed,
            sent: Vec::new(),
        };
        let files: Vec<sync_client::SmallFile> = small
            .iter()
            .map(|(path, hash, _)| sync_client::SmallFile {
                path: self.root.join(path),
                name: hex::encode(hash),
            })
            .collect();
        let mut results: Vec<Option<sync_client::error::Result<sync_client::PushedFile>>> =
            (0..files.len()).map(|_| None).collect();
        let batched = client
            .push_small_files(state, &files, &opts, &mut |i, r| {
                if let Some(slot) = results.get_mut(i) {
                    *slot = Some(r);
                }
            })
            .await;
        let mut first_error = batched.err().map(FolderError::from);
        for ((path, hash, size), r) in small.iter().zip(results) {
            // Files the batch did not get to are left for the next run.
            let Some(r) = r else {
                up.failed.insert(path.clone());
                continue;
            };
            if let Err(e) = up.settle(path, hash, *size, r) {
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_none() {
            for (path, hash, size) in &large {
                let pushed = client
                    .push_path(
                        state,
                        &self.root.join(path),
                        Some(&hex::encode(hash)),
                        &opts,
                        &mut |_, _| {},
                    )
                    .await;
                if let Err(e) = up.settle(path, hash, *size, pushed) {
                    first_error = Some(e);
                    break;
                }
            }
        }
        let sent = up.sent;
        // What was stored is recorded even when the run stops here.
        self.index.add_contents(&sent).await?;
        if let Some(e) = first_error {
            return Err(e);
        }
        // A `Put` whose content was not sent (another path with the same
        // content was tried and had changed) waits for the next run.
        let sent: HashSet<Hash> = sent.into_iter().collect();
        for op in &ops {
            if let Op::Put { path, hash, .. } = op
                && !sent.contains(hash)
            {
                failed.insert(path.clone());
            }
        }
        let ops: Vec<Op> = ops
            .into_iter()
            .filter(|op| !op.paths().iter().any(|p| failed.contains(*p)))
            .collect();
        if ops.is_empty() && new_base.iter().all(|(p, _)| failed.contains(p)) {
            return Ok(s);
        }
        let bodies: Vec<Vec<u8>> = ops
            .chunks(OPS_PER_RECORD)
            .map(|chunk| {
                record::encode(&Record {
                    device: self.device.clone(),
                    at_ms: sync_client::util::now_ms(),
                    ops: chunk.to_vec(),
                })
            })
            .collect();
        let items = client.seal_messages(state, &bodies, ttl_s)?;
        let mut rows = Vec::new();
        let mut tx = self.index.begin().await?;
        for (item, body) in items.iter().zip(&bodies) {
            let mut row = OutboxRow {
                id: 0,
                blob_id: item.blob_id.0.to_vec(),
                payload: item.payload.clone(),
                ttl_s: item.ttl_s,
                cursor: None,
                record: body.clone(),
            };
            row.id = Index::add_outbox(&mut tx, &row).await?;
            rows.push(row);
        }
        for (path, entry) in &new_base {
            if !failed.contains(path) {
                Index::set_entry(&mut tx, TreeTable::Base, path, entry.as_ref()).await?;
            }
        }
        tx.commit().await?;
        self.index.replace_scan_cache(&s.cache).await?;
        self.push_rows(client, &rows).await?;
        report.ops_sent += ops.len() as u64;
        report.records_sent += rows.len() as u64;
        Ok(s)
    }

    /// Push sealed outbox rows, as many to a request as the relay's
    /// `max_batch` and `max_frame` allow, and record where each is stored
    /// (one transaction per request).
    async fn push_rows(&self, client: &SyncClient, rows: &[OutboxRow]) -> Result<()> {
        use sync_protocol::limits::{BATCH_OVERHEAD, PUSH_ITEM_OVERHEAD};
        let (max_batch, max_frame) = {
            let session = client.session();
            let w = session.welcome();
            (w.max_batch.max(1) as usize, w.max_frame as usize)
        };
        let mut start = 0;
        while start < rows.len() {
            let mut bytes = BATCH_OVERHEAD;
            let mut end = start;
            while end < rows.len() && end - start < max_batch {
                let more = PUSH_ITEM_OVERHEAD + rows[end].payload.len();
                if end > start && bytes + more > max_frame {
                    break;
                }
                bytes += more;
                end += 1;
            }
            let group = &rows[start..end];
            let items = group
                .iter()
                .map(|row| {
                    let blob_id = BlobId(
                        row.blob_id
                            .as_slice()
                            .try_into()
                            .map_err(|_| FolderError::Io("outbox: bad blob id".into()))?,
                    );
                    Ok(PushItem {
                        blob_id,
                        payload: row.payload.clone(),
                        ttl_s: row.ttl_s,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let ok = client.push_items(items).await?;
            let cursors: Vec<(i64, u64)> = group
                .iter()
                .zip(&ok.results)
                .map(|(row, r)| (row.id, r.cursor))
                .collect();
            self.index.set_outbox_cursors(&cursors).await?;
            start = end;
        }
        Ok(())
    }

    /// Pending changes both ways and conflict copies, from the index and a
    /// scan (no relay contact: changes still at the relay show after the
    /// next run's pull).
    pub async fn status(&self) -> Result<Status> {
        let mut report = Report::default();
        let base = self.index.tree(TreeTable::Base).await?;
        let synced = self.index.tree(TreeTable::Synced).await?;
        let s = self.scan(&mut report).await?;
        let (ops, _) = local_ops(&base, &s);
        let mut up: Vec<String> = ops
            .iter()
            .flat_map(|o| o.paths().into_iter().map(str::to_string))
            .collect();
        up.sort();
        up.dedup();
        let down = pending_down(&base, &synced);
        Ok(Status {
            root: self.root.to_string_lossy().to_string(),
            pending_up: up,
            pending_down: down,
            outbox: self.index.outbox().await?.len() as u64,
            conflicts: self.index.conflicts().await?,
            skipped: s.skipped,
            manifest_needed: self.index.meta(catchup::NEED_MANIFEST).await?.as_deref() == Some("1"),
            wanted: self.index.wanted_count().await?,
        })
    }
}

/// The outcome of a run's content uploads, file by file.
struct Uploads<'a> {
    report: &'a mut Report,
    /// Paths whose change waits for the next run.
    failed: &'a mut HashSet<String>,
    /// Contents the relay stored.
    sent: Vec<Hash>,
}

impl Uploads<'_> {
    /// Count the upload of `path` (content `hash`, `size` bytes): stored,
    /// or left for the next run (changed meanwhile, unreadable as a file).
    /// Errors: any other failure of the push (it stops the run).
    fn settle(
        &mut self,
        path: &str,
        hash: &Hash,
        size: u64,
        pushed: sync_client::error::Result<sync_client::PushedFile>,
    ) -> Result<()> {
        match pushed {
            Ok(p) if p.blake3 == hex::encode(hash) => {
                self.sent.push(*hash);
                self.report.uploaded.push(path.to_string());
                self.report.uploaded_bytes += size;
                self.report.uploaded_blobs += u64::from(p.blobs);
            }
            Ok(_) => {
                self.failed.insert(path.to_string());
                self.report
                    .pending
                    .push((path.to_string(), "changed while uploading; next run".into()));
            }
            Err(sync_client::ClientError::InvalidInput(why)) => {
                self.failed.insert(path.to_string());
                self.report.pending.push((path.to_string(), why));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
}

fn pending_down(base: &Tree, synced: &Tree) -> Vec<String> {
    let mut out: Vec<String> = synced
        .iter()
        .filter(|(p, e)| base.get(*p) != Some(*e))
        .map(|(p, _)| p.clone())
        .chain(base.keys().filter(|p| !synced.contains_key(*p)).cloned())
        .collect();
    out.sort();
    out
}

/// Hashes of `tree`'s files (for tests and reports).
pub fn hashes(tree: &Tree) -> HashSet<Hash> {
    tree.values().filter_map(Entry::hash).collect()
}

/// The ignore file's name, re-exported for the CLI's help.
pub const IGNORE: &str = IGNORE_FILE;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode;

    fn put(path: &str, base: Option<u8>, h: u8) -> Op {
        Op::Put {
            path: path.into(),
            base: base.map(|b| [b; 32]),
            hash: [h; 32],
            size: 1,
            exec: false,
        }
    }

    fn body(ops: Vec<Op>) -> Vec<u8> {
        encode(&Record {
            device: "other".into(),
            at_ms: 0,
            ops,
        })
    }

    /// A crash after the fold committed but before the inbox was cleared
    /// leaves the inbox to be read again: nothing is applied twice (a
    /// re-applied `Put` with no base would otherwise make a conflict copy).
    #[tokio::test]
    async fn an_inbox_read_twice_applies_nothing_twice() {
        let tmp = tempfile::tempdir().unwrap();
        let folder = Folder::open(&tmp.path().join("home"), &tmp.path().join("dir"), "me")
            .await
            .unwrap();
        let first = body(vec![put("f", None, 1)]);
        let second = body(vec![put("f", Some(1), 2)]);
        folder.receive(3, "aa", 1, &first).unwrap();
        folder.receive(4, "aa", 2, &second).unwrap();
        // Another application's message is not kept.
        folder.receive(5, "aa", 3, b"hello").unwrap();
        let mut report = Report::default();
        folder.fold(5, &mut report).await.unwrap();
        assert_eq!(report.records_received, 2);
        // As if the inbox had not been cleared: the first record again.
        folder.receive(3, "aa", 1, &first).unwrap();
        let mut report = Report::default();
        folder.fold(5, &mut report).await.unwrap();
        assert_eq!(report.records_received, 0);
        assert!(report.conflicts.is_empty(), "{report:?}");
        let synced = folder.index.tree(TreeTable::Synced).await.unwrap();
        assert_eq!(synced.keys().collect::<Vec<_>>(), ["f"]);
        assert_eq!(synced["f"].hash(), Some([2; 32]));
        folder.close().await;
    }

    /// A device with a gap folds the newest manifest as its base: the
    /// records the manifest covers are skipped (a `Put` with no base
    /// would otherwise make a conflict copy of what the manifest holds),
    /// the records after it are folded on top, and a request's hashes are
    /// kept to be answered.
    #[tokio::test]
    async fn a_gap_folds_the_manifest_then_later_records() {
        use crate::manifest::{Request, encode_request, split};
        let tmp = tempfile::tempdir().unwrap();
        let folder = Folder::open(&tmp.path().join("home"), &tmp.path().join("dir"), "me")
            .await
            .unwrap();
        // Settled first: the device folded "old" up to cursor 2.
        folder
            .receive(2, "aa", 1, &body(vec![put("old", None, 9)]))
            .unwrap();
        folder.fold(2, &mut Report::default()).await.unwrap();
        // Then: a record at 5 the manifest covers, the manifest (state up
        // to 6) at 7 and 8, a later record at 9, a request at 10.
        // The manifest's "f" is 2: a record that expired changed it after
        // the covered one.
        let covered = body(vec![put("f", None, 1)]);
        let later = body(vec![put("f", Some(2), 3), put("g", None, 3)]);
        let mut state = Tree::new();
        state.insert(
            "f".into(),
            Entry::File {
                hash: [2; 32],
                size: 1,
                exec: false,
            },
        );
        state.insert(
            "h".into(),
            Entry::File {
                hash: [4; 32],
                size: 1,
                exec: false,
            },
        );
        let mut big = state.clone();
        for i in 0..300 {
            big.insert(format!("z{i:03}"), Entry::Dir);
        }
        let parts = split(&big, "other", 0, [5; 16], 6).unwrap();
        assert_eq!(parts.len(), 2);
        folder.receive(5, "aa", 2, &covered).unwrap();
        folder.receive(7, "bb", 1, &parts[0]).unwrap();
        folder.receive(8, "bb", 2, &parts[1]).unwrap();
        folder.receive(9, "aa", 3, &later).unwrap();
        let ask = encode_request(&Request {
            device: "cc".into(),
            at_ms: 0,
            manifest: true,
            hashes: vec![[4; 32]],
        });
        folder.receive(10, "cc", 1, &ask).unwrap();
        let signs = PullSigns {
            head: 10,
            gaps: vec![("aa".into(), 4, 4)],
            overflow: false,
        };
        let mut report = Report::default();
        folder
            .fold_after_pull(10, &signs, &mut report)
            .await
            .unwrap();
        assert_eq!(report.manifest_from, Some(("other".into(), 6)));
        assert!(report.conflicts.is_empty(), "{report:?}");
        let synced = folder.index.tree(TreeTable::Synced).await.unwrap();
        assert_eq!(synced["f"].hash(), Some([3; 32]));
        assert_eq!(synced["g"].hash(), Some([3; 32]));
        assert_eq!(synced["h"].hash(), Some([4; 32]));
        assert!(synced.contains_key("z299") && !synced.contains_key("old"));
        assert_eq!(folder.index.wanted(10).await.unwrap(), vec![[4; 32]]);
        assert_eq!(
            folder.index.meta(catchup::MANIFEST_ASKED).await.unwrap(),
            Some("1".into())
        );
        // The same gap again is handled: the next fold does not rebase.
        folder
            .receive(
                11,
                "bb",
                3,
                &split(&state, "other", 0, [6; 16], 10).unwrap()[0],
            )
            .unwrap();
        let mut report = Report::default();
        folder
            .fold_after_pull(11, &signs, &mut report)
            .await
            .unwrap();
        assert_eq!(report.manifest_from, None);
        assert!(
            folder
                .index
                .tree(TreeTable::Synced)
                .await
                .unwrap()
                .contains_key("g")
        );
        folder.close().await;
    }

    #[tokio::test]
    async fn a_home_syncs_one_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let f = Folder::open(&home, &tmp.path().join("a"), "me")
            .await
            .unwrap();
        f.close().await;
        let other = Folder::open(&home, &tmp.path().join("b"), "me").await;
        assert!(
            matches!(other, Err(FolderError::OtherFolder(..))),
            "{other:?}"
        );
    }
}
