//! Scenario 7: peers side by side (issue 13 part 5). Acknowledged 1 KiB
//! ingest of nostr-rs-relay (a Rust Nostr relay on SQLite) beside our
//! relay's acknowledged 1 KiB pushes, in the same run, alternating.
//!
//! Rows: 1, 16 and 64 connections, each with one item in flight (ours: a
//! push of one blob; theirs: one `EVENT` awaiting its `OK`), then with 64
//! (ours: a push of a batch of 64 blobs; theirs: 64 pipelined `EVENT`s).
//! Each figure is the median of `rounds` alternating runs, every run on a
//! fresh relay process with an empty database.

use crate::env::{Relay, Size, random};
use crate::nostr::client::{Connection, Outgoing};
use crate::nostr::event::{Event, Keys};
use crate::nostr::relay::NostrRelay;
use crate::scenarios::push::{Run, relay_run_on};
use crate::stats::{Table, ratio};
use anyhow::Result;
use futures::future::try_join_all;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes of a blob's payload and of an event's content.
const ITEM: usize = 1024;
/// The target: ours ÷ theirs at every row.
const TARGET: f64 = 2.0;

/// `per_conn` events of [`ITEM`] content characters for each of `conns`
/// authors, signed ahead of the measurement (on blocking threads).
async fn sign_events(conns: usize, per_conn: usize) -> Result<Vec<Vec<Outgoing>>> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    try_join_all((0..conns).map(|_| {
        tokio::task::spawn_blocking(move || {
            let keys = Keys::generate();
            (0..per_conn)
                .map(|i| {
                    let content = hex::encode(random(ITEM / 2));
                    let e = Event::sign(&keys, now, 1, vec![], content)?;
                    if i == 0 {
                        e.verify()?; // what the relay will check
                    }
                    Ok(Outgoing::from(&e))
                })
                .collect::<Result<Vec<_>>>()
        })
    }))
    .await?
    .into_iter()
    .collect()
}

/// `conns` WebSocket connections to a fresh nostr-rs-relay publish
/// pre-signed 1 KiB events, `window` in flight each, for `time` or until
/// `cap` events in all.
async fn nostr_run(
    bin: &Path,
    conns: usize,
    window: usize,
    time: Duration,
    cap: u64,
) -> Result<Run> {
    let per_conn = ((cap as usize) / conns).max(window);
    let events = sign_events(conns, per_conn).await?;
    let relay = NostrRelay::start(bin).await?;
    let mut connections = try_join_all((0..conns).map(|_| Connection::connect(&relay.url))).await?;
    let started = Instant::now();
    let deadline = started + time;
    let counts = try_join_all(
        connections
            .iter_mut()
            .zip(&events)
            .map(|(c, evs)| c.publish(evs, window, deadline)),
    )
    .await?;
    let elapsed = started.elapsed();
    for c in connections {
        c.close().await;
    }
    Ok(Run {
        blobs: counts.iter().sum(),
        elapsed,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Run the scenario against the nostr-rs-relay binary `bin`, `rounds`
/// alternating runs a row (at least 1).
pub async fn run(size: Size, bin: &Path, rounds: usize) -> Result<Table> {
    let time = size.pick(Duration::from_secs(3), Duration::from_millis(200));
    // Theirs are signed ahead, so capped near what 3 s can take; ours are
    // capped as in `push`.
    let cap: u64 = size.pick(20_000, 256);
    let our_cap: u64 = size.pick(384 << 10, 4 << 10);
    let rounds = rounds.max(1);
    let mut table = Table::new(
        "Peers: acknowledged 1 KiB ingest, ours vs nostr-rs-relay",
        &[
            "connections",
            "in flight a connection",
            "ours blobs/s",
            "nostr-rs-relay events/s",
            "ours ÷ theirs",
            "≥ 2×",
        ],
    );
    for conns in size.pick(vec![1usize, 16, 64], vec![1, 4]) {
        for batch in [1usize, 64] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                let relay = Relay::start(4 << 20)?;
                let run = relay_run_on(&relay, ITEM, conns, batch, time, our_cap).await?;
                drop(relay);
                ours.push(run.rate());
                theirs.push(nostr_run(bin, conns, batch, time, cap).await?.rate());
            }
            let (o, t) = (median(ours), median(theirs));
            table.row(vec![
                conns.to_string(),
                if batch == 1 {
                    "1".into()
                } else {
                    format!("{batch} (ours: one batch; theirs: pipelined)")
                },
                format!("{o:.0}"),
                format!("{t:.0}"),
                ratio(o, t),
                if o >= TARGET * t { "met" } else { "missed" }.into(),
            ]);
        }
    }
    table.note(format!(
        "Median of {rounds} alternating runs a row ({} s each, or {our_cap} blobs / {cap} events), each on a fresh relay process with an empty database; both relays on SQLite in WAL with synchronous = NORMAL, on the same two cores as their clients. Ours: devices in groups of 8, each its own QUIC connection, encrypted 1 KiB blobs, acknowledged by the push's answer (after its commit). Theirs: nostr-rs-relay {} (no rate limits, logs at warn), each connection a WebSocket of its own author, NIP-01 events with 1,024 hex characters of content signed ahead of time (signing is not measured), acknowledged by [\"OK\", id, true, …] (sent after its writer stored the event).",
        time.as_secs_f64(),
        crate::nostr::relay::VERSION
    ));
    Ok(table)
}
