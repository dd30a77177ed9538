//! Attacks on the roster by a stranger, a member, a removed (stolen) device
//! and a cheating relay that reorders, withholds, replays and injects
//! entries (docs/security.md "Devices, roster and key epochs", "Honest
//! limits"). Each test is one attack and what the fold must do about it.

use super::*;
use crate::roster::build;
use crate::roster::entry::EntryKind;
use std::collections::BTreeSet;

fn add(state: &RosterState, by: u8, who: u8, name: &str) -> SignedEntry {
    let k = keys(who);
    build::add(state, &keys(by), k.device_id(), k.hpke_public(), name, 2000).unwrap()
}

fn rotate(state: &RosterState, by: u8, removed: &[u8], seed: u8) -> SignedEntry {
    let removed: Vec<_> = removed.iter().map(|&i| id(i)).collect();
    let secret = crate::GroupSecret::from_bytes([seed; 32]);
    build::rotate_with(state, &keys(by), &removed, &secret, 5000, &mut rng(seed)).unwrap()
}

fn forge(entry: Entry, by: u8) -> SignedEntry {
    SignedEntry::sign(entry, keys(by).signing_key()).unwrap()
}

fn member_set(s: &RosterState) -> BTreeSet<DeviceId> {
    s.members.keys().copied().collect()
}

/// Founder 1 adds 2, 3 and 4 in epoch 0.
fn four() -> (SignedEntry, Vec<SignedEntry>, RosterState) {
    let (g, s0) = founded();
    let entries = vec![add(&s0, 1, 2, "bravo"), add(&s0, 1, 3, "charlie"), add(&s0, 1, 4, "delta")];
    let s = fold_all(&g, &entries);
    (g, entries, s)
}

/// The stolen device 3 signs, while still a member of epoch 0, a rotation
/// whose entry id is smaller than the owner's revocation of it (it can try
/// secrets until it is), and keeps it. Device 1 revokes 3; device 2 moves to
/// epoch 1 and publishes an entry there. Then 3's rotation reaches the
/// members (pushed before the old group closed, or injected later by a
/// cheating relay).
fn late_rotation(thief_removes: &[u8]) -> (SignedEntry, Vec<SignedEntry>, SignedEntry, SignedEntry) {
    let (g, mut entries, s) = four();
    let honest = rotate(&s, 1, &[3], 40);
    let thief = (41..=255u8)
        .map(|seed| rotate(&s, 3, thief_removes, seed))
        .find(|t| t.id() < honest.id())
        .expect("some seed gives a smaller id");
    entries.push(honest.clone());
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.anchor, honest.id());
    // 2 acts in epoch 1: it renames 4 there.
    entries.push(build::rename(&s1, &keys(2), id(4), "dora", 6000).unwrap());
    (g, entries, honest, thief)
}

#[test]
fn a_late_rotation_by_a_removed_device_cannot_reanchor_the_next_epoch() {
    let (g, entries, honest, thief) = late_rotation(&[1]);
    let before = fold_all(&g, &entries);
    let mut with_thief = entries.clone();
    with_thief.push(thief.clone());
    let after = fold_all(&g, &with_thief);
    // The chain, the epoch secret and the entries of epoch 1 stay.
    assert_eq!(after.anchor, honest.id(), "the late rotation took over epoch 1");
    assert_eq!(after.group_id, before.group_id);
    assert_eq!(after.current().wraps, before.current().wraps);
    for d in [2, 4] {
        let want = before.epoch_secret(1, &keys(d)).unwrap();
        let got = after.epoch_secret(1, &keys(d)).unwrap();
        assert_eq!(got.keys().group_id(), want.keys().group_id());
    }
    assert_eq!(after.members[&id(4)].name, "dora", "epoch 1's rename was orphaned");
    assert!(after.epoch_secret(1, &keys(3)).is_err(), "the thief got the epoch 1 secret");
    assert!(after.current().losers.contains(&thief.id()));
}

#[test]
fn a_late_rotation_by_a_removed_device_keeps_at_most_the_removal_of_its_remover() {
    // 3 names the owner's other devices 2 and 4 and the remover 1.
    let (g, entries, honest, thief) = late_rotation(&[1, 2, 4]);
    let mut with_thief = entries.clone();
    with_thief.push(thief);
    let s = fold_all(&g, &with_thief);
    assert_eq!(s.anchor, honest.id());
    assert_eq!(member_set(&s), [id(2), id(4)].into(), "{:?}", s.removed.keys());
    // Mutual removal (indistinguishable from a race): 1 is out and holds
    // the secret, so a rotation is due.
    assert!(s.removed.contains_key(&id(1)) && s.removed.contains_key(&id(3)));
    assert_eq!(s.must_rotate, [id(1)].into());
    // Naming only others, the late rotation removes no one.
    let (g, entries, _, thief) = late_rotation(&[2, 4]);
    let mut with_thief = entries.clone();
    with_thief.push(thief);
    let s = fold_all(&g, &with_thief);
    assert_eq!(member_set(&s), [id(1), id(2), id(4)].into());
    assert!(s.must_rotate.is_empty());
}

#[test]
fn members_that_saw_the_late_rotation_and_members_that_did_not_keep_one_epoch_secret() {
    // A cheating relay shows the thief's rotation to 4 only.
    let (g, entries, _, thief) = late_rotation(&[1, 2, 4]);
    let seen_by_2 = fold_all(&g, &entries);
    let mut for_4 = entries.clone();
    for_4.push(thief);
    let seen_by_4 = fold_all(&g, &for_4);
    assert_eq!(seen_by_2.anchor, seen_by_4.anchor);
    assert_eq!(seen_by_2.group_id, seen_by_4.group_id);
    assert!(seen_by_2.epoch_secret(1, &keys(4)).is_ok() && seen_by_4.epoch_secret(1, &keys(4)).is_ok());
    // Their member lists differ only in the remover, until 2 gets the entry.
    let diff: BTreeSet<_> = member_set(&seen_by_2).symmetric_difference(&member_set(&seen_by_4)).copied().collect();
    assert_eq!(diff, [id(1)].into());
}

#[test]
fn confirmation_counts_only_from_a_recipient_other_than_the_author() {
    // The thief's own entries on its chain do not confirm its rotation.
    let (g, mut entries, s) = four();
    let honest = rotate(&s, 1, &[3], 40);
    let thief = (41..=255u8)
        .map(|seed| rotate(&s, 3, &[1], seed))
        .find(|t| t.id() < honest.id())
        .unwrap();
    entries.push(honest.clone());
    let s1 = fold_all(&g, &entries);
    entries.push(build::rename(&s1, &keys(2), id(4), "dora", 6000).unwrap());
    // 3 folds its own chain (where it won) and "confirms" it itself.
    let mut thief_view = entries.clone();
    thief_view.retain(|e| e.id() != honest.id());
    thief_view.push(thief.clone());
    let t1 = fold_all(&g, &thief_view);
    assert_eq!(t1.anchor, thief.id());
    let mut self_confirm = forge(build::rename(&t1, &keys(2), id(4), "x", 7000).unwrap().entry().clone(), 2).entry().clone();
    self_confirm.author = id(3);
    self_confirm.kind = EntryKind::Rename { device: id(3), name: "mine".into() };
    entries.extend([thief, forge(self_confirm, 3)]);
    assert_eq!(fold_all(&g, &entries).anchor, honest.id());
}
