//! Tests of [`super::Watcher`]: which events count (real inotify events),
//! and the timing (tokio's paused clock, changes marked by hand).

use super::*;
use notify::event::{CreateKind, ModifyKind};

fn opts() -> WatchOptions {
    WatchOptions {
        rescan: Duration::from_secs(3600),
        ..WatchOptions::default()
    }
}

/// A folder root with a staging directory and an ignore file.
fn root() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    std::fs::create_dir_all(root.join(STAGING_DIR).join("in")).unwrap();
    std::fs::write(root.join(IGNORE_FILE), "*.tmp\nbuild/\n").unwrap();
    (tmp, root)
}

/// Wait (generous deadline, polling) until `check` holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ev(kind: EventKind, path: &Path) -> notify::Event {
    notify::Event::new(kind).add_path(path.to_path_buf())
}

#[test]
fn which_events_count() {
    let (_tmp, root) = root();
    let (ignore, _) = ignore_rules(&root);
    let create = EventKind::Create(CreateKind::File);
    let rel = |p: &str| root.join(p);
    assert!(relevant(&root, &ignore, &ev(create, &rel("a.txt"))));
    assert!(relevant(&root, &ignore, &ev(create, &rel("d/a.txt"))));
    // Staging, ignored files, files under an ignored directory.
    assert!(!relevant(
        &root,
        &ignore,
        &ev(create, &rel(".0k-sync-folder/in/x"))
    ));
    assert!(!relevant(&root, &ignore, &ev(create, &rel("x.tmp"))));
    assert!(!relevant(&root, &ignore, &ev(create, &rel("build/out.o"))));
    // Opening or reading is no change; closing after a write is.
    for kind in [
        EventKind::Access(AccessKind::Open(AccessMode::Any)),
        EventKind::Access(AccessKind::Read),
        EventKind::Access(AccessKind::Close(AccessMode::Read)),
    ] {
        assert!(
            !relevant(&root, &ignore, &ev(kind, &rel("a.txt"))),
            "{kind:?}"
        );
    }
    let closed = EventKind::Access(AccessKind::Close(AccessMode::Write));
    assert!(relevant(&root, &ignore, &ev(closed, &rel("a.txt"))));
    // A rename out of an ignored name into a synced one counts.
    let both = notify::Event::new(EventKind::Modify(ModifyKind::Any))
        .add_path(rel("x.tmp"))
        .add_path(rel("x.txt"));
    assert!(relevant(&root, &ignore, &both));
    // The root itself, and an event without paths: rescan.
    assert!(relevant(&root, &ignore, &ev(create, &root)));
    assert!(relevant(&root, &ignore, &notify::Event::new(create)));
}

/// Writes in the staging directory, to ignored paths, and the reads of a
/// scan never start a run; a write to a synced file does.
#[tokio::test]
async fn only_synced_paths_start_runs() {
    let (_tmp, root) = root();
    std::fs::write(root.join("old.txt"), b"old").unwrap();
    let mut w = Watcher::new(&root, opts()).unwrap();
    assert_eq!(w.next().await, Trigger::Rescan, "the first run is at once");
    w.synced(0);
    std::fs::write(root.join(STAGING_DIR).join("in/part"), b"staged").unwrap();
    std::fs::write(root.join("scratch.tmp"), b"ignored").unwrap();
    std::fs::create_dir(root.join("build")).unwrap();
    std::fs::write(root.join("build/out.o"), b"ignored").unwrap();
    let _ = std::fs::read(root.join("old.txt")).unwrap();
    // Events arrive in order: once the sentinel's are in, the others
    // were judged.
    std::fs::write(root.join("sentinel"), b"synced").unwrap();
    let sentinel = root.join("sentinel");
    until("the sentinel's event", || w.marked().contains(&sentinel)).await;
    assert_eq!(w.next().await, Trigger::Local);
    let marked = w.marked();
    assert!(marked.iter().all(|p| *p == sentinel), "{marked:?}");
    assert!(w.stats().dropped >= 6, "{:?}", w.stats());
    assert!(!w.pending());
}

/// A new ignore rule applies to the next events without a restart.
#[tokio::test]
async fn an_edited_ignore_file_applies_at_once() {
    let (_tmp, root) = root();
    let mut w = Watcher::new(&root, opts()).unwrap();
    w.synced(0);
    std::fs::write(root.join(IGNORE_FILE), "*.tmp\nbuild/\n*.log\n").unwrap();
    std::fs::write(root.join("x.log"), b"now ignored").unwrap();
    std::fs::write(root.join("sentinel"), b"synced").unwrap();
    let sentinel = root.join("sentinel");
    until("the sentinel's event", || w.marked().contains(&sentinel)).await;
    let marked = w.marked();
    assert!(
        !marked.contains(&root.join("x.log")),
        "x.log counted after *.log was added: {marked:?}"
    );
    assert!(marked.contains(&root.join(IGNORE_FILE)), "{marked:?}");
}

