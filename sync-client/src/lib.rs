//! The 0k-sync device library (docs/protocol.md "Blob payloads", §6). All cryptography lives here:
//! the relay never sees a key or a plaintext byte.
//!
//! - [`crypto`]: group secret and keys, membership proof, blob envelope,
//!   Padmé padding.
//! - [`session`]: one authenticated session with the relay (opaque payloads).
//! - [`client`]: [`SyncClient`], which seals pushes and opens pulls, and
//!   reconnects with backoff ([`backoff`]); resumable pushes ([`journal`]).
//! - [`receive`]: applying pulled blobs, file reassembly and verification;
//!   [`place`]: where a received file lands without destroying local data.
//! - [`relpath`]: relative paths of pushed files and where they land;
//!   [`tree`]: the files of a directory being pushed.
//! - [`home`]: a device's home directory (device key, group, state).
//! - [`roster`]: device identities, the signed roster and key epochs.
//! - [`invite`], [`relay_addr`], [`relays`] (a group's relays, for
//!   failover), [`state`], [`integrity`], [`util`].

#![forbid(unsafe_code)]

pub mod backoff;
pub mod client;
pub mod close_group;
pub mod crypto;
pub mod endpoint;
pub mod error;
pub mod home;
pub mod integrity;
pub mod invite;
pub mod journal;
pub mod mailbox;
pub mod pending_invites;
pub mod place;
pub mod receive;
pub mod relay_addr;
pub mod relays;
pub mod relpath;
pub mod roster;
pub mod seqs;
pub mod session;
pub mod state;
pub mod tree;
pub mod util;
pub mod withheld;

pub use backoff::RetryPolicy;
pub use client::{
    ChunkAck, LinkState, PullSummary, PushOptions, PushedFile, SmallFile, Subscription,
    SubscriptionEvent, SyncClient,
};
pub use crypto::{GroupKeys, GroupSecret};
pub use error::ClientError;
pub use home::Home;
pub use invite::Invite;
pub use receive::PullEvent;
pub use relay_addr::RelayAddr;
pub use relays::RelayList;
pub use session::{ConnectOptions, MAX_DIALS, RelaySession, dial_attempt_timeout};
pub use state::StateStore;
