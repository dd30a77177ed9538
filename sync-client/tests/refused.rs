//! A relay that refuses a connection before its TLS handshake (over its
//! per-address connection rate or its cap on connections awaiting `Hello`)
//! is explained to the user, not reported as a bare QUIC error or a
//! timeout. The "relay" here is an iroh endpoint that refuses every
//! incoming connection the way the real relay does (`Incoming::refuse`).

use iroh::endpoint::presets;
use iroh::{Endpoint, RelayMode, SecretKey};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use sync_client::session::REFUSED_BEFORE_HANDSHAKE;
use sync_client::{ClientError, ConnectOptions, GroupSecret, RelaySession};

async fn refusing_relay() -> (Endpoint, tokio::task::JoinHandle<()>) {
    let ep = Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .unwrap()
        .alpns(vec![sync_protocol::ALPN.to_vec()])
        .bind()
        .await
        .unwrap();
    let server = ep.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = server.accept().await {
            incoming.refuse();
        }
    });
    (ep, task)
}

#[tokio::test]
async fn a_connection_refused_before_the_handshake_says_why_at_once() {
    let (relay, task) = refusing_relay().await;
    let port = relay.bound_sockets()[0].port();
    let opts = ConnectOptions {
        relay: format!("{}@127.0.0.1:{port}", relay.id()).parse().unwrap(),
        keys: GroupSecret::generate().keys(),
        device_key: SecretKey::generate(),
        device_name: None,
        connect_timeout: Duration::from_secs(30),
        access_token: None,
    };
    let started = Instant::now();
    let err = RelaySession::connect(&opts).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "a refusal is an answer, not a timeout: {:?}",
        started.elapsed()
    );
    match &err {
        ClientError::Connect { reason, .. } => assert_eq!(reason, REFUSED_BEFORE_HANDSHAKE),
        other => panic!("expected a connect error, got {other:?}"),
    }
    assert!(
        err.is_transport(),
        "retried with backoff like any dial failure"
    );
    assert!(
        err.to_string().contains("too many new connections"),
        "{err}"
    );
    task.abort();
    relay.close().await;
}
