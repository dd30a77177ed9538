//! [`dberr`]'s classification on real errors from a real server: out of
//! reach is [`StorageError::Unavailable`], a request the server rejects
//! stays [`StorageError::Database`], the relay's own closed pool is
//! [`StorageError::Closed`]. The server-side cases need
//! `SYNC_TEST_POSTGRES_URL` (without it, a loud SKIPPED line and a pass).

use crate::testing::TestDatabase;
use crate::{PostgresStorage, PostgresStorageOptions, dberr};
use sqlx::{Connection, PgConnection};
use std::time::Duration;
use sync_storage::{Quotas, StorageError};

/// A loopback port nothing listens on (bound, then released).
fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    port
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    let url = format!("postgres://postgres@127.0.0.1:{}/none", refused_port());
    let err = PgConnection::connect(&url).await.unwrap_err();
    assert!(matches!(dberr(err), StorageError::Unavailable(_)));
    // Opening a store on it gives up after the acquire timeout: the same.
    let mut opts = PostgresStorageOptions::new(&url, Quotas::UNLIMITED).unwrap();
    opts.acquire_timeout = Duration::from_millis(500);
    let err = PostgresStorage::open(opts).await.err().expect("no server");
    assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
}

#[test]
fn pool_timeouts_are_unavailable_and_a_closed_pool_is_closed() {
    assert!(matches!(
        dberr(sqlx::Error::PoolTimedOut),
        StorageError::Unavailable(_)
    ));
    assert!(matches!(
        dberr(sqlx::Error::PoolClosed),
        StorageError::Closed
    ));
    assert!(matches!(
        dberr(sqlx::Error::RowNotFound),
        StorageError::Database(_)
    ));
}

#[tokio::test]
async fn a_session_the_server_terminated_is_unavailable() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let opts = db.options(Quotas::UNLIMITED).connect;
    let mut victim = PgConnection::connect_with(&opts).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut victim)
        .await
        .unwrap();
    let mut admin = PgConnection::connect_with(&opts).await.unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(killed);
    let err = sqlx::query("SELECT 1")
        .execute(&mut victim)
        .await
        .unwrap_err();
    let classified = dberr(err);
    assert!(
        matches!(classified, StorageError::Unavailable(_)),
        "{classified:?}"
    );
    let _ = admin.close().await;
}

#[tokio::test]
async fn constraint_violations_and_bad_sql_stay_database_errors() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let opts = db.options(Quotas::UNLIMITED).connect;
    let mut conn = PgConnection::connect_with(&opts).await.unwrap();
    sqlx::query("CREATE TEMP TABLE t (k INT PRIMARY KEY)")
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
