//! Catching up after the relay's TTL (docs/client.md "Folder sync",
//! "Late and returning devices"): deciding when a device folds a
//! [manifest](crate::manifest) as its base instead of its own history
//! ([`decide`]), and the push side — answering other devices' requests
//! with content held here, asking the group for a manifest or for
//! contents, and pushing this device's manifest when it is due
//! ([`Folder::catch_up`]).
//!
//! A device has a **gap** its records cannot fill when its pull showed
//! that blobs it never received are gone: a sequence gap or a withheld
//! range of some sender (the client's integrity events), or a relay head
//! above the cursor of the last blob delivered (the blobs in between were
//! deleted, by expiry). A gap is handled once a manifest newer than the
//! device's own fold was folded after it appeared. A **fresh** device
//! (no synced state, nothing folded yet) takes a manifest whenever one is
//! in its first pull.

use crate::engine::{Folder, FolderError, Report};
use crate::entry::Found;
use crate::entry::{Entry, Hash};
use crate::fold::Tree;
use crate::index::{Index, TreeTable};
use crate::manifest::{self, ManifestPart, Request};
use crate::scan::Scan;
use std::collections::{BTreeMap, HashMap};
use sync_client::{PushOptions, StateStore, SyncClient};

/// A content or a manifest asked for is asked again after this long
/// without an answer (10 min).
pub const ASK_AGAIN_MS: u64 = 10 * 60 * 1000;
/// A device pushes a manifest after a change of its synced state at most
/// this often (10 min); also when its last one is older than half the
/// TTL, and when a request asks (once per run).
pub const MANIFEST_INTERVAL_MS: u64 = 10 * 60 * 1000;
/// Most contents asked for that a device keeps to answer (more are
/// dropped, reported).
pub const MAX_WANTED: usize = 4096;
/// Most contents a device pushes again in one run (the rest wait for the
/// next run).
pub const REPUSH_PER_RUN: usize = 64;
/// Most gap ranges kept from one pull (more count as one new gap).
pub const MAX_GAPS: usize = 4096;

pub(crate) const FOLDED_UPTO: &str = "folded_upto";
pub(crate) const GAPS_HANDLED: &str = "gaps_handled";
pub(crate) const HEAD_HANDLED: &str = "head_handled";
pub(crate) const NEED_MANIFEST: &str = "need_manifest";
pub(crate) const MANIFEST_ASKED: &str = "manifest_asked";
pub(crate) const MANIFEST_REQUESTED_AT: &str = "manifest_requested_at";
const MANIFEST_AT: &str = "manifest_at";
const MANIFEST_DIGEST: &str = "manifest_digest";

/// What a pull showed about blobs this device will never receive.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PullSigns {
    /// The relay's head of the current epoch's group after the pull.
    pub head: u64,
    /// Sequence ranges missing (gaps and withheld ranges): (sender node
    /// id, first, last), at most [`MAX_GAPS`].
    pub gaps: Vec<(String, u64, u64)>,
    /// True when more than [`MAX_GAPS`] ranges were reported.
    pub overflow: bool,
}

impl PullSigns {
    /// Note one missing range (kept up to [`MAX_GAPS`]).
    pub fn gap(&mut self, sender: &str, first: u64, last: u64) {
        if self.gaps.len() < MAX_GAPS {
            self.gaps.push((sender.to_string(), first, last));
        } else {
            self.overflow = true;
        }
    }
}

/// The base a device takes from a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// Records up to this cursor are in it.
    pub upto: u64,
    /// The device that sent it.
    pub device: String,
    /// Its synced state.
    pub tree: Tree,
}

/// How a fold starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// From this device's synced state, as always.
    Fold,
    /// From a manifest: records up to its `upto` are skipped.
    Rebase(Base),
    /// From this device's synced state, but a gap needs a manifest
    /// (asked for at the push).
    NeedManifest,
}

/// What the device knew before this fold.
#[derive(Debug, Clone, Default)]
pub struct Known {
    /// Nothing folded yet and an empty synced state.
    pub fresh: bool,
    /// The cursor its synced state was folded up to.
    pub folded_upto: u64,
    /// Gap ranges already handled by a manifest.
    pub gaps_handled: Vec<(String, u64, u64)>,
    /// The relay head already handled.
    pub head_handled: u64,
    /// A manifest is still needed (an earlier gap).
    pub need_manifest: bool,
}

