//! [`dberr`]'s classification on real SQLite errors: the file locked by
//! another process beyond the busy timeout, or not openable, is
//! [`StorageError::Unavailable`]; a constraint violation or bad SQL stays
//! [`StorageError::Database`].

use crate::dberr;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::time::Duration;
use sync_storage::StorageError;

fn options(path: &std::path::Path, busy: Duration) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .busy_timeout(busy)
}

#[tokio::test]
async fn a_file_locked_beyond_the_busy_timeout_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.sqlite");
    let mut holder = options(&path, Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .execute(&mut holder)
        .await
        .unwrap();
    // Another process (a backup, a sqlite3 shell) holds the write lock.
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    let mut writer = options(&path, Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut writer)
        .await
        .unwrap_err();
    let classified = dberr(err);
    assert!(
        matches!(classified, StorageError::Unavailable(_)),
        "{classified:?}"
    );
    let _ = writer.close().await;
    let _ = holder.close().await;
}

#[tokio::test]
async fn a_file_that_cannot_be_opened_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let gone = dir.path().join("no-such-dir").join("db.sqlite");
    let err = options(&gone, Duration::from_millis(100))
        .connect()
        .await
        .unwrap_err();
    let classified = dberr(err);
    assert!(
        matches!(classified, StorageError::Unavailable(_)),
        "{classified:?}"
    );
    assert!(matches!(
        dberr(sqlx::Error::PoolTimedOut),
        StorageError::Unavailable(_)
    ));
}

#[tokio::test]
async fn constraint_violations_and_bad_sql_stay_database_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = options(&dir.path().join("db.sqlite"), Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    sqlx::query("CREATE TABLE t (k INTEGER PRIMARY KEY)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap();
    let dup = sqlx::query("INSERT INTO t VALUES (1)")
        .execute(&mut conn)
        .await
        .unwrap_err();
    assert!(matches!(dberr(dup), StorageError::Database(_)));
    let bad = sqlx::query("SELEC 1").execute(&mut conn).await.unwrap_err();
    assert!(matches!(dberr(bad), StorageError::Database(_)));
    let _ = conn.close().await;
}
