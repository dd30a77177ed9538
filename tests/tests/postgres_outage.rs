//! PostgreSQL restarted mid-run: a relay recovers without a restart of its
//! own (issue 12; docs/testing.md "PostgreSQL outage"). The relay reaches
//! its test database through a [`TcpProxy`] the test cuts (every
//! connection closed, new ones refused: the port is closed) while it also terminates the
//! database's server sessions (`pg_terminate_backend`), as a server restart
//! does — without restarting the server other tests share.
//!
//! During the outage `/health` is 503 with a fixed message and the
//! backend's name, `sync_relay_db_up` is 0, a push fails within its
//! deadline with STORAGE_UNAVAILABLE (counted under its own label in
//! `sync_relay_errors_total`, the CLI's status line naming the relay's
//! storage) and the relay keeps running; after the restore `/health` is 200
//! again, push and pull work on the same relay process, nothing pushed
//! before is lost, and the cleanup task still runs.

use e2e_tests::tcp_proxy::TcpProxy;
use e2e_tests::{RelayProcess, init_pair, wait_until};
use sqlx::Connection;
use std::str::FromStr;
use std::time::{Duration, Instant};
use sync_storage_postgres::testing::{TestDatabase, URL_ENV};

/// `url` (`scheme://[user[:password]@]host:port/db`) with its host and
/// port replaced by `addr`.
fn via(url: &str, addr: std::net::SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("scheme://");
    let (authority, path) = rest.split_once('/').expect("/database");
    let user = authority.rsplit_once('@').map(|(u, _)| format!("{u}@"));
    format!("{scheme}://{}{addr}/{path}", user.unwrap_or_default())
}

/// Terminate every server session on database `name` (the relay's pool),
/// through a direct connection to the server.
async fn terminate_sessions(admin_url: &str, name: &str) -> u64 {
    let opts = sqlx::postgres::PgConnectOptions::from_str(admin_url).unwrap();
    let mut conn = sqlx::PgConnection::connect_with(&opts).await.unwrap();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = $1 AND pid <> pg_backend_pid()) t",
    )
    .bind(name)
    .fetch_one(&mut conn)
    .await
    .unwrap();
    let _ = conn.close().await;
    n as u64
}

