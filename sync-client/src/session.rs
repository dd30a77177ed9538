//! A session with the relay (docs/protocol.md): dial, `Hello`/`Welcome`, then one
//! bidirectional stream per request, and the relay's `Notify` stream read in
//! the background into a `watch` channel of heads. Payloads here are opaque;
//! sealing and opening them is [`crate::client`]'s job.

use crate::crypto::GroupKeys;
use crate::endpoint;
use crate::error::{ClientError, Result};
use crate::relay_addr::RelayAddr;
use iroh::endpoint::{Connection, ConnectionError, RecvStream, VarInt};
use iroh::{Endpoint, EndpointAddr, SecretKey};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use sync_protocol::limits::{HANDSHAKE_MAX_FRAME, NOTIFY_MAX_FRAME};
use sync_protocol::{
    AccessToken, Ack, CloseCode, CloseGroup, CloseGroupOk, Deliver, DeviceId, ErrorCode,
    FALLBACK_PROTOCOL_VERSION, Hello, HelloWithToken, INLINE_PROTOCOL_VERSION, KeepList,
    MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, Pull, PullBatch, PushItem, PushOk, Welcome,
    decode_body, read_frame_into, read_message, write_message, write_push,
};
use tokio::sync::{mpsc, watch};
use tokio_util::task::AbortOnDropHandle;

/// Inline deliveries (`Deliver` frames) held for the follower, at most:
/// as many as a relay may have in flight to a session
/// ([`sync_protocol::limits::INLINE_MAX_FRAMES`], 16; each at most
/// `NOTIFY_MAX_FRAME`, so ≤ 1.1 MiB). A further one arriving while these
/// wait is dropped, and its head still wakes the follower, which pulls
/// (docs/protocol.md "Version 3: inline delivery").
pub const DELIVERIES_QUEUED: usize = sync_protocol::limits::INLINE_MAX_FRAMES;

/// Default time allowed to dial the relay and complete `Hello`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most dials one [`RelaySession::connect`] makes (docs/client.md
/// "Dialing").
pub const MAX_DIALS: u32 = 4;

/// Time the QUIC handshake of dial number `dial` (1-based) may take before
/// [`RelaySession::connect`] abandons it and dials again from a fresh
/// endpoint: 5 s, then 10 s, 20 s (a later dial waits for what is left
/// of `connect_timeout`). 5 s is above the slowest honest handshake
/// measured on a 2-core machine at load 18 (3.8 s in 9,000 dials;
/// BENCHMARKS.md "Unanswered dials"), and each dial waits twice as long
/// as the one before, so a slow but live path still gets through.
pub fn dial_attempt_timeout(dial: u32) -> Duration {
    Duration::from_secs(5).saturating_mul(1u32 << dial.saturating_sub(1).min(8))
}

/// The error of a connect that got no answer in time.
fn no_answer(opts: &ConnectOptions, dials: u32) -> ClientError {
    ClientError::Connect {
        addr: opts.relay.to_string(),
        reason: format!(
            "no answer within {:.1} s ({dials} dial{})",
            opts.connect_timeout.as_secs_f64(),
            if dials == 1 { "" } else { "s" }
        ),
    }
}

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
    /// Dials it took ([`RelaySession::dials`]).
    dials: u32,
    relay: RelayAddr,
    /// The highest head or cursor this session has been told of.
    seen_head: Arc<AtomicU64>,
    conn: Connection,
    welcome: Welcome,
    device_id: DeviceId,
    heads: watch::Receiver<u64>,
    /// `Deliver` frames read from the notification stream, oldest first.
    deliveries: tokio::sync::Mutex<mpsc::Receiver<Deliver>>,
    _notify: AbortOnDropHandle<()>,
}

