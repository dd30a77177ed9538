//! Applying blobs: replays, gaps, forged senders, crash recovery, and
//! where files land (the conflict rules of [`crate::place`]).

use super::*;
use crate::crypto::GroupSecret;
use crate::crypto::envelope::{BlobHeader, Compression, FileEnd, seal};
use sync_protocol::BlobId;

struct Fixture {
    keys: GroupKeys,
    store: StateStore,
    dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        keys: GroupSecret::from_bytes([1; 32]).keys(),
        store: StateStore::open(dir.path().join("state.json")).unwrap(),
        dir,
    }
}

const SENDER: DeviceId = DeviceId([9; 32]);

fn blob(f: &Fixture, cursor: u64, id: u8, seq: u64, kind: BlobKind, body: &[u8]) -> PulledBlob {
    let header = BlobHeader {
        kind,
        sender: SENDER,
        seq,
        created_at_ms: 1,
        compression: Compression::None,
        body_len: 0,
        view: Default::default(),
    };
    PulledBlob {
        cursor,
        blob_id: BlobId([id; 16]),
        sender: SENDER,
        created_at: 1,
        payload: seal(&f.keys, &BlobId([id; 16]), header, body, 1 << 20).unwrap(),
    }
}

fn apply_all(f: &mut Fixture, blobs: &[PulledBlob]) -> Vec<PullEvent> {
    let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), f.dir.path().join("out"));
    let mut events = Vec::new();
    for b in blobs {
        receiver
            .apply(b.clone(), &mut f.store, &mut |e| events.push(e))
            .unwrap();
    }
    events
}

#[test]
fn a_replayed_blob_is_reported_and_not_applied_twice() {
    let mut f = fixture();
    let m = blob(&f, 1, 1, 1, BlobKind::Message, b"hello");
    let mut again = m.clone();
    again.cursor = 2; // the relay serves the same blob again
    let events = apply_all(&mut f, &[m, again]);
    assert!(matches!(events[0], PullEvent::Message { seq: 1, .. }));
    assert!(
        matches!(
            events[1],
            PullEvent::Replay {
                cursor: 2,
                seq: 1,
                ..
            }
        ),
        "{events:?}"
    );
    assert_eq!(events.len(), 2);
    assert_eq!(f.store.state.replays, 1);
    assert_eq!(f.store.state.cursor, 2);
}

#[test]
fn a_withheld_blob_shows_as_a_gap() {
    let mut f = fixture();
    let blobs = [
        blob(&f, 1, 1, 1, BlobKind::Message, b"one"),
        blob(&f, 3, 3, 3, BlobKind::Message, b"three"),
    ];
    apply_all(&mut f, &blobs);
    let gaps = gap_events(&f.store.state);
    assert_eq!(gaps.len(), 1);
    assert!(matches!(
        &gaps[0],
        PullEvent::Gap {
            first: 2,
            last: 2,
            ..
        }
    ));
}

#[test]
fn a_blob_with_a_forged_sender_is_rejected() {
    let mut f = fixture();
    let mut b = blob(&f, 1, 1, 1, BlobKind::Message, b"x");
    b.sender = DeviceId([7; 32]);
    let events = apply_all(&mut f, &[b]);
    assert!(
        matches!(&events[0], PullEvent::Rejected { cursor: 1, reason, .. } if reason.contains("claims sender"))
    );
}

/// This device in [`apply_all`].
const ME: DeviceId = DeviceId([2; 32]);

/// A message sealed by `sender` with `view`, labelled `label` by the relay.
fn sealed_by(
    f: &Fixture,
    sender: DeviceId,
    label: DeviceId,
    cursor: u64,
    seq: u64,
    view: &[(DeviceId, u64)],
) -> PulledBlob {
    let blob_id = BlobId(
        *blake3::hash(&cursor.to_be_bytes())
            .as_bytes()
            .first_chunk()
            .unwrap(),
    );
    let view = crate::crypto::GroupView::new(
        view.iter()
            .map(|&(device, seq)| crate::crypto::ViewEntry { device, seq })
            .collect(),
    )
    .unwrap();
    let header = BlobHeader {
        kind: BlobKind::Message,
        sender,
        seq,
        created_at_ms: 1,
        compression: Compression::None,
        body_len: 0,
        view,
    };
    PulledBlob {
        cursor,
        blob_id,
        sender: label,
        created_at: 1,
        payload: seal(&f.keys, &blob_id, header, b"m", 1 << 20).unwrap(),
    }
}

