//! A PostgreSQL database per test (feature `testing`): created with a
//! random name on the server `SYNC_TEST_POSTGRES_URL` names, dropped when
//! the value is dropped (also while a panic unwinds), and usable as a
//! [`Backend`] for `sync_storage::testing`. Without the variable,
//! [`TestDatabase::create`] prints a loud SKIPPED line and returns `None`.

use crate::{PostgresStorage, PostgresStorageOptions};
use async_trait::async_trait;
use futures::future::LocalBoxFuture;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::str::FromStr;
use sync_storage::testing::Backend;
use sync_storage::{Quotas, Storage};

/// The variable naming the server the tests create their databases on,
/// e.g. `postgres://postgres@127.0.0.1:5432/test` (its database is only
/// where `CREATE DATABASE` runs).
pub const URL_ENV: &str = "SYNC_TEST_POSTGRES_URL";

/// Test databases are named `zk_test_<pid>_<16 hex>`: the pid of the
/// process that made them.
const DB_PREFIX: &str = "zk_test_";

/// The pid in a test database's name, if it has one (names of earlier
/// versions, `zk_test_<16 hex>`, have none and are left alone).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(DB_PREFIX)?;
    let (pid, random) = rest.split_once('_')?;
    if random.len() != 16 || !random.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    pid.parse().ok()
}

/// Drop the test databases whose process is gone (a test killed before its
/// `Drop` ran, e.g. by a timeout or `kill -9`), so they do not pile up on
/// the shared server. Only on this machine's pids: a database is dropped
/// when `/proc/<pid>` does not exist. Best effort: errors (another test
/// sweeping the same one) are ignored.
async fn sweep_orphans(conn: &mut PgConnection) {
    let names: Vec<String> = match sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'zk\\_test\\_%'",
    )
    .fetch_all(&mut *conn)
    .await
    {
        Ok(names) => names,
        Err(_) => return,
    };
    for name in names {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut *conn)
        .await;
    }
}

/// A database of its own on the test server, dropped with this value.
pub struct TestDatabase {
    /// The server, connected to its own database (for CREATE/DROP).
    admin: PgConnectOptions,
    /// The server's URL as given.
    url: String,
    /// The test's database.
    name: String,
}

impl TestDatabase {
    /// Create a database with a random name; `None` (after a loud line on
    /// stderr) without [`URL_ENV`]. Panics if the server refuses.
    pub async fn create() -> Option<TestDatabase> {
        let Ok(url) = std::env::var(URL_ENV) else {
            eprintln!(
                "SKIPPED: {URL_ENV} not set; this PostgreSQL test did not run \
                 (e.g. {URL_ENV}=postgres://postgres@127.0.0.1:5432/test)"
            );
            return None;
        };
        match Self::create_on(&url).await {
            Ok(db) => Some(db),
            Err(e) => panic!("{URL_ENV}={url}: {e}"),
        }
    }

    /// Create a database with a random name on the server `url` names (its
    /// database is only where `CREATE DATABASE` runs), e.g. for a
    /// benchmark given a URL by flag. Errors: the URL does not parse, the
    /// server cannot be reached or refuses `CREATE DATABASE`.
    pub async fn create_on(url: &str) -> Result<TestDatabase, sqlx::Error> {
        let admin = PgConnectOptions::from_str(url)?;
        let name = format!(
            "{DB_PREFIX}{}_{}",
            std::process::id(),
            hex::encode(rand::random::<[u8; 8]>())
        );
        let mut conn = PgConnection::connect_with(&admin).await?;
        sweep_orphans(&mut conn).await;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await?;
        let _ = conn.close().await;
        Ok(TestDatabase {
            admin,
            url: url.to_string(),
            name,
        })
    }

    /// The URL of this test's database (the server's URL with its
    /// database name replaced), e.g. for a relay's `storage.url`.
    pub fn url(&self) -> String {
        let (base, query) = match self.url.split_once('?') {
            Some((b, q)) => (b, format!("?{q}")),
            None => (self.url.as_str(), String::new()),
        };
        let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
        let authority = rest.split('/').next().unwrap_or(rest);
        format!("{scheme}://{authority}/{}{query}", self.name)
    }

    /// Options for a store over this database.
    pub fn options(&self, quotas: Quotas) -> PostgresStorageOptions {
        PostgresStorageOptions {
            connect: self.admin.clone().database(&self.name),
            quotas,
            max_connections: 8,
            acquire_timeout: std::time::Duration::from_secs(30),
            notify_channel: crate::NOTIFY_CHANNEL.to_string(),
        }
    }
}

impl Drop for TestDatabase {
    /// Drop the database (closing whatever connections are left), on a
    /// thread of its own: this may run while a panic unwinds, inside or
    /// outside a runtime.
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = PgConnection::connect_with(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                conn.close().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

#[async_trait(?Send)]
impl Backend for TestDatabase {
    async fn open(&mut self, quotas: Quotas) -> Box<dyn Storage> {
        Box::new(
            PostgresStorage::open(self.options(quotas))
                .await
                .expect("open PostgreSQL storage"),
        )
    }

    /// Each call is a transaction of its own on a pool: a burst commits in
    /// any order (the model check tries each).
    fn commits_in_submission_order(&self) -> bool {
        false
    }
}

/// The [`sync_storage::testing::Factory`] for PostgreSQL: a
/// [`TestDatabase`] per test.
pub fn factory() -> LocalBoxFuture<'static, Option<Box<dyn Backend>>> {
    Box::pin(async {
        TestDatabase::create()
            .await
            .map(|p| Box::new(p) as Box<dyn Backend>)
    })
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn only_names_with_a_pid_have_an_owner() {
        assert_eq!(owner_pid("zk_test_4242_0123456789abcdef"), Some(4242));
        assert_eq!(owner_pid("zk_test_0123456789abcdef"), None);
        assert_eq!(owner_pid("zk_test_4242_0123"), None);
        assert_eq!(owner_pid("zk_test_x_0123456789abcdef"), None);
        assert_eq!(owner_pid("other_4242_0123456789abcdef"), None);
    }
}
