//! The fold: membership, names, forged entries, concurrent rotations.

use super::*;
use crate::roster::build;
use proptest::prelude::*;

fn add(state: &RosterState, by: u8, who: u8, name: &str) -> SignedEntry {
    let k = keys(who);
    build::add(
        state,
        &keys(by),
        k.device_id(),
        k.hpke_public(),
        name,
        2000 + who as u64,
    )
    .unwrap()
}

fn rotate(state: &RosterState, by: u8, removed: &[u8], seed: u8) -> SignedEntry {
    let removed: Vec<_> = removed.iter().map(|&i| id(i)).collect();
    let secret = crate::GroupSecret::from_bytes([seed; 32]);
    build::rotate_with(state, &keys(by), &removed, &secret, 5000, &mut rng(seed)).unwrap()
}

/// Sign `entry` with device `by`'s key (no checks: for forged entries).
fn forge(entry: Entry, by: u8) -> SignedEntry {
    SignedEntry::sign(entry, keys(by).signing_key()).unwrap()
}

/// Founder 1 adds 2 and 3; 2 adds 4. Returns the genesis, the entries and
/// the folded state.
fn four_devices() -> (SignedEntry, Vec<SignedEntry>, RosterState) {
    let (g, s0) = founded();
    let mut entries = vec![add(&s0, 1, 2, "bravo"), add(&s0, 1, 3, "charlie")];
    let s = fold_all(&g, &entries);
    entries.push(add(&s, 2, 4, "delta"));
    let s = fold_all(&g, &entries);
    (g, entries, s)
}

fn reasons(state: &RosterState) -> Vec<String> {
    state.ignored.iter().map(|i| i.reason.to_string()).collect()
}

#[test]
fn founder_adds_devices_and_members_add_and_rename_others() {
    let (g, mut entries, s) = four_devices();
    assert_eq!(s.members.len(), 4);
    assert_eq!(s.members[&id(1)].added_by, None);
    assert_eq!(s.members[&id(4)].added_by, Some(id(2)));
    assert_eq!(s.members[&id(4)].added_at_ms, 2004);
    entries.push(build::rename(&s, &keys(3), id(4), "dora", 3000).unwrap());
    entries.push(build::rename(&s, &keys(4), id(4), "dot", 2999).unwrap());
    let s = fold_all(&g, &entries);
    assert_eq!(s.members[&id(4)].name, "dora", "the later rename wins");
    assert!(s.ignored.is_empty(), "{:?}", s.ignored);
    assert_eq!((s.epoch, s.group_id), (0, group_secret().keys().group_id()));
}

#[test]
fn an_entry_signed_by_a_non_member_is_rejected() {
    let (g, mut entries, s) = four_devices();
    // Device 8 is no member: it signs an add of device 9 correctly in form.
    let mut en = add(&s, 1, 9, "mallory").entry().clone();
    en.author = id(8);
    let forged = forge(en, 8);
    assert!(matches!(
        build::add(&s, &keys(1), id(9), [0; 32], "x", 1),
        Err(RosterError::Refused(_))
    ));
    entries.push(forged.clone());
    let s2 = fold_all(&g, &entries);
    assert_eq!(s2.members, s.members, "nothing changes");
    assert_eq!(s2.ignored.len(), 1);
    assert_eq!(s2.ignored[0].id, forged.id());
    assert!(
        matches!(s2.ignored[0].reason, RosterError::NotMember(_, 0)),
        "{:?}",
        s2.ignored
    );
    assert!(reasons(&s2)[0].contains("not a member of the group in epoch 0"));
}

#[test]
fn a_removed_device_can_neither_act_nor_be_added_again() {
    let (g, mut entries, s) = four_devices();
    let backdated = add(&s, 3, 11, "accomplice"); // made in epoch 0 by 3
    entries.push(rotate(&s, 1, &[3], 40));
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.epoch, 1);
    assert!(s1.removed.contains_key(&id(3)) && !s1.members.contains_key(&id(3)));
    assert_eq!(s1.removed[&id(3)].by, id(1));
    // After the rotation, 3 tries to act in epoch 1 and to re-enter.
    let mut en = add(&s1, 1, 12, "x").entry().clone();
    en.author = id(3);
    let late = forge(en, 3);
    let readd = build::add(&s1, &keys(2), id(3), keys(3).hpke_public(), "charlie", 9);
    assert!(matches!(readd, Err(RosterError::Removed(_))), "{readd:?}");
    // A re-add made anyway (by hand) is ignored by the fold.
    let mut en = add(&s1, 2, 12, "x").entry().clone();
    en.kind = EntryKind::Add {
        device: id(3),
        hpke_key: keys(3).hpke_public(),
        name: "charlie".into(),
    };
    let readd = forge(en, 2);
    entries.extend([late.clone(), readd.clone(), backdated.clone()]);
    let s2 = fold_all(&g, &entries);
    assert_eq!(s2.members, s1.members);
    let why = |e: &SignedEntry| {
        s2.ignored
            .iter()
            .find(|i| i.id == e.id())
            .map(|i| i.reason.clone())
    };
    assert!(
        matches!(why(&late), Some(RosterError::Removed(_))),
        "{:?}",
        why(&late)
    );
    assert!(matches!(why(&readd), Some(RosterError::Removed(_))));
    // The backdated add of epoch 0 is applied to epoch 0, but the rotation
    // wrapped nothing to device 11: it is dropped, not a member.
    assert!(why(&backdated).is_none());
    assert!(!s2.members.contains_key(&id(11)));
    assert!(s2.dropped.contains(&id(11)));
}