impl RelaySession {
    /// Dial the relay and complete the handshake, on an endpoint of its
    /// own. Errors:
    /// [`ClientError::Connect`] (unreachable, timeout),
    /// [`ClientError::Relay`] (UNAUTHORIZED, UNSUPPORTED_VERSION, and for a
    /// group that does not exist yet ACCESS_TOKEN_REQUIRED,
    /// ACCESS_TOKEN_INVALID, GROUP_LIMIT_REACHED),
    /// [`ClientError::Protocol`].
    ///
    /// A dial whose QUIC handshake gets no answer within
    /// [`dial_attempt_timeout`] is abandoned and made again from a fresh
    /// endpoint (a new UDP socket, so a new source port and connection
    /// id), at most [`MAX_DIALS`] dials within `opts.connect_timeout`
    /// (docs/client.md "Dialing"; why: docs/deploy.md "Unanswered
    /// dials"). [`RelaySession::dials`] tells how many it took.
    pub async fn connect(opts: &ConnectOptions) -> Result<RelaySession> {
        // A failed dial's endpoint is closed without waiting long for the
        // half-open connection to drain.
        Self::connect_discarding(opts, |endpoint| {
            Box::pin(async move {
                let _ = tokio::time::timeout(Duration::from_millis(100), endpoint.close()).await;
            })
        })
        .await
    }

    /// [`RelaySession::connect`], handing the endpoint of each failed
    /// dial to `discard` (awaited) to be closed.
    pub(crate) async fn connect_discarding(
        opts: &ConnectOptions,
        discard: impl Fn(Endpoint) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
    ) -> Result<RelaySession> {
        match Self::connect_version(opts, &discard, PROTOCOL_VERSION).await {
            Err(e) if older_relay(&e) => {
                tracing::info!(
                    relay = %opts.relay,
                    "the relay does not speak protocol version {PROTOCOL_VERSION}; \
                     speaking {FALLBACK_PROTOCOL_VERSION} (no inline delivery)"
                );
                Self::connect_version(opts, &discard, FALLBACK_PROTOCOL_VERSION).await
            }
            other => other,
        }
    }

    /// [`RelaySession::connect_discarding`] speaking `version`.
    async fn connect_version(
        opts: &ConnectOptions,
        discard: &impl Fn(Endpoint) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
        version: u16,
    ) -> Result<RelaySession> {
        let addrs = opts.relay.resolve().await?;
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let mut dials = 0;
        loop {
            dials += 1;
            let endpoint = endpoint::bind(opts.device_key.clone(), addrs[0]).await?;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = if dials < MAX_DIALS {
                dial_attempt_timeout(dials).min(left)
            } else {
                left
            };
            let conn =
                match tokio::time::timeout(attempt, Self::dial(&endpoint, opts, &addrs)).await {
                    Ok(Ok(conn)) => conn,
                    // An answer (a refusal, a TLS failure) is not a lost dial.
                    Ok(Err(e)) => {
                        discard(endpoint).await;
                        return Err(e);
                    }
                    Err(_) => {
                        discard(endpoint).await;
                        if tokio::time::Instant::now() < deadline {
                            tracing::info!(
                                relay = %opts.relay,
                                dial = dials,
                                waited_ms = attempt.as_millis() as u64,
                                "no answer to the dial; dialing again from a fresh endpoint"
                            );
                            continue;
                        }
                        return Err(no_answer(opts, dials));
                    }
                };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            return match tokio::time::timeout(left, Self::hello(&endpoint, conn, opts, version))
                .await
            {
                Ok(Ok(mut session)) => {
                    session.endpoint = Some(endpoint);
                    session.dials = dials;
                    Ok(session)
                }
                Ok(Err(e)) => {
                    discard(endpoint).await;
                    Err(e)
                }
                Err(_) => {
                    discard(endpoint).await;
                    Err(no_answer(opts, dials))
                }
            };
        }
    }

    /// Open a session over an existing endpoint (which stays open when the
    /// session closes): many sessions of one device identity share one UDP
    /// socket, e.g. for load generators. `opts.device_key` is ignored: the
    /// endpoint's key is the device identity. One dial only: it cannot be
    /// made again from a fresh endpoint, as [`RelaySession::connect`]'s are.
    /// Like [`RelaySession::connect`], a relay from before version 3 is
    /// spoken to in version 2 (a second dial).
    pub async fn connect_on(endpoint: &Endpoint, opts: &ConnectOptions) -> Result<RelaySession> {
        let addrs = opts.relay.resolve().await?;
        tokio::time::timeout(opts.connect_timeout, async {
            let conn = Self::dial(endpoint, opts, &addrs).await?;
            match Self::hello(endpoint, conn, opts, PROTOCOL_VERSION).await {
                Err(e) if older_relay(&e) => {
                    let conn = Self::dial(endpoint, opts, &addrs).await?;
                    Self::hello(endpoint, conn, opts, FALLBACK_PROTOCOL_VERSION).await
                }
                other => other,
            }
        })
        .await
        .map_err(|_| no_answer(opts, 1))?
    }

