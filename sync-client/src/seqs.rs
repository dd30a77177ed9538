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
//! by the first locked operation of the next reserver (process) of the home
//! and voided by it — all of it except numbers that a push journal names (a
//! journaled push is retried with its own numbers). Only once the voids are
//! acknowledged is the block forgotten ([`SeqReserver::voided`]); a process
//! that dies before leaves it to the next one, and voiding twice is
//! harmless.
//!
//! **Journals.** A reservation for a push journal moves the counter (with
//! one durable write of `seq.json`) *before* the journal is written, so no
//! journal ever names a number at or past the counter and a reservation
//! never lists the journals: O(1) whatever their number. An exact
//! reservation also records its numbers and the journal's file name in
//! `seq.json`, and clears the record (a second write) once the journal is
//! written, still under the lock: a finished push removes its journal, so
//! a record left behind would make used numbers look unused. A record the
//! next locked operation (of any process) finds is settled: whatever that
//! journal does not name is voided — numbers of a process that died, or
//! whose write failed, before the journal existed.

use crate::crypto::random_bytes;
use crate::error::{ClientError, Result};
use crate::journal::Journals;
use crate::util::ensure_private_dir;
use file::{BlockEntry, Recording, SeqFile, read_seq_file, write_seq_file};
use rangemap::RangeInclusiveSet;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod file;

/// Numbers in a long-lived client's first block.
pub const FIRST_BLOCK: u64 = 64;
/// Most numbers in one block (far below what one `Void` may give up,
/// [`crate::integrity::SenderTrack::MAX_VOID`]).
pub const MAX_BLOCK: u64 = 4096;
/// A block used up faster than this makes the next one twice as large; a
/// slower one makes it [`FIRST_BLOCK`] again.
pub const FAST_BLOCK: Duration = Duration::from_secs(1);

/// A block this process owns: its lock is held as long as this lives.
#[derive(Debug)]
struct Held {
    id: String,
    /// Next number to hand out (`last + 1` when used up).
    next: u64,
    last: u64,
    started: Instant,
    /// Push journals may name numbers from `next` on (a block claimed from
    /// a dead owner, or one whose journal write failed): its void leaves
    /// them out, which takes a listing of the journals.
    check_journals: bool,
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
    /// Blocks of dead processes were looked for (once per reserver).
    claimed_orphans: bool,
    /// This reserver's last [`Recording`], once its journal was written:
    /// settled without reading the journal.
    recorded: Option<Recording>,
}