#[test]
fn an_entry_replayed_into_another_group_is_rejected() {
    let (g, entries, _) = four_devices();
    // Another roster founded by the same device for another group.
    let other_g = build::genesis(
        &keys(1),
        crate::GroupSecret::from_bytes([8; 32]).keys().group_id(),
        "alpha",
        1000,
    )
    .unwrap();
    let other = fold_all(&other_g, &[]);
    let foreign = add(&other, 1, 9, "foreign");
    let mut all = entries.clone();
    all.push(foreign.clone());
    all.push(other_g.clone());
    let s = fold_all(&g, &all);
    assert!(!s.members.contains_key(&id(9)));
    let i = s.ignored.iter().find(|i| i.id == foreign.id()).unwrap();
    assert_eq!(i.reason, RosterError::OtherRoster(other_g.id()));
    assert!(i.reason.to_string().contains("another roster"));
    let i = s.ignored.iter().find(|i| i.id == other_g.id()).unwrap();
    assert!(i.reason.to_string().contains("second genesis"));
    // And the missing genesis is an error of its own.
    assert_eq!(
        fold(g.id(), &entries).unwrap_err(),
        RosterError::NoGenesis(g.id())
    );
}

#[test]
fn remaining_members_unwrap_the_new_secret_and_the_removed_device_cannot() {
    let (g, mut entries, s) = four_devices();
    let secret = crate::GroupSecret::from_bytes([40; 32]);
    entries.push(rotate(&s, 1, &[3], 40));
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.group_id, secret.keys().group_id());
    for i in [1, 2, 4] {
        assert_eq!(s1.epoch_secret(1, &keys(i)).unwrap(), secret);
    }
    let err = s1.epoch_secret(1, &keys(3)).unwrap_err();
    assert!(
        err.to_string().contains("wraps no secret to this device"),
        "{err}"
    );
    // Its own key on another member's wrap fails too.
    let mut w = s1.current().wraps[0].clone();
    w.device = id(3);
    let ctx = s1.wrap_context(1).unwrap();
    assert!(matches!(
        unwrap(&w, &keys(3), &ctx),
        Err(RosterError::Unwrap(_))
    ));
    assert!(s1.must_rotate.is_empty() && s1.dropped.is_empty());
}

#[test]
fn two_concurrent_revocations_converge_on_one_roster() {
    let (g, mut entries, s) = four_devices();
    let a = rotate(&s, 1, &[3], 40);
    let b = rotate(&s, 2, &[4], 41);
    entries.extend([a.clone(), b.clone()]);
    let s1 = fold_all(&g, &entries);
    let (winner, loser) = if a.id() < b.id() { (&a, &b) } else { (&b, &a) };
    assert_eq!(s1.anchor, winner.id(), "the smaller id wins");
    assert_eq!(s1.current().losers, vec![loser.id()]);
    assert_eq!(s1.members.keys().copied().collect::<Vec<_>>(), {
        let mut v = vec![id(1), id(2)];
        v.sort();
        v
    });
    assert!(s1.removed.contains_key(&id(3)) && s1.removed.contains_key(&id(4)));
    // The winner wrapped its secret to the device the loser removed: that
    // device holds the epoch's secret, so a rotation is due.
    let held = if winner.id() == a.id() { id(4) } else { id(3) };
    assert_eq!(
        s1.must_rotate.iter().copied().collect::<Vec<_>>(),
        vec![held]
    );
    // Either remaining device rotates again; then nobody removed holds the secret.
    entries.push(rotate(&s1, 2, &[], 42));
    let s2 = fold_all(&g, &entries);
    assert_eq!(s2.epoch, 2);
    assert!(s2.must_rotate.is_empty());
    assert_eq!(s2.members.len(), 2);
    for i in [1, 2] {
        assert!(s2.epoch_secret(2, &keys(i)).is_ok());
    }
    for i in [3, 4] {
        assert!(s2.epoch_secret(2, &keys(i)).is_err());
    }
}

