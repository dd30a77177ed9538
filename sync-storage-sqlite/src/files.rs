//! Large payloads as files beside the database (docs/deploy.md "Data
//! directory"): a payload of at least [`BlobFiles::threshold`] bytes is
//! written once, to `<blobs>/<xx>/<name>` where `<name>` is 32 random hex
//! digits the relay chooses (never a peer's string) and `<xx>` its first
//! two, and its row holds the name, the length and the BLAKE3 hash.
//!
//! Order of durability: a file is written and fsync'd (file, then its
//! directory) *before* the transaction that inserts its row commits, and
//! removed only *after* the transaction that deletes its row committed. A
//! crash in between leaves a file no row names (an orphan), never a row
//! without its file; [`sweep`] removes orphans at start and at each
//! maintenance. Files being written for a push not yet committed are
//! registered in memory ([`BlobFiles::reserve`]) so the sweep never takes
//! them for orphans.

use sqlx::SqlitePool;
use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use sync_storage::StorageError;

/// Default [`BlobFiles::threshold`]: payloads of 64 KiB and more go to files
/// (below it SQLite's inline storage is cheaper than a file and its fsync).
pub const DEFAULT_FILE_THRESHOLD: usize = 64 * 1024;

/// Name of the directory of payload files, beside the database file.
pub const BLOBS_DIR: &str = "blobs";

/// A payload file as its row records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRef {
    /// 32 lower-case hex digits.
    pub name: String,
    /// Payload bytes.
    pub len: u64,
    /// BLAKE3 of the payload.
    pub hash: [u8; 32],
}

/// The payload file directory of one database, and the names reserved by
/// pushes in flight.
pub(crate) struct BlobFiles {
    root: PathBuf,
    threshold: usize,
    in_flight: Mutex<HashSet<String>>,
}

/// The directory of payload files of the database at `db`:
/// `<db's directory>/blobs`.
pub fn blobs_dir_of(db: &Path) -> PathBuf {
    db.parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
        .join(BLOBS_DIR)
}

impl BlobFiles {
    /// Create `root` and its 256 fan-out directories (mode 0700) if
    /// missing, fsync'd, so a file's own directory fsync is all a push needs.
    pub(crate) fn open(root: PathBuf, threshold: usize) -> Result<BlobFiles, StorageError> {
        use std::os::unix::fs::DirBuilderExt;
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700).recursive(true);
        builder.create(&root).map_err(|e| io_error(&root, e))?;
        for i in 0..=255u8 {
            let dir = root.join(hex::encode([i]));
            if !dir.is_dir() {
                builder.create(&dir).map_err(|e| io_error(&dir, e))?;
                sync_dir(&dir)?;
            }
        }
        sync_dir(&root)?;
        if let Some(parent) = root.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(BlobFiles {
            root,
            threshold,
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Payloads of this many bytes or more are stored in files.
    pub(crate) fn threshold(&self) -> usize {
        self.threshold
    }

    /// The path of the file `name`.
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(&name[..2]).join(name)
    }

    /// A fresh random name, registered as in flight until [`Staged`]
    /// holding it is dropped.
    fn reserve(&self) -> Result<String, StorageError> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| StorageError::database(format!("no randomness for a file name: {e}")))?;
        let name = hex::encode(bytes);
        self.lock().insert(name.clone());
        Ok(name)
    }

    fn is_in_flight(&self, name: &str) -> bool {
        self.lock().contains(name)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A panic while holding this lock cannot leave the set half-updated
        // (single insert/remove calls), so a poisoned lock is still usable.
        self.in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Write `payloads` to fresh files (blocking: call off the runtime):
    /// all written, then each fsync'd, then each directory, so the caller
    /// may commit rows naming them. Names are reserved before any file
    /// exists; the returned [`Staged`] releases them when dropped.
    pub(crate) fn write_all(
        self: &Arc<Self>,
        payloads: &[&[u8]],
    ) -> Result<(Staged, Vec<FileRef>), StorageError> {
        let mut staged = Staged {
            files: Arc::clone(self),
            names: Vec::with_capacity(payloads.len()),
        };
        let mut refs = Vec::with_capacity(payloads.len());
        let mut open = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let name = self.reserve()?;
            staged.names.push(name.clone());
            let path = self.path(&name);
            let file = create_file(&path, payload)?;
            open.push((path, file));
            refs.push(FileRef {
                name,
                len: payload.len() as u64,
                hash: *blake3::hash(payload).as_bytes(),
            });
        }
        let mut dirs = HashSet::new();
        for (path, file) in &open {
            file.sync_all().map_err(|e| io_error(path, e))?;
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            sync_dir(&dir)?;
        }
        Ok((staged, refs))
    }

    /// The payload of `file`, checked against its recorded length and hash
    /// (blocking); `None` when the file does not exist (the caller asks
    /// whether its row still does: the cleanup may have deleted both since
    /// the row was read). A truncated, grown, altered or unreadable file is
    /// a [`StorageError::Database`] naming the file.
    pub(crate) fn read(&self, file: &FileRef) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self.path(&file.name);
        let handle = match std::fs::File::open(&path) {
            Ok(handle) => handle,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(StorageError::database(format!(
                    "blob file {} unreadable: {e}",
                    path.display()
                )));
            }
        };
        let len = usize::try_from(file.len)
            .map_err(|_| StorageError::database("blob file length does not fit in memory"))?;
        let mut payload = Vec::with_capacity(len);
        // One byte more than recorded, so a grown file is noticed without
        // reading it whole.
        handle
            .take(file.len + 1)
            .read_to_end(&mut payload)
            .map_err(|e| io_error(&path, e))?;
        if payload.len() > len {
            return Err(StorageError::database(format!(
                "blob file {} is longer than the {len} bytes its row says",
                path.display()
            )));
        }
        if payload.len() < len {
            return Err(StorageError::database(format!(
                "blob file {} holds {} bytes, its row says {len}",
                path.display(),
                payload.len()
            )));
        }
        if *blake3::hash(&payload).as_bytes() != file.hash {
            return Err(StorageError::database(format!(
                "blob file {} is corrupt (its BLAKE3 hash differs from its row's)",
                path.display()
            )));
        }
        Ok(Some(payload))
    }

    /// Remove the files `names` (blocking); a file already gone is fine,
    /// other failures are logged (the sweep retries them).
    pub(crate) fn remove(&self, names: &[String]) {
        for name in names {
            let path = self.path(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove blob file")
                }
            }
        }
    }

    /// The names of every payload file on disk (blocking); anything else
    /// in the directory is left alone.
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        for i in 0..=255u8 {
            let dir = self.root.join(hex::encode([i]));
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_error(&dir, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&dir, e))?;
                if let Some(name) = entry.file_name().to_str()
                    && is_file_name(name)
                    && name.starts_with(&hex::encode([i]))
                {
                    names.push(name.to_string());
                }
            }
        }
        Ok(names)
    }
}

