//! The roster entries a device holds, kept in `<home>/roster.bin` (mode
//! 0600, written atomically):
//!
//! ```text
//! file = "0k-sync roster 1\n" ‖ roster id [32] ‖ signed entry × n
//! ```
//!
//! Signed entries are self-delimiting ([`SignedEntry::decode_prefix`]).
//! Loading re-verifies every signature and reads at most
//! [`MAX_FILE_LEN`] bytes, so a damaged or planted file costs bounded work
//! and gives a clear error, never a panic.

use super::entry::EntryId;
use super::signed::{MAX_SIGNED_LEN, SignedEntry};
use super::{MAX_ENTRIES, RosterError};
use crate::util::write_atomic;
use std::io::Read;
use std::path::Path;

/// File name of the roster in a device home.
pub const ROSTER_FILE: &str = "roster.bin";
const MAGIC: &[u8] = b"0k-sync roster 1\n";
/// Most bytes of a roster file: [`MAX_ENTRIES`] entries of the largest size.
pub const MAX_FILE_LEN: usize = MAGIC.len() + 32 + MAX_ENTRIES * MAX_SIGNED_LEN;

/// Write `entries` of roster `roster` to `path` (0600, atomic).
/// Errors: [`RosterError::TooManyEntries`], [`RosterError::Io`].
pub fn save(path: &Path, roster: EntryId, entries: &[SignedEntry]) -> Result<(), RosterError> {
    if entries.len() > MAX_ENTRIES {
        return Err(RosterError::TooManyEntries);
    }
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&roster.0);
    for e in entries {
        bytes.extend_from_slice(&e.encode());
    }
    write_atomic(path, &bytes).map_err(|e| RosterError::Io(e.to_string()))
}

/// Read the roster id and entries saved at `path`; `None` when there is no
/// file. Errors: [`RosterError::Io`]; [`RosterError::Malformed`] for a file
/// that is not a roster; [`RosterError::TooLong`] past [`MAX_FILE_LEN`];
/// the first entry's decoding or signature error.
pub fn load(path: &Path) -> Result<Option<(EntryId, Vec<SignedEntry>)>, RosterError> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RosterError::Io(format!("{}: {e}", path.display()))),
    };
    let too_long = |len: usize| RosterError::TooLong {
        what: "roster file",
        len,
        max: MAX_FILE_LEN,
    };
    let claimed = file.metadata().map(|m| m.len()).unwrap_or(0);
    if claimed > MAX_FILE_LEN as u64 {
        return Err(too_long(usize::try_from(claimed).unwrap_or(usize::MAX)));
    }
    let mut bytes = Vec::new();
    // The file may grow after the size check: read at most one byte more.
    file.take(MAX_FILE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| RosterError::Io(format!("{}: {e}", path.display())))?;
    if bytes.len() > MAX_FILE_LEN {
        return Err(too_long(bytes.len()));
    }
    let rest = bytes.strip_prefix(MAGIC).ok_or_else(|| {
        RosterError::Malformed(format!("{} is not a roster file", path.display()))
    })?;
    let (roster, mut rest) = rest
        .split_first_chunk::<32>()
        .ok_or(RosterError::Truncated("roster id"))?;
    let mut entries = Vec::new();
    while !rest.is_empty() {
        if entries.len() == MAX_ENTRIES {
            return Err(RosterError::TooManyEntries);
        }
        let (entry, tail) = SignedEntry::decode_prefix(rest)?;
        entries.push(entry);
        rest = tail;
    }
    Ok(Some((EntryId(*roster), entries)))
}
