//! A minimal Nostr client and a nostr-rs-relay process, for the `peer`
//! scenario (issue 13 part 5): our relay's acknowledged 1 KiB pushes beside
//! a well-known Rust relay on SQLite ingesting acknowledged 1 KiB events.
//!
//! - [`event`]: NIP-01 events — canonical serialization, id (SHA-256),
//!   BIP-340 Schnorr signature (k256).
//! - [`client`]: one WebSocket connection publishing events and waiting for
//!   the relay's `["OK", id, true, …]`, with a window of events in flight.
//! - [`relay`]: finding, installing (on request) and running nostr-rs-relay
//!   with a benchmark config.

pub mod client;
pub mod event;
pub mod relay;
