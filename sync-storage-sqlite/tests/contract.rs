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
        let opts = SqliteStorageOptions::new(self.dir.path().join("t.db"), quotas);
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
        }) as Box<dyn Backend>)
    })
}

fn sqlite_any_order() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>> {
    Box::pin(async {
        Some(Box::new(Sqlite {
            dir: ram_tempdir(),
            queue_order: false,
        }) as Box<dyn Backend>)
    })
}

sync_storage::storage_contract_tests!(sqlite, 128);

/// Keeps the order-free path of the model check (for a backend without one
/// write queue) working: SQLite's queue order is one of the orders it tries.
#[test]
fn model_check_in_some_order_of_each_burst() {
    sync_storage::testing::model_check::run(16, sqlite_any_order);
}
