//! Baseline of the PostgreSQL push benchmark: raw sqlx transactions into the
//! relay's PostgreSQL schema (`migrations/postgres`), with the relay's
//! batching, devices, groups of devices and connection pool, no network, no
//! protocol. Each batch is one transaction doing the least that keeps
//! cursors gapless: the group's counters and head raised by one
//! `UPDATE … RETURNING` (which takes the group's row lock), then one
//! `INSERT … SELECT FROM UNNEST` of the batch, then the commit.
//! With `relay_counter`, each transaction also raises the relay-wide byte
//! counter (`relay_state`, one row) before committing, as the relay does for
//! its relay-wide quota: the difference between the two shows what that
//! shared row costs.

use anyhow::Result;
use futures::future::try_join_all;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::path::Path;
use std::time::{Duration, Instant};

/// The workspace `migrations/postgres` directory.
fn migrations_dir() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/postgres"
    ))
}

/// What one baseline run does.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Payload bytes per blob.
    pub payload: usize,
    /// Concurrent writers (devices).
    pub devices: usize,
    /// Devices per group (each group is one row every writer of it locks).
    pub group_size: usize,
    /// Blobs per transaction.
    pub batch: usize,
    /// How long to write.
    pub time: Duration,
    /// Most blobs in all (shared out evenly between writers).
    pub cap: u64,
    /// Connections in the pool (the relay's `storage.max_connections`).
    pub pool: u32,
    /// Also raise the relay-wide counter row in each transaction.
    pub relay_counter: bool,
}

/// Run `w` against the (empty) database `connect` names: migrate, create
/// the groups, write until the time or the cap is reached. Returns the
/// blobs committed and the time taken. Errors: any database error.
pub async fn inserts(connect: PgConnectOptions, w: Workload) -> Result<(u64, Duration)> {
    let pool = PgPoolOptions::new()
        .max_connections(w.pool.max(1))
        .connect_with(connect)
        .await?;
    sqlx::migrate::Migrator::new(migrations_dir())
        .await?
        .run(&pool)
        .await?;
    let groups = w.devices.div_ceil(w.group_size.max(1));
    for g in 0..groups {
        sqlx::query("INSERT INTO groups (group_id, created_at, last_active_at) VALUES ($1, 0, 0)")
            .bind(&group_id(g)[..])
            .execute(&pool)
            .await?;
    }
    let body = crate::env::random(w.payload);
    let per_device_cap = (w.cap / w.devices as u64).max(w.batch as u64);
    let started = Instant::now();
    let deadline = started + w.time;
    let counts = try_join_all((0..w.devices).map(|d| {
        let (pool, body) = (&pool, &body);
        async move {
            let group = group_id(d / w.group_size.max(1));
            let sender = [d as u8; 32];
            let mut n = 0u64;
            while Instant::now() < deadline && n < per_device_cap {
                let mut tx = pool.begin().await?;
                let head: i64 = sqlx::query_scalar(
                    "UPDATE groups SET head_cursor = head_cursor + $2, \
                     bytes_used = bytes_used + $3, blob_count = blob_count + $2 \
                     WHERE group_id = $1 RETURNING head_cursor",
                )
                .bind(&group[..])
                .bind(w.batch as i64)
                .bind((w.batch * w.payload) as i64)
                .fetch_one(&mut *tx)
                .await?;
                let first = head - w.batch as i64 + 1;
                let cursors: Vec<i64> = (0..w.batch as i64).map(|i| first + i).collect();
                let ids: Vec<Vec<u8>> = (0..w.batch)
                    .map(|i| crate::env::blob_id(d as u32, n + i as u64).0.to_vec())
                    .collect();
                let payloads: Vec<&[u8]> = vec![&body[..]; w.batch];
                let expiries = vec![i64::MAX; w.batch];
                sqlx::query(
                    "INSERT INTO blobs (group_id, cursor, blob_id, sender, payload, created_at, expires_at) \
                     SELECT $1, c, b, $2, p, 0, e \
                     FROM UNNEST($3::BIGINT[], $4::BYTEA[], $5::BYTEA[], $6::BIGINT[]) AS t(c, b, p, e)",
                )
                .bind(&group[..])
                .bind(&sender[..])
                .bind(cursors)
                .bind(ids)
                .bind(payloads)
                .bind(expiries)
                .execute(&mut *tx)
                .await?;
                if w.relay_counter {
                    sqlx::query("UPDATE relay_state SET bytes_used = bytes_used + $1")
                        .bind((w.batch * w.payload) as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                n += w.batch as u64;
            }
            anyhow::Ok(n)
        }
    }))
    .await?;
    let elapsed = started.elapsed();
    pool.close().await;
    Ok((counts.iter().sum(), elapsed))
}

/// Group id number `g`.
fn group_id(g: usize) -> [u8; 32] {
    let mut id = [0u8; 32];
    id[..8].copy_from_slice(&(g as u64).to_be_bytes());
    id
}
