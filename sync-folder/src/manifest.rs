//! Catch-up messages (docs/client.md "Folder sync", "Late and returning
//! devices"): the **manifest**, a snapshot of one device's synced state
//! split into parts, and the **request**, a device asking the group for a
//! manifest or for contents by hash. Both are bodies of ordinary `Message`
//! blobs, sealed like every blob (the relay sees neither), each with a
//! magic of its own so that devices that predate them ignore them as
//! another application's messages:
//!
//! - manifest part: [`MANIFEST_MAGIC`] (`0kfman` 0x00 0x01) then
//!   `postcard(ManifestPart)`;
//! - request: [`REQUEST_MAGIC`] (`0kfreq` 0x00 0x01) then
//!   `postcard(Request)`.
//!
//! Every field a member controls is checked on decoding, against the
//! limits below, before anything is kept.

use crate::entry::{Entry, Hash};
use crate::fold::MAX_ENTRIES;
use crate::record::{RecordError, check_path};
use serde::{Deserialize, Serialize};
use sync_client::crypto::envelope::validate_device_name;
use sync_client::receive::MAX_FILE_SIZE;

/// Start of a manifest part: `0kfman`, then version 0x00 0x01.
pub const MANIFEST_MAGIC: &[u8; 8] = b"0kfman\x00\x01";
/// Start of a request: `0kfreq`, then version 0x00 0x01.
pub const REQUEST_MAGIC: &[u8; 8] = b"0kfreq\x00\x01";
/// Most entries in one manifest part (a part with more is refused).
pub const MAX_PART_ENTRIES: usize = 1024;
/// Entries a device puts in one part (fewer when the relay's blob is
/// small: parts are also cut at [`PART_BYTES`]).
pub const PART_ENTRIES: usize = 256;
/// Bytes of entries a device puts in one part at most (below the
/// smallest blob a relay may announce, with room for the header).
pub const PART_BYTES: usize = 48 * 1024;
/// Most parts of one manifest: [`MAX_ENTRIES`] at [`PART_ENTRIES`] a part
/// fits (a part claiming more is refused).
pub const MAX_PARTS: u32 = 4096;
/// Most hashes one request names (a request with more is refused).
pub const MAX_REQUEST_HASHES: usize = 256;

/// One part of a manifest: the sender's synced state after folding every
/// record up to cursor `upto` of the group it is pushed to, entries in
/// path order, split over `parts` parts that share `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPart {
    /// The sender's device name, 1..=32 bytes.
    pub device: String,
    /// When the sender made it (ms since the Unix epoch, its clock).
    pub at_ms: u64,
    /// Random id shared by the parts of one manifest.
    pub id: [u8; 16],
    /// The cursor the synced state was folded up to: a device basing
    /// itself on the manifest folds only records after it.
    pub upto: u64,
    /// This part's number, `0..parts`.
    pub part: u32,
    /// Parts of the manifest, `1..=MAX_PARTS`.
    pub parts: u32,
    /// Entries (path, entry), paths strictly increasing within the part
    /// and across parts.
    pub entries: Vec<(String, Entry)>,
}

/// A device asking the group: a manifest (it has a gap its records
/// cannot fill), and/or contents by hash (its synced state names them but
/// their transfers expired before it pulled them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The asking device's name, 1..=32 bytes.
    pub device: String,
    /// When it asked (ms since the Unix epoch, its clock).
    pub at_ms: u64,
    /// True: it asks for a manifest.
    pub manifest: bool,
    /// Contents it asks to be pushed again (at most
    /// [`MAX_REQUEST_HASHES`]).
    pub hashes: Vec<Hash>,
}

/// A catch-up message after decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catchup {
    /// A manifest part.
    Manifest(ManifestPart),
    /// A request.
    Request(Request),
}

fn encode_with(magic: &[u8; 8], body: &impl Serialize) -> Vec<u8> {
    let mut out = magic.to_vec();
    // Infallible: postcard encodes every value of these types into a Vec.
    out.extend(postcard::to_allocvec(body).unwrap_or_default());
    out
}

/// Encode a manifest part: [`MANIFEST_MAGIC`] then postcard.
pub fn encode_part(part: &ManifestPart) -> Vec<u8> {
    encode_with(MANIFEST_MAGIC, part)
}

