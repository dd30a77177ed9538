//! Baseline (b): raw sqlx inserts into the relay's schema, with the relay's
//! pragmas and the same batching (one transaction per batch: cursor
//! assignment, then one multi-row insert), no network, no protocol.

use anyhow::Result;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{Connection, SqliteConnection};
use std::time::{Duration, Instant};

/// Insert `total` blobs of `payload` bytes in batches of `batch`; returns
/// the blobs inserted and the time taken.
pub async fn inserts(payload: usize, batch: usize, total: usize) -> Result<(u64, Duration)> {
    let dir = tempfile::tempdir()?;
    let opts = SqliteConnectOptions::new()
        .filename(dir.path().join("b.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true);
    let mut conn = SqliteConnection::connect_with(&opts).await?;
    sqlx::migrate::Migrator::new(crate::env::migrations_dir())
        .await?
        .run(&mut conn)
        .await?;
    let group = [7u8; 32];
    sqlx::query("INSERT INTO groups (group_id, created_at, last_active_at) VALUES (?1, 0, 0)")
        .bind(&group[..])
        .execute(&mut conn)
        .await?;
    let body = crate::env::random(payload);
    let started = Instant::now();
    let mut done = 0usize;
    while done < total {
        let n = batch.min(total - done);
        let mut tx = conn.begin().await?;
        let head: i64 = sqlx::query_scalar(
            "UPDATE groups SET head_cursor = head_cursor + ?2, bytes_used = bytes_used + ?3, \
             blob_count = blob_count + ?2 WHERE group_id = ?1 RETURNING head_cursor",
        )
        .bind(&group[..])
        .bind(n as i64)
        .bind((n * payload) as i64)
        .fetch_one(&mut *tx)
        .await?;
        // One multi-row INSERT per batch, as the relay does.
        let rows = vec!["(?, ?, ?, ?, ?, 0, ?)"; n].join(",");
        let sql = format!(
            "INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at) VALUES {rows}"
        );
        let ids: Vec<_> = (0..n)
            .map(|i| crate::env::blob_id(0, (done + i) as u64))
            .collect();
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (i, id) in ids.iter().enumerate() {
            q = q
                .bind(&group[..])
                .bind(head - n as i64 + 1 + i as i64)
                .bind(&id.0[..])
                .bind(&group[..])
                .bind(&body[..])
                .bind(i64::MAX);
        }
        q.execute(&mut *tx).await?;
        tx.commit().await?;
        done += n;
    }
    Ok((done as u64, started.elapsed()))
}