/// The newest complete manifest among `parts` ((cursor, sender, part)),
/// of those that fold records up to a cursor above `after` and below
/// every cursor of their own parts (a manifest cannot know later records).
pub fn newest_manifest(parts: &[(u64, String, ManifestPart)], after: u64) -> Option<Base> {
    // (sender, manifest id) → its parts with their cursors.
    type Parts<'a> = Vec<(u64, &'a ManifestPart)>;
    let mut by_id: BTreeMap<(&str, [u8; 16]), Parts> = BTreeMap::new();
    for (cursor, sender, part) in parts {
        by_id
            .entry((sender.as_str(), part.id))
            .or_default()
            .push((*cursor, part));
    }
    let mut best: Option<(u64, u64, Base)> = None;
    for group in by_id.values() {
        let first_cursor = group.iter().map(|(c, _)| *c).min().unwrap_or(0);
        let last_cursor = group.iter().map(|(c, _)| *c).max().unwrap_or(0);
        let upto = group[0].1.upto;
        if upto <= after || upto >= first_cursor {
            continue;
        }
        if best
            .as_ref()
            .is_some_and(|(u, c, _)| (*u, *c) >= (upto, last_cursor))
        {
            continue;
        }
        let refs: Vec<&ManifestPart> = group.iter().map(|(_, p)| *p).collect();
        if let Some(tree) = manifest::assemble(&refs) {
            let device = group[0].1.device.clone();
            best = Some((upto, last_cursor, Base { upto, device, tree }));
        }
    }
    best.map(|(_, _, b)| b)
}

fn handled(gap: &(String, u64, u64), done: &[(String, u64, u64)]) -> bool {
    done.iter()
        .any(|(s, f, l)| *s == gap.0 && *f <= gap.1 && gap.2 <= *l)
}

/// Decide how this fold starts (see the module doc): a device with a
/// new gap, or still needing a manifest, or fresh, bases itself on the
/// newest usable manifest; without one it folds as always and, unless it
/// is fresh with no sign of a gap, needs a manifest.
pub fn decide(
    known: &Known,
    cursor: u64,
    signs: &PullSigns,
    parts: &[(u64, String, ManifestPart)],
) -> Decision {
    let new_gap = signs.overflow
        || signs.gaps.iter().any(|g| !handled(g, &known.gaps_handled))
        || (signs.head > cursor && signs.head > known.head_handled);
    if !(known.fresh || new_gap || known.need_manifest) {
        return Decision::Fold;
    }
    let after = if known.fresh { 0 } else { known.folded_upto };
    match newest_manifest(parts, after) {
        Some(base) => Decision::Rebase(base),
        None if known.fresh && !new_gap && !known.need_manifest => Decision::Fold,
        None => Decision::NeedManifest,
    }
}

/// Encode gap ranges for the index's `meta` (hex of postcard).
pub(crate) fn encode_gaps(gaps: &[(String, u64, u64)]) -> String {
    hex::encode(postcard::to_allocvec(gaps).unwrap_or_default())
}

pub(crate) fn decode_gaps(text: &str) -> Vec<(String, u64, u64)> {
    hex::decode(text)
        .ok()
        .and_then(|b| postcard::from_bytes(&b).ok())
        .unwrap_or_default()
}

/// Where this device can read each content it may push again: the
/// first path (in path order) of the synced state naming the content
/// whose file on disk, as scanned, holds it now. Only synced contents, and
/// never an ignored path (the scan reports those as untouchable), so a
/// member asking for a hash cannot make a device send anything else.
pub fn holders(synced: &Tree, scan: &Scan) -> HashMap<Hash, String> {
    let mut out = HashMap::new();
    for (path, entry) in synced {
        let Entry::File { hash, .. } = entry else {
            continue;
        };
        if let Some(Found::Entry(Entry::File { hash: disk, .. })) = scan.lookup(path)
            && disk == *hash
        {
            out.entry(*hash).or_insert_with(|| path.clone());
        }
    }
    out
}

