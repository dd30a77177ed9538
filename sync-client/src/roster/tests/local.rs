//! The roster in device homes ([`crate::roster::local`]): enrolment,
//! catch-up through several rotations, a removed device, the outbox.

use super::super::chain::{ChainFile, EpochKey};
use super::super::local::LocalRoster;
use crate::crypto::GroupSecret;
use crate::home::Home;
use crate::relays::RelayList;
use tempfile::TempDir;

const RELAY: &str = "1d3c2dcb3338efaf7faa492aeb8b4e79e1b697117ed57882255f82b86f58ef65@127.0.0.1:9";

/// A home in the group of `secret`; `epoch`: `Some(0)` for the founder,
/// `None` for a device that joined with an invite.
fn home(secret: &GroupSecret, epoch: Option<u64>, name: &str) -> (TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::at(dir.path().join("h"));
    home.create(&RelayList::parse(&[RELAY]).unwrap(), secret, None)
        .unwrap();
    let mut chain = ChainFile::new(EpochKey::new(epoch, secret));
    chain.device_name = Some(name.into());
    chain.save(home.dir()).unwrap();
    (dir, home)
}

/// Deliver everything `from` has queued for `group` (hex) to `to`.
fn deliver(from: &LocalRoster, group: &str, to: &mut LocalRoster) {
    for (g, bodies) in from.outgoing() {
        if g == group {
            for b in bodies {
                let got = to.absorb(&b);
                assert_eq!(got.refused, None);
            }
        }
    }
}

/// Every entry `from` holds, to `to` (a whole chain, as pushed into a new
/// epoch's group).
fn deliver_all(from: &LocalRoster, to: &mut LocalRoster) {
    for e in from.entries() {
        to.absorb(&e.encode());
    }
}

#[test]
fn an_offline_device_catches_up_through_two_rotations_and_a_removed_one_is_stuck() {
    let s0 = GroupSecret::from_bytes([3; 32]);
    let g0 = s0.keys().group_id();
    let (_da, ha) = home(&s0, Some(0), "alpha");
    let (_db, hb) = home(&s0, None, "bravo");
    let (_dc, hc) = home(&s0, None, "charlie");
    let mut a = LocalRoster::open(&ha).unwrap();
    assert!(a.ensure_genesis("alpha", 1).unwrap());
    assert!(
        a.outgoing().is_empty(),
        "a lone genesis waits for an entry another device needs"
    );
    let mut b = LocalRoster::open(&hb).unwrap();
    let mut c = LocalRoster::open(&hc).unwrap();

    // B and C ask to enrol; A answers.
    for (dev, hex) in [(&b, b.me().to_string()), (&c, c.me().to_string())] {
        let (group, body) = dev.enrolment_due(None).unwrap().unwrap();
        assert_eq!(group, g0.to_string());
        a.absorb_enrolment(&hex, &g0, &body).unwrap();
    }
    // A request relabelled as another sender's is refused.
    let (_, body) = b.enrolment_due(None).unwrap().unwrap();
    assert!(a.absorb_enrolment(&c.me().to_string(), &g0, &body).is_err());
    let st = a.settle(2).unwrap().unwrap().state;
    let (added, refused) = a.answer_enrolments(&st, 3).unwrap();
    assert_eq!((added.len(), refused.len()), (2, 0));
    deliver(&a, &g0.to_string(), &mut b);
    deliver(&a, &g0.to_string(), &mut c);
    for dev in [&mut b, &mut c] {
        let s = dev.settle(4).unwrap().unwrap();
        assert!(s.is_member(&dev.me()));
        assert_eq!(
            dev.chain.current().epoch,
            Some(0),
            "the invite's key is placed"
        );
        assert_eq!(dev.enrolment_due(Some(&s)).unwrap(), None);
    }
    a.published(&g0.to_string());

    // C goes offline. A revokes B, then re-keys: two rotations.
    let st = a.settle(5).unwrap().unwrap().state;
    assert_eq!(a.revoke(&st, b.me(), 6).unwrap(), 1);
    let st = a.settle(7).unwrap().unwrap().state;
    assert_eq!(st.epoch, 1);
    assert!(!st.members.contains_key(&b.me()));
    assert_eq!(a.rekey(&st, 8).unwrap(), 2);
    let groups: Vec<String> = a.outgoing().into_iter().map(|(g, _)| g).collect();
    assert!(
        groups.contains(&g0.to_string()),
        "the rotation goes to the old group"
    );
    assert_eq!(groups.len(), 3, "and the chain into each new epoch's group");

    // C comes back with every entry: one settle reaches epoch 2, holding
    // every epoch's key, and queues its confirming entry there.
    deliver_all(&a, &mut c);
    let s = c.settle(9).unwrap().unwrap();
    assert_eq!(s.moved, [1, 2]);
    assert_eq!(s.stuck, None);
    assert_eq!(c.chain.epochs.len(), 3);
    assert_eq!(
        c.chain.current().secret().unwrap(),
        a.chain.current().secret().unwrap()
    );
    let confirm_group = c.chain.current().group_id.clone();
    assert!(c.outgoing().iter().any(|(g, _)| *g == confirm_group));

    // B is told it was removed and gets no key of epoch 1 or 2.
    deliver_all(&a, &mut b);
    let s = b.settle(10).unwrap().unwrap();
    assert!(s.stuck.unwrap().contains("removed"), "stuck");
    assert_eq!(b.chain.epochs.len(), 1);

    // What C holds survives a reload.
    c.save().unwrap();
    let again = LocalRoster::open(&hc).unwrap();
    assert_eq!(again.chain, c.chain);
    assert_eq!(again.entries().len(), c.entries().len());
}

