//! What the raw-frame relay tests share: an in-process relay in open mode
//! on loopback, a device endpoint of its own, one request on a new stream,
//! and a session speaking a given protocol version.

#![allow(dead_code)]

use ed25519_dalek::{Signer, SigningKey};
use std::net::SocketAddr;
use sync_protocol::{
    DeviceId, GroupId, Hello, Message, Proof, hello_proof_message, read_message, write_message,
};
use sync_relay::config::AccessMode;
use sync_relay::{Config, Relay};

/// A relay in open mode on loopback, its data under `dir`, connection
/// rate limits out of the way.
pub async fn start_relay(dir: &std::path::Path) -> Relay {
    let mut config = Config {
        data_dir: dir.join("data"),
        ..Config::default()
    };
    config.access.mode = AccessMode::Open;
    config.network.quic_bind = "127.0.0.1:0".parse().unwrap();
    config.network.http_bind = "127.0.0.1:0".parse().unwrap();
    config.rate_limits.connections_per_ip_per_s = 1_000_000;
    config.rate_limits.connections_per_ip_burst = 1_000_000;
    Relay::start(config).await.expect("start relay")
}

/// A device: its own endpoint (so its own node id).
pub async fn device() -> iroh::Endpoint {
    iroh::Endpoint::builder(iroh::endpoint::presets::Minimal)
        .relay_mode(iroh::RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .expect("bind address")
        .bind()
        .await
        .expect("bind endpoint")
}

/// One request on a new stream; every frame of its answer.
pub async fn exchange(conn: &iroh::endpoint::Connection, msg: &Message) -> Vec<Message> {
    let (mut send, mut recv) = conn.open_bi().await.expect("open stream");
    write_message(&mut send, msg, 1 << 20).await.expect("write");
    send.finish().expect("finish");
    let mut out = Vec::new();
    while let Some(m) = read_message(&mut recv, 1 << 20).await.expect("read") {
        out.push(m);
    }
    out
}

/// A session of `ep` speaking `version` on `key`'s group; its connection
/// and the `Welcome`'s version.
pub async fn session(
    ep: &iroh::Endpoint,
    relay: &Relay,
    key: &SigningKey,
    version: u16,
) -> iroh::endpoint::Connection {
    let relay_id = DeviceId(*relay.node_id().as_bytes());
    let device = DeviceId(*ep.id().as_bytes());
    let conn = ep
        .connect(
            iroh::EndpointAddr::new(relay.node_id()).with_ip_addr(relay.quic_addr()),
            sync_protocol::ALPN,
        )
        .await
        .expect("connect");
    let hello = Message::Hello(Hello {
        version,
        group_id: GroupId(key.verifying_key().to_bytes()),
        proof: Proof(
            key.sign(&hello_proof_message(&relay_id, &device))
                .to_bytes(),
        ),
        device_name: None,
    });
    match exchange(&conn, &hello).await.as_slice() {
        [Message::Welcome(w)] => {
            assert_eq!(w.version, version, "the session speaks the Hello's version")
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    conn
}
