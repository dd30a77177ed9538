//! Handing out this device's sequence numbers (docs/client.md "Sequence
//! numbers", docs/security.md "Blocks of sequence numbers").
//!
//! The counter lives in `seq.json` in the device home and only moves under an
//! exclusive lock of `seq.lock`, with one durable write (temp file, fsync,
//! rename): a number is never handed out twice, by two processes of one home
//! or after a crash. Two ways to draw from it:
//!
//! - **exact** (the default; one-shot commands): each reservation moves the
//!   counter by exactly the numbers asked for — one durable write per push;
//! - **blocks** ([`SeqReserver::use_blocks`]; long-lived clients): the counter
//!   moves by a whole block ([`FIRST_BLOCK`], doubling up to [`MAX_BLOCK`]
//!   while blocks are used up within [`FAST_BLOCK`]), which is recorded in
//!   `seq.json` with its range and an id; numbers are then handed out of the
//!   block in memory, without touching the disk.
//!
//! A process holds an exclusive lock on `seq-blocks/<id>.lock` for as long as
//! it owns the block. Numbers of a block that are never used are *voided*: the
//! client pushes a `Void` of them ([`SeqReserver::take_voids`]) when it gives
//! the block up (a clean release, or a block given up for a new one), and
//! a block whose owner died (its lock file is no longer locked) is *claimed*
//! by the next locked reservation in any process of the home and voided by
//! it — all of it except numbers that a push journal names (a journaled push
//! is retried with its own numbers). Only once the voids are acknowledged is
//! the block forgotten ([`SeqReserver::voided`]); a process that dies before
//! leaves it to the next one, and voiding twice is harmless.

use crate::crypto::random_bytes;
use crate::error::{ClientError, Result};
use crate::journal::Journals;
use crate::util::{ensure_private_dir, write_atomic};
use rangemap::RangeInclusiveSet;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Numbers in a long-lived client's first block.
pub const FIRST_BLOCK: u64 = 64;
/// Most numbers in one block (far below what one `Void` may give up,
/// [`crate::integrity::SenderTrack::MAX_VOID`]).
pub const MAX_BLOCK: u64 = 4096;
/// A block used up faster than this makes the next one twice as large; a
/// slower one makes it [`FIRST_BLOCK`] again.
pub const FAST_BLOCK: Duration = Duration::from_secs(1);

/// `seq.json`: the next number no one has reserved, and the blocks that
/// processes hold or held (not yet voided).
#[derive(Debug, Default, Serialize, Deserialize)]
struct SeqFile {
    next_seq: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    blocks: Vec<BlockEntry>,
}

/// One reserved block in `seq.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlockEntry {
    /// Random id (hex); names the block's lock file.
    id: String,
    /// First number not known to be used (the block's first, or where the
    /// unused rest of a given-up block starts).
    first: u64,
    /// Last number of the block.
    last: u64,
}

/// A block this process owns: its lock is held as long as this lives.
#[derive(Debug)]
struct Held {
    id: String,
    /// Next number to hand out (`last + 1` when used up).
    next: u64,
    last: u64,
    started: Instant,
    _lock: File,
}

/// Numbers of one given-up block to void: push a `Void` for each range, then
/// call [`SeqReserver::voided`] with the id. `ranges` may be empty (the
/// block was used up, or every unused number is journaled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingVoid {
    /// The block's id.
    pub id: String,
    /// Inclusive ranges `(first, last)` of numbers never to be used.
    pub ranges: Vec<(u64, u64)>,
}

/// Hands out this device's sequence numbers (see the module docs).
#[derive(Debug)]
pub struct SeqReserver {
    home: PathBuf,
    seq_path: PathBuf,
    blocks: bool,
    size: u64,
    current: Option<Held>,
    /// Given-up blocks (own, or claimed from dead processes) not yet voided.
    retired: Vec<Held>,
}

impl SeqReserver {
    /// The counter of the device home `home` (`home/seq.json`), in exact mode.
    pub fn new(home: &Path) -> SeqReserver {
        SeqReserver {
            home: home.to_path_buf(),
            seq_path: home.join("seq.json"),
            blocks: false,
            size: FIRST_BLOCK,
            current: None,
            retired: Vec::new(),
        }
    }

