//! Dial storm (issue 10, the unanswered-dial stall): thousands of dials
//! from fresh endpoints, concurrently, each a bare QUIC handshake with the
//! real relay; counts the dials that take longer than a second. Not in CI
//! (`#[ignore]`): a harness to reproduce the stall,
//! `DIALS=5000 CONCURRENCY=32 cargo test -p e2e-tests --test e2e dial_storm:: -- --ignored --nocapture`.
//! `VANISH=1`: every other dial drops its endpoint without a close;
//! `RELAY_LOG` is the relay's `RUST_LOG` (e.g. `info,noq_proto=debug`) and
//! `RELAY_LOG_FILE` where its log is written at the end. Figures:
//! BENCHMARKS.md "Unanswered dials".

use e2e_tests::RelayProcess;
use futures::stream::{self, StreamExt};
use std::time::{Duration, Instant};

const CONFIG: &str = "[rate_limits]\nconnections_per_ip_per_s = 1000000\n\
    connections_per_ip_burst = 1000000\n[limits]\nmax_connections_awaiting_hello = 100000\n";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "harness, minutes: DIALS=5000 CONCURRENCY=32 cargo test -p e2e-tests --test e2e dial_storm:: -- --ignored --nocapture"]
async fn dial_storm() {
    let dials = env_u64("DIALS", 3000);
    let concurrency = env_u64("CONCURRENCY", 32) as usize;
    let vanish = env_u64("VANISH", 0) == 1;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let relay_log = std::env::var("RELAY_LOG").unwrap_or_else(|_| "info".into());
    let relay = RelayProcess::start_with_env(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--config", config.to_str().unwrap()],
        &[("RUST_LOG", relay_log.as_str())],
    );
    let relay_id: iroh::EndpointId = relay.node_id().parse().unwrap();
    let quic = relay.quic;
    let started = Instant::now();
    let results: Vec<(u64, u16, Duration, Result<(), String>)> = stream::iter(0..dials)
        .map(|k| async move {
            let ep = sync_client::endpoint::bind(iroh::SecretKey::generate(), quic)
                .await
                .expect("bind");
            let port = ep.bound_sockets().first().map(|a| a.port()).unwrap_or(0);
            let t = Instant::now();
            let dialed = tokio::time::timeout(
                Duration::from_secs(40),
                ep.connect(
                    iroh::EndpointAddr::new(relay_id).with_ip_addr(quic),
                    sync_protocol::ALPN,
                ),
            )
            .await;
            let took = t.elapsed();
            let res = match dialed {
                Ok(Ok(conn)) if vanish && k % 2 == 1 => {
                    // Vanish: no close, the relay learns from its
                    // timeouts and keeps sending to a dead port.
                    drop(conn);
                    drop(ep);
                    return (k, port, took, Ok(()));
                }
                Ok(Ok(conn)) => {
                    conn.close(0u32.into(), b"bye");
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("{e:#}")),
                Err(_) => Err("timed out after 40 s".into()),
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), ep.close()).await;
            (k, port, took, res)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let slow: Vec<_> = results
        .iter()
        .filter(|r| r.2 > Duration::from_secs(1) || r.3.is_err())
        .collect();
    for (k, port, took, res) in &slow {
        eprintln!("slow dial {k} from port {port}: {took:?} {res:?}");
    }
    let m = relay.metrics();
    eprintln!(
        "{dials} dials, concurrency {concurrency}, {:?}: {} slow (> 1 s) or failed; \
         relay: address_validations {}, connections {}",
        started.elapsed(),
        slow.len(),
        m.value("sync_relay_address_validations", &[]),
        m.value("sync_relay_connections", &[]),
    );
    if let Ok(path) = std::env::var("RELAY_LOG_FILE") {
        std::fs::write(path, relay.log()).unwrap();
    }
}