#[test]
fn a_blob_the_relay_labels_as_this_devices_own_is_opened_and_reported() {
    // Sealed by SENDER; the relay says it is this device's own. Before, the
    // label alone made the receiver skip it unopened and unreported.
    let mut f = fixture();
    let b = sealed_by(&f, SENDER, ME, 1, 1, &[]);
    let events = apply_all(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::Rejected { cursor: 1, reason, .. }] if reason.contains("claims sender")),
        "{events:?}"
    );
    assert_eq!(f.store.state.rejected, 1);
    assert_eq!(f.store.state.cursor, 1);
}

#[test]
fn this_devices_own_blob_is_known_by_its_sealed_sender() {
    let mut f = fixture();
    f.store.reserve_seqs(3).unwrap(); // this device used 1, 2 and 3
    let own = sealed_by(&f, ME, ME, 1, 3, &[(SENDER, 5)]);
    // Sealed in this device's name with a number it never used: a member
    // forging it (with the relay's label to match).
    let forged = sealed_by(&f, ME, ME, 2, 4, &[]);
    let events = apply_all(&mut f, &[own, forged]);
    assert!(
        matches!(&events[..], [PullEvent::Rejected { cursor: 2, reason, .. }] if reason.contains("never used")),
        "{events:?}"
    );
    assert!(
        f.store.state.senders.is_empty(),
        "own blobs (and their views) are not tracked: {:?}",
        f.store.state.senders
    );
    assert_eq!(f.store.state.cursor, 2);
}

#[test]
fn a_later_view_reveals_a_senders_newest_blobs_as_withheld() {
    // X's blobs 1 and 2 arrive; 3 and 4 are withheld. Y received them and
    // says so in the view of its blob.
    let mut f = fixture();
    let (x, y) = (DeviceId([0x11; 32]), DeviceId([0x22; 32]));
    let blobs = [
        sealed_by(&f, x, x, 1, 1, &[]),
        sealed_by(&f, x, x, 2, 2, &[]),
        sealed_by(&f, y, y, 5, 1, &[(x, 4), (ME, 9)]),
    ];
    let events = apply_all(&mut f, &blobs);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, PullEvent::Message { .. }))
    );
    assert_eq!(gap_events(&f.store.state), vec![]);
    assert_eq!(
        withheld_events(&f.store.state),
        vec![PullEvent::Withheld {
            sender: hex::encode(x.0),
            first: 3,
            last: 4,
            claimed_by: hex::encode(y.0),
        }]
    );
    // Delivered later: no longer withheld.
    let late = [
        sealed_by(&f, x, x, 6, 3, &[]),
        sealed_by(&f, x, x, 7, 4, &[]),
    ];
    apply_all(&mut f, &late);
    assert_eq!(withheld_events(&f.store.state), vec![]);
    // The view this device seals names both, most recent first.
    let view = crate::withheld::own_view(&f.store.state, &ME);
    let named: Vec<(DeviceId, u64)> = view.entries().iter().map(|e| (e.device, e.seq)).collect();
    assert_eq!(named, vec![(x, 4), (y, 1)]);
}

#[test]
fn refused_numbers_of_new_senders_leave_no_record() {
    // Were empty records kept, they would count as devices known only from
    // views and escape both caps.
    let mut f = fixture();
    let blobs: Vec<PulledBlob> = (1..=20u8)
        .map(|i| {
            sealed_by(
                &f,
                DeviceId([i; 32]),
                DeviceId([i; 32]),
                u64::from(i),
                u64::MAX,
                &[],
            )
        })
        .collect();
    let events = apply_all(&mut f, &blobs);
    assert_eq!(events.len(), 20);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, PullEvent::Rejected { .. }))
    );
    assert!(
        f.store.state.senders.is_empty(),
        "{:?}",
        f.store.state.senders
    );
}

fn chunk(index: u32, offset: u64, end: Option<FileEnd>) -> BlobKind {
    BlobKind::FileChunk(FileChunk {
        file_id: [4; 16],
        name: "f.bin".into(),
        mode: 0o640,
        index,
        offset,
        size_hint: Some(6),
        end,
    })
}

