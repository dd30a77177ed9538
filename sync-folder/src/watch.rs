//! `sync DIR --watch` (docs/client.md "Folder sync", "Watch mode"): when
//! to start the next run. A [`Watcher`] turns three sources into
//! [`Trigger`]s, one run at a time:
//!
//! - **local changes**: file-system events under the root (the `notify`
//!   crate: inotify on Linux), debounced — a run starts once events have
//!   been quiet for [`WatchOptions::debounce`], and at the latest
//!   [`WatchOptions::max_delay`] after the first one. Events inside the
//!   staging directory, on paths `.0k-syncignore` ignores, and mere opens
//!   or reads are dropped (a run's own scan opens every file it hashes);
//! - **remote changes**: the group's head (NOTIFY, through a
//!   `watch::Receiver` the caller keeps fed, e.g. from
//!   [`sync_client::SyncClient::heads`]) above the head the last run's
//!   pull reached;
//! - **the safety net**: a full rescan every [`WatchOptions::rescan`].
//!
//! Every run scans the whole folder, so the watcher keeps no list of
//! paths: an event only sets a flag. A flood of events (or an overflow of
//! the kernel's queue) is one run, never a growing queue. Events during a
//! run set the flag again and make the next run. After a failed run the
//! next one waits a backoff (1 s, doubling, at most the rescan interval)
//! whatever happens meanwhile.

use crate::scan::ignore_rules;
use crate::{IGNORE_FILE, STAGING_DIR};
use ignore::gitignore::Gitignore;
use notify::event::{AccessKind, AccessMode, EventKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

/// Timing of [`Watcher`].
#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    /// Quiet time after the last relevant file-system event before a run
    /// starts (default 250 ms).
    pub debounce: Duration,
    /// Longest a run waits for quiet after the first event of a batch
    /// (default 1 s): a file written without pause still syncs.
    pub max_delay: Duration,
    /// A full run this long after the last one even with no event
    /// (default 60 s): the safety net for events the kernel lost or never
    /// sent (network file systems, watch limits).
    pub rescan: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: Duration::from_millis(250),
            max_delay: Duration::from_secs(1),
            rescan: Duration::from_secs(60),
        }
    }
}

/// Why a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Files changed under the root.
    Local,
    /// The group's head moved past what the last run pulled.
    Remote {
        /// The head announced.
        head: u64,
    },
    /// The periodic rescan.
    Rescan,
    /// The retry after a failed run.
    Retry,
}

/// Counts of file-system events (for reports and tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Events that asked for a run.
    pub relevant: u64,
    /// Events dropped: in the staging directory, ignored paths, opens.
    pub dropped: u64,
    /// Lost-event notices (the kernel's queue overflowed) and watch
    /// errors; each asks for a run.
    pub rescans: u64,
}

/// What the file-system callback (on `notify`'s thread) shares with the
/// async side: a flag and a wake-up, never a queue.
struct Shared {
    root: PathBuf,
    dirty: AtomicBool,
    wake: Notify,
    ignore: Mutex<Gitignore>,
    relevant: AtomicU64,
    dropped: AtomicU64,
    rescans: AtomicU64,
    /// The paths of the relevant events, in order (tests; bounded).
    #[cfg(test)]
    marked: Mutex<Vec<PathBuf>>,
}

