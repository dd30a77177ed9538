//! Hostile encodings: truncated, bit-flipped, oversized, non-canonical,
//! trailing bytes; and the device key file.

use super::*;
use crate::roster::build;
use crate::roster::entry::{BODY_HEADER_LEN, MAX_BODY_LEN};
use crate::roster::signed::MAX_SIGNED_LEN;
use proptest::prelude::*;

/// One entry of each kind, encoded.
fn samples() -> Vec<Vec<u8>> {
    let (g, s) = founded();
    let k2 = keys(2);
    let a = build::add(&s, &keys(1), k2.device_id(), k2.hpke_public(), "bravo", 2).unwrap();
    let s = fold_all(&g, std::slice::from_ref(&a));
    let r = build::rename(&s, &k2, id(1), "alfa", 3).unwrap();
    let (rot, _) = build::rotate(&s, &keys(1), &[id(2)], 4).unwrap();
    vec![g.encode(), a.encode(), r.encode(), rot.encode()]
}

#[test]
fn every_truncation_is_refused() {
    for bytes in samples() {
        for len in 0..bytes.len() {
            let err = SignedEntry::decode(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, RosterError::Truncated(_)),
                "cut at {len}: {err}"
            );
        }
    }
}

#[test]
fn every_bit_flip_is_refused() {
    for bytes in samples() {
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(SignedEntry::decode(&b).is_err(), "bit {i} flipped");
        }
    }
}

#[test]
fn trailing_and_oversized_input_is_refused() {
    let mut b = samples().remove(1);
    b.push(0);
    assert_eq!(
        SignedEntry::decode(&b).unwrap_err(),
        RosterError::TrailingBytes(1)
    );
    let huge = vec![0xff; MAX_SIGNED_LEN + 1];
    assert!(matches!(
        SignedEntry::decode(&huge).unwrap_err(),
        RosterError::TooLong {
            what: "signed entry",
            ..
        }
    ));
    assert!(matches!(
        Entry::decode(&vec![1; MAX_BODY_LEN + 1]).unwrap_err(),
        RosterError::TooLong {
            what: "entry body",
            ..
        }
    ));
}

/// The body of a rotation by device 1 followed by `payload`.
fn rotate_body(payload: &[u8]) -> Vec<u8> {
    let mut body = vec![ENTRY_VERSION_BYTE, 3];
    body.extend([9; 32]); // roster
    body.extend(0u64.to_be_bytes());
    body.extend([9; 32]); // anchor
    body.extend(id(1).0);
    body.extend(0u64.to_be_bytes());
    assert_eq!(body.len(), BODY_HEADER_LEN);
    body.extend([5; 32]); // new group id
    body.extend_from_slice(payload);
    body
}

const ENTRY_VERSION_BYTE: u8 = crate::roster::entry::ENTRY_VERSION;

#[test]
fn claimed_counts_are_checked_before_anything_is_allocated() {
    // 255 removals claimed: over the limit of 64.
    let err = Entry::decode(&rotate_body(&[255])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "roster entry's removed devices is 255, over the limit of 64"
    );
    // 64 claimed, 1 present.
    let mut p = vec![64];
    p.extend([1; 32]);
    assert_eq!(
        Entry::decode(&rotate_body(&p)).unwrap_err(),
        RosterError::Truncated("removed devices")
    );
    // 0 removals, 200 wraps claimed.
    assert!(matches!(
        Entry::decode(&rotate_body(&[0, 200])).unwrap_err(),
        RosterError::TooLong { what: "wraps", .. }
    ));
}

#[test]
fn non_canonical_and_unknown_bodies_are_refused() {
    // Removals not sorted, or one device twice.
    for (a, b) in [([2u8; 32], [1u8; 32]), ([1; 32], [1; 32])] {
        let mut p = vec![2];
        p.extend(a);
        p.extend(b);
        p.push(0);
        let err = Entry::decode(&rotate_body(&p)).unwrap_err();
        assert!(err.to_string().contains("not sorted"), "{err}");
    }
    let mut body = rotate_body(&[0, 0]);
    Entry::decode(&body).unwrap();
    body[1] = 9;
    assert_eq!(
        Entry::decode(&body).unwrap_err(),
        RosterError::UnknownKind(9)
    );
    body[0] = 2;
    let err = Entry::decode(&body).unwrap_err();
    assert!(err.to_string().contains("upgrade"), "{err}");
    // A genesis whose roster id is not zero.
    let (g, _) = founded();
    let mut en = g.entry().clone();
    en.roster = EntryId([1; 32]);
    assert!(matches!(en.encode(), Err(RosterError::Malformed(_))));
}

#[test]
fn names_follow_the_device_name_rules() {
    let (_, s) = founded();
    for bad in [
        "",
        "a/b",
        ".hidden",
        "esc\u{1b}[2J",
        "bidi\u{202e}",
        &"x".repeat(33),
    ] {
        let err = build::rename(&s, &keys(1), id(1), bad, 1).unwrap_err();
        assert!(matches!(err, RosterError::Malformed(_)), "{bad:?}: {err}");
    }
}

#[test]
fn signing_with_another_key_is_refused() {
    let (g, _) = founded();
    let err = SignedEntry::sign(g.entry().clone(), keys(2).signing_key()).unwrap_err();
    assert_eq!(err, RosterError::WrongSigner);
}

#[test]
fn the_hpke_key_file_is_private_and_stable() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("home");
    let node = iroh::SecretKey::from_bytes(&[3; 32]);
    let a = DeviceKeys::load_or_create(&dir, &node).unwrap();
    let path = dir.join(crate::roster::device::HPKE_KEY_FILE);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = DeviceKeys::load_or_create(&dir, &node).unwrap();
    assert_eq!(a.hpke_public(), b.hpke_public());
    assert_eq!(a.device_id(), id(3));
    assert_ne!(a.hpke_public(), keys(3).hpke_public(), "a random seed");
    assert!(
        !format!("{a:?}").contains(&hex::encode(std::fs::read_to_string(&path).unwrap().trim()))
    );
    std::fs::write(&path, "not hex\n").unwrap();
    let err = DeviceKeys::load_or_create(&dir, &node).unwrap_err();
    assert!(err.to_string().contains("not an HPKE key seed"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Arbitrary bytes never panic the decoder, and whatever decodes
    /// re-encodes to the same bytes (one encoding per value).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(e) = SignedEntry::decode(&bytes) {
            prop_assert_eq!(e.encode(), bytes.clone());
        }
        if let Ok(e) = Entry::decode(&bytes) {
            prop_assert_eq!(e.encode().unwrap(), bytes.clone());
        }
    }

    /// Arbitrary bodies behind a valid header prefix never panic.
    #[test]
    fn arbitrary_payloads_never_panic(kind in 0u8..5, payload in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut body = rotate_body(&[]);
        body.truncate(BODY_HEADER_LEN);
        body[1] = kind;
        body.extend(payload);
        if let Ok(e) = Entry::decode(&body) {
            prop_assert_eq!(e.encode().unwrap(), body);
        }
    }
}