/// `seq.lock` held, and `seq.json` as read under it (the counter already
/// past every journal and settled recording).
struct Guard {
    file: SeqFile,
    _lock: File,
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
            claimed_orphans: false,
            recorded: None,
        }
    }

    /// Reserve numbers in blocks from now on (a long-lived client). Call
    /// [`SeqReserver::release`] and void what it leaves before dropping.
    pub fn use_blocks(&mut self) {
        self.blocks = true;
    }

    /// Reserve `n` numbers and return the first, running `record(first)`
    /// (saving the push journal at `journal`, a file in `<home>/transfers/`,
    /// that names them) before they count as handed out, under the lock.
    /// From the current block when it has `n` left (no write of
    /// `seq.json`); otherwise under the lock with one durable write made
    /// *before* `record` runs, which records the numbers and the journal
    /// that is to name them: if `record` fails or the process dies before
    /// the journal exists, the next locked operation of any process voids
    /// what the journal does not name. O(1): no journal is listed.
    /// Errors: [`ClientError::Io`], [`ClientError::Home`] (corrupt
    /// `seq.json`), or `record`'s error (nothing is handed out then).
    pub fn reserve_then(
        &mut self,
        n: u64,
        journal: Option<&Path>,
        record: impl FnOnce(u64) -> Result<()>,
    ) -> Result<u64> {
        if self.blocks
            && let Some(block) = self.current.as_mut()
            && block.last + 1 - block.next >= n
        {
            let first = block.next;
            if let Err(e) = record(first) {
                block.check_journals = true;
                return Err(e);
            }
            block.next += n;
            return Ok(first);
        }
        let in_block = self.blocks && n <= MAX_BLOCK;
        self.reserve_locked(n, in_block, journal, record)
    }

    /// Reserve exactly `n` numbers under the lock (one durable write), never
    /// from or as a block. Errors: as [`SeqReserver::reserve_then`].
    pub fn reserve_exact(&mut self, n: u64) -> Result<u64> {
        self.reserve_locked(n, false, None, |_| Ok(()))
    }

    fn reserve_locked(
        &mut self,
        n: u64,
        in_block: bool,
        journal: Option<&Path>,
        record: impl FnOnce(u64) -> Result<()>,
    ) -> Result<u64> {
        let mut g = self.lock()?;
        let next = g.file.next_seq;
        if !in_block {
            let recording = match journal.map(|j| self.relative_journal(j)) {
                Some(journal) if n > 0 => Some(Recording {
                    first: next,
                    last: next + n - 1,
                    journal: journal?,
                }),
                _ => None,
            };
            g.file.next_seq = next + n;
            g.file.recording = recording.clone();
            write_seq_file(&self.seq_path, &g.file)?;
            // Still under the lock: whoever settles the recording next
            // finds the journal written, or knows it never will be.
            record(next)?;
            // The journal is written: nothing is left to settle. Cleared
            // before the lock goes (a second write), because a finished
            // push removes its journal, and a recording left behind would
            // then look like one whose journal was never written: the next
            // process would void numbers that were used.
            if recording.is_some() {
                g.file.recording = None;
                write_seq_file(&self.seq_path, &g.file)?;
            }
            self.recorded = None;
            return Ok(next);
        }
        self.size = match &self.current {
            Some(b) if b.next > b.last && b.started.elapsed() < FAST_BLOCK => {
                (self.size * 2).min(MAX_BLOCK)
            }
            Some(_) => FIRST_BLOCK,
            None => self.size,
        };
        let size = self.size.max(n);
        if let Some(old) = self.current.take() {
            self.retire(&mut g.file, old);
        }
        let id = hex::encode(random_bytes::<8>());
        let lock = self.lock_block(&id)?.ok_or_else(|| {
            ClientError::Home(format!("block lock {id} is held by another process"))
        })?;
        g.file.blocks.push(BlockEntry {
            id: id.clone(),
            first: next,
            last: next + size - 1,
        });
        g.file.next_seq = next + size;
        write_seq_file(&self.seq_path, &g.file)?;
        // The block is recorded (a crash from here on leaves it to be
        // claimed and voided, but for what journals name); numbers are
        // handed out of it once `record` succeeded.
        let mut held = Held {
            id,
            next,
            last: next + size - 1,
            started: Instant::now(),
            check_journals: false,
            _lock: lock,
        };
        let recorded = record(next);
        if recorded.is_ok() {
            held.next += n;
        } else {
            held.check_journals = true;
        }
        self.current = Some(held);
        recorded.map(|()| next)
    }

    /// Give up the current block (a clean close): its unused rest becomes a
    /// [`PendingVoid`]. Errors: [`ClientError::Io`], [`ClientError::Home`].
    pub fn release(&mut self) -> Result<()> {
        if self.current.is_none() {
            return Ok(());
        }
        let mut g = self.lock()?;
        if let Some(old) = self.current.take() {
            self.retire(&mut g.file, old);
        }
        write_seq_file(&self.seq_path, &g.file)
    }

    /// The numbers to void now: the unused rest of every given-up block,
    /// except numbers a push journal names where a journal may name some
    /// (blocks of dead owners: only then are the journals listed).
    /// Errors: [`ClientError::Io`], [`ClientError::Home`] (corrupt
    /// journal).
    pub fn take_voids(&self) -> Result<Vec<PendingVoid>> {
        if self.retired.is_empty() {
            return Ok(Vec::new());
        }
        let mut journaled = RangeInclusiveSet::new();
        if self
            .retired
            .iter()
            .any(|b| b.check_journals && b.next <= b.last)
        {
            for (first, last) in Journals::at(self.home.join("transfers")).named_ranges()? {
                journaled.insert(first..=last);
            }
        }
        Ok(self
            .retired
            .iter()
            .map(|b| PendingVoid {
                id: b.id.clone(),
                ranges: if b.next > b.last {
                    Vec::new()
                } else if b.check_journals {
                    journaled
                        .gaps(&(b.next..=b.last))
                        .map(|r| (*r.start(), *r.end()))
                        .collect()
                } else {
                    vec![(b.next, b.last)]
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
        let mut g = self.lock()?;
        g.file.blocks.retain(|b| !ids.contains(&b.id));
        write_seq_file(&self.seq_path, &g.file)?;
        for id in ids {
            let path = self.block_lock_path(id);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ClientError::io(&path)(e)),
            }
        }
        self.retired.retain(|b| !ids.contains(&b.id));
        Ok(())
    }

    /// The number the next reservation of any process starts at or above
    /// (every number below it is reserved, used or voided).
    pub fn next_seq(&self) -> Result<u64> {
        Ok(read_seq_file(&self.seq_path)?.next_seq.max(1))
    }

    /// Take the exclusive lock of `seq.lock` and read `seq.json`; the
    /// first time (per reserver) claim the blocks of dead processes; move
    /// the counter past every journal if a client before this one may
    /// have left one beyond it (a listing, once); settle the last
    /// recording. The caller writes the file back before the guard drops
    /// when it changes anything (what this did is then written too).
    fn lock(&mut self) -> Result<Guard> {
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
        file.next_seq = file.next_seq.max(1);
        if !file.journals_counted {
            let journaled = Journals::at(self.home.join("transfers")).max_reserved_seq()?;
            file.next_seq = file.next_seq.max(journaled + 1);
            file.journals_counted = true;
        }
        if !self.claimed_orphans {
            self.claim_orphans(&file)?;
            self.claimed_orphans = true;
        }
        self.settle(&mut file)?;
        Ok(Guard { file, _lock: lock })
    }

    /// Settle the recording `file` holds (its writer is done: recordings
    /// are made and written under the lock we hold). Ours, with its
    /// journal written: nothing to do. Another's, or ours whose journal
    /// write failed: what its journal does not name is voided, as a block
    /// of ours given up.
    fn settle(&mut self, file: &mut SeqFile) -> Result<()> {
        let ours = self.recorded.take();
        let Some(rec) = file.recording.take() else {
            return Ok(());
        };
        if ours.as_ref() == Some(&rec) {
            return Ok(());
        }
        let named = Journals::at(self.home.join("transfers")).named_by(Path::new(&rec.journal))?;
        for (first, last) in rec.unnamed(named) {
            let id = hex::encode(random_bytes::<8>());
            let lock = self.lock_block(&id)?.ok_or_else(|| {
                ClientError::Home(format!("block lock {id} is held by another process"))
            })?;
            tracing::info!(
                first,
                last,
                "voiding sequence numbers reserved for a push journal that was never written"
            );
            file.blocks.push(BlockEntry {
                id: id.clone(),
                first,
                last,
            });
            self.retired.push(Held {
                id,
                next: first,
                last,
                started: Instant::now(),
                check_journals: false,
                _lock: lock,
            });
        }
        Ok(())
    }

    /// Take over every recorded block whose owner is gone (its lock file
    /// can be locked): it is voided like one of our own given-up blocks,
    /// but for the numbers push journals name.
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
                    check_journals: true,
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

    /// `journal` (a journal file in `<home>/transfers/`) relative to that
    /// directory, as recordings name it. Errors: [`ClientError::Home`]
    /// when it is elsewhere.
    fn relative_journal(&self, journal: &Path) -> Result<String> {
        journal
            .strip_prefix(self.home.join("transfers"))
            .ok()
            .and_then(|p| p.to_str())
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .ok_or_else(|| {
                ClientError::Home(format!(
                    "{}: a push journal outside this home's transfers/",
                    journal.display()
                ))
            })
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

#[cfg(test)]
mod tests;