fn now_ms() -> u64 {
    sync_client::util::now_ms()
}

impl Folder {
    /// What this device knew before the fold (from the index).
    pub(crate) async fn known(&self) -> Result<Known, FolderError> {
        let index = self.index();
        let folded = index.meta(FOLDED_UPTO).await?;
        let fresh = folded.is_none() && !index.has_entries().await?;
        let num = |v: Option<String>| v.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        Ok(Known {
            fresh,
            folded_upto: num(folded),
            gaps_handled: index
                .meta(GAPS_HANDLED)
                .await?
                .map(|t| decode_gaps(&t))
                .unwrap_or_default(),
            head_handled: num(index.meta(HEAD_HANDLED).await?),
            need_manifest: index.meta(NEED_MANIFEST).await?.as_deref() == Some("1"),
        })
    }

    /// After this device's changes were pushed: push again the contents
    /// other devices asked for that this device holds (at most
    /// [`REPUSH_PER_RUN`] a run), ask the group for a manifest or for
    /// contents it could not find (each at most once per
    /// [`ASK_AGAIN_MS`]), and push a manifest of the synced state when one
    /// is due (asked for; first; changed and the last is older than
    /// [`MANIFEST_INTERVAL_MS`]; or the last is older than half the TTL).
    pub async fn catch_up(
        &self,
        client: &SyncClient,
        state: &mut StateStore,
        ttl_s: Option<u32>,
        scan: &Scan,
        report: &mut Report,
    ) -> Result<(), FolderError> {
        let opts = PushOptions {
            ttl_s,
            force: true,
            device_name: Some(self.device().to_string()),
        };
        let synced = self.index().tree(TreeTable::Synced).await?;
        self.answer_wanted(client, state, &opts, &synced, scan, report)
            .await?;
        self.ask(client, state, &opts, report).await?;
        let ttl = ttl_s.unwrap_or(client.session().welcome().default_ttl_s);
        self.push_manifest(client, state, &opts, &synced, ttl, report)
            .await
    }

