//! Cross-instance NOTIFY on PostgreSQL (docs/deploy.md "Several relays on
//! one PostgreSQL"): two relay processes on one database; device A pushes
//! a sealed 1 KiB message through relay 1; device B1 follows on relay 1
//! (same instance: the push handler wakes it) and B2 on relay 2 (cross
//! instance: `pg_notify` → relay 2's `LISTEN` → head re-read → NOTIFY).
//! Both are timed on the same pushes, from A's push call to the `Notify`
//! that reaches each. The fallback poll is an hour away, so only the
//! wake-up can reach B2. Target: cross-instance p99 ≤ 2× same-instance.
//! Needs `SYNC_TEST_POSTGRES_URL` (a database of its own is created and
//! dropped); without it the table says it was skipped.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, bench_config};
use crate::stats::{Latency, Table, ms, ratio};
use anyhow::{Context, Result};
use std::time::{Duration, Instant};
use sync_client::{GroupSecret, PushOptions, StateStore, SyncClient};
use sync_storage_postgres::testing::{TestDatabase, URL_ENV};

/// Time from `started` until `client`'s head reaches `head`.
async fn notified(client: &SyncClient, head: u64, started: Instant) -> Result<Duration> {
    let mut heads = client.heads();
    while *heads.borrow_and_update() < head {
        heads.changed().await?;
    }
    Ok(started.elapsed())
}

/// Run the scenario.
pub async fn run(size: Size) -> Result<Table> {
    let mut table = Table::new(
        "Cross-instance notify (PostgreSQL, two relays: A pushes on relay 1 → B notified)",
        &["", "p50 ms", "p99 ms", "max ms", "samples"],
    );
    let Some(db) = TestDatabase::create().await else {
        table.note(format!("skipped: {URL_ENV} is not set"));
        return Ok(table);
    };
    let config = format!(
        "{}[storage]\nurl = \"{}\"\nhead_poll_interval_s = 3600\n",
        bench_config(DEFAULT_MAX_BLOB_SIZE),
        db.url()
    );
    let relay1 = Relay::start_with(&config)?;
    let relay2 = Relay::start_with(&config)?;
    let n = size.pick(2000, 20);
    let keys = GroupSecret::generate().keys();
    let a = SyncClient::connect(&relay1.device(&keys)?).await?;
    let same = SyncClient::connect(&relay1.device(&keys)?).await?;
    let cross = SyncClient::connect(&relay2.device(&keys)?).await?;
    let dir = tempfile::tempdir()?;
    let mut states = Vec::new();
    for name in ["a", "same", "cross"] {
        std::fs::create_dir_all(dir.path().join(name))?;
        states.push(StateStore::open(dir.path().join(name).join("state.json"))?);
    }
    let [mut sa, mut s1, mut s2] =
        <[StateStore; 3]>::try_from(states).map_err(|_| anyhow::anyhow!("three state stores"))?;
    let out = dir.path().join("out");
    let body = crate::env::random(1024);
    let warm_up = size.pick(50, 2);
    let (mut same_ms, mut cross_ms) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + warm_up {
        let started = Instant::now();
        let ok = a
            .push_messages(
                &mut sa,
                std::slice::from_ref(&body),
                &PushOptions::default(),
            )
            .await?;
        let head = ok.last().context("push result")?.head;
        let (t1, t2) = tokio::join!(
            notified(&same, head, started),
            notified(&cross, head, started)
        );
        if i >= warm_up {
            same_ms.push(t1?);
            cross_ms.push(t2?);
        }
        // Untimed: each follower pulls, as a following device does (the
        // relay sends the next Notify at once to a device that asked since).
        same.pull(&mut s1, &out.join("same"), &mut |_| {}).await?;
        cross.pull(&mut s2, &out.join("cross"), &mut |_| {}).await?;
    }
    for c in [a, same, cross] {
        c.close().await;
    }
    drop((relay1, relay2));
    drop(db);
    let (s, x) = (Latency::of(same_ms), Latency::of(cross_ms));
    for (label, l) in [
        ("same instance: push → Notify at B1 (relay 1)", s),
        ("cross instance: push → Notify at B2 (relay 2)", x),
    ] {
        table.row(vec![
            label.into(),
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
            l.n.to_string(),
        ]);
    }
    table.note(format!(
        "p99 ratio cross/same: {} (target ≤ 2); p50 ratio: {}. Both columns time the same pushes; the cross-instance path adds the COMMIT → LISTEN delivery, one head re-read (a query) and a wake-up of relay 2's forwarder.",
        ratio(x.p99.as_secs_f64(), s.p99.as_secs_f64()),
        ratio(x.p50.as_secs_f64(), s.p50.as_secs_f64())
    ));
    Ok(table)
}
