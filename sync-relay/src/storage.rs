//! The relay's storage (docs/deploy.md "Storage backends"): the trait and its types from
//! `sync-storage`, and the backend `[storage] url` picks ([`open`]).

pub use sync_storage::*;
pub use sync_storage_postgres::{PostgresStorage, PostgresStorageOptions};
pub use sync_storage_sqlite::{SqliteStorage, SqliteStorageOptions, admin, backup_database};

use crate::config::{Config, StorageUrl};
use std::sync::Arc;

/// Open the backend `config.storage.url` names (SQLite in the data dir
/// when unset) with the quotas of `config`, its schema migrated. Errors:
/// [`StorageError::Database`] (a URL that does not parse, a server that
/// cannot be reached), [`StorageError::Migration`].
pub async fn open(config: &Config) -> Result<Arc<dyn Storage>, StorageError> {
    let quotas = crate::admission::quotas(config);
    let url = config
        .storage_url()
        .map_err(|e| StorageError::database(e.to_string()))?;
    Ok(match url {
        StorageUrl::Sqlite(path) => {
            Arc::new(SqliteStorage::open(SqliteStorageOptions::new(path, quotas)).await?)
        }
        StorageUrl::Postgres(url) => {
            let mut opts = PostgresStorageOptions::new(&url, quotas)?;
            opts.max_connections = config.storage.max_connections;
            Arc::new(PostgresStorage::open(opts).await?)
        }
    })
}

/// `sqlite` or `postgres`: the backend `config` runs on (for the log
/// line at start; an invalid URL, refused by [`Config::validate`], counts
/// as the default, SQLite).
pub fn backend_name(config: &Config) -> &'static str {
    match config.storage_url() {
        Ok(StorageUrl::Postgres(_)) => "postgres",
        _ => "sqlite",
    }
}