#[test]
fn a_rotation_by_a_device_removed_concurrently_loses() {
    let (g, mut entries, s) = four_devices();
    // 3 (stolen) removes 4 while 1 removes 3: 1's rotation wins whatever the ids.
    let honest = rotate(&s, 1, &[3], 40);
    let thief = rotate(&s, 3, &[4], 41);
    entries.extend([honest.clone(), thief]);
    let s1 = fold_all(&g, &entries);
    assert_eq!(s1.anchor, honest.id());
    assert!(s1.removed.contains_key(&id(3)) && s1.removed.contains_key(&id(4)));
    assert!(s1.epoch_secret(1, &keys(3)).is_err());
}

#[test]
fn mutual_removal_removes_both_and_asks_for_another_rotation() {
    let (g, mut entries, s) = four_devices();
    entries.extend([rotate(&s, 1, &[2], 40), rotate(&s, 2, &[1], 41)]);
    let s1 = fold_all(&g, &entries);
    assert_eq!(
        s1.members.keys().copied().collect::<BTreeSet<_>>(),
        [id(3), id(4)].into()
    );
    let opener = s1.current().opened_by.unwrap();
    assert!(
        s1.must_rotate.contains(&opener),
        "the winner's author holds the secret"
    );
}

#[test]
fn rotations_breaking_the_rules_are_refused() {
    let (g, entries, s) = four_devices();
    let base = rotate(&s, 1, &[3], 40);
    let edit = |f: &dyn Fn(&mut Entry)| {
        let mut en = base.entry().clone();
        f(&mut en);
        forge(en, 1)
    };
    let cases = [
        (
            edit(&|e| {
                if let EntryKind::Rotate { removed, .. } = &mut e.kind {
                    removed.push(id(9));
                    removed.sort();
                }
            }),
            "not a member",
        ),
        (
            edit(&|e| {
                if let EntryKind::Rotate { removed, .. } = &mut e.kind {
                    removed.push(id(1));
                    removed.sort();
                }
            }),
            "removes itself",
        ),
        (
            edit(&|e| {
                if let EntryKind::Rotate { wraps, .. } = &mut e.kind {
                    wraps.retain(|w| w.device != id(1));
                }
            }),
            "its own author",
        ),
        (
            edit(&|e| {
                if let EntryKind::Rotate { new_group_id, .. } = &mut e.kind {
                    *new_group_id = group_secret().keys().group_id();
                }
            }),
            "reuses the group id of epoch 0",
        ),
        (
            edit(&|e| {
                if let EntryKind::Rotate { wraps, .. } = &mut e.kind {
                    let mut w = wraps[0].clone();
                    w.device = id(3);
                    wraps.push(w);
                    wraps.sort_by_key(|w| w.device);
                }
            }),
            "which is not a remaining member",
        ),
    ];
    for (entry, why) in cases {
        let mut all = entries.clone();
        all.push(entry);
        let s1 = fold_all(&g, &all);
        assert_eq!(s1.epoch, 0, "{why}");
        let r = reasons(&s1);
        assert!(r.len() == 1 && r[0].contains(why), "{why}: {r:?}");
    }
}

#[test]
fn entries_anchored_to_a_losing_rotation_are_orphaned() {
    let (g, mut entries, s) = four_devices();
    let a = rotate(&s, 1, &[], 40);
    let b = rotate(&s, 2, &[], 41);
    let loser = if a.id() < b.id() { &b } else { &a };
    // A device that saw only the loser adds a device in "its" epoch 1.
    let mut seen = entries.clone();
    seen.push(loser.clone());
    let on_loser = fold_all(&g, &seen);
    let orphan = add(&on_loser, 1, 6, "echo");
    entries.extend([a.clone(), b.clone(), orphan.clone()]);
    let s1 = fold_all(&g, &entries);
    assert!(!s1.members.contains_key(&id(6)));
    let i = s1.ignored.iter().find(|i| i.id == orphan.id()).unwrap();
    assert_eq!(i.reason, RosterError::Orphaned(1));
}

#[test]
fn the_fold_is_bounded() {
    let (g, s) = founded();
    let many: Vec<SignedEntry> = (0..=MAX_ENTRIES as u64)
        .map(|t| build::rename(&s, &keys(1), id(1), "alpha", t).unwrap())
        .collect();
    assert_eq!(
        fold(g.id(), &many).unwrap_err(),
        RosterError::TooManyEntries
    );
}

