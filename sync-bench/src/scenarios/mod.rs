//! The benchmark scenarios; each returns Markdown tables.

pub mod bulk;
pub mod churn;
pub mod cold;
pub mod cross;
pub mod fanout;
pub mod folder;
pub mod idle;
pub mod load;
pub mod notify;
pub mod peer;
pub mod push;
pub mod push_postgres;
pub mod soak;

use crate::raw::EchoServer;
use crate::stats::Latency;
use anyhow::Result;
use std::time::Instant;

/// Raw iroh round trips of `payload` bytes on one connection: the latency
/// baseline of the notify and fan-out scenarios.
pub async fn raw_round_trip(payload: usize, n: usize) -> Result<Latency> {
    let server = EchoServer::start().await?;
    let (ep, conn) = server.connect().await?;
    let body = crate::env::random(payload);
    for _ in 0..20 {
        crate::raw::request(&conn, &body).await?; // warm up
    }
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        crate::raw::request(&conn, &body).await?;
        samples.push(t.elapsed());
    }
    conn.close(0u32.into(), b"");
    ep.close().await;
    server.close().await;
    Ok(Latency::of(samples))
}
