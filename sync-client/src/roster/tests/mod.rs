//! Tests of the roster: golden vectors, hostile encodings, the fold.

mod attacks;
mod fold;
mod golden;
mod hostile;
mod local;
mod store;

use super::*;
use sync_protocol::DeviceId;

/// Device `i`'s keys: node key `[i; 32]`, HPKE seed `[i + 100; 32]`.
pub(super) fn keys(i: u8) -> DeviceKeys {
    DeviceKeys::from_parts(&[i; 32], &[i.wrapping_add(100); 32])
}

pub(super) fn id(i: u8) -> DeviceId {
    keys(i).device_id()
}

/// The epoch-0 secret of the test group.
pub(super) fn group_secret() -> crate::GroupSecret {
    crate::GroupSecret::from_bytes([7; 32])
}

/// A roster founded by device 1 ("alpha") at t = 1000 ms.
pub(super) fn founded() -> (SignedEntry, RosterState) {
    let g = build::genesis(&keys(1), group_secret().keys().group_id(), "alpha", 1000).unwrap();
    let state = fold(g.id(), std::slice::from_ref(&g)).unwrap();
    (g, state)
}

/// Fold `entries` into the roster of genesis `g` (panics on a fold error).
pub(super) fn fold_all(g: &SignedEntry, entries: &[SignedEntry]) -> RosterState {
    let mut all = vec![g.clone()];
    all.extend_from_slice(entries);
    fold(g.id(), &all).unwrap()
}

/// A seeded CSPRNG for HPKE's ephemeral keys.
pub(super) fn rng(seed: u8) -> chacha20::ChaCha20Rng {
    use chacha20::rand_core::SeedableRng;
    chacha20::ChaCha20Rng::from_seed([seed; 32])
}
