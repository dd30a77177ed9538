//! A session with the relay (docs/protocol.md): dial, `Hello`/`Welcome`, then one
//! bidirectional stream per request, and the relay's `Notify` stream read in
//! the background into a `watch` channel of heads. Payloads here are opaque;
//! sealing and opening them is [`crate::client`]'s job.

use crate::crypto::GroupKeys;
use crate::endpoint;
use crate::error::{ClientError, Result};
use crate::relay_addr::RelayAddr;
use iroh::endpoint::{Connection, RecvStream, VarInt};
use iroh::{Endpoint, EndpointAddr, SecretKey};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_protocol::limits::HANDSHAKE_MAX_FRAME;
use sync_protocol::{
    AccessToken, Ack, CloseCode, DeviceId, Hello, HelloWithToken, MIN_PROTOCOL_VERSION, Message,
    PROTOCOL_VERSION, Pull, PullBatch, Push, PushItem, PushOk, Welcome, decode_body,
    read_frame_into, read_message, write_message,
};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

/// Default time allowed to dial the relay and complete `Hello`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a session needs.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Where the relay is.
    pub relay: RelayAddr,
    /// The group's keys (for the membership proof).
    pub keys: GroupKeys,
    /// The device's persistent iroh key.
    pub device_key: SecretKey,
    /// Optional device name sent in `Hello` (at most 64 bytes).
    pub device_name: Option<String>,
    /// Time allowed for dial + handshake.
    pub connect_timeout: Duration,
    /// An operator-issued access token, needed only to create a group on a
    /// relay in token mode: with it the `Hello` is sent as
    /// `HelloWithToken` (tag 10), without it as a plain `Hello` (which
    /// relays from before access control also understand).
    pub access_token: Option<AccessToken>,
}

/// A live session with the relay.
#[derive(Debug)]
pub struct RelaySession {
    /// Closed with the session when the session owns it.
    endpoint: Option<Endpoint>,
    relay: RelayAddr,
    /// The highest head or cursor this session has been told of.
    seen_head: Arc<AtomicU64>,
    conn: Connection,
    welcome: Welcome,
    device_id: DeviceId,
    heads: watch::Receiver<u64>,
    _notify: AbortOnDropHandle<()>,
}

impl RelaySession {
    /// Dial the relay and complete the handshake. Errors:
    /// [`ClientError::Connect`] (unreachable, timeout),
    /// [`ClientError::Relay`] (UNAUTHORIZED, UNSUPPORTED_VERSION, and for a
    /// group that does not exist yet ACCESS_TOKEN_REQUIRED,
    /// ACCESS_TOKEN_INVALID, GROUP_LIMIT_REACHED),
    /// [`ClientError::Protocol`].
    pub async fn connect(opts: &ConnectOptions) -> Result<RelaySession> {
        let addrs = opts.relay.resolve().await?;
        let endpoint = endpoint::bind(opts.device_key.clone(), addrs[0]).await?;
        // A failed attempt's endpoint is closed without waiting long for the
        // half-open connection to drain.
        let discard = |endpoint: Endpoint| async move {
            let _ = tokio::time::timeout(Duration::from_millis(100), endpoint.close()).await;
        };
        match tokio::time::timeout(
            opts.connect_timeout,
            Self::handshake(&endpoint, opts, &addrs),
        )
        .await
        {
            Ok(Ok(mut session)) => {
                session.endpoint = Some(endpoint);
                Ok(session)
            }
            Ok(Err(e)) => {
                discard(endpoint).await;
                Err(e)
            }
            Err(_) => {
                discard(endpoint).await;
                Err(ClientError::Connect {
                    addr: opts.relay.to_string(),
                    reason: format!(
                        "no answer within {:.1} s",
                        opts.connect_timeout.as_secs_f64()
                    ),
                })
            }
        }
    }