/// Encode a request: [`REQUEST_MAGIC`] then postcard.
pub fn encode_request(request: &Request) -> Vec<u8> {
    encode_with(REQUEST_MAGIC, request)
}

/// True when `body` starts like a catch-up message (any version).
pub fn is_catchup(body: &[u8]) -> bool {
    body.len() >= 6 && (body[..6] == MANIFEST_MAGIC[..6] || body[..6] == REQUEST_MAGIC[..6])
}

fn malformed(why: impl Into<String>) -> RecordError {
    RecordError::Malformed(why.into())
}

fn check_entry(path: &str, entry: &Entry) -> Result<(), RecordError> {
    check_path(path).map_err(malformed)?;
    if let Entry::File { size, .. } = entry
        && *size > MAX_FILE_SIZE
    {
        return Err(malformed(format!("size {size} over 1 TiB")));
    }
    Ok(())
}

/// Decode and check a catch-up message: a part of at most
/// [`MAX_PART_ENTRIES`] valid entries in strictly increasing path order,
/// `part < parts <= MAX_PARTS`; a request of at most
/// [`MAX_REQUEST_HASHES`] hashes; a valid device name in both.
/// Errors: [`RecordError::NotARecord`] (neither magic),
/// [`RecordError::Version`] (a later version), [`RecordError::Malformed`].
pub fn decode(body: &[u8]) -> Result<Catchup, RecordError> {
    if !is_catchup(body) || body.len() < 8 {
        return Err(RecordError::NotARecord);
    }
    let (magic, rest) = body.split_at(8);
    if magic[6..8] != MANIFEST_MAGIC[6..8] {
        return Err(RecordError::Version(magic[7]));
    }
    let manifest = magic[..6] == MANIFEST_MAGIC[..6];
    let decoded = if manifest {
        let part: ManifestPart =
            postcard::from_bytes(rest).map_err(|e| malformed(format!("manifest: {e}")))?;
        if part.entries.len() > MAX_PART_ENTRIES {
            return Err(malformed(format!(
                "manifest part of {} entries, more than {MAX_PART_ENTRIES}",
                part.entries.len()
            )));
        }
        if part.parts == 0 || part.parts > MAX_PARTS || part.part >= part.parts {
            return Err(malformed(format!(
                "manifest part {} of {} (at most {MAX_PARTS} parts)",
                part.part, part.parts
            )));
        }
        for (i, (path, entry)) in part.entries.iter().enumerate() {
            check_entry(path, entry)?;
            if i > 0 && part.entries[i - 1].0 >= *path {
                return Err(malformed("manifest entries out of order"));
            }
        }
        validate_device_name(&part.device).map_err(|e| malformed(format!("device name: {e}")))?;
        Catchup::Manifest(part)
    } else {
        let req: Request =
            postcard::from_bytes(rest).map_err(|e| malformed(format!("request: {e}")))?;
        if req.hashes.len() > MAX_REQUEST_HASHES {
            return Err(malformed(format!(
                "request for {} contents, more than {MAX_REQUEST_HASHES}",
                req.hashes.len()
            )));
        }
        validate_device_name(&req.device).map_err(|e| malformed(format!("device name: {e}")))?;
        Catchup::Request(req)
    };
    Ok(decoded)
}

/// Split `tree` into manifest parts of at most [`PART_ENTRIES`] entries
/// and about [`PART_BYTES`] bytes of entries each. An empty tree is one
/// empty part. Errors when the tree needs more than [`MAX_PARTS`] parts
/// (it cannot: the synced state holds at most [`MAX_ENTRIES`] entries).
pub fn split(
    tree: &crate::fold::Tree,
    device: &str,
    at_ms: u64,
    id: [u8; 16],
    upto: u64,
) -> Result<Vec<Vec<u8>>, RecordError> {
    let mut chunks: Vec<Vec<(String, Entry)>> = vec![Vec::new()];
    let mut bytes = 0;
    for (path, entry) in tree {
        // A path's bytes, its length prefix and an entry (≤ 45 bytes).
        let size = path.len() + 50;
        let last = chunks.last().map(Vec::len).unwrap_or(0);
        if last >= PART_ENTRIES || (last > 0 && bytes + size > PART_BYTES) {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(c) = chunks.last_mut() {
            c.push((path.clone(), entry.clone()));
        }
    }
    let parts = u32::try_from(chunks.len())
        .ok()
        .filter(|n| *n <= MAX_PARTS)
        .ok_or_else(|| malformed(format!("{} entries need too many parts", tree.len())))?;
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, entries)| {
            encode_part(&ManifestPart {
                device: device.to_string(),
                at_ms,
                id,
                upto,
                part: i as u32,
                parts,
                entries,
            })
        })
        .collect())
}

