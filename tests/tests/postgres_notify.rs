//! NOTIFY across relay instances on PostgreSQL (docs/deploy.md "Several
//! relays on one PostgreSQL"): device B follows (`pull --follow`) through
//! relay 2 while device A pushes through relay 1. A database of its own per
//! test on `SYNC_TEST_POSTGRES_URL` (without it, a loud SKIPPED line and a
//! pass).
//!
//! - With the fallback poll set to an hour, only the wake-up (`pg_notify`
//!   → relay 2's `LISTEN`) can bring the file to B; after both relays'
//!   listening connections are killed, they reconnect and the next push
//!   still reaches B.
//! - With relay 1's wake-ups switched off (the debug-only `skip-notify`
//!   fail point) and a 1-second poll, the poll delivers it and counts the
//!   miss.

use e2e_tests::{Device, RelayProcess, init_pair, json, wait_until};
use sqlx::Connection;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use sync_storage_postgres::LISTENER_APPLICATION_NAME;
use sync_storage_postgres::testing::TestDatabase;

/// Generous: the tests wait on events, never for time to pass.
const DEADLINE: Duration = Duration::from_secs(60);

/// `pull --follow --json` of `device` into `out`, and its output lines.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(device: &Device, out: &Path) -> Follower {
        let mut child = device
            .cmd()
            .args(["pull", "--follow", "--json", "--out", out.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let f = Follower { child, lines };
        let first = f.lines.recv_timeout(DEADLINE).expect("follow started");
        assert!(first.contains("\"following\""), "{first}");
        f
    }

    /// The next `file` event; panics on a reconnect (which would pull
    /// without any notification) or after [`DEADLINE`].
    fn next_file(&self) -> serde_json::Value {
        loop {
            let line = self
                .lines
                .recv_timeout(DEADLINE)
                .expect("the followed file in time");
            let event = json(&line);
            match event["event"].as_str() {
                Some("file") => return event,
                Some("reconnecting") => panic!("B reconnected: {event}"),
                _ => continue,
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relays(
    db: &TestDatabase,
    tmp: &Path,
    env1: &[(&str, &str)],
    env2: &[(&str, &str)],
) -> (RelayProcess, RelayProcess) {
    let url = db.url();
    let start = |name: &str, extra: &[(&str, &str)]| {
        let mut env = vec![("SYNC_RELAY__STORAGE__URL", url.as_str())];
        env.extend_from_slice(extra);
        RelayProcess::start_with_env(&tmp.join(name), "127.0.0.1:0", &[], &env)
    };
    (start("r1", env1), start("r2", env2))
}

fn push(device: &Device, dir: &Path, name: &str, body: &[u8]) {
    let file = dir.join(name);
    std::fs::write(&file, body).unwrap();
    device.run(&["push", file.to_str().unwrap()]);
}

const HOUR_POLL: (&str, &str) = ("SYNC_RELAY__STORAGE__HEAD_POLL_INTERVAL_S", "3600");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_on_relay_1_wakes_a_follower_on_relay_2_also_after_the_listener_is_killed() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (relay1, relay2) = relays(&db, tmp.path(), &[HOUR_POLL], &[HOUR_POLL]);
    let (a, b) = init_pair(&relay1);
    b.set_relay(&relay2.address);
    let out = tmp.path().join("out-b");
    let follower = Follower::start(&b, &out);

    push(&a, tmp.path(), "first.txt", b"through relay 1");
    let event = follower.next_file();
    assert_eq!(event["name"], "first.txt", "{event}");
    assert_eq!(
        std::fs::read(out.join("first.txt")).unwrap(),
        b"through relay 1"
    );
    let m = relay2.metrics();
    assert_eq!(m.value("sync_relay_head_polls", &[]), 0.0, "no poll ran");
    assert!(m.value("sync_relay_listener_notifications", &["live"]) >= 1.0);
    assert!(m.value("sync_relay_notifications_sent", &[]) >= 1.0);
    assert_eq!(m.value("sync_relay_listener_connected", &[]), 1.0);

    // Kill every listening connection of this database (one per relay).
    let mut conn = sqlx::PgConnection::connect(&db.url()).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(LISTENER_APPLICATION_NAME)
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(killed, vec![true, true], "one listener per relay");
    wait_until(DEADLINE, "relay 2's listener back", || {
        let m = relay2.metrics();
        m.value("sync_relay_listener_reconnects", &[]) >= 1.0
            && m.value("sync_relay_listener_connected", &[]) == 1.0
    });
    push(&a, tmp.path(), "second.txt", b"after the reconnect");
    let event = follower.next_file();
    assert_eq!(event["name"], "second.txt", "{event}");
    assert_eq!(
        std::fs::read(out.join("second.txt")).unwrap(),
        b"after the reconnect"
    );
    assert_eq!(relay2.metrics().value("sync_relay_head_polls", &[]), 0.0);
    drop(follower);
    conn.close().await.unwrap();
    drop((relay1, relay2));
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_wake_up_is_delivered_by_the_fallback_poll() {
    let Some(db) = TestDatabase::create().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (relay1, relay2) = relays(
        &db,
        tmp.path(),
        &[("SYNC_RELAY_FAILPOINT", "skip-notify"), HOUR_POLL],
        &[("SYNC_RELAY__STORAGE__HEAD_POLL_INTERVAL_S", "1")],
    );
    assert!(relay1.log().contains("skip-notify"), "{}", relay1.log());
    let (a, b) = init_pair(&relay1);
    b.set_relay(&relay2.address);
    let out = tmp.path().join("out-b");
    // B joined as a member (one-time invite): its first pull posts
    // nothing, so relay 2 has heard no wake-up of its own.
    b.run(&["pull", "--out", out.to_str().unwrap()]);
    let follower = Follower::start(&b, &out);

    push(&a, tmp.path(), "polled.txt", b"no wake-up sent");
    let event = follower.next_file();
    assert_eq!(event["name"], "polled.txt", "{event}");
    let m = relay2.metrics();
    assert_eq!(
        m.value("sync_relay_listener_notifications", &["live"]),
        0.0,
        "no wake-up was sent for A's push, none can have been heard"
    );
    assert!(m.value("sync_relay_head_poll_missed", &[]) >= 1.0);
    drop(follower);
    drop((relay1, relay2));
    drop(db);
}