    /// Reserve numbers in blocks from now on (a long-lived client). Call
    /// [`SeqReserver::release`] and void what it leaves before dropping.
    pub fn use_blocks(&mut self) {
        self.blocks = true;
    }

    /// Reserve `n` numbers and return the first, running `record(first)`
    /// (e.g. saving a push journal that names them) before they count as
    /// handed out. From the current block when it has `n` left (no disk
    /// write); otherwise under the lock with one durable write. Errors:
    /// [`ClientError::Io`], [`ClientError::Home`] (corrupt `seq.json`), or
    /// `record`'s error (nothing is handed out then).
    pub fn reserve_then(&mut self, n: u64, record: impl FnOnce(u64) -> Result<()>) -> Result<u64> {
        if self.blocks
            && let Some(block) = self.current.as_mut()
            && block.last + 1 - block.next >= n
        {
            let first = block.next;
            record(first)?;
            block.next += n;
            return Ok(first);
        }
        let in_block = self.blocks && n <= MAX_BLOCK;
        self.reserve_locked(n, in_block, record)
    }

    /// Reserve exactly `n` numbers under the lock (one durable write), never
    /// from or as a block. Errors: as [`SeqReserver::reserve_then`].
    pub fn reserve_exact(&mut self, n: u64) -> Result<u64> {
        self.reserve_locked(n, false, |_| Ok(()))
    }

    fn reserve_locked(
        &mut self,
        n: u64,
        in_block: bool,
        record: impl FnOnce(u64) -> Result<()>,
    ) -> Result<u64> {
        self.locked(|me, file, next| {
            if !in_block {
                record(next)?;
                file.next_seq = next + n;
                return Ok(next);
            }
            me.size = match &me.current {
                Some(b) if b.next > b.last && b.started.elapsed() < FAST_BLOCK => {
                    (me.size * 2).min(MAX_BLOCK)
                }
                Some(_) => FIRST_BLOCK,
                None => me.size,
            };
            let size = me.size.max(n);
            record(next)?;
            if let Some(old) = me.current.take() {
                me.retire(file, old);
            }
            let id = hex::encode(random_bytes::<8>());
            let lock = me.lock_block(&id)?.ok_or_else(|| {
                ClientError::Home(format!("block lock {id} is held by another process"))
            })?;
            file.blocks.push(BlockEntry {
                id: id.clone(),
                first: next,
                last: next + size - 1,
            });
            file.next_seq = next + size;
            me.current = Some(Held {
                id,
                next: next + n,
                last: next + size - 1,
                started: Instant::now(),
                _lock: lock,
            });
            Ok(next)
        })
    }

    /// Give up the current block (a clean close): its unused rest becomes a
    /// [`PendingVoid`]. Errors: [`ClientError::Io`], [`ClientError::Home`].
    pub fn release(&mut self) -> Result<()> {
        if self.current.is_none() {
            return Ok(());
        }
        self.locked(|me, file, _| {
            if let Some(old) = me.current.take() {
                me.retire(file, old);
            }
            Ok(())
        })
    }

    /// The numbers to void now: the unused rest of every given-up block,
    /// except numbers a push journal names. Errors: [`ClientError::Io`],
    /// [`ClientError::Home`] (corrupt journal).
    pub fn take_voids(&self) -> Result<Vec<PendingVoid>> {
        if self.retired.is_empty() {
            return Ok(Vec::new());
        }
        let mut journaled = RangeInclusiveSet::new();
        for j in Journals::at(self.home.join("transfers")).list()? {
            if j.first_seq > 0 && j.last_seq >= j.first_seq {
                journaled.insert(j.first_seq..=j.last_seq);
            }
        }
        Ok(self
            .retired
            .iter()
            .map(|b| PendingVoid {
                id: b.id.clone(),
                ranges: if b.next > b.last {
                    Vec::new()
                } else {
                    journaled
                        .gaps(&(b.next..=b.last))
                        .map(|r| (*r.start(), *r.end()))
                        .collect()
                },
            })
            .collect())
    }