#[test]
fn a_file_survives_a_crash_between_verification_and_rename() {
    let mut f = fixture();
    let end = FileEnd {
        chunks: 2,
        size: 6,
        blake3: *blake3::hash(b"abcdef").as_bytes(),
    };
    let c0 = blob(&f, 1, 1, 1, chunk(0, 0, None), b"abc");
    let c1 = blob(&f, 2, 2, 2, chunk(1, 3, Some(end)), b"def");
    apply_all(&mut f, &[c0]);
    // Simulate the crash: the last chunk was written and the state says
    // `completing` (with its sequence number seen and the cursor at it,
    // as `apply_chunk` saves them), but the rename never happened.
    let key = hex::encode([4u8; 16]);
    f.store
        .state
        .senders
        .get_mut(&hex::encode(SENDER.0))
        .unwrap()
        .observe(2);
    f.store.state.cursor = 2;
    {
        let p = f.store.state.partials.get_mut(&key).unwrap();
        p.end = Some((2, 6, blake3::hash(b"abcdef").to_hex().to_string()));
        p.completing = true;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(&p.temp_path)
            .unwrap();
        file.seek(SeekFrom::Start(3)).unwrap();
        file.write_all(b"def").unwrap();
    }
    f.store.save().unwrap();
    let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), f.dir.path().join("out"));
    let mut events = Vec::new();
    receiver
        .recover(&mut f.store, &mut |e| events.push(e))
        .unwrap();
    assert!(
        matches!(&events[0], PullEvent::File { size: 6, .. }),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.dir.path().join("out/f.bin")).unwrap(),
        b"abcdef"
    );
    assert!(f.store.state.partials.is_empty());
    // The last chunk served again afterwards is a replay, not a new file.
    let events = apply_all(&mut f, &[c1]);
    assert!(
        matches!(events[..], [PullEvent::Replay { seq: 2, .. }]),
        "{events:?}"
    );
    assert!(f.store.state.partials.is_empty(), "no stuck partial");
}

#[test]
fn an_abandoned_file_is_removed_and_its_numbers_are_no_gap() {
    let mut f = fixture();
    let c0 = blob(&f, 1, 1, 1, chunk(0, 0, None), b"abc");
    let void = blob(
        &f,
        2,
        2,
        5,
        BlobKind::Void {
            file_id: Some([4; 16]),
            first_seq: 1,
            last_seq: 4,
        },
        b"",
    );
    let events = apply_all(&mut f, &[c0, void]);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, PullEvent::Abandoned { name: Some(n), .. } if n == "f.bin"))
    );
    assert!(f.store.state.partials.is_empty());
    assert!(gap_events(&f.store.state).is_empty());
    let left: Vec<_> = std::fs::read_dir(f.dir.path().join("out"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "partial file removed");
}

// ---- Where files land (crate::place) ----

const OTHER: DeviceId = DeviceId([8; 32]);

/// A complete one-chunk file `name` with `content`, from `sender` at `seq`,
/// as version (`lineage`, `generation`) — or without a version (`None`).
fn file_blob(
    f: &Fixture,
    sender: DeviceId,
    cursor: u64,
    seq: u64,
    name: &str,
    content: &[u8],
    version: Option<(u8, u64)>,
) -> PulledBlob {
    let file_id = *blake3::hash(&[&sender.0[..], &seq.to_be_bytes(), name.as_bytes()].concat())
        .as_bytes()
        .first_chunk::<16>()
        .unwrap();
    let chunk = FileChunk {
        file_id,
        name: name.into(),
        mode: 0o644,
        index: 0,
        offset: 0,
        size_hint: Some(content.len() as u64),
        end: Some(FileEnd {
            chunks: 1,
            size: content.len() as u64,
            blake3: *blake3::hash(content).as_bytes(),
        }),
    };
    let kind = match version {
        Some((lineage, generation)) => BlobKind::VersionedChunk {
            chunk,
            version: FileVersion {
                lineage: [lineage; 16],
                generation,
                device: Some("laptop".into()),
            },
        },
        None => BlobKind::FileChunk(chunk),
    };
    let blob_id = BlobId(file_id);
    let header = BlobHeader {
        kind,
        sender,
        seq,
        created_at_ms: 1,
        compression: Compression::None,
        body_len: 0,
        view: Default::default(),
    };
    PulledBlob {
        cursor,
        blob_id,
        sender,
        created_at: 1,
        payload: seal(&f.keys, &blob_id, header, content, 1 << 20).unwrap(),
    }
}

/// The events of applying `blobs`, progress left out.
fn outcomes(f: &mut Fixture, blobs: &[PulledBlob]) -> Vec<PullEvent> {
    let mut events = apply_all(f, blobs);
    events.retain(|e| !matches!(e, PullEvent::Progress { .. }));
    events
}

fn out(f: &Fixture) -> PathBuf {
    f.dir.path().join("out")
}

/// Names in the output directory, sorted (temp files included).
fn listing(f: &Fixture) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(out(f))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn read(f: &Fixture, name: &str) -> Vec<u8> {
    std::fs::read(out(f).join(name)).unwrap()
}

