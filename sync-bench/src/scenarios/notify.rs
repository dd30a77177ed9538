//! Scenario 2: NOTIFY latency. Device A pushes a sealed message; device B,
//! subscribed, is woken by NOTIFY, pulls and decrypts it. The latency runs
//! from A's push call to B's decrypted message, one message at a time.
//! Measured twice: B waits for the head and pulls (the path before
//! protocol version 3), and B follows (`SyncClient::subscribe`, what
//! `sync-cli pull --follow` runs), where the relay sends the new blob
//! inline and B needs no pull (docs/protocol.md "Version 3: inline
//! delivery"). Baseline: a raw iroh round trip measured in the same run.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size};
use crate::stats::{Latency, Table, ms, ratio};
use anyhow::{Context, Result};
use std::sync::Arc;
use std::time::Instant;
use sync_client::{GroupSecret, PullEvent, PushOptions, StateStore, SubscriptionEvent, SyncClient};

/// Run the scenario.
pub async fn run(size: Size) -> Result<Table> {
    let n = size.pick(10_000, 100);
    let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
    let keys = GroupSecret::generate().keys();
    let dir = tempfile::tempdir()?;
    let a = SyncClient::connect(&relay.device(&keys)?).await?;
    let b = SyncClient::connect(&relay.device(&keys)?).await?;
    std::fs::create_dir_all(dir.path().join("a"))?;
    std::fs::create_dir_all(dir.path().join("b"))?;
    let mut sa = StateStore::open(dir.path().join("a/state.json"))?;
    // A long-lived sender: sequence numbers come from a block in memory.
    sa.use_seq_blocks();
    let mut sb = StateStore::open(dir.path().join("b/state.json"))?;
    let out = dir.path().join("out");
    let body = crate::env::random(1024);
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let ok = a
            .push_messages(
                &mut sa,
                std::slice::from_ref(&body),
                &PushOptions::default(),
            )
            .await?;
        let head = ok.last().context("push result")?.head;
        let mut heads = b.heads();
        while *heads.borrow_and_update() < head {
            heads.changed().await?;
        }
        let mut arrived = None;
        b.pull(&mut sb, &out, &mut |e| {
            if matches!(e, PullEvent::Message { .. }) && arrived.is_none() {
                arrived = Some(started.elapsed());
            }
        })
        .await?;
        samples.push(arrived.context("message not received")?);
    }
    // B follows: the relay sends each new blob inline.
    let b = Arc::new(b);
    let mut sub = b.subscribe(sb, out.clone());
    let mut follow_samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        a.push_messages(
            &mut sa,
            std::slice::from_ref(&body),
            &PushOptions::default(),
        )
        .await?;
        loop {
            match sub.next().await {
                Some(SubscriptionEvent::Event(PullEvent::Message { .. })) => break,
                Some(SubscriptionEvent::Event(_)) => {}
                Some(SubscriptionEvent::Failed(e)) => return Err(e.into()),
                None => anyhow::bail!("the subscription ended"),
            }
        }
        follow_samples.push(started.elapsed());
    }
    let inline = b.inline_deliveries();
    // The relay's side: how often it sent inline, and why not otherwise.
    let relay_inline = crate::env::scrape_metrics(relay.http)
        .await
        .map(|text| {
            text.lines()
                .filter(|l| l.starts_with("sync_relay_inline"))
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|e| format!("/metrics unavailable: {e}"));
    sub.stop().await?;
    a.release_seqs(&mut sa).await?;
    a.close().await;
    b.close().await;
    let notify = Latency::of(samples);
    let follow = Latency::of(follow_samples);
    let rtt = super::raw_round_trip(1024, n.min(2000)).await?;
    let mut table = Table::new(
        "Notify latency (A pushes → B notified, pulls and decrypts)",
        &["", "p50 ms", "p99 ms", "max ms", "samples"],
    );
    table.row(vec![
        "relay: push → decrypted at B (notified, pulls)".into(),
        ms(notify.p50),
        ms(notify.p99),
        ms(notify.max),
        notify.n.to_string(),
    ]);
    table.row(vec![
        "relay: push → decrypted at B (follows, inline)".into(),
        ms(follow.p50),
        ms(follow.p99),
        ms(follow.max),
        follow.n.to_string(),
    ]);
    table.row(vec![
        "raw iroh round trip, 1 KiB".into(),
        ms(rtt.p50),
        ms(rtt.p99),
        ms(rtt.max),
        rtt.n.to_string(),
    ]);
    table.note(format!(
        "Notified, pulls: p99 ratio to the raw round trip p99: {}; p50 ratio: {}. The path is at least three round trips (push + ack, NOTIFY, pull), plus sealing and opening.",
        ratio(notify.p99.as_secs_f64(), rtt.p99.as_secs_f64()),
        ratio(notify.p50.as_secs_f64(), rtt.p50.as_secs_f64())
    ));
    table.note(format!(
        "Follows, inline: p99 ratio {}; p50 ratio {}; {inline} of {} messages arrived inline (no pull). The path is the push round trip and the Deliver frame, plus sealing and opening.",
        ratio(follow.p99.as_secs_f64(), rtt.p99.as_secs_f64()),
        ratio(follow.p50.as_secs_f64(), rtt.p50.as_secs_f64()),
        follow.n
    ));
    table.note(format!("Relay: {relay_inline}."));
    Ok(table)
}
