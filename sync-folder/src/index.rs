//! The local index of a synced folder (docs/client.md "Folder sync",
//! "State"): one SQLite database, `<home>/folder/index.db` (WAL,
//! `synchronous = FULL`: a committed transaction survives power loss).
//!
//! | table | holds |
//! |---|---|
//! | `meta` | the folder's root, the cursor folded up to |
//! | `synced` | the synced state: every record of the group folded in cursor order ([`crate::fold`]) |
//! | `base` | what this device's disk held at each path when it last reconciled (local changes are the scan against it) |
//! | `scan` | per file: size, mtime, ctime, inode, BLAKE3, executable bit — a rescan hashes only files whose metadata changed |
//! | `outbox` | this device's sealed records: pushed again after a crash until the relay stored them, folded at their cursor once a pull passed it |
//! | `contents` | content hashes the group has a transfer of (sent or received): not sent again |
//! | `folded` | (sender, sequence number) of every record folded: an inbox read twice applies nothing twice |
//! | `conflicts` | conflict copies made, for `status` |
//! | `wanted` | contents other devices asked for ([`crate::manifest::Request`]), answered at the next push |
//! | `requested` | contents this device asked for, and when (asked again after [`crate::catchup::ASK_AGAIN_MS`]) |

use crate::entry::{Entry, Hash};
use crate::fold::Tree;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Errors of the index.
pub type DbResult<T> = std::result::Result<T, sqlx::Error>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS synced (path TEXT PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS base (path TEXT PRIMARY KEY, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS scan (path TEXT PRIMARY KEY, size INTEGER NOT NULL,
  mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL, ino INTEGER NOT NULL,
  hash BLOB NOT NULL, exec INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT,
  blob_id BLOB NOT NULL, payload BLOB NOT NULL, ttl_s INTEGER,
  cursor INTEGER, record BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS contents (hash BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS folded (sender TEXT NOT NULL, seq INTEGER NOT NULL,
  PRIMARY KEY (sender, seq));
CREATE TABLE IF NOT EXISTS conflicts (copy TEXT PRIMARY KEY, path TEXT NOT NULL,
  device TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS wanted (hash BLOB PRIMARY KEY);
CREATE TABLE IF NOT EXISTS requested (hash BLOB PRIMARY KEY, at_ms INTEGER NOT NULL);
";

/// A file's metadata as the scan cache keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Bytes.
    pub size: u64,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, ns since the Unix epoch.
    pub ctime_ns: i64,
    /// Inode number.
    pub ino: u64,
}

/// One row of the outbox.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Row id.
    pub id: i64,
    /// The sealed blob's id (16 bytes).
    pub blob_id: Vec<u8>,
    /// The sealed blob.
    pub payload: Vec<u8>,
    /// Its time to live, seconds.
    pub ttl_s: Option<u32>,
    /// Where the relay stored it, once known.
    pub cursor: Option<u64>,
    /// The record's body (encoded, [`crate::record::encode`]).
    pub record: Vec<u8>,
}

/// A conflict copy made in this folder.
#[derive(Debug, Clone, serde::Serialize, schemars::JsonSchema)]
pub struct ConflictRow {
    /// The copy's relative path.
    pub copy: String,
    /// The path both devices changed.
    pub path: String,
    /// The device whose change became the copy.
    pub device: String,
    /// When it was recorded here, ms since the Unix epoch.
    pub at_ms: u64,
}

/// The index database.
#[derive(Debug, Clone)]
pub struct Index {
    pool: SqlitePool,
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    // Infallible: postcard encodes an Entry into a Vec.
    postcard::to_allocvec(e).unwrap_or_default()
}

fn decode_entry(b: &[u8]) -> DbResult<Entry> {
    postcard::from_bytes(b).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl Index {
    /// Open (creating) the database at `path`.
    pub async fn open(path: &Path) -> DbResult<Index> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        let pool = sqlx::pool::PoolOptions::<Sqlite>::new()
            .max_connections(1)
            .connect_with(opts)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Index { pool })
    }

    /// Close the pool (checkpoints the WAL).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Begin a transaction.
    pub async fn begin(&self) -> DbResult<Transaction<'static, Sqlite>> {
        self.pool.begin().await
    }

    /// A `meta` value.
    pub async fn meta(&self, k: &str) -> DbResult<Option<String>> {
        sqlx::query_scalar("SELECT v FROM meta WHERE k = ?")
            .bind(k)
            .fetch_optional(&self.pool)
            .await
    }

    /// Set a `meta` value.
    pub async fn set_meta(tx: &mut Transaction<'_, Sqlite>, k: &str, v: &str) -> DbResult<()> {
        sqlx::query(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        )
        .bind(k)
        .bind(v)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Load a tree table (`synced` or `base`).
    pub async fn tree(&self, table: TreeTable) -> DbResult<Tree> {
        let rows = sqlx::query(table.sql(Sql::Select))
            .fetch_all(&self.pool)
            .await?;
        let mut t = BTreeMap::new();
        for r in rows {
            let path: String = r.get(0);
            let entry: Vec<u8> = r.get(1);
            t.insert(path, decode_entry(&entry)?);
        }
        Ok(t)
    }

    /// Set (or with `None` remove) one path of a tree table.
    pub async fn set_entry(
        tx: &mut Transaction<'_, Sqlite>,
        table: TreeTable,
        path: &str,
        entry: Option<&Entry>,
    ) -> DbResult<()> {
        match entry {
            Some(e) => {
                sqlx::query(table.sql(Sql::Upsert))
                    .bind(path)
                    .bind(encode_entry(e))
                    .execute(&mut **tx)
                    .await?;
            }
            None => {
                sqlx::query(table.sql(Sql::Delete))
                    .bind(path)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// Replace a whole tree table.
    pub async fn replace_tree(
        tx: &mut Transaction<'_, Sqlite>,
        table: TreeTable,
        tree: &Tree,
    ) -> DbResult<()> {
        sqlx::query(table.sql(Sql::Clear))
            .execute(&mut **tx)
            .await?;
        for (p, e) in tree {
            Self::set_entry(tx, table, p, Some(e)).await?;
        }
        Ok(())
    }

    /// The scan cache.
    pub async fn scan_cache(&self) -> DbResult<BTreeMap<String, (Stamp, Hash, bool)>> {
        let rows = sqlx::query("SELECT path, size, mtime_ns, ctime_ns, ino, hash, exec FROM scan")
            .fetch_all(&self.pool)
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let hash: Vec<u8> = r.get(5);
            let Ok(hash) = <Hash>::try_from(hash.as_slice()) else {
                continue;
            };
            let stamp = Stamp {
                size: r.get::<i64, _>(1) as u64,
                mtime_ns: r.get(2),
                ctime_ns: r.get(3),
                ino: r.get::<i64, _>(4) as u64,
            };
            out.insert(r.get(0), (stamp, hash, r.get::<i64, _>(6) != 0));
        }
        Ok(out)
    }

    /// Replace the scan cache with `cache`, writing only the rows that
    /// differ (a rescan of unchanged files writes nothing), in one
    /// transaction.
    pub async fn replace_scan_cache(
        &self,
        cache: &BTreeMap<String, (Stamp, Hash, bool)>,
    ) -> DbResult<()> {
        let old = self.scan_cache().await?;
        let gone: Vec<&String> = old.keys().filter(|p| !cache.contains_key(*p)).collect();
        let changed: Vec<(&String, &(Stamp, Hash, bool))> = cache
            .iter()
            .filter(|(p, v)| old.get(*p) != Some(*v))
            .collect();
        if gone.is_empty() && changed.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for p in gone {
            sqlx::query("DELETE FROM scan WHERE path = ?")
                .bind(p)
                .execute(&mut *tx)
                .await?;
        }
        for (p, (s, h, x)) in changed {
            sqlx::query("INSERT OR REPLACE INTO scan (path, size, mtime_ns, ctime_ns, ino, hash, exec) VALUES (?, ?, ?, ?, ?, ?, ?)")
                .bind(p)
                .bind(s.size as i64)
                .bind(s.mtime_ns)
                .bind(s.ctime_ns)
                .bind(s.ino as i64)
                .bind(h.as_slice())
                .bind(i64::from(*x))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Every outbox row, oldest first.
    pub async fn outbox(&self) -> DbResult<Vec<OutboxRow>> {
        let rows = sqlx::query(
            "SELECT id, blob_id, payload, ttl_s, cursor, record FROM outbox ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| OutboxRow {
                id: r.get(0),
                blob_id: r.get(1),
                payload: r.get(2),
                ttl_s: r.get::<Option<i64>, _>(3).map(|t| t as u32),
                cursor: r.get::<Option<i64>, _>(4).map(|c| c as u64),
                record: r.get(5),
            })
            .collect())
    }

    /// Add a sealed record to the outbox.
    pub async fn add_outbox(tx: &mut Transaction<'_, Sqlite>, row: &OutboxRow) -> DbResult<i64> {
        let r = sqlx::query("INSERT INTO outbox (blob_id, payload, ttl_s, cursor, record) VALUES (?, ?, ?, NULL, ?)")
            .bind(&row.blob_id)
            .bind(&row.payload)
            .bind(row.ttl_s.map(i64::from))
            .bind(&row.record)
            .execute(&mut **tx)
            .await?;
        Ok(r.last_insert_rowid())
    }

    /// Record where the relay stored outbox rows (`(id, cursor)` each), in
    /// one transaction.
    pub async fn set_outbox_cursors(&self, cursors: &[(i64, u64)]) -> DbResult<()> {
        let mut tx = self.begin().await?;
        for (id, cursor) in cursors {
            sqlx::query("UPDATE outbox SET cursor = ? WHERE id = ?")
                .bind(*cursor as i64)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Remove a folded outbox row.
    pub async fn remove_outbox(tx: &mut Transaction<'_, Sqlite>, id: i64) -> DbResult<()> {
        sqlx::query("DELETE FROM outbox WHERE id = ?")
            .bind(id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// True when the record (sender, seq) was folded already.
    pub async fn was_folded(
        tx: &mut Transaction<'_, Sqlite>,
        sender: &str,
        seq: u64,
    ) -> DbResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM folded WHERE sender = ? AND seq = ?")
            .bind(sender)
            .bind(seq as i64)
            .fetch_one(&mut **tx)
            .await?;
        Ok(n > 0)
    }

    /// Record that (sender, seq) was folded.
    pub async fn mark_folded(
        tx: &mut Transaction<'_, Sqlite>,
        sender: &str,
        seq: u64,
    ) -> DbResult<()> {
        sqlx::query("INSERT OR IGNORE INTO folded (sender, seq) VALUES (?, ?)")
            .bind(sender)
            .bind(seq as i64)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// Content hashes the group has a transfer of.
    pub async fn contents(&self) -> DbResult<HashSet<Hash>> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM contents")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|h| <Hash>::try_from(h.as_slice()).ok())
            .collect())
    }

    /// Note that the group has a transfer of `hash`.
    pub async fn add_content(&self, hash: &Hash) -> DbResult<()> {
        sqlx::query("INSERT OR IGNORE INTO contents (hash) VALUES (?)")
            .bind(hash.as_slice())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record contents uploaded, in one transaction (one commit however
    /// many).
    pub async fn add_contents(&self, hashes: &[Hash]) -> DbResult<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await?;
        for hash in hashes {
            sqlx::query("INSERT OR IGNORE INTO contents (hash) VALUES (?)")
                .bind(hash.as_slice())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// Record a conflict copy.
    pub async fn add_conflict(&self, c: &ConflictRow) -> DbResult<()> {
        sqlx::query(
            "INSERT OR REPLACE INTO conflicts (copy, path, device, at_ms) VALUES (?, ?, ?, ?)",
        )
        .bind(&c.copy)
        .bind(&c.path)
        .bind(&c.device)
        .bind(c.at_ms as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Conflict copies that still exist in the synced state.
    pub async fn conflicts(&self) -> DbResult<Vec<ConflictRow>> {
        let rows = sqlx::query(
            "SELECT c.copy, c.path, c.device, c.at_ms FROM conflicts c JOIN synced s ON s.path = c.copy ORDER BY c.copy",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConflictRow {
                copy: r.get(0),
                path: r.get(1),
                device: r.get(2),
                at_ms: r.get::<i64, _>(3) as u64,
            })
            .collect())
    }
}

/// Hash rows of the `wanted` and `requested` tables.
impl Index {
    /// Add contents other devices asked for, keeping at most `cap` rows;
    /// returns how many were not kept (over the cap).
    pub async fn add_wanted(
        tx: &mut Transaction<'_, Sqlite>,
        hashes: &[Hash],
        cap: usize,
    ) -> DbResult<usize> {
        let mut dropped = 0;
        for h in hashes {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wanted")
                .fetch_one(&mut **tx)
                .await?;
            if n as usize >= cap {
                dropped += 1;
                continue;
            }
            sqlx::query("INSERT OR IGNORE INTO wanted (hash) VALUES (?)")
                .bind(h.as_slice())
                .execute(&mut **tx)
                .await?;
        }
        Ok(dropped)
    }

    /// Up to `limit` contents other devices asked for.
    pub async fn wanted(&self, limit: usize) -> DbResult<Vec<Hash>> {
        let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT hash FROM wanted LIMIT ?")
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|h| <Hash>::try_from(h.as_slice()).ok())
            .collect())
    }

    /// How many contents other devices asked for wait to be pushed again.
    pub async fn wanted_count(&self) -> DbResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM wanted")
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Forget a content asked for (answered, or not held here).
    pub async fn remove_wanted(&self, hash: &Hash) -> DbResult<()> {
        sqlx::query("DELETE FROM wanted WHERE hash = ?")
            .bind(hash.as_slice())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Of `hashes`, those this device has not asked for since `since_ms`;
    /// rows older than that are forgotten first.
    pub async fn not_requested_since(&self, hashes: &[Hash], since_ms: u64) -> DbResult<Vec<Hash>> {
        sqlx::query("DELETE FROM requested WHERE at_ms < ?")
            .bind(since_ms as i64)
            .execute(&self.pool)
            .await?;
        let mut out = Vec::new();
        for h in hashes {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM requested WHERE hash = ?")
                .bind(h.as_slice())
                .fetch_one(&self.pool)
                .await?;
            if n == 0 {
                out.push(*h);
            }
        }
        Ok(out)
    }

    /// Note that this device asked for `hashes` at `at_ms`.
    pub async fn mark_requested(&self, hashes: &[Hash], at_ms: u64) -> DbResult<()> {
        let mut tx = self.begin().await?;
        for h in hashes {
            sqlx::query("INSERT OR REPLACE INTO requested (hash, at_ms) VALUES (?, ?)")
                .bind(h.as_slice())
                .bind(at_ms as i64)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await
    }

    /// True when the synced state or the base has an entry.
    pub async fn has_entries(&self) -> DbResult<bool> {
        sqlx::query_scalar("SELECT EXISTS(SELECT 1 FROM synced) OR EXISTS(SELECT 1 FROM base)")
            .fetch_one(&self.pool)
            .await
    }

    /// Set a `meta` value outside a transaction.
    pub async fn put_meta(&self, k: &str, v: &str) -> DbResult<()> {
        let mut tx = self.begin().await?;
        Self::set_meta(&mut tx, k, v).await?;
        tx.commit().await
    }
}

/// The two tables holding a whole tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TreeTable {
    /// The fold of the group's records.
    Synced,
    /// What the disk held at the last reconcile.
    Base,
}

#[derive(Clone, Copy)]
enum Sql {
    Select,
    Upsert,
    Delete,
    Clear,
}

impl TreeTable {
    fn sql(self, q: Sql) -> &'static str {
        match (self, q) {
            (TreeTable::Synced, Sql::Select) => "SELECT path, entry FROM synced",
            (TreeTable::Base, Sql::Select) => "SELECT path, entry FROM base",
            (TreeTable::Synced, Sql::Upsert) => {
                "INSERT INTO synced (path, entry) VALUES (?, ?) ON CONFLICT(path) DO UPDATE SET entry = excluded.entry"
            }
            (TreeTable::Base, Sql::Upsert) => {
                "INSERT INTO base (path, entry) VALUES (?, ?) ON CONFLICT(path) DO UPDATE SET entry = excluded.entry"
            }
            (TreeTable::Synced, Sql::Delete) => "DELETE FROM synced WHERE path = ?",
            (TreeTable::Base, Sql::Delete) => "DELETE FROM base WHERE path = ?",
            (TreeTable::Synced, Sql::Clear) => "DELETE FROM synced",
            (TreeTable::Base, Sql::Clear) => "DELETE FROM base",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(size: u64, h: u8) -> (Stamp, Hash, bool) {
        let stamp = Stamp {
            size,
            mtime_ns: 1,
            ctime_ns: 2,
            ino: 3,
        };
        (stamp, [h; 32], false)
    }

    /// The scan cache is written as its differences: rows gone are
    /// deleted, changed and new ones written, and what is read back is
    /// exactly the new cache.
    #[tokio::test]
    async fn the_scan_cache_is_replaced_by_its_differences() {
        let tmp = tempfile::tempdir().unwrap();
        let index = Index::open(&tmp.path().join("index.db")).await.unwrap();
        let first: BTreeMap<String, _> = [("a".to_string(), row(1, 1)), ("b".into(), row(2, 2))]
            .into_iter()
            .collect();
        index.replace_scan_cache(&first).await.unwrap();
        assert_eq!(index.scan_cache().await.unwrap(), first);
        let second: BTreeMap<String, _> = [("b".to_string(), row(5, 9)), ("c".into(), row(3, 3))]
            .into_iter()
            .collect();
        index.replace_scan_cache(&second).await.unwrap();
        assert_eq!(index.scan_cache().await.unwrap(), second);
        index.replace_scan_cache(&second).await.unwrap();
        assert_eq!(index.scan_cache().await.unwrap(), second);
        index.close().await;
    }
}
