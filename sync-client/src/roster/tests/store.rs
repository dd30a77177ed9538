//! The local roster file.

use super::*;
use crate::roster::build;
use crate::roster::store::{MAX_FILE_LEN, ROSTER_FILE, load, save};
use std::os::unix::fs::PermissionsExt;

const MAGIC_LEN: usize = b"0k-sync roster 1\n".len();

/// The genesis of device 1 and an add of device 2, with the roster id.
fn founded_with_two() -> (EntryId, Vec<SignedEntry>) {
    let (g, s) = founded();
    let k2 = keys(2);
    let a = build::add(&s, &keys(1), k2.device_id(), k2.hpke_public(), "bravo", 2).unwrap();
    (g.id(), vec![g, a])
}

#[test]
fn saves_privately_and_loads_what_it_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(ROSTER_FILE);
    assert_eq!(load(&path).unwrap(), None);
    let (roster, entries) = founded_with_two();
    save(&path, roster, &entries).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(load(&path).unwrap(), Some((roster, entries)));
}

#[test]
fn a_damaged_file_is_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(ROSTER_FILE);
    let (roster, entries) = founded_with_two();
    save(&path, roster, &entries).unwrap();
    let good = std::fs::read(&path).unwrap();
    // A flipped byte in the last signature.
    let mut bad = good.clone();
    *bad.last_mut().unwrap() ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(load(&path).unwrap_err(), RosterError::BadSignature);
    // Cut inside the last entry.
    std::fs::write(&path, &good[..good.len() - 10]).unwrap();
    assert!(matches!(
        load(&path).unwrap_err(),
        RosterError::Truncated(_)
    ));
    // Not a roster file.
    std::fs::write(&path, b"hello").unwrap();
    assert!(
        load(&path)
            .unwrap_err()
            .to_string()
            .contains("not a roster file")
    );
    // An entry claiming a 65,535-byte body.
    let mut huge = good[..MAGIC_LEN + 32].to_vec();
    huge.extend([0xff, 0xff]);
    std::fs::write(&path, &huge).unwrap();
    assert!(matches!(
        load(&path).unwrap_err(),
        RosterError::TooLong {
            what: "entry body",
            ..
        }
    ));
}

#[test]
fn the_file_size_is_capped_before_parsing() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(ROSTER_FILE);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(MAX_FILE_LEN as u64 + 1).unwrap();
    assert!(matches!(
        load(&path).unwrap_err(),
        RosterError::TooLong {
            what: "roster file",
            ..
        }
    ));
}
