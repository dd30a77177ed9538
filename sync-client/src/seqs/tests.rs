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
    save_journal(home, &stdin_journal(first, last));
}

fn save_journal(home: &Path, j: &PushJournal) {
    Journals::at(home.join("transfers")).save(j).unwrap();
}

fn journal_file(home: &Path, j: &PushJournal) -> PathBuf {
    Journals::at(home.join("transfers")).path_for(j)
}

/// A stdin push's journal naming `first..=last` (0, 0: none yet).
fn stdin_journal(first: u64, last: u64) -> PushJournal {
    PushJournal {
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
    }
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
            let first = r.reserve_then(n, None, |_| Ok(())).unwrap();
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
                    let first = r.reserve_then(1 + i % 2, None, |_| Ok(())).unwrap();
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
    assert_eq!(a.reserve_then(3, None, |_| Ok(())).unwrap(), 1);
    // A journaled push draws 4..=6 from the block.
    let first = a
        .reserve_then(3, None, |first| {
            journal_naming(home, first, first + 2);
            Ok(())
        })
        .unwrap();
    assert_eq!(first, 4);
    assert_eq!(a.reserve_then(1, None, |_| Ok(())).unwrap(), 7);
    assert_eq!(recorded(home), vec![(1, FIRST_BLOCK)]);
    drop(a); // as a crash: no release, the lock goes with the process
    let mut b = SeqReserver::new(home);
    assert_eq!(
        b.reserve_then(1, None, |_| Ok(())).unwrap(),
        FIRST_BLOCK + 1
    );
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
    a.reserve_then(1, None, |_| Ok(())).unwrap();
    let mut b = SeqReserver::new(dir.path());
    b.reserve_then(1, None, |_| Ok(())).unwrap();
    assert!(b.take_voids().unwrap().is_empty());
    assert_eq!(a.reserve_then(1, None, |_| Ok(())).unwrap(), 2);
}

#[test]
fn release_voids_only_the_unused_rest_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut a = blocks(home);
    a.reserve_then(5, None, |_| Ok(())).unwrap();
    a.release().unwrap();
    // Recorded as the rest, so a crash before the void covers no used number.
    assert_eq!(recorded(home), vec![(6, FIRST_BLOCK)]);
    let voids = a.take_voids().unwrap();
    assert_eq!(voids[0].ranges, vec![(6, FIRST_BLOCK)]);
    drop(a);
    let b = {
        let mut b = SeqReserver::new(home);
        b.reserve_then(1, None, |_| Ok(())).unwrap();
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
        assert_eq!(a.reserve_then(1, None, |_| Ok(())).unwrap(), s);
    }
    // One durable write for the whole first block.
    assert_eq!(a.next_seq().unwrap(), FIRST_BLOCK + 1);
    a.reserve_then(1, None, |_| Ok(())).unwrap();
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
    assert_eq!(r.reserve_then(3, None, |_| Ok(())).unwrap(), 1);
    assert_eq!(r.next_seq().unwrap(), 4);
    assert!(recorded(dir.path()).is_empty());
}

/// A journal written and then a crash before anything else (here: the
/// write "fails" right after the journal is saved): the numbers it names
/// are past the counter for every later reservation, and are not voided
/// (the push is resumed or abandoned with them).
#[test]
fn numbers_a_journal_names_are_never_handed_out_again_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut j = stdin_journal(0, 0);
    let file = journal_file(home, &j);
    let mut a = SeqReserver::new(home);
    assert_eq!(a.reserve_exact(1).unwrap(), 1);
    let crashed = a.reserve_then(4, Some(&file), |first| {
        j.first_seq = first;
        j.last_seq = first + 3;
        save_journal(home, &j);
        Err(ClientError::Home("killed".into()))
    });
    assert!(crashed.is_err());
    assert_eq!((j.first_seq, j.last_seq), (2, 5));
    drop(a);
    // Only the journal and seq.json are on disk, as after kill -9; no
    // listing of journals (seq.json says they are counted).
    assert!(
        read_seq_file(&home.join("seq.json"))
            .unwrap()
            .journals_counted
    );
    let mut b = SeqReserver::new(home);
    assert_eq!(b.reserve_then(1, None, |_| Ok(())).unwrap(), 6);
    assert!(
        b.take_voids().unwrap().is_empty(),
        "numbers a journal names are its push's"
    );
}

