//! Scenario 3: fan-out. One push to a group with 1, 100 and 1,000 live
//! sessions; the time until the last session has the new head (NOTIFY).
//! Sessions share a few client endpoints (100 sessions each) and, like real
//! devices, acknowledge what they were told before the next push.

use crate::env::{DEFAULT_MAX_BLOB_SIZE, Relay, Size, blob_id, random};
use crate::stats::{Latency, Table, ms, ratio};
use anyhow::Result;
use futures::future::try_join_all;
use std::sync::Arc;
use std::time::Instant;
use sync_client::{GroupSecret, RelaySession};
use sync_protocol::PushItem;

async fn sessions(
    relay: &Relay,
    keys: &sync_client::GroupKeys,
    n: usize,
) -> Result<(Vec<iroh::Endpoint>, Vec<Arc<RelaySession>>)> {
    let mut endpoints = Vec::new();
    let mut out = Vec::new();
    for chunk in 0..n.div_ceil(100) {
        let opts = relay.device(keys)?;
        let ep = sync_client::endpoint::bind(iroh::SecretKey::generate(), relay.quic).await?;
        let count = (n - chunk * 100).min(100);
        let batch = try_join_all((0..count).map(|_| RelaySession::connect_on(&ep, &opts))).await?;
        out.extend(batch.into_iter().map(Arc::new));
        endpoints.push(ep);
    }
    Ok((endpoints, out))
}

/// Run the scenario.
pub async fn run(size: Size) -> Result<Table> {
    let trials = size.pick(20, 3);
    let mut table = Table::new(
        "Fan-out (one push → every live session of the group notified)",
        &[
            "sessions",
            "first ms (p50)",
            "last ms (p50)",
            "last ms (max)",
            "last ÷ raw RTT p50",
        ],
    );
    let rtt = super::raw_round_trip(64, 200).await?;
    for n in size.pick(vec![1usize, 100, 1000], vec![1, 20]) {
        let relay = Relay::start(DEFAULT_MAX_BLOB_SIZE)?;
        let keys = GroupSecret::generate().keys();
        let (endpoints, listeners) = sessions(&relay, &keys, n).await?;
        let pusher = RelaySession::connect(&relay.device(&keys)?).await?;
        let body = random(64);
        let (mut firsts, mut lasts) = (Vec::new(), Vec::new());
        for t in 0..trials {
            let started = Instant::now();
            let ok = pusher
                .push(vec![PushItem {
                    blob_id: blob_id(9, t as u64),
                    payload: body.clone(),
                    ttl_s: None,
                }])
                .await?;
            let head = ok.head;
            let times = try_join_all(listeners.iter().map(|s| async move {
                let mut heads = s.heads();
                while *heads.borrow_and_update() < head {
                    heads.changed().await?;
                }
                let at = started.elapsed();
                s.ack(head).await?;
                anyhow::Ok(at)
            }))
            .await?;
            firsts.push(*times.iter().min().unwrap_or(&started.elapsed()));
            lasts.push(*times.iter().max().unwrap_or(&started.elapsed()));
        }
        let (first, last) = (Latency::of(firsts), Latency::of(lasts));
        table.row(vec![
            n.to_string(),
            ms(first.p50),
            ms(last.p50),
            ms(last.max),
            ratio(last.p50.as_secs_f64(), rtt.p50.as_secs_f64()),
        ]);
        pusher.close().await;
        for s in &listeners {
            s.close().await;
        }
        for ep in endpoints {
            ep.close().await;
        }
    }
    table.note(format!("Raw iroh round trip (64 B) p50 in the same run: {} ms. Times run from the push call (including its own round trip) to the session seeing the head.", ms(rtt.p50)));
    Ok(table)
}
