use super::*;
use crate::journal::{JOURNAL_VERSION, PushJournal};
use std::collections::HashSet;

fn blocks(home: &Path) -> SeqReserver {
    let mut r = SeqReserver::new(home);
    r.use_blocks();
    r
}

fn recorded(home: &Path) -> Vec<(u64, u64)> {
    read_seq_file(&home.join("seq.json"))
        .unwrap()
        .blocks
        .iter()
        .map(|b| (b.first, b.last))
        .collect()
}

fn journal_naming(home: &Path, first: u64, last: u64) {
    let j = PushJournal {
        version: JOURNAL_VERSION,
        source: None,
        name: "stdin".into(),
        mode: 0o644,
        ttl_s: None,
        file_id: hex::encode([7u8; 16]),
        chunk_size: 1000,
        chunks: None,
        first_seq: first,
        last_seq: last,
        acked: 0,
        cursors: None,
        complete: None,
        lineage: None,
        generation: 0,
        device: None,
        completed_at_ms: 0,
    };
    Journals::at(home.join("transfers")).save(&j).unwrap();
}

#[test]
fn two_reservers_of_one_home_never_share_a_number() {
    let dir = tempfile::tempdir().unwrap();
    // Interleaved by hand: each new block must start past the other's.
    let mut a = blocks(dir.path());
    let mut b = blocks(dir.path());
    let mut exact = SeqReserver::new(dir.path());
    let mut seen = HashSet::new();
    for round in 0..300u64 {
        for r in [&mut a, &mut b, &mut exact] {
            let n = 1 + round % 3;
            let first = r.reserve_then(n, |_| Ok(())).unwrap();
            for s in first..first + n {
                assert!(seen.insert(s), "number {s} handed out twice");
            }
        }
    }
    // And from threads, each with its own reserver (its own lock files, as
    // two processes would have).
    let home = dir.path().to_path_buf();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let home = home.clone();
            std::thread::spawn(move || {
                let mut r = blocks(&home);
                let mut mine = Vec::new();
                for i in 0..400u64 {
                    let first = r.reserve_then(1 + i % 2, |_| Ok(())).unwrap();
                    mine.extend(first..first + 1 + i % 2);
                }
                mine
            })
        })
        .collect();
    for t in threads {
        for s in t.join().unwrap() {
            assert!(seen.insert(s), "number {s} handed out twice");
        }
    }
}

#[test]
fn a_dead_owners_block_is_voided_except_journaled_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut a = blocks(home);
    assert_eq!(a.reserve_then(3, |_| Ok(())).unwrap(), 1);
    // A journaled push draws 4..=6 from the block.
    let first = a
        .reserve_then(3, |first| {
            journal_naming(home, first, first + 2);
            Ok(())
        })
        .unwrap();
    assert_eq!(first, 4);
    assert_eq!(a.reserve_then(1, |_| Ok(())).unwrap(), 7);
    assert_eq!(recorded(home), vec![(1, FIRST_BLOCK)]);
    drop(a); // as a crash: no release, the lock goes with the process
    let mut b = SeqReserver::new(home);
    assert_eq!(b.reserve_then(1, |_| Ok(())).unwrap(), FIRST_BLOCK + 1);
    let voids = b.take_voids().unwrap();
    assert_eq!(voids.len(), 1);
    assert_eq!(voids[0].ranges, vec![(1, 3), (7, FIRST_BLOCK)]);
    b.voided(&[voids[0].id.clone()]).unwrap();
    assert!(recorded(home).is_empty());
    assert!(b.take_voids().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(home.join("seq-blocks")).unwrap().count(),
        0,
        "the block's lock file is removed"
    );
}

#[test]
fn a_live_owners_block_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = blocks(dir.path());
    a.reserve_then(1, |_| Ok(())).unwrap();
    let mut b = SeqReserver::new(dir.path());
    b.reserve_then(1, |_| Ok(())).unwrap();
    assert!(b.take_voids().unwrap().is_empty());
    assert_eq!(a.reserve_then(1, |_| Ok(())).unwrap(), 2);
}

#[test]
fn release_voids_only_the_unused_rest_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut a = blocks(home);
    a.reserve_then(5, |_| Ok(())).unwrap();
    a.release().unwrap();
    // Recorded as the rest, so a crash before the void covers no used number.
    assert_eq!(recorded(home), vec![(6, FIRST_BLOCK)]);
    let voids = a.take_voids().unwrap();
    assert_eq!(voids[0].ranges, vec![(6, FIRST_BLOCK)]);
    drop(a);
    let b = {
        let mut b = SeqReserver::new(home);
        b.reserve_then(1, |_| Ok(())).unwrap();
        b
    };
    assert_eq!(b.take_voids().unwrap()[0].ranges, vec![(6, FIRST_BLOCK)]);
}

#[test]
fn blocks_grow_while_used_up_fast_and_one_write_serves_a_block() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut a = blocks(home);
    for s in 1..=FIRST_BLOCK {
        assert_eq!(a.reserve_then(1, |_| Ok(())).unwrap(), s);
    }
    // One durable write for the whole first block.
    assert_eq!(a.next_seq().unwrap(), FIRST_BLOCK + 1);
    a.reserve_then(1, |_| Ok(())).unwrap();
    assert_eq!(a.next_seq().unwrap(), FIRST_BLOCK + 1 + 2 * FIRST_BLOCK);
    // The used-up block is forgotten once "voided" (nothing to void).
    let voids = a.take_voids().unwrap();
    assert_eq!(voids.len(), 1);
    assert!(voids[0].ranges.is_empty());
}

#[test]
fn exact_mode_moves_the_counter_by_what_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = SeqReserver::new(dir.path());
    assert_eq!(r.reserve_then(3, |_| Ok(())).unwrap(), 1);
    assert_eq!(r.next_seq().unwrap(), 4);
    assert!(recorded(dir.path()).is_empty());
}