    /// Open a session over an existing endpoint (which stays open when the
    /// session closes): many sessions of one device identity share one UDP
    /// socket, e.g. for load generators. `opts.device_key` is ignored: the
    /// endpoint's key is the device identity.
    pub async fn connect_on(endpoint: &Endpoint, opts: &ConnectOptions) -> Result<RelaySession> {
        let addrs = opts.relay.resolve().await?;
        tokio::time::timeout(
            opts.connect_timeout,
            Self::handshake(endpoint, opts, &addrs),
        )
        .await
        .map_err(|_| ClientError::Connect {
            addr: opts.relay.to_string(),
            reason: format!(
                "no answer within {:.1} s",
                opts.connect_timeout.as_secs_f64()
            ),
        })?
    }

    async fn handshake(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        addrs: &[std::net::SocketAddr],
    ) -> Result<RelaySession> {
        let mut addr = EndpointAddr::new(opts.relay.node_id);
        for a in addrs {
            addr = addr.with_ip_addr(*a);
        }
        let conn = endpoint
            .connect(addr, sync_protocol::ALPN)
            .await
            .map_err(|e| ClientError::Connect {
                addr: opts.relay.to_string(),
                reason: dial_failure(&e),
            })?;
        let relay_id = DeviceId(*opts.relay.node_id.as_bytes());
        let device_id = DeviceId(*endpoint.id().as_bytes());
        let hello = Hello {
            version: PROTOCOL_VERSION,
            group_id: opts.keys.group_id(),
            proof: opts.keys.proof(&relay_id, &device_id),
            device_name: opts.device_name.clone(),
        };
        let hello = match opts.access_token {
            Some(access_token) => Message::HelloWithToken(HelloWithToken {
                hello,
                access_token,
            }),
            None => Message::Hello(hello),
        };
        let mut recv = send_request(&conn, &hello, HANDSHAKE_MAX_FRAME).await?;
        let welcome = match read_message(&mut recv, HANDSHAKE_MAX_FRAME).await? {
            Some(Message::Welcome(w)) => w,
            Some(Message::Error(e)) => return Err(ClientError::Relay(e)),
            Some(other) => {
                return Err(ClientError::Protocol(format!(
                    "expected Welcome, got {}",
                    other.kind()
                )));
            }
            None => {
                return Err(ClientError::Protocol(
                    "relay closed the handshake stream".into(),
                ));
            }
        };
        if welcome.relay_id != relay_id {
            return Err(ClientError::Protocol("Welcome names another relay".into()));
        }
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&welcome.version) {
            return Err(ClientError::Protocol(format!(
                "the relay's Welcome speaks protocol version {}, not {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                welcome.version
            )));
        }
        let (heads_tx, heads) = watch::channel(welcome.head_cursor);
        let seen_head = Arc::new(AtomicU64::new(welcome.head_cursor));
        let notify_conn = conn.clone();
        let notify_seen = Arc::clone(&seen_head);
        let notify = AbortOnDropHandle::new(tokio::spawn(async move {
            read_notify(notify_conn, heads_tx, &notify_seen).await;
        }));
        Ok(RelaySession {
            endpoint: None,
            relay: opts.relay.clone(),
            seen_head,
            conn,
            welcome,
            device_id,
            heads,
            _notify: notify,
        })
    }

    /// The relay's `Welcome` (limits, head at connect time).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether the session speaks protocol version 2 or later: the relay
    /// does not send this device's own blobs back, only an empty-payload
    /// marker where an answer's page ends with one (docs/protocol.md
    /// "Version 2: no echo").
    pub fn no_echo(&self) -> bool {
        self.welcome.version >= 2
    }

    /// The relay this session is with.
    pub fn relay(&self) -> &RelayAddr {
        &self.relay
    }

    /// The highest head of the group this session has been told of: the
    /// `Welcome` head, `Notify`, `PushOk` and `PullBatch` heads, and the
    /// cursors of pulled blobs. An honest relay's head never decreases, so
    /// every cursor learnt from this session is at most this.
    pub fn seen_head(&self) -> u64 {
        self.seen_head.load(Ordering::SeqCst)
    }

    /// This device's node id.
    pub fn device_id(&self) -> DeviceId {
        self.device_id
    }

    /// Round-trip time of the QUIC path, if measured.
    pub fn rtt(&self) -> Option<Duration> {
        self.conn.paths().iter().find_map(|p| self.conn.rtt(p.id()))
    }

    /// The group's head as NOTIFY reports it (starts at the Welcome head).
    /// `changed()` fails once the connection is gone.
    pub fn heads(&self) -> watch::Receiver<u64> {
        self.heads.clone()
    }

    /// Push one batch (at most `max_batch` items, frame at most `max_frame`).
    /// Errors: [`ClientError::Relay`] (e.g. BLOB_TOO_LARGE,
    /// GROUP_QUOTA_EXCEEDED; nothing stored), [`ClientError::ConnectionLost`]
    /// (retry with the same blob ids), [`ClientError::Protocol`].
    pub async fn push(&self, items: Vec<PushItem>) -> Result<PushOk> {
        let ids: Vec<_> = items.iter().map(|i| i.blob_id).collect();
        let mut recv = send_request(
            &self.conn,
            &Message::Push(Push { items }),
            self.welcome.max_frame,
        )
        .await?;
        match read_message(&mut recv, self.welcome.max_frame).await? {
            Some(Message::PushOk(ok)) => {
                let matches = ok.results.len() == ids.len()
                    && ok.results.iter().zip(&ids).all(|(r, id)| r.blob_id == *id);
                if !matches {
                    return Err(ClientError::Protocol(
                        "PushOk does not match the pushed items".into(),
                    ));
                }
                self.seen_head.fetch_max(ok.head, Ordering::SeqCst);
                Ok(ok)
            }
            other => Err(unexpected(other, "PushOk")),
        }
    }

    /// Ask for blobs after `after`; read the answer with
    /// [`PullResponse::next_batch`].
    pub async fn pull(&self, after: u64, limit: u32) -> Result<PullResponse> {
        let recv = send_request(
            &self.conn,
            &Message::Pull(Pull { after, limit }),
            self.welcome.max_frame,
        )
        .await?;
        Ok(PullResponse {
            recv,
            seen_head: Arc::clone(&self.seen_head),
            max_frame: self.welcome.max_frame,
            done: false,
            buf: Vec::new(),
        })
    }

    /// Tell the relay this device holds everything up to `cursor`.
    pub async fn ack(&self, cursor: u64) -> Result<u64> {
        let mut recv = send_request(
            &self.conn,
            &Message::Ack(Ack { cursor }),
            self.welcome.max_frame,
        )
        .await?;
        match read_message(&mut recv, self.welcome.max_frame).await? {
            Some(Message::AckOk(ok)) => Ok(ok.cursor),
            other => Err(unexpected(other, "AckOk")),
        }
    }

    /// Close the session cleanly (close code 0) and release the endpoint
    /// (waits at most 1 s for the close to be sent).
    pub async fn close(&self) {
        self.close_connection();
        if let Some(endpoint) = &self.endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.close()).await;
        }
    }

    /// Close the connection (close code 0) without waiting; the endpoint,
    /// if the session owns one, stays open (see [`RelaySession::endpoint`]).
    pub fn close_connection(&self) {
        self.conn
            .close(VarInt::from_u32(CloseCode::Normal.as_u32()), b"bye");
    }

    /// The endpoint this session owns (bound for it by
    /// [`RelaySession::connect`] or handed over with
    /// [`RelaySession::owning`]), to close when done.
    pub fn endpoint(&self) -> Option<Endpoint> {
        self.endpoint.clone()
    }

    /// Make the session own `endpoint` (the one it was opened on with
    /// [`RelaySession::connect_on`]).
    pub fn owning(mut self, endpoint: Endpoint) -> RelaySession {
        self.endpoint = Some(endpoint);
        self
    }

    /// Resolves once the relay has sent nothing at all (not even an ACK of
    /// a keep-alive) for `stall`: the path is dead even if QUIC has not
    /// timed out yet. Never resolves on a live connection.
    pub async fn stalled(&self, stall: Duration) {
        let tick = (stall / 5).max(Duration::from_millis(50));
        let mut last = self.conn.stats().udp_rx.bytes;
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(tick).await;
            let now = self.conn.stats().udp_rx.bytes;
            if now != last {
                last = now;
                quiet_since = tokio::time::Instant::now();
            } else if quiet_since.elapsed() >= stall {
                return;
            }
        }
    }

    /// True once the QUIC connection is closed or lost.
    pub fn is_closed(&self) -> bool {
        self.conn.close_reason().is_some()
    }
}