    async fn answer_wanted(
        &self,
        client: &SyncClient,
        state: &mut StateStore,
        opts: &PushOptions,
        synced: &Tree,
        scan: &Scan,
        report: &mut Report,
    ) -> Result<(), FolderError> {
        let index = self.index();
        let wanted = index.wanted(REPUSH_PER_RUN).await?;
        if wanted.is_empty() {
            return Ok(());
        }
        let held = holders(synced, scan);
        for hash in wanted {
            index.remove_wanted(&hash).await?;
            let Some(path) = held.get(&hash).cloned() else {
                continue;
            };
            let name = hex::encode(hash);
            let pushed = client
                .push_path(
                    state,
                    &self.root().join(&path),
                    Some(&name),
                    opts,
                    &mut |_, _| {},
                )
                .await;
            match pushed {
                Ok(p) if p.blake3 == name => {
                    report.repushed.push(path);
                    report.uploaded_bytes += p.size;
                    report.uploaded_blobs += u64::from(p.blobs);
                }
                Ok(_) | Err(sync_client::ClientError::InvalidInput(_)) => report
                    .pending
                    .push((path, "changed while pushing it again; not sent".into())),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    async fn ask(
        &self,
        client: &SyncClient,
        state: &mut StateStore,
        opts: &PushOptions,
        report: &mut Report,
    ) -> Result<(), FolderError> {
        let index = self.index();
        let now = now_ms();
        let need = index.meta(NEED_MANIFEST).await?.as_deref() == Some("1");
        let last = index
            .meta(MANIFEST_REQUESTED_AT)
            .await?
            .and_then(|v| v.parse::<u64>().ok());
        let manifest = need && last.is_none_or(|at| now.saturating_sub(at) >= ASK_AGAIN_MS);
        let missing: Vec<Hash> = report
            .missing
            .iter()
            .filter_map(|h| hex::decode(h).ok()?.try_into().ok())
            .collect();
        let mut hashes = index
            .not_requested_since(&missing, now.saturating_sub(ASK_AGAIN_MS))
            .await?;
        hashes.truncate(manifest::MAX_REQUEST_HASHES);
        if !manifest && hashes.is_empty() {
            return Ok(());
        }
        let body = manifest::encode_request(&Request {
            device: self.device().to_string(),
            at_ms: now,
            manifest,
            hashes: hashes.clone(),
        });
        client.push_messages(state, &[body], opts).await?;
        index.mark_requested(&hashes, now).await?;
        if manifest {
            index
                .put_meta(MANIFEST_REQUESTED_AT, &now.to_string())
                .await?;
        }
        report.manifest_requested = manifest;
        report.requested = hashes.len() as u64;
        Ok(())
    }

    async fn push_manifest(
        &self,
        client: &SyncClient,
        state: &mut StateStore,
        opts: &PushOptions,
        synced: &Tree,
        ttl_s: u32,
        report: &mut Report,
    ) -> Result<(), FolderError> {
        let index = self.index();
        let asked = index.meta(MANIFEST_ASKED).await?.as_deref() == Some("1");
        if synced.is_empty() {
            if asked {
                index.put_meta(MANIFEST_ASKED, "0").await?;
            }
            return Ok(());
        }
        let now = now_ms();
        let encoded = postcard::to_allocvec(synced).unwrap_or_default();
        let digest = blake3::hash(&encoded).to_hex().to_string();
        let last_at = index
            .meta(MANIFEST_AT)
            .await?
            .and_then(|v| v.parse::<u64>().ok());
        let changed = index.meta(MANIFEST_DIGEST).await?.as_deref() != Some(digest.as_str());
        let due = match last_at {
            None => true,
            Some(at) => {
                let age = now.saturating_sub(at);
                asked
                    || (changed && age >= MANIFEST_INTERVAL_MS)
                    || age >= u64::from(ttl_s) * 1000 / 2
            }
        };
        if !due {
            return Ok(());
        }
        let upto = index
            .meta(FOLDED_UPTO)
            .await?
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let mut id_input = digest.clone().into_bytes();
        id_input.extend(now.to_le_bytes());
        id_input.extend(self.device().as_bytes());
        let mut id = [0u8; 16];
        id.copy_from_slice(&blake3::hash(&id_input).as_bytes()[..16]);
        let bodies = manifest::split(synced, self.device(), now, id, upto)
            .map_err(|e| FolderError::Io(e.to_string()))?;
        client.push_messages(state, &bodies, opts).await?;
        let mut tx = index.begin().await?;
        Index::set_meta(&mut tx, MANIFEST_AT, &now.to_string()).await?;
        Index::set_meta(&mut tx, MANIFEST_DIGEST, &digest).await?;
        Index::set_meta(&mut tx, MANIFEST_ASKED, "0").await?;
        tx.commit().await?;
        report.manifest_parts_sent = bodies.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::split;

    fn file(h: u8) -> Entry {
        Entry::File {
            hash: [h; 32],
            size: 1,
            exec: false,
        }
    }

    fn parts(
        tree: &Tree,
        sender: &str,
        cursor: u64,
        upto: u64,
    ) -> Vec<(u64, String, ManifestPart)> {
        split(tree, "dev", 0, [cursor as u8; 16], upto)
            .unwrap()
            .iter()
            .enumerate()
            .map(|(i, b)| match manifest::decode(b).unwrap() {
                manifest::Catchup::Manifest(p) => (cursor + i as u64, sender.to_string(), p),
                _ => unreachable!(),
            })
            .collect()
    }

    fn tree(files: &[(&str, u8)]) -> Tree {
        files
            .iter()
            .map(|(p, h)| (p.to_string(), file(*h)))
            .collect()
    }

    /// A content is pushed again only from a synced path whose file holds
    /// it now: never from an ignored file (a member may name any hash,
    /// and even forge a record naming the ignored path), never a stale one.
    #[test]
    fn only_synced_unignored_files_answer_requests() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::write(root.join(crate::IGNORE_FILE), "secret.txt\n").unwrap();
        std::fs::write(root.join("secret.txt"), "private").unwrap();
        std::fs::write(root.join("pub.txt"), "public").unwrap();
        std::fs::write(root.join("stale.txt"), "now different").unwrap();
        let (scan, _) = crate::scan::scan(root, &Default::default(), 0).unwrap();
        let h = |b: &[u8]| *blake3::hash(b).as_bytes();
        let entry = |b: &[u8]| Entry::File {
            hash: h(b),
            size: b.len() as u64,
            exec: false,
        };
        let mut synced = Tree::new();
        synced.insert("secret.txt".into(), entry(b"private"));
        synced.insert("pub.txt".into(), entry(b"public"));
        synced.insert("stale.txt".into(), entry(b"what it was"));
        let held = holders(&synced, &scan);
        assert_eq!(held.get(&h(b"public")), Some(&"pub.txt".to_string()));
        assert_eq!(held.get(&h(b"private")), None);
        assert_eq!(held.get(&h(b"what it was")), None);
        assert_eq!(held.len(), 1, "{held:?}");
    }

    #[test]
    fn the_newest_usable_manifest_wins() {
        let old = tree(&[("a", 1)]);
        let new = tree(&[("a", 2), ("b", 3)]);
        let mut all = parts(&old, "s1", 10, 8);
        all.extend(parts(&new, "s2", 20, 15));
        let base = newest_manifest(&all, 0).unwrap();
        assert_eq!((base.upto, base.tree), (15, new.clone()));
        // Only manifests past what this device folded count.
        assert_eq!(newest_manifest(&all, 15), None);
        assert_eq!(newest_manifest(&all, 9).unwrap().upto, 15);
        // A manifest claiming records after its own cursor is not used.
        let liar = parts(&new, "s3", 30, 30);
        assert_eq!(newest_manifest(&liar, 0), None);
        // An incomplete manifest is not used.
        let mut big = Tree::new();
        for i in 0..600 {
            big.insert(format!("f{i:04}"), file(1));
        }
        let mut p = parts(&big, "s4", 40, 39);
        assert!(p.len() > 1);
        p.pop();
        assert_eq!(newest_manifest(&p, 0), None);
    }

    #[test]
    fn a_gap_or_a_fresh_start_takes_a_manifest_else_records_fold() {
        let m = parts(&tree(&[("a", 1)]), "s", 10, 9);
        let settled = Known {
            fresh: false,
            folded_upto: 5,
            ..Known::default()
        };
        let quiet = PullSigns {
            head: 12,
            ..PullSigns::default()
        };
        // No gap: the records fold, manifests are not looked at.
        assert_eq!(decide(&settled, 12, &quiet, &m), Decision::Fold);
        // A sequence gap: rebase on the manifest.
        let mut gap = quiet.clone();
        gap.gap("x", 3, 4);
        assert!(matches!(decide(&settled, 12, &gap, &m), Decision::Rebase(b) if b.upto == 9));
        // A handled gap is no new gap.
        let mut done = settled.clone();
        done.gaps_handled = vec![("x".into(), 1, 9)];
        assert_eq!(decide(&done, 12, &gap, &m), Decision::Fold);
        // A new gap of the same sender outside the handled one is new.
        let mut later = quiet.clone();
        later.gap("x", 12, 14);
        assert!(matches!(decide(&done, 12, &later, &m), Decision::Rebase(_)));
        // Blobs gone between the cursor and the head: needs a manifest,
        // none here.
        let gone = PullSigns {
            head: 20,
            ..PullSigns::default()
        };
        assert_eq!(decide(&settled, 12, &gone, &[]), Decision::NeedManifest);
        // Still needed at the next run, without a new sign.
        let mut waiting = settled.clone();
        waiting.need_manifest = true;
        assert!(matches!(
            decide(&waiting, 12, &quiet, &m),
            Decision::Rebase(_)
        ));
        // Fresh: takes a manifest when there is one; else folds.
        let fresh = Known {
            fresh: true,
            ..Known::default()
        };
        assert!(matches!(
            decide(&fresh, 12, &quiet, &m),
            Decision::Rebase(_)
        ));
        assert_eq!(decide(&fresh, 12, &quiet, &[]), Decision::Fold);
    }
}