impl Shared {
    /// A change to sync: set the flag, wake the waiter (at most one
    /// stored wake-up, however many events).
    fn mark(&self) {
        self.dirty.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn on_event(&self, res: notify::Result<notify::Event>) {
        match res {
            Ok(event) if event.need_rescan() => {
                self.rescans.fetch_add(1, Ordering::Relaxed);
                self.mark();
            }
            Ok(event) => {
                let mut ignore = self.ignore.lock().unwrap_or_else(|p| p.into_inner());
                if event
                    .paths
                    .iter()
                    .any(|p| p.strip_prefix(&self.root).ok() == Some(Path::new(IGNORE_FILE)))
                {
                    *ignore = ignore_rules(&self.root).0;
                }
                if relevant(&self.root, &ignore, &event) {
                    drop(ignore);
                    #[cfg(test)]
                    {
                        let mut m = self.marked.lock().unwrap_or_else(|p| p.into_inner());
                        if m.len() < 100_000 {
                            m.extend(event.paths.iter().cloned());
                        }
                    }
                    self.relevant.fetch_add(1, Ordering::Relaxed);
                    self.mark();
                } else {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "file-system watch error; rescanning");
                self.rescans.fetch_add(1, Ordering::Relaxed);
                self.mark();
            }
        }
    }
}

/// True when `event` may change what a run syncs: not a mere open or
/// read, and about some path outside the staging directory that
/// `ignore` does not ignore (an event naming no path counts).
pub(crate) fn relevant(root: &Path, ignore: &Gitignore, event: &notify::Event) -> bool {
    match event.kind {
        // Written and closed: the end of a write, which matters.
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
        EventKind::Access(_) => return false,
        _ => {}
    }
    if event.paths.is_empty() {
        return true;
    }
    event.paths.iter().any(|p| {
        let Ok(rel) = p.strip_prefix(root) else {
            // Outside the root (the root itself moved away): rescan.
            return true;
        };
        let mut parts = rel.components();
        match parts.next() {
            // The root itself.
            None => true,
            Some(first) if first.as_os_str() == STAGING_DIR => false,
            Some(_) => {
                let is_dir = std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
                !ignore.matched_path_or_any_parents(rel, is_dir).is_ignore()
            }
        }
    })
}

/// Errors of [`Watcher::new`].
#[derive(Debug, thiserror::Error)]
#[error("watching {path} for changes: {source}")]
pub struct WatchError {
    path: String,
    #[source]
    source: notify::Error,
}

/// Decides when the next run of `sync --watch` starts (see the module
/// doc). One run at a time: call [`Watcher::next`], run, then report with
/// [`Watcher::synced`] or [`Watcher::failed`].
pub struct Watcher {
    shared: Arc<Shared>,
    _fs: RecommendedWatcher,
    heads: Option<watch::Receiver<u64>>,
    seen: u64,
    opts: WatchOptions,
    next_rescan: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// First wait after a failed run; doubles per failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

impl Watcher {
    /// Start watching `root` (recursively; new subdirectories are watched
    /// as they appear). The first [`Watcher::next`] returns
    /// [`Trigger::Rescan`] at once: the caller's first run covers what
    /// changed before the watch began. Errors: the watch could not be set
    /// up (e.g. the inotify watch limit, `fs.inotify.max_user_watches`).
    pub fn new(root: &Path, opts: WatchOptions) -> Result<Watcher, WatchError> {
        let shared = Arc::new(Shared {
            root: root.to_path_buf(),
            dirty: AtomicBool::new(false),
            wake: Notify::new(),
            ignore: Mutex::new(ignore_rules(root).0),
            relevant: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rescans: AtomicU64::new(0),
            #[cfg(test)]
            marked: Mutex::new(Vec::new()),
        });
        let err = |source| WatchError {
            path: root.display().to_string(),
            source,
        };
        let handler = Arc::clone(&shared);
        let mut fs = notify::recommended_watcher(move |res| handler.on_event(res)).map_err(err)?;
        fs.watch(root, RecursiveMode::Recursive).map_err(err)?;
        Ok(Watcher {
            shared,
            _fs: fs,
            heads: None,
            seen: 0,
            opts,
            next_rescan: Instant::now(),
            retry_at: None,
            backoff: FIRST_BACKOFF,
        })
    }

    /// Follow the group's head: a head above the last run's (see
    /// [`Watcher::synced`]) starts a run. Replaces an earlier receiver; a
    /// receiver whose sender is gone is dropped (rescans go on).
    pub fn set_heads(&mut self, heads: watch::Receiver<u64>) {
        self.heads = Some(heads);
    }

