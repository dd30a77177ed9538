//! Small files pushed in batches (docs/client.md "Batched small files")
//! against the real relay: every file arrives whole as its own file
//! transfer, one sequence number each, and no batch journal is left; a
//! batch interrupted before it was sent is resumed by the next call with
//! the numbers its journal holds, and the numbers of its files that are
//! not pushed again are voided (receivers report no gap).

use e2e_tests::{LibDevice, RelayProcess};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use sync_client::journal::batch::{BatchJournal, BatchJournals};
use sync_client::journal::{JOURNAL_VERSION, PushJournal, SourceFingerprint};
use sync_client::{GroupSecret, PullEvent, PushOptions, SmallFile, StateStore, SyncClient};

/// Pull everything: (file name → content, gaps, replays).
async fn pull_files(
    client: &SyncClient,
    state: &mut StateStore,
) -> (BTreeMap<String, Vec<u8>>, Vec<(u64, u64)>, usize) {
    let out = tempfile::tempdir().unwrap();
    let (mut files, mut gaps, mut replays) = (BTreeMap::new(), Vec::new(), 0);
    client
        .pull(state, out.path(), &mut |e| match e {
            PullEvent::File { name, path, .. } => {
                files.insert(name, std::fs::read(path).unwrap());
            }
            PullEvent::Gap { first, last, .. } => gaps.push((first, last)),
            PullEvent::Replay { .. } => replays += 1,
            _ => {}
        })
        .await
        .unwrap();
    (files, gaps, replays)
}

/// `n` files `f000…` of 1..=3000 pseudo-random bytes in `dir`.
fn write_files(dir: &Path, n: usize) -> Vec<(PathBuf, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let mut content = e2e_tests::random_bytes(1 + (i * 397) % 3000);
            content[0] = i as u8;
            let path = dir.join(format!("f{i:03}"));
            std::fs::write(&path, &content).unwrap();
            (path, content)
        })
        .collect()
}

fn small(path: &Path) -> SmallFile {
    SmallFile {
        path: path.to_path_buf(),
        name: path.file_name().unwrap().to_string_lossy().into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_files_go_out_in_batches_and_arrive_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let secret = GroupSecret::generate();
    let a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // More than a request holds (max_batch 256), so several requests.
    let written = write_files(&src, 300);
    let client = a.connect().await;
    let too_big = src.join("big");
    std::fs::write(&too_big, vec![7u8; client.chunk_size() + 1]).unwrap();
    let mut files: Vec<SmallFile> = written.iter().map(|(p, _)| small(p)).collect();
    files.push(small(&too_big));
    let mut state = StateStore::open(a.state.path()).unwrap();
    let mut results = BTreeMap::new();
    client
        .push_small_files(&mut state, &files, &PushOptions::default(), &mut |i, r| {
            assert!(results.insert(i, r).is_none(), "file {i} reported twice");
        })
        .await
        .unwrap();
    assert_eq!(results.len(), files.len(), "every file is reported");
    for (i, (_, content)) in written.iter().enumerate() {
        let p = results[&i].as_ref().unwrap();
        assert_eq!((p.blobs, p.size), (1, content.len() as u64));
        assert_eq!(p.blake3, blake3::hash(content).to_hex().to_string());
    }
    assert!(
        matches!(
            results[&written.len()],
            Err(sync_client::ClientError::InvalidInput(_))
        ),
        "a file larger than one chunk is refused, not sent"
    );
    // One number a file, nothing voided or wasted.
    assert_eq!(state.next_seq().unwrap(), 301);
    let batches = BatchJournals::in_transfers(&state.dir().join("transfers"));
    assert!(
        batches.list().unwrap().is_empty(),
        "no batch journal is left"
    );
    client.close().await;
    let receiver = b.connect().await;
    let mut rs = StateStore::open(b.state.path()).unwrap();
    let (got, gaps, replays) = pull_files(&receiver, &mut rs).await;
    assert_eq!(got.len(), written.len());
    for (path, content) in &written {
        let name = path.file_name().unwrap().to_string_lossy();
        assert_eq!(got.get(name.as_ref()), Some(content), "{name}");
    }
    assert_eq!((gaps, replays), (vec![], 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_batch_is_resumed_with_its_numbers_and_the_rest_voided() {
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start(&tmp.path().join("data"));
    let secret = GroupSecret::generate();
    let a = LibDevice::new(&relay.address, &secret);
    let b = LibDevice::new(&relay.address, &secret);
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let written = write_files(&src, 3);
    let client = a.connect().await;
    let mut state = StateStore::open(a.state.path()).unwrap();
    // The batch as a process journals it just before it is killed: three
    // files, numbers 1..=3 reserved, nothing sent.
    let batches = BatchJournals::in_transfers(&state.dir().join("transfers"));
    let entries: Vec<PushJournal> = written
        .iter()
        .enumerate()
        .map(|(i, (path, _))| PushJournal {
            version: JOURNAL_VERSION,
            source: Some(SourceFingerprint::of(path).unwrap()),
            name: small(path).name,
            mode: std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
            ttl_s: None,
            file_id: hex::encode([i as u8 + 1; 16]),
            chunk_size: client.chunk_size(),
            chunks: Some(1),
            first_seq: 0,
            last_seq: 0,
            acked: 0,
            cursors: None,
            complete: None,
            lineage: Some(hex::encode([0x40 + i as u8; 16])),
            generation: 1,
            device: None,
            completed_at_ms: 0,
        })
        .collect();
    let mut batch = BatchJournal::new("dead".into(), entries);
    state
        .reserve_seqs_then(3, &batches.path_for("dead"), |first| {
            for (k, f) in batch.files.iter_mut().enumerate() {
                f.first_seq = first + k as u64;
                f.last_seq = first + k as u64;
            }
            batch.set_range();
            batches.save(&batch)
        })
        .unwrap();
    drop(state);
    // The next run: the third file is gone meanwhile.
    std::fs::remove_file(&written[2].0).unwrap();
    let mut state = StateStore::open(a.state.path()).unwrap();
    let files: Vec<SmallFile> = written[..2].iter().map(|(p, _)| small(p)).collect();
    let mut ok = 0;
    client
        .push_small_files(&mut state, &files, &PushOptions::default(), &mut |_, r| {
            r.unwrap();
            ok += 1;
        })
        .await
        .unwrap();
    assert_eq!(ok, 2);
    assert_eq!(
        state.next_seq().unwrap(),
        5,
        "the two files went out with their numbers 1 and 2; the void of 3 took 4"
    );
    assert!(
        batches.list().unwrap().is_empty(),
        "no batch journal is left"
    );
    client.close().await;
    let receiver = b.connect().await;
    let mut rs = StateStore::open(b.state.path()).unwrap();
    let (got, gaps, replays) = pull_files(&receiver, &mut rs).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got.get("f000"), Some(&written[0].1));
    assert_eq!(got.get("f001"), Some(&written[1].1));
    assert_eq!(
        (gaps, replays),
        (vec![], 0),
        "the third file's number is voided"
    );
}