/// What a relay that refused a connection before its TLS handshake means,
/// for people (docs/client.md "Errors"; the relay's side: docs/deploy.md
/// "What one peer can cost the relay").
pub const REFUSED_BEFORE_HANDSHAKE: &str = "the relay refused the connection before its \
     handshake: too many new connections from this address, or too many connections waiting \
     to be admitted; trying again shortly usually works";

/// Why a dial failed, in words. A relay refuses a connection before its
/// handshake with QUIC's transport error CONNECTION_REFUSED, which carries
/// no reason the relay could choose (QUIC allows only transport errors
/// before the handshake, and an unauthenticated reason could be forged):
/// it is recognised by its code and explained by
/// [`REFUSED_BEFORE_HANDSHAKE`]. Anything else is iroh's own message.
pub fn dial_failure(err: &iroh::endpoint::ConnectError) -> String {
    use iroh::endpoint::{ConnectError, ConnectingError, ConnectionError, TransportErrorCode};
    let closed = match err {
        ConnectError::Connecting {
            source: ConnectingError::ConnectionError { source, .. },
            ..
        }
        | ConnectError::Connection { source, .. } => Some(source),
        _ => None,
    };
    match closed {
        Some(ConnectionError::ConnectionClosed(close))
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED =>
        {
            REFUSED_BEFORE_HANDSHAKE.to_string()
        }
        _ => err.to_string(),
    }
}

