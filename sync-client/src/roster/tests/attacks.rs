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
    let entries = vec![
        add(&s0, 1, 2, "bravo"),
        add(&s0, 1, 3, "charlie"),
        add(&s0, 1, 4, "delta"),
    ];
    let s = fold_all(&g, &entries);
    (g, entries, s)
}

/// The stolen device 3 signs, while still a member of epoch 0, a rotation
/// whose entry id is smaller than the owner's revocation of it (it can try
/// secrets until it is), and keeps it. Device 1 revokes 3; device 2 moves to
/// epoch 1 and publishes an entry there. Then 3's rotation reaches the
/// members (pushed before the old group closed, or injected later by a
/// cheating relay).
fn late_rotation(
    thief_removes: &[u8],
) -> (SignedEntry, Vec<SignedEntry>, SignedEntry, SignedEntry) {
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
    assert_eq!(
        after.anchor,
        honest.id(),
        "the late rotation took over epoch 1"
    );
    assert_eq!(after.group_id, before.group_id);
    assert_eq!(after.current().wraps, before.current().wraps);
    for d in [2, 4] {
        let want = before.epoch_secret(1, &keys(d)).unwrap();
        let got = after.epoch_secret(1, &keys(d)).unwrap();
        assert_eq!(got.keys().group_id(), want.keys().group_id());
    }
    assert_eq!(
        after.members[&id(4)].name,
        "dora",
        "epoch 1's rename was orphaned"
    );
    assert!(
        after.epoch_secret(1, &keys(3)).is_err(),
        "the thief got the epoch 1 secret"
    );
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
    assert_eq!(
        member_set(&s),
        [id(2), id(4)].into(),
        "{:?}",
        s.removed.keys()
    );
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
    assert!(
        seen_by_2.epoch_secret(1, &keys(4)).is_ok() && seen_by_4.epoch_secret(1, &keys(4)).is_ok()
    );
    // Their member lists differ only in the remover, until 2 gets the entry.
    let diff: BTreeSet<_> = member_set(&seen_by_2)
        .symmetric_difference(&member_set(&seen_by_4))
        .copied()
        .collect();
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
    let mut self_confirm = forge(
        build::rename(&t1, &keys(2), id(4), "x", 7000)
            .unwrap()
            .entry()
            .clone(),
        2,
    )
    .entry()
    .clone();
    self_confirm.author = id(3);
    self_confirm.kind = EntryKind::Rename {
        device: id(3),
        name: "mine".into(),
    };
    entries.extend([thief, forge(self_confirm, 3)]);
    assert_eq!(fold_all(&g, &entries).anchor, honest.id());
}

#[test]
fn entries_for_far_future_epochs_or_anchored_to_a_non_rotation_are_orphaned() {
    let (g, mut entries, s) = four();
    let base = build::rename(&s, &keys(2), id(2), "bravo2", 3000).unwrap();
    let mut far = base.entry().clone();
    far.epoch = u64::MAX;
    let mut wrong_anchor = base.entry().clone();
    wrong_anchor.epoch = 1;
    wrong_anchor.anchor = entries[0].id(); // an add, not a rotation
    let mut far_rotation = rotate(&s, 2, &[3], 40).entry().clone();
    far_rotation.epoch = u64::MAX - 1;
    entries.extend([
        forge(far, 2),
        forge(wrong_anchor, 2),
        forge(far_rotation, 2),
    ]);
    let s1 = fold_all(&g, &entries);
    assert_eq!((s1.epoch, s1.anchor), (0, g.id()));
    assert_eq!(s1.members[&id(2)].name, "bravo");
    let orphaned = s1
        .ignored
        .iter()
        .filter(|i| matches!(i.reason, RosterError::Orphaned(_)))
        .count();
    assert_eq!(orphaned, 3, "{:?}", s1.ignored);
    assert!(
        s1.ignored
            .iter()
            .any(|i| i.reason.to_string().contains("epoch 18446744073709551615"))
    );
}

#[test]
fn a_removed_device_cannot_rename_the_devices_that_remain() {
    // Before it is revoked (or late, dated in that epoch, with a clock far
    // ahead), the stolen 3 renames the owner's devices to mislead the owner
    // into revoking the wrong ones.
    let (g, mut entries, s) = four();
    entries.push(build::rename(&s, &keys(3), id(2), "stolen-revoke-me", u64::MAX).unwrap());
    entries.push(build::rename(&s, &keys(3), id(3), "owners-phone", u64::MAX).unwrap());
    entries.push(build::rename(&s, &keys(4), id(4), "dora", 1).unwrap());
    assert_eq!(
        fold_all(&g, &entries).members[&id(2)].name,
        "stolen-revoke-me"
    );
    entries.push(rotate(&s, 1, &[3], 40));
    let s1 = fold_all(&g, &entries);
    assert_eq!(
        s1.members[&id(2)].name,
        "bravo",
        "the removed device's rename stays"
    );
    assert_eq!(s1.members[&id(4)].name, "dora", "other renames apply");
    assert_eq!(
        s1.removed[&id(3)].name,
        "owners-phone",
        "its own name is kept"
    );
}

