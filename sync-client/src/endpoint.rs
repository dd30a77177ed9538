//! The device's iroh endpoint (docs/protocol.md, §4.6): the device key as identity,
//! no public relay servers, no DNS/pkarr lookup; the relay is dialed at its
//! direct address.

use crate::error::{ClientError, Result};
use iroh::endpoint::{IdleTimeout, PortmapperConfig, QuicTransportConfig, presets};
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};
use std::net::SocketAddr;
use std::time::Duration;
use sync_protocol::limits::STREAM_RECEIVE_WINDOW;

/// QUIC idle timeout: a connection with no traffic for this long is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
/// Keep-alive interval, so an idle `pull --follow` session stays open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Bind an endpoint on an ephemeral UDP port of the relay's address family
/// (`relay` only chooses the family).
///
/// Transport settings: idle timeout [`IDLE_TIMEOUT`], keep-alive
/// [`KEEP_ALIVE`], and a per-stream receive window of
/// [`STREAM_RECEIVE_WINDOW`] (1 MiB, below iroh's default of 1.25 MB) so a
/// large pull page on a lossy link cannot pass noq-proto's 1,024-gap limit
/// of a stream's reassembly buffer, which closes the connection; the pages
/// are read as they arrive, so frames larger than the window still pass.
pub async fn bind(device_key: SecretKey, relay: SocketAddr) -> Result<Endpoint> {
    let local: SocketAddr = if relay.is_ipv6() {
        "[::]:0".parse().expect("literal")
    } else {
        "0.0.0.0:0".parse().expect("literal")
    };
    let transport = QuicTransportConfig::builder()
        .max_idle_timeout(IdleTimeout::try_from(IDLE_TIMEOUT).ok())
        .keep_alive_interval(KEEP_ALIVE)
        .stream_receive_window(STREAM_RECEIVE_WINDOW.into())
        .build();
    let err = |e: String| ClientError::Connect {
        addr: relay.to_string(),
        reason: format!("cannot open a local UDP endpoint: {e}"),
    };
    Endpoint::builder(presets::Minimal)
        .relay_mode(RelayMode::Disabled)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(local)
        .map_err(|e| err(e.to_string()))?
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .transport_config(transport)
        .secret_key(device_key)
        .bind()
        .await
        .map_err(|e| err(e.to_string()))
}