/// The streamed answer to a `Pull`.
#[derive(Debug)]
pub struct PullResponse {
    recv: RecvStream,
    seen_head: Arc<AtomicU64>,
    max_frame: u32,
    done: bool,
    /// Reused for every frame of the answer.
    buf: Vec<u8>,
}

impl PullResponse {
    /// The next `PullBatch`, or `None` after the last one.
    /// Errors: [`ClientError::Relay`], [`ClientError::ConnectionLost`],
    /// [`ClientError::Protocol`].
    pub async fn next_batch(&mut self) -> Result<Option<PullBatch>> {
        if self.done {
            return Ok(None);
        }
        let msg = if read_frame_into(&mut self.recv, self.max_frame, &mut self.buf).await? {
            Some(decode_body(&self.buf).map_err(sync_protocol::FrameError::from)?)
        } else {
            None
        };
        match msg {
            Some(Message::PullBatch(batch)) => {
                self.done = !batch.more;
                let last = batch.blobs.iter().map(|b| b.cursor).max().unwrap_or(0);
                self.seen_head
                    .fetch_max(batch.head.max(last), Ordering::SeqCst);
                Ok(Some(batch))
            }
            other => {
                self.done = true;
                Err(unexpected(other, "PullBatch"))
            }
        }
    }
}

fn unexpected(got: Option<Message>, expected: &str) -> ClientError {
    match got {
        Some(Message::Error(e)) => ClientError::Relay(e),
        Some(other) => ClientError::Protocol(format!("expected {expected}, got {}", other.kind())),
        None => {
            ClientError::ConnectionLost(format!("the relay ended the stream before {expected}"))
        }
    }
}

async fn send_request(conn: &Connection, msg: &Message, max_frame: u32) -> Result<RecvStream> {
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| ClientError::ConnectionLost(e.to_string()))?;
    write_message(&mut send, msg, max_frame).await?;
    send.finish()
        .map_err(|e| ClientError::ConnectionLost(e.to_string()))?;
    Ok(recv)
}

async fn read_notify(conn: Connection, heads: watch::Sender<u64>, seen: &AtomicU64) {
    let Ok(mut uni) = conn.accept_uni().await else {
        return;
    };
    while let Ok(Some(msg)) = read_message(&mut uni, HANDSHAKE_MAX_FRAME).await {
        if let Message::Notify(n) = msg {
            seen.fetch_max(n.head, Ordering::SeqCst);
            heads.send_if_modified(|h| {
                if n.head > *h {
                    *h = n.head;
                    true
                } else {
                    false
                }
            });
        }
    }
    // Dropping `heads` here tells subscribers the session is gone.
}
