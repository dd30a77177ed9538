//! Device identities, the group's roster and key epochs (issue 14; design in
//! docs/security.md "Devices, roster and key epochs").
//!
//! - [`device`]: a device's signing key (its iroh node key) and HPKE key pair;
//! - [`entry`]: roster entry types and their canonical encoding;
//! - [`signed`]: signing and verifying entries;
//! - [`wrap`]: an epoch secret sealed to one device with HPKE;
//! - [`fold`]: entries → [`RosterState`] (membership, names, epochs), with
//!   the rule that makes concurrent rotations converge;
//! - [`build`]: making genesis, add, rename and rotate entries;
//! - [`store`]: the entries a device holds, in `<home>/roster.bin`;
//! - [`chain`]: the epoch secrets a device holds and its outbox, in
//!   `<home>/epochs.json`;
//! - [`enrol`]: enrolment requests of devices that joined with an invite;
//! - [`local`]: all of it in a device home: absorbing what pulls receive,
//!   catching up through rotations, revoking.
//!
//! Key schedule: an epoch's 32-byte secret is a [`crate::GroupSecret`] and
//! derives that epoch's group id, Hello proofs and blob key exactly as a
//! group secret always has; epoch 0's secret is the group secret of the
//! invite, so an existing group is epoch 0 of its roster.

pub mod build;
pub mod chain;
pub(crate) mod codec;
pub mod device;
pub mod enrol;
pub mod entry;
pub mod fold;
pub mod local;
pub mod signed;
pub mod store;
pub mod wrap;

#[cfg(test)]
mod tests;

pub use device::DeviceKeys;
pub use entry::{Entry, EntryId, EntryKind, WrappedSecret};
pub use fold::{Ignored, Member, Removal, RosterState, fold};
pub use local::{LocalRoster, Settled};
pub use signed::SignedEntry;
pub use wrap::{WrapContext, unwrap, wrap};

/// BLAKE3 `derive_key` context of entry ids.
pub const ENTRY_ID_CONTEXT: &str = "0k-sync/1 roster entry id";
/// Prefix of the message an entry's signature covers.
pub const SIGNATURE_CONTEXT: &[u8] = b"0k-sync/1 roster entry";
/// Prefix of the HPKE `info` of a wrapped epoch secret.
pub const WRAP_CONTEXT: &[u8] = b"0k-sync/1 epoch secret";
/// Most distinct entries a fold accepts (bounds a hostile member's cost).
pub const MAX_ENTRIES: usize = 4096;

/// Why an entry, or a roster, is refused. Messages say what is wrong in
/// words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RosterError {
    /// The bytes end inside the named field.
    #[error("roster entry truncated in its {0}")]
    Truncated(&'static str),
    /// Bytes follow the end of the entry.
    #[error("roster entry has {0} trailing bytes")]
    TrailingBytes(usize),
    /// A length or count is over its limit.
    #[error("roster entry's {what} is {len}, over the limit of {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// Its claimed length or count.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body's version byte is not one this client reads.
    #[error("roster entry version {0:#04x} is not supported; upgrade 0k-sync")]
    UnsupportedVersion(u8),
    /// The body's kind byte is unknown.
    #[error("unknown roster entry kind {0}")]
    UnknownKind(u8),
    /// A rule of the format is broken.
    #[error("malformed roster entry: {0}")]
    Malformed(String),
    /// The signature does not verify against the author named in the entry
    /// (forged, or altered after signing).
    #[error("roster entry signature does not verify against its author")]
    BadSignature,
    /// Asked to sign an entry with a key that is not its author's.
    #[error("the signing key is not the entry's author")]
    WrongSigner,
    /// The entry belongs to another group's roster (replayed).
    #[error("roster entry belongs to another roster ({0}), not this group's")]
    OtherRoster(EntryId),
    /// The author is not a member of the epoch the entry was made in.
    #[error("roster entry is signed by {0}, which is not a member of the group in epoch {1}")]
    NotMember(String, u64),
    /// The author, or the device the entry is about, was removed.
    #[error("roster entry concerns {0}, a device removed from the group")]
    Removed(String),
    /// The entry is valid in form but breaks a rule of the fold.
    #[error("roster entry refused: {0}")]
    Refused(String),
    /// The entry is anchored to an epoch that is not on the roster's chain
    /// (made on a losing rotation, or for an epoch never opened).
    #[error(
        "roster entry is for epoch {0} of a chain this roster did not take (made on a rotation that lost)"
    )]
    Orphaned(u64),
    /// The roster's genesis entry is missing.
    #[error("the roster's genesis entry {0} is missing")]
    NoGenesis(EntryId),
    /// More entries than [`MAX_ENTRIES`].
    #[error("the roster has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// Sealing a wrapped secret failed.
    #[error("cannot wrap the epoch secret: {0}")]
    Wrap(String),
    /// A wrapped secret could not be opened.
    #[error("cannot unwrap the epoch secret: {0}")]
    Unwrap(String),
    /// A key file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// A device id as shown in messages: 16 hex characters.
pub(crate) fn short(id: &sync_protocol::DeviceId) -> String {
    hex::encode(&id.0[..8])
}