/// `NAME (conflict DEVICE YYYY-MM-DD HH.MM).EXT`.
fn is_conflict_name(name: &str, stem: &str, device: &str, ext: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("{stem} (conflict {device} ")) else {
        return false;
    };
    let Some(when) = rest.strip_suffix(&format!("){ext}")) else {
        return false;
    };
    let b = when.as_bytes();
    when.len() == 16
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b' ',
            13 => *c == b'.',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn a_local_file_is_kept_and_the_received_one_saved_beside_it() {
    let mut f = fixture();
    std::fs::create_dir_all(out(&f)).unwrap();
    std::fs::write(out(&f).join("note.txt"), b"my local edits").unwrap();
    let b = file_blob(&f, SENDER, 1, 1, "note.txt", b"remote", Some((1, 1)));
    let events = outcomes(&mut f, &[b]);
    let [PullEvent::Conflict { path, kept, .. }] = &events[..] else {
        panic!("{events:?}")
    };
    assert_eq!(read(&f, "note.txt"), b"my local edits");
    assert_eq!(kept, &out(&f).join("note.txt"));
    let saved = path.file_name().unwrap().to_str().unwrap();
    assert!(is_conflict_name(saved, "note", "laptop", ".txt"), "{saved}");
    assert_eq!(std::fs::read(path).unwrap(), b"remote");
    assert_eq!(listing(&f).len(), 2, "{:?}", listing(&f));
    assert!(
        f.store.state.files.is_empty(),
        "a conflict copy is not a version written at the name"
    );
}

#[test]
fn identical_content_is_nothing_to_do() {
    let mut f = fixture();
    std::fs::create_dir_all(out(&f)).unwrap();
    std::fs::write(out(&f).join("same.txt"), b"same bytes").unwrap();
    let b = file_blob(&f, SENDER, 1, 1, "same.txt", b"same bytes", Some((1, 1)));
    let events = outcomes(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::File { .. }]),
        "{events:?}"
    );
    assert_eq!(listing(&f), ["same.txt"]);
    // The version is now known there: a newer one replaces it.
    let b = file_blob(&f, SENDER, 2, 2, "same.txt", b"v2", Some((1, 2)));
    outcomes(&mut f, &[b]);
    assert_eq!(read(&f, "same.txt"), b"v2");
    assert_eq!(listing(&f), ["same.txt"]);
}

#[test]
fn a_newer_version_replaces_the_one_this_device_wrote() {
    let mut f = fixture();
    let v1 = file_blob(&f, SENDER, 1, 1, "doc.md", b"version 1", Some((1, 1)));
    let v2 = file_blob(&f, OTHER, 2, 1, "doc.md", b"version 2", Some((1, 2)));
    let events = outcomes(&mut f, &[v1, v2]);
    assert!(
        matches!(
            &events[..],
            [PullEvent::File { .. }, PullEvent::File { .. }]
        ),
        "{events:?}"
    );
    assert_eq!(read(&f, "doc.md"), b"version 2");
    assert_eq!(listing(&f), ["doc.md"]);
}

#[test]
fn a_file_edited_here_is_kept_when_a_newer_version_arrives() {
    let mut f = fixture();
    let v1 = file_blob(&f, SENDER, 1, 1, "doc.md", b"version 1", Some((1, 1)));
    outcomes(&mut f, &[v1]);
    std::fs::write(out(&f).join("doc.md"), b"edited here").unwrap();
    let v2 = file_blob(&f, SENDER, 2, 2, "doc.md", b"version 2", Some((1, 2)));
    let events = outcomes(&mut f, &[v2]);
    assert!(
        matches!(&events[..], [PullEvent::Conflict { .. }]),
        "{events:?}"
    );
    assert_eq!(read(&f, "doc.md"), b"edited here");
    assert_eq!(listing(&f).len(), 2);
}