    /// The blocks `ids` are voided (their `Void`s acknowledged): forget
    /// them. Errors: [`ClientError::Io`], [`ClientError::Home`].
    pub fn voided(&mut self, ids: &[String]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.locked(|me, file, _| {
            file.blocks.retain(|b| !ids.contains(&b.id));
            for id in ids {
                let path = me.block_lock_path(id);
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ClientError::io(&path)(e)),
                }
            }
            me.retired.retain(|b| !ids.contains(&b.id));
            Ok(())
        })
    }

    /// The number the next reservation of any process starts at or above
    /// (every number below it is reserved, used or voided).
    pub fn next_seq(&self) -> Result<u64> {
        Ok(read_seq_file(&self.seq_path)?.next_seq.max(1))
    }

    /// Run `f(self, seq file, next free number)` under the exclusive lock of
    /// `seq.lock`, after claiming the blocks of dead processes, and write
    /// the seq file back (durably) when `f` succeeds.
    fn locked<T>(
        &mut self,
        f: impl FnOnce(&mut Self, &mut SeqFile, u64) -> Result<T>,
    ) -> Result<T> {
        let lock_path = self.home.join("seq.lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(ClientError::io(&lock_path))?;
        lock.lock().map_err(ClientError::io(&lock_path))?;
        let mut file = read_seq_file(&self.seq_path)?;
        let journaled = Journals::at(self.home.join("transfers")).max_reserved_seq()?;
        let next = file.next_seq.max(1).max(journaled + 1);
        self.claim_orphans(&file)?;
        let out = f(self, &mut file, next)?;
        file.next_seq = file.next_seq.max(next);
        let json = serde_json::to_vec(&file)
            .map_err(|e| ClientError::Home(format!("cannot encode sequence file: {e}")))?;
        write_atomic(&self.seq_path, &json)?;
        drop(lock);
        Ok(out)
    }

    /// Take over every recorded block whose owner is gone (its lock file
    /// can be locked): it is voided like one of our own given-up blocks.
    fn claim_orphans(&mut self, file: &SeqFile) -> Result<()> {
        for entry in &file.blocks {
            let ours = self
                .current
                .iter()
                .chain(&self.retired)
                .any(|b| b.id == entry.id);
            if ours {
                continue;
            }
            if let Some(lock) = self.lock_block(&entry.id)? {
                tracing::info!(
                    first = entry.first,
                    last = entry.last,
                    "voiding a block of sequence numbers left by a process that ended without releasing it"
                );
                self.retired.push(Held {
                    id: entry.id.clone(),
                    next: entry.first,
                    last: entry.last,
                    started: Instant::now(),
                    _lock: lock,
                });
            }
        }
        Ok(())
    }

    /// Keep `old` until its unused rest is voided, recording where that
    /// rest starts (so a crash before the void covers no used number).
    fn retire(&mut self, file: &mut SeqFile, old: Held) {
        if let Some(entry) = file.blocks.iter_mut().find(|b| b.id == old.id) {
            entry.first = old.next.min(old.last + 1);
        }
        self.retired.push(old);
    }

    fn block_lock_path(&self, id: &str) -> PathBuf {
        self.home.join("seq-blocks").join(format!("{id}.lock"))
    }

    /// Lock the block's lock file (creating it): `None` when another
    /// process (or another reserver of this one) holds it.
    fn lock_block(&self, id: &str) -> Result<Option<File>> {
        let path = self.block_lock_path(id);
        if let Some(dir) = path.parent() {
            ensure_private_dir(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(ClientError::io(&path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(ClientError::io(&path)(e)),
        }
    }
}

fn read_seq_file(path: &Path) -> Result<SeqFile> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<SeqFile>(&bytes).map_err(|e| {
            ClientError::Home(format!("{}: corrupt sequence file: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SeqFile {
            next_seq: 1,
            blocks: Vec::new(),
        }),
        Err(e) => Err(ClientError::io(path)(e)),
    }
}

#[cfg(test)]
mod tests;