fn db_up(relay: &RelayProcess) -> f64 {
    relay.metrics().value("sync_relay_db_up", &["postgres"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_relay_recovers_without_a_restart() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let admin_url = std::env::var(URL_ENV).unwrap();
    let server = {
        let o = sqlx::postgres::PgConnectOptions::from_str(&admin_url).unwrap();
        tokio::net::lookup_host((o.get_host(), o.get_port()))
            .await
            .unwrap()
            .next()
            .unwrap()
    };
    let proxy = TcpProxy::start(server).await.unwrap();
    let url = via(&db.url(), proxy.addr);
    let name = db.url().rsplit('/').next().unwrap().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let relay = RelayProcess::start_with_env(
        &tmp.path().join("r"),
        "127.0.0.1:0",
        &[],
        &[
            ("SYNC_RELAY__STORAGE__URL", url.as_str()),
            ("SYNC_RELAY__CLEANUP__INTERVAL_S", "1"),
        ],
    );
    assert!(proxy.forwarded() > 0, "the relay bypassed the proxy");
    let (a, b) = init_pair(&relay);
    let write = |name: &str, bytes: &[u8]| {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_string()
    };
    let before: Vec<u8> = (0..50_000u32).flat_map(|i| i.to_le_bytes()).collect();
    a.run(&["push", &write("before.bin", &before)]);
    assert_eq!(relay.fresh_health()["status"], "ok");
    assert_eq!(db_up(&relay), 1.0);

    // The outage: connections dropped and refused, server sessions killed.
    proxy.cut();
    terminate_sessions(&admin_url, &name).await;
    wait_until(Duration::from_secs(30), "/health 503", || {
        relay.http_get("/health").0 == 503
    });
    let (status, body) = relay.http_get("/health");
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["status"], "degraded", "{body}");
    assert_eq!(health["backend"], "postgres", "{body}");
    let fixed = ["database unavailable", "database did not answer within 2 s"];
    assert!(fixed.contains(&health["db"].as_str().unwrap()), "{body}");
    for secret in [name.clone(), proxy.addr.to_string(), "postgres://".into()] {
        assert!(!body.contains(&secret), "{secret} in {body}");
    }
    wait_until(Duration::from_secs(10), "db_up 0", || db_up(&relay) == 0.0);

    // A push fails, within its deadline, and the relay keeps running. The
    // relay answers STORAGE_UNAVAILABLE (not INTERNAL) with its retry hint;
    // the device's status line says so while it retries until `--retry-for`
    // ends (its last error may be that attempt's cut-short wait instead).
    let count = |code: &str| relay.metrics().value("sync_relay_errors", &[code]);
    let (unavailable_before, internal_before) = (count("STORAGE_UNAVAILABLE"), count("INTERNAL"));
    let started = Instant::now();
    let during = a.output(&["push", &write("during.bin", b"pushed during the outage")]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&during.stderr);
    eprintln!(
        "push during the outage failed after {took:?}: {}",
        stderr.trim()
    );
    assert!(
        !during.status.success(),
        "a push succeeded without a database: {}",
        String::from_utf8_lossy(&during.stdout)
    );
    assert!(took < Duration::from_secs(90), "the push took {took:?}");
    assert!(
        stderr.contains("relay's storage unavailable, retrying in"),
        "no storage status line: {stderr}"
    );
    // Every wait honours the relay's 5 s hint (the policy's last may be
    // cut to what `--retry-for` leaves, so only the first is checked).
    let first = stderr
        .lines()
        .find(|l| l.starts_with("relay's storage unavailable"))
        .unwrap_or_default();
    assert!(first.contains("retrying in 5 s"), "{stderr}");
    assert!(!stderr.contains("relay busy"), "{stderr}");
    assert!(
        count("STORAGE_UNAVAILABLE") > unavailable_before,
        "no STORAGE_UNAVAILABLE error frame counted"
    );
    assert_eq!(
        count("INTERNAL"),
        internal_before,
        "an outage counted as INTERNAL"
    );
    // It waited for a connection (the server refuses them) and gave up:
    // counted as an acquire timeout.
    let timeouts = relay
        .metrics()
        .value("sync_relay_db_pool_acquire_timeouts", &["postgres"]);
    assert!(timeouts >= 1.0, "acquire timeouts: {timeouts}");
    let mut relay = relay;
    assert!(
        relay.exit_status().is_none(),
        "the relay exited:\n{}",
        relay.log()
    );

    // PostgreSQL is back: the same relay process recovers by itself.
    proxy.restore().await;
    wait_until(Duration::from_secs(30), "/health 200", || {
        relay.http_get("/health").0 == 200
    });
    assert_eq!(relay.health()["db"], "ok");
    wait_until(Duration::from_secs(10), "db_up 1", || db_up(&relay) == 1.0);
    let after = b"pushed after the outage".to_vec();
    a.run(&["push", &write("during.bin", b"pushed during the outage")]);
    a.run(&["push", &write("after.bin", &after)]);
    let out = tmp.path().join("out");
    b.run(&["pull", "--out", out.to_str().unwrap()]);
    assert_eq!(std::fs::read(out.join("before.bin")).unwrap(), before);
    assert_eq!(
        std::fs::read(out.join("during.bin")).unwrap(),
        b"pushed during the outage"
    );
    assert_eq!(std::fs::read(out.join("after.bin")).unwrap(), after);

    // The cleanup task lived through the outage: a blob pushed now with a
    // 1 s TTL is deleted by it.
    let deleted = relay.metrics().value("sync_relay_cleanup_deleted", &[]);
    a.run(&["push", "--ttl", "1s", &write("short.bin", b"gone soon")]);
    wait_until(
        Duration::from_secs(30),
        "cleanup deleting the expired blob",
        || relay.metrics().value("sync_relay_cleanup_deleted", &[]) > deleted,
    );
    assert!(relay.exit_status().is_none(), "the relay exited");
    assert!(relay.log().contains("cleanup failed"), "{}", relay.log());
    drop(relay);
    drop(proxy);
    drop(db);
}