#[test]
fn an_older_version_never_replaces_a_newer_one() {
    // The relay delivers version 2 first, then version 1 of the same file,
    // in one pull: version 1 is reported outdated and not written.
    let mut f = fixture();
    let v2 = file_blob(&f, SENDER, 1, 2, "doc.md", b"version 2", Some((1, 2)));
    let v1 = file_blob(&f, SENDER, 2, 1, "doc.md", b"version 1", Some((1, 1)));
    let events = outcomes(&mut f, &[v2, v1]);
    assert!(
        matches!(
            &events[..],
            [
                PullEvent::File { .. },
                PullEvent::Outdated { cursor: 2, .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(read(&f, "doc.md"), b"version 2");
    assert_eq!(listing(&f), ["doc.md"]);
    // Files of senders without versions: ordered by sequence number.
    let w5 = file_blob(&f, OTHER, 3, 5, "old.txt", b"seq 5", None);
    let w3 = file_blob(&f, OTHER, 4, 3, "old.txt", b"seq 3", None);
    let events = outcomes(&mut f, &[w5, w3]);
    assert!(
        matches!(
            &events[..],
            [
                PullEvent::File { .. },
                PullEvent::Outdated { cursor: 4, .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(read(&f, "old.txt"), b"seq 5");
}

#[test]
fn concurrent_versions_and_other_histories_become_conflict_copies() {
    let mut f = fixture();
    let base = file_blob(&f, SENDER, 1, 1, "plan.txt", b"base", Some((1, 1)));
    // Two devices each made generation 2 from generation 1.
    let mine = file_blob(&f, SENDER, 2, 2, "plan.txt", b"edit A", Some((1, 2)));
    let theirs = file_blob(&f, OTHER, 3, 1, "plan.txt", b"edit B", Some((1, 2)));
    // An unrelated file that happens to have the same name.
    let unrelated = file_blob(&f, OTHER, 4, 2, "plan.txt", b"other", Some((7, 9)));
    let events = outcomes(&mut f, &[base, mine, theirs, unrelated]);
    assert!(
        matches!(
            &events[..],
            [
                PullEvent::File { .. },
                PullEvent::File { .. },
                PullEvent::Conflict { .. },
                PullEvent::Conflict { .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(read(&f, "plan.txt"), b"edit A");
    assert_eq!(listing(&f).len(), 3, "{:?}", listing(&f));
}

#[test]
fn symlinks_and_directories_at_the_name_are_never_followed_or_replaced() {
    let mut f = fixture();
    std::fs::create_dir_all(out(&f)).unwrap();
    let victim = f.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, out(&f).join(".bashrc")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/dangling", out(&f).join("dangling")).unwrap();
    std::fs::create_dir(out(&f).join("dir")).unwrap();
    let blobs = [
        file_blob(&f, SENDER, 1, 1, ".bashrc", b"evil", Some((1, 1))),
        file_blob(&f, SENDER, 2, 2, "dangling", b"evil", Some((2, 1))),
        file_blob(&f, SENDER, 3, 3, "dir", b"evil", Some((3, 1))),
    ];
    let events = outcomes(&mut f, &blobs);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, PullEvent::Conflict { .. })),
        "{events:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(
        std::fs::symlink_metadata(out(&f).join("dangling"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(!std::path::Path::new("/nonexistent/dangling").exists());
    assert!(out(&f).join("dir").is_dir());
}

#[test]
fn a_symlink_planted_at_the_temp_name_is_not_followed() {
    let mut f = fixture();
    std::fs::create_dir_all(out(&f)).unwrap();
    let victim = f.dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let b = file_blob(&f, SENDER, 1, 1, "x.bin", b"payload", Some((1, 1)));
    let opened = envelope::open(&f.keys, &b.blob_id, &b.payload).unwrap();
    let (chunk, _) = opened.header.kind.chunk().unwrap();
    let temp = out(&f).join(format!(".0k-sync-{}.part", hex::encode(chunk.file_id)));
    std::os::unix::fs::symlink(&victim, &temp).unwrap();
    let events = outcomes(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::File { .. }]),
        "{events:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(read(&f, "x.bin"), b"payload");
    assert_eq!(listing(&f), ["x.bin"]);
}

#[test]
fn modes_are_reduced_and_hostile_names_refused() {
    use std::os::unix::fs::PermissionsExt;
    let mut f = fixture();
    let mut b = file_blob(&f, SENDER, 1, 1, "tool", b"#!/bin/sh\n", Some((1, 1)));
    // Re-seal with setuid, world-writable bits.
    let mut opened = envelope::open(&f.keys, &b.blob_id, &b.payload).unwrap();
    if let BlobKind::VersionedChunk { chunk, .. } = &mut opened.header.kind {
        chunk.mode = 0o6777;
    }
    b.payload = seal(
        &f.keys,
        &b.blob_id,
        opened.header,
        opened.body.as_slice(),
        1 << 20,
    )
    .unwrap();
    outcomes(&mut f, &[b]);
    let mode = std::fs::metadata(out(&f).join("tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755 & !crate::place::umask(), "{mode:o}");
    for (i, name) in ["\x1b]0;pwned\x07", "a\nb", ".0k-sync-x.part"]
        .iter()
        .enumerate()
    {
        let b = file_blob(&f, SENDER, 2 + i as u64, 2 + i as u64, name, b"x", None);
        let events = outcomes(&mut f, &[b]);
        assert!(
            matches!(&events[..], [PullEvent::Rejected { reason, .. }] if reason.contains("malformed")),
            "{name:?}: {events:?}"
        );
    }
    assert_eq!(listing(&f), ["tool"]);
}

#[test]
fn the_number_of_senders_and_of_partial_files_is_capped() {
    let mut f = fixture();
    // MAX_SENDERS devices each send a message; one more is not tracked.
    let msgs: Vec<PulledBlob> = (0..=MAX_SENDERS as u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let sender = DeviceId(id);
            let blob_id = BlobId([i as u8; 16]);
            let header = BlobHeader {
                kind: BlobKind::Message,
                sender,
                seq: 1,
                created_at_ms: 1,
                compression: Compression::None,
                body_len: 0,
                view: Default::default(),
            };
            PulledBlob {
                cursor: u64::from(i) + 1,
                blob_id,
                sender,
                created_at: 1,
                payload: seal(&f.keys, &blob_id, header, b"m", 1 << 20).unwrap(),
            }
        })
        .collect();
    let events = outcomes(&mut f, &msgs);
    assert_eq!(f.store.state.senders.len(), MAX_SENDERS);
    assert!(
        matches!(events.last(), Some(PullEvent::Rejected { reason, .. }) if reason.contains("devices sent blobs")),
        "{:?}",
        events.last()
    );
    // MAX_PARTIAL_FILES files started (first chunks only); one more is not.
    let mut f = fixture();
    let starts: Vec<PulledBlob> = (0..=MAX_PARTIAL_FILES as u64)
        .map(|i| {
            let kind = BlobKind::FileChunk(FileChunk {
                file_id: *blake3::hash(&i.to_be_bytes())
                    .as_bytes()
                    .first_chunk::<16>()
                    .unwrap(),
                name: format!("f{i}"),
                mode: 0o644,
                index: 0,
                offset: 0,
                size_hint: None,
                end: None,
            });
            blob(&f, i + 1, i as u8, i + 1, kind, b"part")
        })
        .collect();
    let events = outcomes(&mut f, &starts);
    assert_eq!(f.store.state.partials.len(), MAX_PARTIAL_FILES);
    assert!(
        matches!(events.last(), Some(PullEvent::Rejected { reason, .. }) if reason.contains("already being received")),
        "{:?}",
        events.last()
    );
    assert_eq!(listing(&f).len(), MAX_PARTIAL_FILES, "no temp file for it");
}

mod paths;

#[test]
fn running_hash_covers_only_files_written_in_order_from_the_start() {
    let f = fixture();
    let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), f.dir.path().join("out"));
    let a = Path::new("/tmp/a.part");
    receiver.hash_written(a, true, 0, b"abc");
    receiver.hash_written(a, false, 3, b"def");
    assert_eq!(
        receiver.hash_of_written(a, 6),
        Some(blake3::hash(b"abcdef")),
        "in order from byte 0"
    );
    assert_eq!(receiver.hash_of_written(a, 6), None, "taken once");
    receiver.hash_written(a, true, 0, b"abc");
    assert_eq!(receiver.hash_of_written(a, 6), None, "short of the size");
    receiver.hash_written(a, true, 0, b"abc");
    receiver.hash_written(a, false, 4, b"def");
    assert_eq!(receiver.hash_of_written(a, 6), None, "a gap");
    receiver.hash_written(a, true, 0, b"abc");
    receiver.hash_written(a, false, 2, b"def");
    assert_eq!(receiver.hash_of_written(a, 6), None, "an overlap");
    receiver.hash_written(a, true, 3, b"def");
    receiver.hash_written(a, false, 0, b"abc");
    assert_eq!(receiver.hash_of_written(a, 6), None, "out of order");
}

#[test]
fn overlapping_chunks_are_verified_against_what_is_on_disk() {
    // Chunk 1 overwrites the last byte of chunk 0: the file on disk is
    // "abdef" + one zero byte (set to its size), not the 6 bytes received.
    let mut f = fixture();
    let on_disk = b"abdef\0";
    let end = FileEnd {
        chunks: 2,
        size: 6,
        blake3: *blake3::hash(on_disk).as_bytes(),
    };
    let c0 = blob(&f, 1, 1, 1, chunk(0, 0, None), b"abc");
    let c1 = blob(&f, 2, 2, 2, chunk(1, 2, Some(end)), b"def");
    let events = apply_all(&mut f, &[c0, c1]);
    assert!(
        matches!(&events.last(), Some(PullEvent::File { size: 6, .. })),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.dir.path().join("out/f.bin")).unwrap(),
        on_disk
    );
}

#[test]
fn chunks_out_of_order_make_the_same_file() {
    let mut f = fixture();
    let end = FileEnd {
        chunks: 2,
        size: 6,
        blake3: *blake3::hash(b"abcdef").as_bytes(),
    };
    let c0 = blob(&f, 1, 1, 1, chunk(0, 0, None), b"abc");
    let c1 = blob(&f, 2, 2, 2, chunk(1, 3, Some(end)), b"def");
    let events = apply_all(&mut f, &[c1, c0]);
    assert!(
        matches!(&events.last(), Some(PullEvent::File { size: 6, .. })),
        "{events:?}"
    );
    assert_eq!(
        std::fs::read(f.dir.path().join("out/f.bin")).unwrap(),
        b"abcdef"
    );
}

/// A file that comes whole in one blob is not saved on its own (the
/// pull saves every few frames and at its end: docs/client.md
/// "Receiving"), and a crash before that save loses nothing: the blob
/// pulled again finds the same content in place, with no conflict copy
/// and no rejection, and then the version is known there.
#[test]
fn a_one_blob_file_is_left_to_the_pulls_save_and_survives_a_crash_before_it() {
    let mut f = fixture();
    f.store.save().unwrap();
    let path = f.dir.path().join("state.json");
    let b = file_blob(&f, SENDER, 1, 1, "note.txt", b"remote", Some((1, 1)));
    let events = outcomes(&mut f, std::slice::from_ref(&b));
    assert!(
        matches!(&events[..], [PullEvent::File { .. }]),
        "{events:?}"
    );
    assert_eq!(read(&f, "note.txt"), b"remote");
    // Nothing saved yet: the state on disk is the one from before.
    let on_disk = StateStore::open(path.clone()).unwrap();
    assert_eq!(on_disk.state.cursor, 0);
    assert!(on_disk.state.files.is_empty());
    // The crash: the state in memory is gone; the relay serves the blob
    // again.
    f.store = on_disk;
    let events = outcomes(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::File { .. }]),
        "{events:?}"
    );
    assert_eq!(listing(&f), ["note.txt"]);
    assert_eq!(read(&f, "note.txt"), b"remote");
    assert_eq!(f.store.state.cursor, 1);
    assert_eq!(f.store.state.files.len(), 1);
    // A newer version now replaces it (it is known as the one written).
    let newer = file_blob(&f, SENDER, 2, 2, "note.txt", b"v2", Some((1, 2)));
    outcomes(&mut f, &[newer]);
    assert_eq!(read(&f, "note.txt"), b"v2");
    assert_eq!(listing(&f), ["note.txt"]);
}

/// Two newer versions of one name in one pull (one blob each), then a
/// crash before the pull's save: each replacement was saved at once, so
/// the blobs served again are replays and no conflict copy appears (with
/// neither saved, the first would have met the second's content as a
/// stranger's file and been saved beside it).
#[test]
fn one_blob_replacements_are_saved_so_a_crash_makes_no_conflict_copy() {
    let mut f = fixture();
    let v1 = file_blob(&f, SENDER, 1, 1, "note.txt", b"v1", Some((1, 1)));
    outcomes(&mut f, &[v1]);
    f.store.save().unwrap();
    let v2 = file_blob(&f, SENDER, 2, 2, "note.txt", b"v2", Some((1, 2)));
    let v3 = file_blob(&f, SENDER, 3, 3, "note.txt", b"v3", Some((1, 3)));
    outcomes(&mut f, &[v2.clone(), v3.clone()]);
    assert_eq!(read(&f, "note.txt"), b"v3");
    // The crash: back to the state on disk; the relay serves both again.
    f.store = StateStore::open(f.dir.path().join("state.json")).unwrap();
    let events = outcomes(&mut f, &[v2, v3]);
    assert!(
        events
            .iter()
            .all(|e| matches!(e, PullEvent::Replay { .. } | PullEvent::File { .. })),
        "{events:?}"
    );
    assert_eq!(listing(&f), ["note.txt"]);
    assert_eq!(read(&f, "note.txt"), b"v3");
}

/// A one-blob file that meets a local file is saved beside it, and that
/// is saved at once: after a crash the blob served again is a replay,
/// not a second conflict copy.
#[test]
fn a_one_blob_conflict_is_saved_so_a_crash_makes_no_second_copy() {
    let mut f = fixture();
    f.store.save().unwrap();
    std::fs::create_dir_all(out(&f)).unwrap();
    std::fs::write(out(&f).join("note.txt"), b"my local edits").unwrap();
    let b = file_blob(&f, SENDER, 1, 1, "note.txt", b"remote", Some((1, 1)));
    let events = outcomes(&mut f, std::slice::from_ref(&b));
    assert!(
        matches!(&events[..], [PullEvent::Conflict { .. }]),
        "{events:?}"
    );
    f.store = StateStore::open(f.dir.path().join("state.json")).unwrap();
    let events = outcomes(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::Replay { .. }]),
        "{events:?}"
    );
    assert_eq!(listing(&f).len(), 2, "{:?}", listing(&f));
    assert_eq!(read(&f, "note.txt"), b"my local edits");
}

/// A local I/O error stops a file chunk before it is written (here the
/// output directory cannot be made); the pull then saves what it applied.
/// The relay serves the blob again (the cursor did not move past it): it
/// must be applied as new, not taken for a replay of a number already
/// seen, which would leave the file unwritten for good.
#[test]
fn a_chunk_stopped_by_a_local_error_is_applied_when_served_again() {
    let mut f = fixture();
    let b = file_blob(&f, SENDER, 1, 1, "note.txt", b"remote", Some((1, 1)));
    std::fs::write(out(&f), b"a file where the output directory goes").unwrap();
    let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), out(&f));
    let failed = receiver.apply(b.clone(), &mut f.store, &mut |_| {});
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(f.store.state.cursor, 0);
    // The pull's save after a failed round, then a new process.
    f.store.save().unwrap();
    f.store = StateStore::open(f.dir.path().join("state.json")).unwrap();
    std::fs::remove_file(out(&f)).unwrap();
    let events = outcomes(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::File { .. }]),
        "{events:?}"
    );
    assert_eq!(read(&f, "note.txt"), b"remote");
}

/// A local I/O error while a complete file is put in place (here the push
/// journals cannot be listed): the pull's save after the failed round
/// keeps the file's record, marked completing, and the next pull's
/// `recover` finishes it — the cursor is already past its last chunk, so
/// the relay would not serve it again.
#[test]
fn a_file_stopped_while_put_in_place_is_finished_by_the_next_pull() {
    for chunks in [1, 2] {
        let mut f = fixture();
        let content = b"remote content in two halves";
        let (head, tail) = content.split_at(10);
        let end = FileEnd {
            chunks,
            size: content.len() as u64,
            blake3: *blake3::hash(content).as_bytes(),
        };
        let blobs = if chunks == 1 {
            vec![blob(&f, 1, 1, 1, chunk(0, 0, Some(end)), content)]
        } else {
            vec![
                blob(&f, 1, 1, 1, chunk(0, 0, None), head),
                blob(&f, 2, 2, 2, chunk(1, 10, Some(end)), tail),
            ]
        };
        let transfers = f.dir.path().join("transfers");
        std::fs::write(&transfers, b"not a directory").unwrap();
        let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), out(&f));
        let (last, first) = blobs.split_last().unwrap();
        for b in first {
            receiver
                .apply(b.clone(), &mut f.store, &mut |_| {})
                .unwrap();
        }
        let failed = receiver.apply(last.clone(), &mut f.store, &mut |_| {});
        assert!(failed.is_err(), "{chunks} chunk(s): {failed:?}");
        f.store.save().unwrap();
        std::fs::remove_file(&transfers).unwrap();
        f.store = StateStore::open(f.dir.path().join("state.json")).unwrap();
        let mut events = Vec::new();
        receiver
            .recover(&mut f.store, &mut |e| events.push(e))
            .unwrap();
        assert!(
            matches!(&events[..], [PullEvent::File { .. }]),
            "{chunks} chunk(s): {events:?}"
        );
        assert_eq!(read(&f, "f.bin"), content, "{chunks} chunk(s)");
        assert!(f.store.state.partials.is_empty());
    }
}

