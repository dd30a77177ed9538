//! The relay's iroh endpoint (DESIGN §3): persistent key, ALPN `/0k-sync/1`,
//! direct addressing on `network.quic_bind`. n0's public relay servers and
//! DNS/pkarr address lookup are off unless switched on in the config, so the
//! relay needs no internet.

use crate::config::NetworkConfig;
use iroh::address_lookup::{DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::endpoint::{PortmapperConfig, QuicTransportConfig, presets};
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};
use sync_protocol::ALPN;

/// Most request streams (QUIC bidirectional streams, the `Hello` stream
/// included) one device may have open at once on a connection; more wait
/// for a slot. Each may buffer a request frame of up to `max_frame` bytes.
pub const MAX_REQUEST_STREAMS: u32 = 100;

/// Per-connection QUIC limits: [`MAX_REQUEST_STREAMS`] request streams, and
/// no unidirectional streams opened by the device. The protocol has none
/// (only the relay opens one, for `Notify`) and the relay never reads one,
/// so each that QUIC accepted (100 by default) would hold a stream window
/// (~1.2 MB) of unread data for the connection's life. Everything else
/// keeps iroh's defaults.
pub fn transport_config() -> QuicTransportConfig {
    QuicTransportConfig::builder()
        .max_concurrent_bidi_streams(MAX_REQUEST_STREAMS.into())
        .max_concurrent_uni_streams(0u32.into())
        .build()
}

/// Errors binding the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The bind address is not usable.
    #[error("network.quic_bind {addr}: {message}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// iroh's message.
        message: String,
    },
}

/// Bind the relay's endpoint.
pub async fn bind(net: &NetworkConfig, key: SecretKey) -> Result<Endpoint, EndpointError> {
    let bind_err = |message: String| EndpointError::Bind {
        addr: net.quic_bind,
        message,
    };
    let mut builder = Endpoint::builder(presets::Minimal)
        .clear_address_lookup()
        .clear_ip_transports()
        .bind_addr(net.quic_bind)
        .map_err(|e| bind_err(e.to_string()))?
        .portmapper_config(PortmapperConfig::Disabled)
        .net_report_config(NetReportConfig::minimal())
        .secret_key(key)
        .transport_config(transport_config())
        .alpns(vec![ALPN.to_vec()]);
    builder = if net.public_relays {
        builder.relay_mode(iroh::endpoint::default_relay_mode())
    } else {
        builder.relay_mode(RelayMode::Disabled)
    };
    if net.address_lookup {
        builder = builder
            .address_lookup(PkarrPublisher::n0_dns())
            .address_lookup(PkarrResolver::n0_dns())
            .address_lookup(DnsAddressLookup::n0_dns());
    }
    builder.bind().await.map_err(|e| bind_err(e.to_string()))
}
