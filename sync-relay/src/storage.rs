//! The relay's storage (docs/deploy.md "Storage backends"): the trait and its types from
//! `sync-storage`, and the backends the relay can run on.

pub use sync_storage::*;
pub use sync_storage_sqlite::{SqliteStorage, SqliteStorageOptions, admin, backup_database};