/// The error comes after the file was put in place (the save right after
/// a conflict copy fails): the chunk reached disk, so its number stays
/// seen and the blob served again is a replay — not a second conflict
/// copy, and no false gap later.
#[test]
fn a_save_that_fails_after_the_file_was_placed_keeps_its_number_seen() {
    let mut f = fixture();
    std::fs::create_dir_all(out(&f)).unwrap();
    std::fs::write(out(&f).join("note.txt"), b"my local edits").unwrap();
    // A non-empty directory where state.json goes: every save fails.
    let state = f.dir.path().join("state.json");
    std::fs::create_dir_all(state.join("blocked")).unwrap();
    let b = file_blob(&f, SENDER, 1, 1, "note.txt", b"remote", Some((1, 1)));
    let receiver = Receiver::new(&f.keys, DeviceId([2; 32]), out(&f));
    let failed = receiver.apply(b.clone(), &mut f.store, &mut |_| {});
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(listing(&f).len(), 2, "the conflict copy was made");
    std::fs::remove_dir_all(&state).unwrap();
    f.store.save().unwrap();
    let events = outcomes(&mut f, &[b]);
    assert!(
        matches!(&events[..], [PullEvent::Replay { .. }]),
        "{events:?}"
    );
    assert_eq!(listing(&f).len(), 2, "{:?}", listing(&f));
}