    /// A run succeeded; its pull reached the group's head `head` (the
    /// highest of the pull's heads and cursor). The next rescan is due one
    /// interval from now.
    pub fn synced(&mut self, head: u64) {
        self.seen = head;
        self.retry_at = None;
        self.backoff = FIRST_BACKOFF;
        self.next_rescan = Instant::now() + self.opts.rescan;
    }

    /// Make the next run due at once (as a rescan): after a run that
    /// pushed records, whose own records the next pull folds (the relay
    /// does not announce a device's own pushes to it).
    pub fn again(&mut self) {
        self.next_rescan = Instant::now();
    }

    /// A run failed: the next starts after the backoff (1 s, doubling per
    /// failure up to the rescan interval), whatever happens meanwhile.
    pub fn failed(&mut self) {
        let now = Instant::now();
        self.retry_at = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.opts.rescan.max(FIRST_BACKOFF));
        self.next_rescan = now + self.opts.rescan;
    }

    /// The backoff before the retry [`Watcher::failed`] scheduled.
    pub fn retry_in(&self) -> Option<Duration> {
        self.retry_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// True when a local change waits for a run.
    pub fn pending(&self) -> bool {
        self.shared.dirty.load(Ordering::SeqCst)
    }

    /// Event counts so far.
    pub fn stats(&self) -> WatchStats {
        WatchStats {
            relevant: self.shared.relevant.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            rescans: self.shared.rescans.load(Ordering::Relaxed),
        }
    }

    fn take(&self, trigger: Trigger) -> Trigger {
        // The run about to start scans everything: what was pending is
        // covered; events from now on make the next run.
        self.shared.dirty.store(false, Ordering::SeqCst);
        trigger
    }

    /// Wait for the next run's trigger. Cancel-safe (drop it to stop).
    pub async fn next(&mut self) -> Trigger {
        if let Some(at) = self.retry_at {
            tokio::time::sleep_until(at).await;
            self.retry_at = None;
            return self.take(Trigger::Retry);
        }
        loop {
            if let Some(heads) = &self.heads {
                let head = *heads.borrow();
                if head > self.seen {
                    return self.take(Trigger::Remote { head });
                }
            }
            if self.pending() {
                self.debounce().await;
                return self.take(Trigger::Local);
            }
            let rescan = self.next_rescan;
            let shared = Arc::clone(&self.shared);
            match &mut self.heads {
                Some(heads) => {
                    tokio::select! {
                        _ = shared.wake.notified() => {}
                        changed = heads.changed() => {
                            if changed.is_err() {
                                self.heads = None;
                            }
                        }
                        _ = tokio::time::sleep_until(rescan) => return self.take(Trigger::Rescan),
                    }
                }
                None => {
                    tokio::select! {
                        _ = shared.wake.notified() => {}
                        _ = tokio::time::sleep_until(rescan) => return self.take(Trigger::Rescan),
                    }
                }
            }
        }
    }

    /// Wait until events have been quiet for `debounce`, or `max_delay`
    /// after now (the first event seen), whichever is first.
    async fn debounce(&self) {
        let latest = Instant::now() + self.opts.max_delay;
        loop {
            let until = (Instant::now() + self.opts.debounce).min(latest);
            tokio::select! {
                _ = self.shared.wake.notified() => {
                    if Instant::now() >= latest {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }

    /// A handle marking local changes as file-system events would (tests
    /// of the timing, which cannot make the kernel's events on time).
    #[cfg(test)]
    fn poker(&self) -> impl Fn() + Send + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.mark()
    }

    /// The paths of the relevant events so far, in order (tests).
    #[cfg(test)]
    fn marked(&self) -> Vec<PathBuf> {
        self.shared
            .marked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
#[path = "watch_tests.rs"]
mod tests;