use std::collections::BTreeSet;

/// Every kind of entry over three epochs: adds, renames, concurrent
/// rotations (one losing), entries on the losing chain, forged and foreign
/// entries, a removed device's late entries.
fn scenario() -> (SignedEntry, Vec<SignedEntry>) {
    let (g, mut entries, s) = four_devices();
    entries.push(build::rename(&s, &keys(3), id(4), "dora", 3000).unwrap());
    let mut en = add(&s, 1, 9, "m").entry().clone();
    en.author = id(8);
    entries.push(forge(en, 8));
    let a = rotate(&s, 1, &[3], 40);
    let b = rotate(&s, 2, &[4], 41);
    let mut on_b = entries.clone();
    on_b.push(b.clone());
    let sb = fold_all(&g, &on_b);
    entries.push(add(&sb, 2, 6, "orphan"));
    entries.extend([a, b]);
    let s1 = fold_all(&g, &entries);
    entries.push(add(&s1, 1, 5, "echo"));
    let s1 = fold_all(&g, &entries);
    entries.push(build::rename(&s1, &keys(5), id(5), "eve", 6000).unwrap());
    entries.push(rotate(&s1, 5, &[], 42));
    entries.push(rotate(&s1, 2, &[5], 43));
    let mut en = add(&s1, 1, 7, "late").entry().clone();
    en.author = id(3);
    entries.push(forge(en, 3));
    (g, entries)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any order of delivery of any subset of the entries, with
    /// duplicates, folds to what the canonical order gives.
    #[test]
    fn any_delivery_order_folds_to_the_same_roster(
        picks in proptest::collection::vec(any::<bool>(), 16),
        order in Just((0..32usize).collect::<Vec<_>>()).prop_shuffle(),
        dups in proptest::collection::vec(0..16usize, 0..4),
    ) {
        let (g, entries) = scenario();
        let chosen: Vec<SignedEntry> = entries
            .iter()
            .enumerate()
            .filter(|(i, _)| picks.get(*i).copied().unwrap_or(true))
            .map(|(_, e)| e.clone())
            .collect();
        let mut delivered: Vec<SignedEntry> = order
            .iter()
            .filter_map(|&i| chosen.get(i).cloned())
            .collect();
        for d in dups {
            if let Some(e) = chosen.get(d) {
                delivered.push(e.clone());
            }
        }
        delivered.push(g.clone());
        let n = delivered.len();
        delivered.rotate_left(order[0] % n);
        let mut canonical = vec![g.clone()];
        canonical.extend(chosen);
        let want = fold(g.id(), &canonical).unwrap();
        let got = fold(g.id(), &delivered).unwrap();
        prop_assert_eq!(got, want);
    }
}

#[test]
fn the_full_scenario_folds_as_designed() {
    let (g, entries) = scenario();
    assert!(entries.len() <= 16, "the property test picks among 16");
    let s = fold_all(&g, &entries);
    // Epoch 0: 1, 2, 3, 4; both concurrent rotations remove 3 and 4.
    // Epoch 1: 1 adds 5 ("eve"); 5 rekeys while 2 removes 5: 2's rotation
    // wins (5 is removed by it), so epoch 2 holds 1 and 2.
    assert_eq!(s.epoch, 2);
    assert_eq!(
        s.members.keys().copied().collect::<BTreeSet<_>>(),
        [id(1), id(2)].into()
    );
    assert_eq!(s.removed[&id(5)].name, "eve");
    assert_eq!(s.current().opened_by, Some(id(2)));
    assert!(s.must_rotate.is_empty());
    let kinds: Vec<_> = s.ignored.iter().map(|i| i.reason.clone()).collect();
    assert!(
        kinds
            .iter()
            .any(|r| matches!(r, RosterError::NotMember(_, 0)))
    );
    assert!(kinds.iter().any(|r| matches!(r, RosterError::Orphaned(1))));
    assert!(kinds.iter().any(|r| matches!(r, RosterError::Removed(_))));
}

#[test]
fn an_add_with_a_small_order_hpke_key_is_refused() {
    // Such a key would make every later rotation fail to wrap to it.
    let (g, mut entries, s) = four_devices();
    let mut low = [0u8; 32];
    low[0] = 1;
    let mut en = add(&s, 1, 9, "lowkey").entry().clone();
    en.kind = EntryKind::Add {
        device: id(9),
        hpke_key: low,
        name: "lowkey".into(),
    };
    entries.push(forge(en, 1));
    let s1 = fold_all(&g, &entries);
    assert!(!s1.members.contains_key(&id(9)));
    assert!(
        reasons(&s1)[0].contains("small order"),
        "{:?}",
        reasons(&s1)
    );
    // So a rotation still wraps to every member.
    assert!(build::rotate(&s1, &keys(1), &[], 1).is_ok());
}

