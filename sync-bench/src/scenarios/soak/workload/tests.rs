//! The soak's workers dial as devices do: an unanswered dial costs a
//! redial, not an error (docs/deploy.md "Unanswered dials").

use super::*;
use crate::env::Relay;
use std::collections::HashMap;
use tokio::net::UdpSocket;

/// A UDP forwarder to `to` on a free loopback port that drops every
/// datagram of the first client address it hears from (that client's dial
/// is never answered) and relays those of every other client both ways.
async fn deaf_to_the_first_client(to: SocketAddr) -> Result<SocketAddr> {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
    let addr = front.local_addr()?;
    tokio::spawn(async move {
        let mut first: Option<SocketAddr> = None;
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = front.recv_from(&mut buf).await {
            if *first.get_or_insert(from) == from {
                continue;
            }
            let up = match upstreams.get(&from) {
                Some(up) => Arc::clone(up),
                None => {
                    let Ok(up) = UdpSocket::bind("127.0.0.1:0").await else {
                        return;
                    };
                    if up.connect(to).await.is_err() {
                        return;
                    }
                    let up = Arc::new(up);
                    let (back, front) = (Arc::clone(&up), Arc::clone(&front));
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65_536];
                        while let Ok(n) = back.recv(&mut buf).await {
                            let _ = front.send_to(&buf[..n], from).await;
                        }
                    });
                    upstreams.insert(from, Arc::clone(&up));
                    up
                }
            };
            let _ = up.send(&buf[..n]).await;
        }
    });
    Ok(addr)
}

/// Needs the debug `sync-relay` (`cargo build -p sync-relay`). The first
/// dial goes to a forwarder that never answers it; the session still
/// opens, from a redial, at least [`dial_attempt_timeout`]`(1)` later,
/// with the redial counted and no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_dial_is_made_again_not_an_error() -> Result<()> {
    let relay = Relay::start_with("")?;
    let front = deaf_to_the_first_client(relay.quic).await?;
    let direct: RelayAddr = relay.address.parse()?;
    let world = World {
        relay: RelayAddr {
            node_id: direct.node_id,
            host_port: front.to_string(),
        },
        quic: front,
        token: relay.create_token(10)?,
        deadline: Instant::now() + Duration::from_secs(120),
        ttl_s: 60,
        report: Mutex::new(Report::default()),
    };
    let keys = sync_client::GroupSecret::generate().keys();
    let started = Instant::now();
    let (s, ep) = session_on(
        &world,
        Ipv4Addr::new(127, 6, 0, 1),
        SecretKey::generate(),
        &keys,
        true,
    )
    .await?;
    assert!(started.elapsed() >= dial_attempt_timeout(1));
    s.push(vec![world.item(blob_id(6, 0), 16, 60)]).await?;
    s.close().await;
    close(&ep).await;
    let r = world.report.lock().unwrap_or_else(|p| p.into_inner());
    // One redial at least: a loaded machine may need a third dial too.
    assert!(r.redials >= 1, "the unanswered dial was not made again");
    assert_eq!(r.errors, 0);
    Ok(())
}