    /// The QUIC (and TLS) handshake with the relay.
    async fn dial(
        endpoint: &Endpoint,
        opts: &ConnectOptions,
        addrs: &[std::net::SocketAddr],
    ) -> Result<Connection> {
        let mut addr = EndpointAddr::new(opts.relay.node_id);
        for a in addrs {
            addr = addr.with_ip_addr(*a);
        }
        endpoint
            .connect(addr, sync_protocol::ALPN)
            .await
            .map_err(|e| ClientError::Connect {
                addr: opts.relay.to_string(),
                reason: dial_failure(&e),
            })
    }

    /// `Hello` / `Welcome` on a dialed connection.
    async fn hello(
        endpoint: &Endpoint,
        conn: Connection,
        opts: &ConnectOptions,
        version: u16,
    ) -> Result<RelaySession> {
        let relay_id = DeviceId(*opts.relay.node_id.as_bytes());
        let device_id = DeviceId(*endpoint.id().as_bytes());
        let hello = Hello {
            version,
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
            Some(Message::Error(e)) => return Err(ClientError::from_relay(e)),
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
        if !(MIN_PROTOCOL_VERSION..=version).contains(&welcome.version) {
            return Err(ClientError::Protocol(format!(
                "the relay's Welcome speaks protocol version {}, not {MIN_PROTOCOL_VERSION} to {version}",
                welcome.version
            )));
        }
        let (heads_tx, heads) = watch::channel(welcome.head_cursor);
        let (deliveries_tx, deliveries) = mpsc::channel(DELIVERIES_QUEUED);
        let seen_head = Arc::new(AtomicU64::new(welcome.head_cursor));
        let notify_conn = conn.clone();
        let notify_seen = Arc::clone(&seen_head);
        let max_frame = if welcome.version >= INLINE_PROTOCOL_VERSION {
            NOTIFY_MAX_FRAME
        } else {
            HANDSHAKE_MAX_FRAME
        };
        let notify = AbortOnDropHandle::new(tokio::spawn(async move {
            read_notify(
                notify_conn,
                max_frame,
                heads_tx,
                deliveries_tx,
                &notify_seen,
            )
            .await;
        }));
        Ok(RelaySession {
            endpoint: None,
            dials: 1,
            relay: opts.relay.clone(),
            seen_head,
            conn,
            welcome,
            device_id,
            heads,
            deliveries: tokio::sync::Mutex::new(deliveries),
            _notify: notify,
        })
    }

    /// How many dials opening this session took: 1, or more when
    /// [`RelaySession::connect`] abandoned unanswered dials.
    pub fn dials(&self) -> u32 {
        self.dials
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

    /// Whether the relay may send new blobs inline on this session
    /// (protocol version 3, docs/protocol.md "Version 3: inline delivery").
    pub fn inline(&self) -> bool {
        self.welcome.version >= INLINE_PROTOCOL_VERSION
    }

    /// The next `Deliver` the relay sent (oldest first); waits for one.
    /// `None` once the session's notification stream ended. Cancel-safe.
    pub async fn next_delivery(&self) -> Option<Deliver> {
        self.deliveries.lock().await.recv().await
    }

    /// A `Deliver` already received, if any, without waiting.
    pub fn try_delivery(&self) -> Option<Deliver> {
        self.deliveries.try_lock().ok()?.try_recv().ok()
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
        self.push_slice(&items).await
    }

    /// As [`RelaySession::push`], borrowing the items: the frame is written
    /// from them without a copy ([`sync_protocol::write_push`]), so a
    /// caller that may send them again (a retry) keeps one copy only.
    pub async fn push_slice(&self, items: &[PushItem]) -> Result<PushOk> {
        self.push_inner(items)
            .await
            .map_err(|e| group_closed_or(&self.conn, e))
    }

    async fn push_inner(&self, items: &[PushItem]) -> Result<PushOk> {
        let ids: Vec<_> = items.iter().map(|i| i.blob_id).collect();
        let (mut send, mut recv) = self
            .conn
            .open_bi()
            .await
            .map_err(|e| ClientError::ConnectionLost(e.to_string()))?;
        write_push(&mut send, items, self.welcome.max_frame).await?;
        send.finish()
            .map_err(|e| ClientError::ConnectionLost(e.to_string()))?;
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
        .await
        .map_err(|e| group_closed_or(&self.conn, e))?;
        Ok(PullResponse {
            conn: self.conn.clone(),
            recv,
            seen_head: Arc::clone(&self.seen_head),
            max_frame: self.welcome.max_frame,
            done: false,
            buf: Vec::new(),
        })
    }

    /// Tell the relay this device holds everything up to `cursor`.
    pub async fn ack(&self, cursor: u64) -> Result<u64> {
        let answer = async {
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
        };
        answer.await.map_err(|e| group_closed_or(&self.conn, e))
    }

    /// Close this session's group keeping `keep` (docs/protocol.md
    /// §CloseGroup): the relay refuses every device not in `keep`
    /// (GROUP_CLOSED); the devices kept may pull and push until the grace
    /// ends. Answers the close recorded: this one
    /// (`applied = true`), or an earlier one that stands (`applied =
    /// false`, its own keep list). If `keep` does not name this device, the
    /// relay ends this session once it has answered. Errors:
    /// [`ClientError::GroupClosed`] (closed already and this device not
    /// kept, or the grace ended), [`ClientError::Relay`],
    /// [`ClientError::ConnectionLost`], [`ClientError::Protocol`].
    pub async fn close_group(&self, keep: KeepList) -> Result<CloseGroupOk> {
        let answer = async {
            let mut recv = send_request(
                &self.conn,
                &Message::CloseGroup(CloseGroup { keep }),
                self.welcome.max_frame,
            )
            .await?;
            match read_message(&mut recv, self.welcome.max_frame).await? {
                Some(Message::CloseGroupOk(ok)) => Ok(ok),
                other => Err(unexpected(other, "CloseGroupOk")),
            }
        };
        answer.await.map_err(|e| group_closed_or(&self.conn, e))
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
    /// To tell a session ended by a close of its group (close code 9).
    conn: Connection,
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
        let conn = self.conn.clone();
        self.next_batch_inner()
            .await
            .map_err(|e| group_closed_or(&conn, e))
    }

    async fn next_batch_inner(&mut self) -> Result<Option<PullBatch>> {
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
        Some(Message::Error(e)) => ClientError::from_relay(e),
        Some(other) => ClientError::Protocol(format!("expected {expected}, got {}", other.kind())),
        None => {
            ClientError::ConnectionLost(format!("the relay ended the stream before {expected}"))
        }
    }
}

/// `err`, or [`ClientError::GroupClosed`] when the relay closed the
/// connection with close code 9 (the group was closed without this device).
fn group_closed_or(conn: &Connection, err: ClientError) -> ClientError {
    match conn.close_reason() {
        Some(ConnectionError::ApplicationClosed(close))
            if close.error_code.into_inner() == u64::from(CloseCode::GroupClosed.as_u32()) =>
        {
            ClientError::GroupClosed(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => err,
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

/// Whether `e` is an older relay's answer to a version it does not speak.
fn older_relay(e: &ClientError) -> bool {
    e.relay_code() == Some(ErrorCode::UnsupportedVersion)
}

/// Read the relay's notification stream: each `Notify` head, and each
/// `Deliver`'s, into `heads`; each `Deliver` also into `deliveries`
/// first (dropped when [`DELIVERIES_QUEUED`] already wait: its head then
/// makes the follower pull).
async fn read_notify(
    conn: Connection,
    max_frame: u32,
    heads: watch::Sender<u64>,
    deliveries: mpsc::Sender<Deliver>,
    seen: &AtomicU64,
) {
    let Ok(mut uni) = conn.accept_uni().await else {
        return;
    };
    while let Ok(Some(msg)) = read_message(&mut uni, max_frame).await {
        let head = match msg {
            Message::Notify(n) => n.head,
            Message::Deliver(d) => {
                let head = d.head;
                let _ = deliveries.try_send(d);
                head
            }
            _ => continue,
        };
        seen.fetch_max(head, Ordering::SeqCst);
        heads.send_if_modified(|h| {
            if head > *h {
                *h = head;
                true
            } else {
                false
            }
        });
    }
    // Dropping `heads` here tells subscribers the session is gone.
}
