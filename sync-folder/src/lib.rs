//! Folder sync (docs/client.md "Folder sync"): `sync-cli sync DIR` keeps a
//! directory the same on every device of a group, both ways, through the
//! ordinary client library — content as chunked, resumable file transfers
//! named by their BLAKE3, changes as folder [`record`]s in `Message` blobs.
//!
//! One run ([`Folder`]): scan ([`scan`]) → pull (the caller runs the
//! client's pull into [`Folder::incoming_dir`], handing each message to
//! [`Folder::receive`]) → fold the group's records into the synced state
//! ([`fold`]) → reconcile the disk with it, keeping every local change
//! ([`plan`], [`apply`]) → push this device's changes ([`Folder::push`]).
//! State lives in an SQLite [`index`] in the device's home.
//!
//! `sync DIR --watch` makes runs when [`watch::Watcher`] says (debounced
//! file-system events, a new head, a periodic rescan). Devices that join
//! late or were away past the relay's TTL catch up through [`manifest`]s
//! of the synced state and requests for contents that expired, answered by
//! devices holding them ([`catchup`]).

#![forbid(unsafe_code)]

pub mod apply;
pub mod catchup;
pub mod engine;
pub mod entry;
pub mod fold;
pub mod inbox;
pub mod index;
pub mod manifest;
pub mod plan;
pub mod record;
pub mod scan;
pub mod watch;

pub use engine::{Folder, FolderError, Report, Status};

/// The folder's own directory at its root: staging for received content
/// and temp files, never synced (its name starts with `.0k-sync-`, which
/// receivers refuse as a path component).
pub const STAGING_DIR: &str = ".0k-sync-folder";
/// The ignore file at the root (gitignore syntax).
pub const IGNORE_FILE: &str = ".0k-syncignore";