#[test]
fn a_device_id_equal_to_a_group_or_roster_id_is_refused() {
    // Its signing key would be the epoch's group signing key, which every
    // holder of the epoch secret (removed devices included) can derive.
    let (g, mut entries, s) = four();
    let k = keys(9);
    for device in [DeviceId(s.group_id.0), DeviceId(g.id().0)] {
        assert!(build::add(&s, &keys(1), device, k.hpke_public(), "x", 1).is_err());
        let mut en = add(&s, 1, 9, "x").entry().clone();
        en.kind = EntryKind::Add {
            device,
            hpke_key: k.hpke_public(),
            name: "x".into(),
        };
        entries.push(forge(en, 1));
    }
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.members.len(), 4);
    assert_eq!(s1.ignored.len(), 2, "{:?}", s1.ignored);
    assert!(
        s1.ignored
            .iter()
            .all(|i| i.reason.to_string().contains("group"))
    );
}

#[test]
fn a_founder_with_an_unusable_hpke_key_can_still_be_removed() {
    // A hostile founder publishes a small-order HPKE key: no secret can be
    // wrapped to it, so a re-key fails with a clear error, but removing it
    // (the remedy) works.
    let mut low = [0u8; 32];
    low[0] = 1;
    let gid = group_secret().keys().group_id();
    let honest = build::genesis(&keys(1), gid, "alpha", 1000).unwrap();
    let mut en = honest.entry().clone();
    en.kind = EntryKind::Genesis {
        group_id: gid,
        hpke_key: low,
        name: "alpha".into(),
    };
    let g = forge(en, 1);
    let s0 = fold(g.id(), std::slice::from_ref(&g)).unwrap();
    let entries = vec![add(&s0, 1, 2, "bravo"), add(&s0, 1, 3, "charlie")];
    let s = fold_all(&g, &entries);
    let err = build::rotate(&s, &keys(2), &[], 1).unwrap_err();
    assert!(matches!(err, RosterError::Wrap(_)), "{err}");
    let mut all = entries.clone();
    all.push(rotate(&s, 2, &[1], 40));
    let s1 = fold_all(&g, &all);
    assert_eq!(member_set(&s1), [id(2), id(3)].into());
}

#[test]
fn a_rotation_handing_one_member_another_secret_is_caught_by_that_member() {
    // Member 1 rotates but wraps to 2 a secret that does not derive the
    // announced group id (to split 2 off onto a group of its own).
    let (g, mut entries, s) = four();
    let good = rotate(&s, 1, &[3], 40);
    let ctx = crate::roster::WrapContext {
        roster: g.id(),
        epoch: 1,
        group_id: crate::GroupSecret::from_bytes([40; 32]).keys().group_id(),
    };
    let other = crate::GroupSecret::from_bytes([41; 32]);
    let bad_wrap = crate::roster::wrap::wrap_with_rng(
        &other,
        id(2),
        &keys(2).hpke_public(),
        &ctx,
        &mut rng(9),
    )
    .unwrap();
    let mut en = good.entry().clone();
    if let EntryKind::Rotate { wraps, .. } = &mut en.kind {
        for w in wraps.iter_mut().filter(|w| w.device == id(2)) {
            *w = bad_wrap.clone();
        }
    }
    entries.push(forge(en, 1));
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.epoch, 1);
    let err = s1.epoch_secret(1, &keys(2)).unwrap_err();
    assert!(err.to_string().contains("announced group id"), "{err}");
    assert!(s1.epoch_secret(1, &keys(4)).is_ok());
}

#[test]
fn a_removed_device_cannot_confirm_a_rotation_that_lost() {
    // 1 revokes 3 and 4 moves on with it. 2 had re-keyed concurrently (its
    // rotation, with a smaller id, wraps to 3 too). 3, removed, pushes an
    // entry of epoch 1 anchored on 2's rotation to make it win: 3 would hold
    // the epoch 1 secret again.
    let (g, mut entries, s) = four();
    let honest = rotate(&s, 1, &[3], 40);
    let rekey = (41..=255u8)
        .map(|seed| rotate(&s, 2, &[], seed))
        .find(|t| t.id() < honest.id())
        .unwrap();
    entries.push(honest.clone());
    let s1 = fold_all(&g, &entries);
    entries.push(build::rename(&s1, &keys(4), id(4), "dora", 6000).unwrap());
    let mut on_rekey = entries.clone();
    on_rekey.retain(|e| e.id() != honest.id());
    on_rekey.push(rekey.clone());
    let r1 = fold_all(&g, &on_rekey);
    assert_eq!(r1.anchor, rekey.id());
    let by_thief = build::rename(&r1, &keys(3), id(3), "charlie", 7000).unwrap();
    entries.extend([rekey, by_thief]);
    let s = fold_all(&g, &entries);
    assert_eq!(s.anchor, honest.id());
    assert!(s.epoch_secret(1, &keys(3)).is_err());
    assert!(s.must_rotate.is_empty());
}

#[test]
fn the_rotation_due_after_a_race_settles_the_epoch() {
    // 1 revokes 3 while 3 removes 4: 4 holds the new secret (must_rotate).
    // 2 rotates again; that settles epoch 0, 3's removal of 4 is dropped,
    // and 4, given no wrap by 2's rotation, is listed as dropped (for its
    // adder to add again), not as removed.
    let (g, mut entries, s) = four();
    entries.extend([rotate(&s, 1, &[3], 40), rotate(&s, 3, &[4], 41)]);
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.must_rotate, [id(4)].into());
    entries.push(rotate(&s1, 2, &[], 42));
    let s2 = fold_all(&g, &entries);
    assert_eq!(s2.epoch, 2);
    assert_eq!(member_set(&s2), [id(1), id(2)].into());
    assert!(!s2.removed.contains_key(&id(4)) && s2.removed.contains_key(&id(3)));
    assert_eq!(s2.dropped, [id(4)].into());
    assert!(s2.must_rotate.is_empty());
    assert!(s2.epoch_secret(2, &keys(4)).is_err());
}
