//! Admission control: every decision whether a peer may connect, open a
//! session, create a group or have a request read, in one module, one file
//! per stage (docs/deploy.md "What one peer can cost the relay" and
//! §Access):
//!
//! 1. [`connection`] — an incoming QUIC connection, before its TLS
//!    handshake: address validation (QUIC Retry), the cap on connections
//!    awaiting their `Hello`, the per-address connection rate;
//! 2. [`session`] — a `Hello` whose membership proof verified
//!    ([`crate::auth`]): the relay-wide and per-group session caps, then the
//!    group's admission in storage (the access mode's new-group decision,
//!    [`access`]), then the per-address session cap of open mode;
//! 3. [`request`] — each request of an active session: the device's
//!    request rate and the byte budget of its body before a byte of it is
//!    read, and for a push the device's pushed-bytes rate.
//!
//! Each stage returns either what the peer was granted (guards that give
//! it back on drop) or a refusal that already carries its wire code, its
//! human message and its retry hint, and counts itself in the metrics. The
//! mechanisms stay where they are: governor limiters in
//! [`crate::ratelimit`], byte budgets in [`crate::budget`], the per-group
//! session count in [`crate::notify`], token and owner budgets inside the
//! storage transactions. Storage refusals become wire errors in one place,
//! `crate::handlers` (`impl From<StorageError> for ErrorMsg`).

pub mod access;
pub mod connection;
pub mod request;
pub mod session;

pub use access::{Admission, HOUR_MS, OwnerSessionGuard, quotas};
