//! Mailbox derivation and answers: golden vectors, and what a joiner
//! accepts.

use super::*;
use crate::roster::build;
use crate::roster::entry::{Entry, EntryKind};

fn keys(i: u8) -> DeviceKeys {
    DeviceKeys::from_parts(&[i; 32], &[i.wrapping_add(100); 32])
}

/// Golden: the mailbox of roster 0x03… and enrolment secret 0x07….
const MAILBOX_SECRET: &str = "523dd9875606dfdc79ce52eab1d91034ba632adebbb4cf09b7bdbb63b63802a9";
const MAILBOX_GROUP: &str = "cf5ae7013922e00bc7c4253085e2e0174c42bfb06a99a1302b5496679f0f3ca5";

#[test]
fn mailbox_derivation_is_stable() {
    let m = MailboxKeys::derive(&EntryId([3; 32]), &[7; 32]);
    assert_eq!(hex::encode(m.secret().as_bytes()), MAILBOX_SECRET);
    assert_eq!(m.group_id().to_string(), MAILBOX_GROUP);
    assert_eq!(m.invite_id(), MAILBOX_GROUP[..16]);
    // Domain separation: not the plain hash, not the group secret itself,
    // and bound to the roster.
    assert_ne!(m.secret().as_bytes(), &[7; 32]);
    let other = MailboxKeys::derive(&EntryId([4; 32]), &[7; 32]);
    assert_ne!(other.group_id(), m.group_id());
}

const ANSWER: &str = "01000000000000000209090909090909090909090909090909090909090909090909090909090909090505050505050505050505050505050505050505050505050505050505050505060606060606060606060606060606060606060606060606060606060606060606060606060606060606060606060606";

#[test]
fn answer_bytes_are_stable_and_round_trip() {
    let a = Answer {
        epoch: 2,
        group_id: GroupId([9; 32]),
        enc: [5; 32],
        ciphertext: [6; WRAP_CIPHERTEXT_LEN],
    };
    let bytes = a.encode();
    assert_eq!(bytes.len(), ANSWER_LEN);
    assert_eq!(hex::encode(&bytes), ANSWER);
    assert_eq!(Answer::decode(&bytes).unwrap(), a);
    assert!(matches!(
        Answer::decode(&bytes[..ANSWER_LEN - 1]),
        Err(RosterError::Truncated(_))
    ));
    let mut v2 = bytes.clone();
    v2[0] = 2;
    assert_eq!(Answer::decode(&v2), Err(RosterError::UnsupportedVersion(2)));
}

/// A roster founded by device 1 in the group of secret `s0`, with the
/// joiner (device 2) added by `adder`.
fn roster_with_add(s0: &GroupSecret, adder: &DeviceKeys) -> (Vec<SignedEntry>, RosterState) {
    let g = build::genesis(&keys(1), s0.keys().group_id(), "alpha", 1000).unwrap();
    let state = fold(g.id(), std::slice::from_ref(&g)).unwrap();
    let joiner = keys(2);
    let add = SignedEntry::sign(
        Entry {
            roster: state.roster,
            epoch: state.epoch,
            anchor: state.anchor,
            author: adder.device_id(),
            created_at_ms: 2000,
            kind: EntryKind::Add {
                device: joiner.device_id(),
                hpke_key: joiner.hpke_public(),
                name: "bravo".into(),
            },
        },
        adder.signing_key(),
    )
    .unwrap();
    let entries = vec![g, add];
    let state = fold(state.roster, &entries).unwrap();
    (entries, state)
}

#[test]
fn a_joiner_accepts_an_answer_of_a_member() {
    let s0 = GroupSecret::from_bytes([7; 32]);
    let (entries, state) = roster_with_add(&s0, &keys(1));
    let joiner = keys(2);
    let answer = Answer::make(&state, 0, &s0, joiner.device_id(), &joiner.hpke_public()).unwrap();
    let accepted = accept_answer(state.roster, &joiner, &entries, &answer).unwrap();
    assert_eq!(accepted.secret, s0);
    assert!(accepted.state.members.contains_key(&joiner.device_id()));
}

#[test]
fn an_add_signed_by_a_non_member_is_refused() {
    let s0 = GroupSecret::from_bytes([7; 32]);
    // Device 3 holds the invite but is no member: its Add is ignored.
    let (entries, state) = roster_with_add(&s0, &keys(3));
    let joiner = keys(2);
    let answer = Answer::make(&state, 0, &s0, joiner.device_id(), &joiner.hpke_public()).unwrap();
    let e = accept_answer(state.roster, &joiner, &entries, &answer)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not add this device"), "{e}");
    assert!(e.contains("not a member"), "{e}");
}

#[test]
fn a_wrong_secret_or_another_roster_is_refused() {
    let s0 = GroupSecret::from_bytes([7; 32]);
    let (entries, state) = roster_with_add(&s0, &keys(1));
    let joiner = keys(2);
    // A secret that is not the epoch's: announced under the epoch's group id.
    let other = GroupSecret::from_bytes([8; 32]);
    let mut answer =
        Answer::make(&state, 0, &other, joiner.device_id(), &joiner.hpke_public()).unwrap();
    answer.group_id = state.group_id;
    let e = accept_answer(state.roster, &joiner, &entries, &answer)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("unwrap"), "{e}");
    // Another roster id than the invite's: no genesis.
    let good = Answer::make(&state, 0, &s0, joiner.device_id(), &joiner.hpke_public()).unwrap();
    assert!(matches!(
        accept_answer(EntryId([1; 32]), &joiner, &entries, &good),
        Err(RosterError::NoGenesis(_))
    ));
    // Wrapped to another device's key.
    let e = accept_answer(state.roster, &keys(4), &entries, &good)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not add this device"), "{e}");
}