/// A flood of events (thousands of files) is one run and leaves nothing
/// queued.
#[tokio::test]
async fn a_flood_of_events_is_one_run() {
    let (_tmp, root) = root();
    let mut w = Watcher::new(&root, opts()).unwrap();
    w.synced(0);
    std::fs::create_dir(root.join("flood")).unwrap();
    for i in 0..3000 {
        std::fs::write(root.join(format!("flood/{i}")), b"x").unwrap();
    }
    std::fs::write(root.join("sentinel"), b"last").unwrap();
    let sentinel = root.join("sentinel");
    until("the sentinel's event", || w.marked().contains(&sentinel)).await;
    assert!(w.stats().relevant >= 3000, "{:?}", w.stats());
    assert_eq!(w.next().await, Trigger::Local);
    assert!(!w.pending(), "events left queued after the run's trigger");
}

/// A change starts a run once changes have been quiet for the debounce,
/// or at the latest `max_delay` after the first one.
#[tokio::test(start_paused = true)]
async fn changes_are_debounced_and_not_delayed_forever() {
    let (_tmp, root) = root();
    let mut w = Watcher::new(&root, opts()).unwrap();
    w.synced(0);
    let poke = w.poker();
    let t0 = Instant::now();
    poke();
    assert_eq!(w.next().await, Trigger::Local);
    assert_eq!(t0.elapsed(), opts().debounce);

    // Changes every 100 ms without end: the run starts after max_delay.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            while !stop.load(Ordering::SeqCst) {
                poke();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await;
    let t1 = Instant::now();
    assert_eq!(w.next().await, Trigger::Local);
    let waited = t1.elapsed();
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert!(
        waited >= opts().max_delay && waited < opts().max_delay + opts().debounce,
        "{waited:?}"
    );
}

/// A head above the last run's starts a run; the head the last run
/// reached does not (only the rescan comes).
#[tokio::test(start_paused = true)]
async fn a_new_head_starts_a_run() {
    let (_tmp, root) = root();
    let mut w = Watcher::new(&root, opts()).unwrap();
    let (tx, rx) = watch::channel(5);
    w.set_heads(rx);
    assert_eq!(w.next().await, Trigger::Remote { head: 5 });
    w.synced(5);
    tx.send(5).unwrap();
    let t0 = Instant::now();
    assert_eq!(w.next().await, Trigger::Rescan);
    assert_eq!(t0.elapsed(), opts().rescan);
    w.synced(5);
    tx.send(7).unwrap();
    assert_eq!(w.next().await, Trigger::Remote { head: 7 });
    // A head that came while no one waited is not missed either.
    w.synced(7);
    tx.send(9).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(w.next().await, Trigger::Remote { head: 9 });
    // The feed ends (its connection gave up): rescans go on.
    w.synced(9);
    drop(tx);
    let t1 = Instant::now();
    assert_eq!(w.next().await, Trigger::Rescan);
    assert_eq!(t1.elapsed(), opts().rescan);
}

/// After a failed run nothing starts the next before the backoff, which
/// doubles up to the rescan interval and resets after a success.
#[tokio::test(start_paused = true)]
async fn a_failed_run_is_retried_after_a_growing_backoff() {
    let (_tmp, root) = root();
    let opts = WatchOptions {
        rescan: Duration::from_secs(5),
        ..WatchOptions::default()
    };
    let mut w = Watcher::new(&root, opts).unwrap();
    let (_tx, rx) = watch::channel(100);
    w.set_heads(rx);
    let poke = w.poker();
    for expect in [1, 2, 4, 5, 5] {
        w.failed();
        // A head and a local change are waiting: still the backoff first.
        poke();
        let t0 = Instant::now();
        assert_eq!(w.next().await, Trigger::Retry);
        assert_eq!(t0.elapsed(), Duration::from_secs(expect));
    }
    w.synced(100);
    w.failed();
    assert_eq!(w.retry_in(), Some(Duration::from_secs(1)));
}

/// `again` makes the next run due at once (a run that pushed records
/// folds them at the next pull).
#[tokio::test(start_paused = true)]
async fn again_runs_at_once() {
    let (_tmp, root) = root();
    let mut w = Watcher::new(&root, opts()).unwrap();
    w.synced(0);
    w.again();
    let t0 = Instant::now();
    assert_eq!(w.next().await, Trigger::Rescan);
    assert_eq!(t0.elapsed(), Duration::ZERO);
}