/// A small deterministic generator for random scenarios (xorshift).
struct Gen(u64);

impl Gen {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// Random concurrent rotations over two epochs: `n` devices added by the
/// founder, then in each epoch 1–3 rotations by random members, each
/// removing a random subset of the others.
fn random_rotations(seed: u64) -> (SignedEntry, Vec<SignedEntry>, Vec<Vec<DeviceId>>) {
    let mut r = Gen(seed | 1);
    let n = 3 + r.next(5) as u8;
    let (g, s0) = founded();
    let mut entries: Vec<SignedEntry> = (2..=n).map(|i| add(&s0, 1, i, "dev")).collect();
    let mut removals = Vec::new();
    for epoch in 0..2u8 {
        let s = fold_all(&g, &entries);
        let members: Vec<u8> = (1..=n)
            .filter(|i| s.members.contains_key(&id(*i)))
            .collect();
        if members.is_empty() {
            break;
        }
        let mut batch = Vec::new();
        for k in 0..1 + r.next(3) {
            let author = members[r.next(members.len())];
            let removed: Vec<u8> = members
                .iter()
                .copied()
                .filter(|m| *m != author && r.next(3) == 0)
                .collect();
            removals.push(removed.iter().map(|&i| id(i)).collect());
            batch.push(rotate(&s, author, &removed, 50 + epoch * 8 + k as u8));
        }
        entries.extend(batch);
    }
    (g, entries, removals)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Whatever concurrent rotations happen, every order folds alike, and
    /// the result keeps the promises of docs/security.md: every removal of
    /// the first epoch counts, members and removed devices are disjoint,
    /// every member opens the current secret, and a removed device opens it
    /// only while `must_rotate` names it.
    #[test]
    fn concurrent_rotations_converge_and_keep_their_promises(
        seed in any::<u64>(),
        order in Just((0..16usize).collect::<Vec<_>>()).prop_shuffle(),
    ) {
        let (g, entries, removals) = random_rotations(seed);
        let want = fold_all(&g, &entries);
        let mut shuffled: Vec<SignedEntry> = order.iter().filter_map(|&i| entries.get(i).cloned()).collect();
        shuffled.extend(entries.iter().skip(16).cloned());
        prop_assert_eq!(&fold_all(&g, &shuffled), &want);

        // Rotations of epoch 0 are all valid: each of their removals counts,
        // but once epoch 0 is settled (a recipient of the winner other than
        // its author acted in epoch 1), a rotation whose author the winner
        // removes keeps only its removal of the winner's author.
        let rotations: Vec<&SignedEntry> = entries.iter().filter(|e| matches!(e.entry().kind, EntryKind::Rotate { .. })).collect();
        let winner = rotations.iter().find(|r| Some(r.id()) == want.epochs.get(1).map(|e| e.anchor));
        let removed_by = |r: &SignedEntry| match &r.entry().kind {
            EntryKind::Rotate { removed, .. } => removed.clone(),
            _ => Vec::new(),
        };
        let settled = winner.filter(|w| entries.iter().any(|e| {
            let a = e.entry().author;
            e.entry().epoch == 1 && e.entry().anchor == w.id() && a != w.entry().author
                && want.epochs[1].wraps.iter().any(|x| x.device == a)
        }));
        for (r, names) in rotations.iter().zip(&removals).filter(|(r, _)| r.entry().epoch == 0) {
            for d in names {
                let dropped = settled.is_some_and(|w| removed_by(w).contains(&r.entry().author) && *d != w.entry().author);
                prop_assert_eq!(want.removed.contains_key(d) || dropped, true);
            }
        }
        for d in want.members.keys() {
            prop_assert!(!want.removed.contains_key(d));
            prop_assert!(want.epoch_secret(want.epoch, &keys(d_index(d))).is_ok());
        }
        for d in want.removed.keys() {
            let opens = want.epoch_secret(want.epoch, &keys(d_index(d))).is_ok();
            prop_assert_eq!(opens, want.must_rotate.contains(d));
        }
        prop_assert!(want.must_rotate.iter().all(|d| want.removed.contains_key(d)));
    }
}

/// The test index of device id `d` (devices 1..=8).
fn d_index(d: &DeviceId) -> u8 {
    (1..=8).find(|i| id(*i) == *d).unwrap()
}