/// The counter moved and then the process died before the journal was
/// written: the next reservation of any process voids those numbers (no
/// gap for receivers), and never hands them out again.
#[test]
fn numbers_reserved_for_a_journal_never_written_are_voided() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let j = stdin_journal(0, 0);
    let file = journal_file(home, &j);
    let mut a = SeqReserver::new(home);
    assert_eq!(a.reserve_then(2, None, |_| Ok(())).unwrap(), 1);
    let crashed = a.reserve_then(3, Some(&file), |_| Err(ClientError::Home("killed".into())));
    assert!(crashed.is_err());
    drop(a);
    let mut b = SeqReserver::new(home);
    assert_eq!(b.reserve_then(1, None, |_| Ok(())).unwrap(), 6);
    let voids = b.take_voids().unwrap();
    assert_eq!(voids.len(), 1);
    assert_eq!(voids[0].ranges, vec![(3, 5)]);
    b.voided(&[voids[0].id.clone()]).unwrap();
    assert!(recorded(home).is_empty());
    // Settled once: a later reservation voids nothing more.
    let mut c = SeqReserver::new(home);
    c.reserve_then(1, None, |_| Ok(())).unwrap();
    assert!(c.take_voids().unwrap().is_empty());
}

/// Reservations whose journals were written leave nothing to void, in
/// the reserving process or in another one that settles the last of them
/// by reading its journal.
#[test]
fn written_journals_leave_nothing_to_void() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut a = SeqReserver::new(home);
    let mut b = SeqReserver::new(home);
    let mut pushes = 0u8;
    for _ in 0..3 {
        for r in [&mut a, &mut b] {
            pushes += 1;
            let mut j = stdin_journal(0, 0);
            j.file_id = hex::encode([pushes; 16]);
            let file = journal_file(home, &j);
            r.reserve_then(2, Some(&file), |first| {
                j.first_seq = first;
                j.last_seq = first + 1;
                save_journal(home, &j);
                Ok(())
            })
            .unwrap();
        }
    }
    assert_eq!(a.next_seq().unwrap(), 13);
    assert!(a.take_voids().unwrap().is_empty());
    assert!(b.take_voids().unwrap().is_empty());
    let mut c = SeqReserver::new(home);
    c.reserve_exact(1).unwrap();
    assert!(c.take_voids().unwrap().is_empty());
}

/// A push that finished removes its journal; the next process (a new
/// reserver, as each `sync-cli push` is) must not take the numbers that
/// journal named for ones never written, nor void them.
#[test]
fn a_finished_push_whose_journal_is_gone_leaves_nothing_to_void() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    let mut a = SeqReserver::new(home);
    let mut j = stdin_journal(0, 0);
    j.file_id = hex::encode([9u8; 16]);
    let file = journal_file(home, &j);
    a.reserve_then(2, Some(&file), |first| {
        j.first_seq = first;
        j.last_seq = first + 1;
        save_journal(home, &j);
        Ok(())
    })
    .unwrap();
    // The push is acknowledged: its journal goes.
    std::fs::remove_file(&file).unwrap();
    drop(a);
    let mut b = SeqReserver::new(home);
    assert_eq!(b.reserve_exact(1).unwrap(), 3);
    assert!(
        b.take_voids().unwrap().is_empty(),
        "numbers of a finished push were voided"
    );
}

/// A home where a client from before counted journals (it wrote the
/// journal first, then the counter) died in between: its journal names
/// numbers at or past the counter. The first reservation counts the
/// journals once and starts past them.
#[test]
fn a_journal_past_the_counter_left_by_an_older_client_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    std::fs::write(home.join("seq.json"), br#"{"next_seq":3}"#).unwrap();
    journal_naming(home, 3, 9);
    let mut a = SeqReserver::new(home);
    assert_eq!(a.reserve_exact(1).unwrap(), 10);
    assert!(a.take_voids().unwrap().is_empty());
    assert!(
        read_seq_file(&home.join("seq.json"))
            .unwrap()
            .journals_counted
    );
}
