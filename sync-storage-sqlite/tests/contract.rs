//! The storage contract (`sync_storage::testing`) against SQLite: every
//! contract, access and two-instance test and the model check, each test on
//! a database file of its own in a temporary directory.

use async_trait::async_trait;
use futures::future::LocalBoxFuture;
use sync_storage::testing::Backend;
use sync_storage::{Quotas, Storage};
use sync_storage_sqlite::{SqliteStorage, SqliteStorageOptions};

/// SQLite over a temporary directory (removed when dropped).
struct Sqlite {
    dir: tempfile::TempDir,
    /// Whether the model check may rely on the writer's queue order (false
    /// runs the order-free check meant for backends without one write queue).
    queue_order: bool,
    /// Payloads of this many bytes or more go to files
    /// (`SqliteStorageOptions::file_threshold`).
    file_threshold: usize,
}

/// A temporary directory in RAM where there is one (`/dev/shm` on Linux):
/// the model check compares answers, not durability, and the `fsync`s of
/// opening, closing and checkpointing databases would otherwise take most
/// of its time (about five times as long on a virtual disk).
fn ram_tempdir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir()
        && let Ok(dir) = tempfile::tempdir_in(shm)
    {
        return dir;
    }
    tempfile::tempdir().expect("temp dir")
}

#[async_trait(?Send)]
impl Backend for Sqlite {
    async fn open(&mut self, quotas: Quotas) -> Box<dyn Storage> {
        let mut opts = SqliteStorageOptions::new(self.dir.path().join("t.db"), quotas);
        opts.file_threshold = self.file_threshold;
        Box::new(SqliteStorage::open(opts).await.expect("open SQLite"))
    }

    fn commits_in_submission_order(&self) -> bool {
        self.queue_order
    }
}

fn sqlite() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>> {
    Box::pin(async {
        Some(Box::new(Sqlite {
            dir: ram_tempdir(),
            queue_order: true,
            file_threshold: sync_storage_sqlite::DEFAULT_FILE_THRESHOLD,
        }) as Box<dyn Backend>)
    })
}

/// Every payload of 1 byte or more in a file: the whole contract and the
/// model check again, on the file path.
fn sqlite_files() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>> {
    Box::pin(async {
        Some(Box::new(Sqlite {
            dir: ram_tempdir(),
            // A push with files writes them before it joins the writer's
            // queue, so a later op can overtake it: the order-free check.
            queue_order: false,
            file_threshold: 1,
        }) as Box<dyn Backend>)
    })
}

fn sqlite_any_order() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>> {
    Box::pin(async {
        Some(Box::new(Sqlite {
            dir: ram_tempdir(),
            queue_order: false,
            file_threshold: sync_storage_sqlite::DEFAULT_FILE_THRESHOLD,
        }) as Box<dyn Backend>)
    })
}

sync_storage::storage_contract_tests!(sqlite, 128);

/// The contract with payloads in files.
mod files {
    use super::sqlite_files;
    sync_storage::storage_contract_tests!(sqlite_files, 64);
}

/// Keeps the order-free path of the model check (for a backend without one
/// write queue) working: SQLite's queue order is one of the orders it tries.
#[test]
fn model_check_in_some_order_of_each_burst() {
    sync_storage::testing::model_check::run(16, sqlite_any_order);
}

/// The in-memory reference model as a [`Backend`]: one instance only (it
/// shares no data between two opens), for the single-instance tests.
struct Memory {
    opened: bool,
}

#[async_trait(?Send)]
impl Backend for Memory {
    async fn open(&mut self, quotas: Quotas) -> Box<dyn Storage> {
        assert!(!self.opened, "the memory model has one instance only");
        self.opened = true;
        Box::new(sync_storage::MemoryStorage::new(quotas))
    }

    fn commits_in_submission_order(&self) -> bool {
        true
    }
}

fn memory() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>> {
    Box::pin(async { Some(Box::new(Memory { opened: false }) as Box<dyn Backend>) })
}

/// The close tests that need one instance, on the reference model: the
/// model and the backends agree on closing too.
mod memory_model {
    use sync_storage::testing::{close, run_one};

    #[test]
    fn list_is_complete() {
        assert_eq!(close::SINGLE_INSTANCE.len(), 4);
    }

    #[test]
    fn a_closed_group_refuses_pushes_and_unlisted_devices() {
        run_one(super::memory, |b| {
            Box::pin(close::a_closed_group_refuses_pushes_and_unlisted_devices(b))
        });
    }

    #[test]
    fn a_kept_device_pushes_until_the_grace_and_its_blobs_expire_by_then() {
        run_one(super::memory, |b| {
            Box::pin(close::a_kept_device_pushes_until_the_grace_and_its_blobs_expire_by_then(b))
        });
    }

    #[test]
    fn a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it() {
        run_one(super::memory, |b| {
            Box::pin(close::a_close_racing_pushes_keeps_exactly_the_pushes_committed_before_it(b))
        });
    }

    #[test]
    fn listed_devices_pull_until_the_grace_then_the_blobs_go_and_the_mark_stays() {
        run_one(super::memory, |b| {
            Box::pin(
                close::listed_devices_pull_until_the_grace_then_the_blobs_go_and_the_mark_stays(b),
            )
        });
    }
}