/// The names a push wrote, registered as in flight (so the sweep leaves
/// them) until this is dropped: after the writer answered the push (its
/// rows committed, or its unused files removed), or with a push abandoned
/// before it reached the writer (its files are then orphans for the sweep).
pub(crate) struct Staged {
    files: Arc<BlobFiles>,
    names: Vec<String>,
}

impl Staged {
    /// Remove the files of this push that no committed row names: every
    /// staged name except those of `refs[i]` with `used[i]` (both per item
    /// of the push; items below the threshold have no file, so item
    /// indexes are not file indexes). `remove_unused(&[], &[])` removes
    /// them all (a refused push). Blocking, but only for duplicates and
    /// refusals.
    pub(crate) fn remove_unused(&self, refs: &[Option<FileRef>], used: &[bool]) {
        let kept: HashSet<&str> = refs
            .iter()
            .zip(used)
            .filter(|(_, used)| **used)
            .filter_map(|(file, _)| file.as_ref().map(|f| f.name.as_str()))
            .collect();
        let unused: Vec<String> = self
            .names
            .iter()
            .filter(|name| !kept.contains(name.as_str()))
            .cloned()
            .collect();
        self.files.remove(&unused);
    }

    /// True when the push wrote no file.
    pub(crate) fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let mut set = self.files.lock();
        for name in &self.names {
            set.remove(name);
        }
    }
}

/// True for a name the relay gives files: 32 lower-case hex digits.
pub(crate) fn is_file_name(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Remove every payload file that no row names and no push in flight
/// reserved; returns how many were removed. Per file, the in-flight set is
/// asked *before* the database: a name not in flight any more belongs to a
/// push whose transaction has ended, so the database's answer is final.
pub(crate) async fn sweep(
    files: &Arc<BlobFiles>,
    readers: &SqlitePool,
) -> Result<u64, StorageError> {
    let lister = Arc::clone(files);
    let names = tokio::task::spawn_blocking(move || lister.list())
        .await
        .map_err(|e| StorageError::database(format!("sweep task failed: {e}")))??;
    let mut orphans = Vec::new();
    for name in names {
        if files.is_in_flight(&name) {
            continue;
        }
        let named: Option<i64> = sqlx::query_scalar("SELECT 1 FROM blobs WHERE file_name = ?1")
            .bind(&name)
            .fetch_optional(readers)
            .await
            .map_err(crate::dberr)?;
        if named.is_none() {
            orphans.push(name);
        }
    }
    let n = orphans.len() as u64;
    if n > 0 {
        let remover = Arc::clone(files);
        tokio::task::spawn_blocking(move || remover.remove(&orphans))
            .await
            .map_err(|e| StorageError::database(format!("sweep task failed: {e}")))?;
        tracing::info!(files = n, "removed orphaned blob files");
    }
    Ok(n)
}

fn create_file(path: &Path, payload: &[u8]) -> Result<std::fs::File, StorageError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(path, e))?;
    file.write_all(payload).map_err(|e| io_error(path, e))?;
    Ok(file)
}

/// fsync the directory `dir` (makes the entries created in it durable).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

fn io_error(path: &Path, err: std::io::Error) -> StorageError {
    StorageError::database(format!("{}: {err}", path.display()))
}
