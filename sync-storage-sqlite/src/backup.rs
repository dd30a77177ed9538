//! `sync-relay backup` of a SQLite store (docs/deploy.md "Backup"): a
//! consistent copy of the database with `VACUUM INTO`, then a copy of every
//! payload file the copy names, into `blobs/` beside it — the same layout
//! as the data directory, so a backup restores by copying it back.

use crate::files::{self, BlobFiles};
use crate::{dberr, file_in_row};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use std::path::Path;
use std::time::Duration;
use sync_storage::StorageError;

/// Attempts before giving up when the cleanup keeps removing files the
/// database copy still names (each attempt takes a new copy).
const ATTEMPTS: u32 = 5;

/// Write a consistent copy of the database at `db` to `dest` with
/// `VACUUM INTO` (safe while the relay runs: it is one read transaction),
/// and copy the payload files it names from [`crate::blobs_dir_of`]`(db)`
/// to [`crate::blobs_dir_of`]`(dest)`, each fsync'd. `dest` and that
/// directory must not exist. A file the cleanup removed after the copy was
/// taken (its row deleted since) makes the attempt start again, at most
/// five times. Errors: [`StorageError::Database`].
pub async fn backup_database(db: &Path, dest: &Path) -> Result<(), StorageError> {
    let dest_blobs = crate::blobs_dir_of(dest);
    if dest_blobs.exists() {
        return Err(StorageError::database(format!(
            "{} exists already",
            dest_blobs.display()
        )));
    }
    for attempt in 1..=ATTEMPTS {
        copy_database(db, dest).await?;
        match copy_files(db, dest).await? {
            None => return Ok(()),
            Some(vanished) => {
                tracing::info!(
                    attempt,
                    file = %vanished,
                    "a blob file was removed by the cleanup during the backup; starting again"
                );
                std::fs::remove_file(dest).map_err(StorageError::database)?;
                std::fs::remove_dir_all(&dest_blobs).map_err(StorageError::database)?;
            }
        }
    }
    Err(StorageError::database(format!(
        "the cleanup removed blob files during each of {ATTEMPTS} backup attempts; try again"
    )))
}

async fn copy_database(db: &Path, dest: &Path) -> Result<(), StorageError> {
    let connect = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30));
    let mut conn = SqliteConnection::connect_with(&connect)
        .await
        .map_err(dberr)?;
    let dest = dest
        .to_str()
        .ok_or_else(|| StorageError::database("backup path is not UTF-8"))?;
    sqlx::query("VACUUM INTO ?1")
        .bind(dest)
        .execute(&mut conn)
        .await
        .map_err(dberr)?;
    conn.close().await.map_err(dberr)?;
    Ok(())
}

/// Copy the files the database copy at `dest` names; `Some(name)` when one
/// of them is gone from the source (removed since the copy was taken).
async fn copy_files(db: &Path, dest: &Path) -> Result<Option<String>, StorageError> {
    let connect = SqliteConnectOptions::new().filename(dest).read_only(true);
    let mut conn = SqliteConnection::connect_with(&connect)
        .await
        .map_err(dberr)?;
    let rows =
        sqlx::query("SELECT file_name, file_len, file_hash FROM blobs WHERE file_name IS NOT NULL")
            .fetch_all(&mut conn)
            .await
            .map_err(dberr)?;
    conn.close().await.map_err(dberr)?;
    let mut names = Vec::with_capacity(rows.len());
    for row in &rows {
        if let Some(file) = file_in_row(row, 0)? {
            names.push(file.name);
        }
    }
    let from = BlobFiles::open(crate::blobs_dir_of(db), 0)?;
    let to = BlobFiles::open(crate::blobs_dir_of(dest), 0)?;
    tokio::task::spawn_blocking(move || {
        let mut dirs = std::collections::HashSet::new();
        for name in names {
            let (src, dst) = (from.path(&name), to.path(&name));
            match std::fs::copy(&src, &dst) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(name)),
                Err(e) => {
                    return Err(StorageError::database(format!(
                        "copying {}: {e}",
                        src.display()
                    )));
                }
            }
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(|e| StorageError::database(format!("{}: {e}", dst.display())))?;
            if let Some(dir) = dst.parent() {
                dirs.insert(dir.to_path_buf());
            }
        }
        for dir in dirs {
            files::sync_dir(&dir)?;
        }
        Ok(None)
    })
    .await
    .map_err(|e| StorageError::database(format!("backup task failed: {e}")))?
}