/// Reassemble a manifest from its parts (any order, each once): the tree
/// is rebuilt by the fold's rules (entries in path order; a path under a
/// file is dropped), so a manifest cannot make a state the fold could not.
/// `None` when parts are missing, repeated or disagree (device, `upto`,
/// count), or paths are not increasing across parts.
pub fn assemble(parts: &[&ManifestPart]) -> Option<crate::fold::Tree> {
    let first = parts.first()?;
    let n = first.parts as usize;
    if parts.len() != n {
        return None;
    }
    let mut ordered: Vec<Option<&ManifestPart>> = vec![None; n];
    for p in parts {
        if p.parts != first.parts || p.upto != first.upto || p.device != first.device {
            return None;
        }
        let slot = ordered.get_mut(p.part as usize)?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(p);
    }
    let mut tree = crate::fold::Tree::new();
    let mut notes = Vec::new();
    let mut last: Option<&str> = None;
    for p in ordered.into_iter().flatten() {
        for (path, entry) in &p.entries {
            if last.is_some_and(|l| l >= path.as_str()) {
                return None;
            }
            last = Some(path);
            let op = match entry {
                Entry::Dir => crate::record::Op::Mkdir { path: path.clone() },
                Entry::File { hash, size, exec } => crate::record::Op::Put {
                    path: path.clone(),
                    base: None,
                    hash: *hash,
                    size: *size,
                    exec: *exec,
                },
            };
            crate::fold::apply_op(&mut tree, &op, &p.device, p.at_ms, &mut notes);
        }
    }
    // A conflict copy here means the same path twice: not a fold's state.
    if notes
        .iter()
        .any(|n| matches!(n, crate::fold::FoldNote::Conflict { .. }))
        || tree.len() > MAX_ENTRIES
    {
        return None;
    }
    Some(tree)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fold::Tree;

    fn file(h: u8) -> Entry {
        Entry::File {
            hash: [h; 32],
            size: 7,
            exec: h.is_multiple_of(2),
        }
    }

    fn parts_of(bodies: &[Vec<u8>]) -> Vec<ManifestPart> {
        bodies
            .iter()
            .map(|b| match decode(b).unwrap() {
                Catchup::Manifest(p) => p,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_large_tree_round_trips_through_parts_within_limits() {
        let mut tree = Tree::new();
        for d in 0..30 {
            tree.insert(format!("dir{d:02}"), Entry::Dir);
            for f in 0..40 {
                tree.insert(format!("dir{d:02}/file{f:03}.txt"), file(f as u8));
            }
        }
        let bodies = split(&tree, "laptop", 5, [9; 16], 42).unwrap();
        assert!(
            bodies.len() >= tree.len() / PART_ENTRIES,
            "{}",
            bodies.len()
        );
        for b in &bodies {
            assert!(b.len() <= PART_BYTES + 1024, "part of {} bytes", b.len());
        }
        let mut parts = parts_of(&bodies);
        assert!(
            parts
                .iter()
                .all(|p| p.upto == 42 && p.entries.len() <= PART_ENTRIES)
        );
        // Any order.
        parts.reverse();
        let refs: Vec<&ManifestPart> = parts.iter().collect();
        assert_eq!(assemble(&refs).unwrap(), tree);
        // A missing part, or one given twice, is no manifest.
        assert_eq!(assemble(&refs[1..]), None);
        let mut twice = refs.clone();
        twice[0] = refs[1];
        assert_eq!(assemble(&twice), None);
    }

    #[test]
    fn long_paths_cut_parts_by_bytes() {
        let mut tree = Tree::new();
        for i in 0..100 {
            tree.insert(format!("{i:03}{}", "x".repeat(900)), file(1));
        }
        let bodies = split(&tree, "pc", 0, [0; 16], 1).unwrap();
        assert!(bodies.len() >= 2);
        for b in &bodies {
            assert!(b.len() <= PART_BYTES + 1024, "part of {} bytes", b.len());
        }
    }

    #[test]
    fn the_fold_rules_hold_for_a_manifest() {
        // A file with a path under it: the path under is dropped, as the
        // fold drops it.
        let part = ManifestPart {
            device: "x".into(),
            at_ms: 0,
            id: [1; 16],
            upto: 3,
            part: 0,
            parts: 1,
            entries: vec![("a".into(), file(1)), ("a/b".into(), file(2))],
        };
        let tree = assemble(&[&part]).unwrap();
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["a"]);
        // Parts that disagree are no manifest.
        let mut other = part.clone();
        other.parts = 2;
        other.part = 1;
        other.upto = 4;
        let mut first = part.clone();
        first.parts = 2;
        assert_eq!(assemble(&[&first, &other]), None);
    }

    #[test]
    fn refuses_hostile_catchup_messages() {
        let good = ManifestPart {
            device: "x".into(),
            at_ms: 0,
            id: [1; 16],
            upto: 3,
            part: 0,
            parts: 1,
            entries: vec![("a".into(), file(1))],
        };
        assert!(decode(&encode_part(&good)).is_ok());
        let bad = |p: ManifestPart| {
            assert!(
                matches!(decode(&encode_part(&p)), Err(RecordError::Malformed(_))),
                "{p:?}"
            )
        };
        let mut p = good.clone();
        p.entries = (0..=MAX_PART_ENTRIES)
            .map(|i| (format!("f{i:05}"), file(1)))
            .collect();
        bad(p);
        let mut p = good.clone();
        p.parts = MAX_PARTS + 1;
        bad(p);
        let mut p = good.clone();
        p.part = 1;
        bad(p);
        let mut p = good.clone();
        p.entries = vec![("b".into(), file(1)), ("a".into(), file(1))];
        bad(p);
        let mut p = good.clone();
        p.entries = vec![("../etc/passwd".into(), file(1))];
        bad(p);
        let mut p = good.clone();
        p.entries = vec![(
            "big".into(),
            Entry::File {
                hash: [0; 32],
                size: MAX_FILE_SIZE + 1,
                exec: false,
            },
        )];
        bad(p);
        let mut p = good.clone();
        p.device = String::new();
        bad(p);
        let req = Request {
            device: "x".into(),
            at_ms: 1,
            manifest: true,
            hashes: vec![[3; 32]; MAX_REQUEST_HASHES],
        };
        assert_eq!(
            decode(&encode_request(&req)),
            Ok(Catchup::Request(req.clone()))
        );
        let mut r = req.clone();
        r.hashes.push([4; 32]);
        assert!(matches!(
            decode(&encode_request(&r)),
            Err(RecordError::Malformed(_))
        ));
        assert_eq!(decode(b"0kfman\x00\x02"), Err(RecordError::Version(2)));
        assert_eq!(decode(b"0kfold\x00\x01"), Err(RecordError::NotARecord));
        assert!(decode(b"0kfreq\x00\x01\xff\xff\xff\xff").is_err());
    }

    /// Golden bytes of version 1 (docs/client.md "Folder sync"): a change
    /// of either format must change its version.
    #[test]
    fn golden() {
        let part = ManifestPart {
            device: "pc".into(),
            at_ms: 1,
            id: [0x11; 16],
            upto: 300,
            part: 0,
            parts: 1,
            entries: vec![
                ("d".into(), Entry::Dir),
                (
                    "d/f".into(),
                    Entry::File {
                        hash: [0xab; 32],
                        size: 2,
                        exec: true,
                    },
                ),
            ],
        };
        assert_eq!(
            hex::encode(encode_part(&part)),
            format!(
                "306b666d616e0001 02 7063 01 {} ac02 00 01 02 0164 01 03 642f66 00 {} 02 01",
                "11".repeat(16),
                "ab".repeat(32)
            )
            .replace(' ', "")
        );
        let req = Request {
            device: "pc".into(),
            at_ms: 2,
            manifest: true,
            hashes: vec![[0xcd; 32]],
        };
        assert_eq!(
            hex::encode(encode_request(&req)),
            format!("306b667265710001 02 7063 02 01 01 {}", "cd".repeat(32)).replace(' ', "")
        );
    }
}
