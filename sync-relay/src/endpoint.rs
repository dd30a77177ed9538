//! The relay's iroh endpoint (docs/protocol.md): persistent key, ALPN `/0k-sync/1`,
//! direct addressing on `network.quic_bind`. n0's public relay servers and
//! DNS/pkarr address lookup are off unless switched on in the config, so the
//! relay needs no internet.

use crate::config::{LimitsConfig, NetworkConfig};
use iroh::address_lookup::{DnsAddressLookup, PkarrPublisher, PkarrResolver};
use iroh::endpoint::{Connection, PortmapperConfig, QuicTransportConfig, VarInt, presets};
use iroh::{Endpoint, NetReportConfig, RelayMode, SecretKey};
use sync_protocol::ALPN;
use sync_protocol::limits::{
    FRAME_HEADER_LEN, HANDSHAKE_MAX_FRAME, STREAM_RECEIVE_WINDOW, max_frame_for_blob_size,
};

/// Connection receive window (bytes) until the `Hello` is accepted, 16 KiB:
/// room for the `Hello` frame (at most [`HANDSHAKE_MAX_FRAME`] + 4 bytes) and
/// little else, so a connection that never authenticates can make the relay
/// buffer at most this much.
pub const HELLO_RECEIVE_WINDOW: u32 = 4 * HANDSHAKE_MAX_FRAME;

/// Bytes of one largest request frame with its length prefix.
fn frame_window(max_frame: u32) -> u64 {
    u64::from(max_frame) + FRAME_HEADER_LEN as u64
}

/// Per-stream receive window for request frames of `frame` bytes (length
/// prefix included): the frame, at most [`STREAM_RECEIVE_WINDOW`].
///
/// A larger window lets a device have so many packets of one request in
/// flight that, on a lossy link, noq-proto's reassembly buffer passes its
/// 1,024-piece limit and the connection is closed ("too many gaps in stream
/// buffer", `noq-proto-1.4.0/src/connection/assembler.rs`). A frame larger
/// than the window still gets through: the relay reads a request's body as
/// it arrives ([`sync_protocol::read_frame_body`]), and each read moves the
/// window on.
pub fn stream_receive_window(frame: u64) -> VarInt {
    VarInt::from_u32(STREAM_RECEIVE_WINDOW.min(u32::try_from(frame).unwrap_or(u32::MAX)))
}

/// Per-connection QUIC limits, as they stand until the `Hello` is accepted
/// ([`open_session`] widens them):
///
/// - one bidirectional stream (the `Hello`'s) and a connection receive
///   window of [`HELLO_RECEIVE_WINDOW`];
/// - no unidirectional streams opened by the device: the protocol has
///   none (only the relay opens one, for `Notify`), and each one QUIC
///   accepted would hold unread data for the connection's life;
/// - no QUIC datagrams (the protocol has none; each connection would
///   otherwise buffer up to 1.25 MB of them);
/// - a stream receive window of one largest request frame (`max_frame` + 4
///   bytes: one request per stream, nothing more to read on it), capped at
///   [`STREAM_RECEIVE_WINDOW`] (1 MiB; see [`stream_receive_window`]);
/// - a send window (bytes written to the device and not yet acknowledged)
///   of two largest frames;
/// - UDP segmentation offload as `net.segmentation_offload` says (off:
///   one datagram per send, and a send buffer of one datagram per
///   connection instead of ten).
///
/// Everything else keeps iroh's defaults.
pub fn transport_config(net: &NetworkConfig, limits: &LimitsConfig) -> QuicTransportConfig {
    let frame = frame_window(max_frame_for_blob_size(limits.max_blob_size));
    QuicTransportConfig::builder()
        .enable_segmentation_offload(net.segmentation_offload)
        .max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .receive_window(HELLO_RECEIVE_WINDOW.into())
        .stream_receive_window(stream_receive_window(frame))
        .send_window(2 * frame)
        .datagram_receive_buffer_size(None)
        .build()
}

/// Widen a connection whose `Hello` was accepted to its session limits:
/// `max_requests_in_flight` request streams plus one, since QUIC counts the
/// `Hello` stream until it is fully closed (with iroh 1.4 a device gets
/// exactly `max_requests_in_flight` while it keeps requests open), and a
/// connection receive window of two largest request frames. What the device sends beyond what
/// the relay is reading waits in that window; the relay reads at once
/// every request its budget ([`crate::budget`]) allows and refuses the
/// rest, so the window only holds data in transit.
pub fn open_session(conn: &Connection, limits: &LimitsConfig) {
    let frame = frame_window(max_frame_for_blob_size(limits.max_blob_size));
    conn.set_receive_window(VarInt::from_u64(2 * frame).unwrap_or(VarInt::MAX));
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(
        limits.max_requests_in_flight.saturating_add(1),
    ));
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

/// Bind the relay's endpoint, with the transport limits of
/// [`transport_config`].
pub async fn bind(
    net: &NetworkConfig,
    limits: &LimitsConfig,
    key: SecretKey,
) -> Result<Endpoint, EndpointError> {
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
        .transport_config(transport_config(net, limits))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// noq-proto 1.4's `MAX_CHUNKS` (`connection/assembler.rs`): more
    /// separate pieces in one stream's buffer close the connection.
    const NOQ_MAX_CHUNKS: u64 = 1024;
    /// Stream bytes in one full QUIC packet at the 1,200-byte minimum MTU,
    /// rounded down (headers, AEAD tag, STREAM frame header).
    const MIN_STREAM_BYTES_PER_PACKET: u64 = 1_150;

    #[test]
    fn stream_window_stays_far_below_the_gap_limit() {
        // Each piece needs a full packet, and a lost packet between it and
        // the next: pieces ≤ window / (2 × packet).
        let max_pieces = u64::from(STREAM_RECEIVE_WINDOW) / (2 * MIN_STREAM_BYTES_PER_PACKET);
        assert!(
            2 * max_pieces < NOQ_MAX_CHUNKS,
            "{max_pieces} pieces: less than 2x margin"
        );
        for max_blob_size in [4 * 1024 * 1024, 16 * 1024 * 1024, u32::MAX] {
            let frame = frame_window(max_frame_for_blob_size(max_blob_size));
            assert!(frame > u64::from(STREAM_RECEIVE_WINDOW));
            assert_eq!(
                stream_receive_window(frame).into_inner(),
                u64::from(STREAM_RECEIVE_WINDOW)
            );
        }
    }

    #[test]
    fn segmentation_offload_follows_the_network_config() {
        let limits = LimitsConfig::default();
        let gso = |on: bool| {
            let net = NetworkConfig {
                segmentation_offload: on,
                ..NetworkConfig::default()
            };
            format!("{:?}", transport_config(&net, &limits))
        };
        assert!(gso(true).contains("enable_segmentation_offload: true"));
        assert!(gso(false).contains("enable_segmentation_offload: false"));
        assert!(NetworkConfig::default().segmentation_offload);
    }

    #[test]
    fn small_frames_keep_a_window_of_one_frame() {
        let frame = frame_window(max_frame_for_blob_size(64 * 1024));
        assert!(frame < u64::from(STREAM_RECEIVE_WINDOW));
        assert_eq!(stream_receive_window(frame).into_inner(), frame);
    }
}