#[test]
fn revoke_refuses_itself_and_a_device_behind_the_roster() {
    let s0 = GroupSecret::from_bytes([4; 32]);
    let (_da, ha) = home(&s0, Some(0), "alpha");
    let mut a = LocalRoster::open(&ha).unwrap();
    a.ensure_genesis("alpha", 1).unwrap();
    let st = a.settle(2).unwrap().unwrap().state;
    assert!(a.revoke(&st, a.me(), 3).is_err(), "not itself");
    // A stale copy of the roster (this device moved on since): refused.
    let mut stale = st.clone();
    stale.epoch = 5;
    assert!(a.revoke(&stale, a.me(), 3).is_err());
}

/// A home from before rosters (no `epochs.json`): its secret is epoch 0,
/// in place; two devices founding a roster for it at the same moment
/// converge on the genesis with the smaller id, and the other founder is
/// then not a member and asks to enrol.
#[test]
fn two_legacy_devices_founding_at_once_converge_on_one_genesis() {
    let s0 = GroupSecret::from_bytes([5; 32]);
    let legacy = |_: &str| {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        home.create(&RelayList::parse(&[RELAY]).unwrap(), &s0, None)
            .unwrap();
        (dir, home)
    };
    let (_dx, hx) = legacy("x");
    let (_dy, hy) = legacy("y");
    let mut x = LocalRoster::open(&hx).unwrap();
    let mut y = LocalRoster::open(&hy).unwrap();
    assert_eq!(x.chain.current().epoch, Some(0));
    assert_eq!(x.chain.current().secret().unwrap(), s0);
    assert!(x.ensure_genesis("x", 1).unwrap());
    assert!(y.ensure_genesis("y", 1).unwrap());
    let (gx, gy) = (x.roster_id().unwrap(), y.roster_id().unwrap());
    assert_ne!(gx, gy);
    let both: Vec<_> = x.entries().iter().chain(y.entries()).cloned().collect();
    for e in &both {
        x.absorb(&e.encode());
        y.absorb(&e.encode());
    }
    let sx = x.settle(2).unwrap().unwrap();
    let sy = y.settle(2).unwrap().unwrap();
    assert_eq!(x.roster_id(), Some(gx.min(gy)));
    assert_eq!(y.roster_id(), x.roster_id());
    assert_eq!(sx.state, sy.state);
    let (founder, other, other_settled) = if gx < gy {
        (&x, &y, &sy)
    } else {
        (&y, &x, &sx)
    };
    assert!(sx.state.members.contains_key(&founder.me()));
    assert!(other.enrolment_due(Some(other_settled)).unwrap().is_some());
    // Saved, and read back the same (the upgrade is in place).
    x.save().unwrap();
    let again = LocalRoster::open(&hx).unwrap();
    assert_eq!(again.roster_id(), x.roster_id());
}
