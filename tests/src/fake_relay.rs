//! A scriptable fake relay, for tests of what a relay that cheats can make a
//! device do. It speaks the real protocol (`sync-protocol` frames over an
//! iroh endpoint on loopback, `Hello`/`Welcome`, one stream per request,
//! `Notify`), so a real `sync-cli` or `SyncClient` connects to it as to any
//! relay (its address is [`FakeRelay::address`]).
//!
//! Two modes:
//! - **man in the middle** ([`FakeRelay::forwarding`]): each device session
//!   is relayed to a real relay over a session of its own (as a member of
//!   the group: the test hands over the group keys, as a cheating relay
//!   operator would not have them but a test may); blobs the real relay
//!   reports as sent by that upstream session are relabelled with the
//!   device's own node id, so devices see each other as they would directly;
//! - **alone** ([`FakeRelay::alone`]): a made-up `Welcome`, and every answer
//!   comes from the script (an `Ack` is acknowledged, anything else not
//!   scripted gets INTERNAL).
//!
//! In both, a [`Script`] sees every step and may rewrite it: the `Welcome`,
//! each request (forward it, forward another, or answer it — with a fixed
//! list of frames or an endless stream), and each frame of the answers the
//! real relay sends. A stream answer stops when the device stops reading;
//! [`FakeRelay::frames_sent`] tells how far it got.

use iroh::endpoint::{Connection, RecvStream, SendStream, presets};
use iroh::{Endpoint, RelayMode, SecretKey};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use sync_client::{ClientError, ConnectOptions, GroupKeys, RelayAddr, RelaySession};
use sync_protocol::limits::{
    DEFAULT_MAX_BATCH, DEFAULT_MAX_BLOB_SIZE, HANDSHAKE_MAX_FRAME, MAX_FRAME_CEILING,
    NOTIFY_MAX_FRAME, max_frame_for_blob_size,
};
use sync_protocol::{
    AckOk, DeviceId, ErrorCode, ErrorMsg, Message, Notify, PROTOCOL_VERSION, PullBatch, Welcome,
    read_message, write_message,
};

/// What to do with a request from a device.
pub enum Reply {
    /// Forward it to the real relay as it is.
    Forward,
    /// Forward this request instead.
    ForwardAs(Message),
    /// Answer with these frames, then end the stream.
    Answer(Vec<Message>),
    /// Answer with the frames of this iterator, for as long as the device
    /// reads them (then end the stream).
    Stream(Box<dyn Iterator<Item = Message> + Send>),
}

type WelcomeHook = dyn Fn(&mut Welcome) + Send + Sync;
type RequestHook = dyn Fn(DeviceId, &Message) -> Reply + Send + Sync;
type ResponseHook = dyn Fn(&Message, Message) -> Vec<Message> + Send + Sync;
type NotifyHook = dyn Fn(DeviceId) -> Vec<Message> + Send + Sync;

/// What the fake relay does at each step; every hook defaults to passing
/// things through unchanged.
#[derive(Clone, Default)]
pub struct Script {
    welcome: Option<Arc<WelcomeHook>>,
    request: Option<Arc<RequestHook>>,
    response: Option<Arc<ResponseHook>>,
    notify: Option<Arc<NotifyHook>>,
    max_version: Option<u16>,
}

impl Script {
    /// Pass everything through.
    pub fn new() -> Script {
        Script::default()
    }

    /// Rewrite the `Welcome` each device gets.
    pub fn on_welcome(mut self, f: impl Fn(&mut Welcome) + Send + Sync + 'static) -> Script {
        self.welcome = Some(Arc::new(f));
        self
    }

    /// Decide what to do with each request (given the device's node id).
    pub fn on_request(
        mut self,
        f: impl Fn(DeviceId, &Message) -> Reply + Send + Sync + 'static,
    ) -> Script {
        self.request = Some(Arc::new(f));
        self
    }

    /// Rewrite each frame of the real relay's answer to a request (return
    /// the frames to send instead: none drops it).
    pub fn on_response(
        mut self,
        f: impl Fn(&Message, Message) -> Vec<Message> + Send + Sync + 'static,
    ) -> Script {
        self.response = Some(Arc::new(f));
        self
    }

    /// Frames to write on each device's notification stream right after
    /// its `Welcome` (e.g. forged `Deliver`s); alone mode only.
    pub fn on_notify_stream(
        mut self,
        f: impl Fn(DeviceId) -> Vec<Message> + Send + Sync + 'static,
    ) -> Script {
        self.notify = Some(Arc::new(f));
        self
    }

    /// Answer a `Hello` of a version above `max` with UNSUPPORTED_VERSION
    /// and close, as a relay from before that version does.
    pub fn max_version(mut self, max: u16) -> Script {
        self.max_version = Some(max);
        self
    }
}

/// Where forwarded sessions go.
#[derive(Clone)]
struct Upstream {
    relay: RelayAddr,
    keys: GroupKeys,
}

struct Shared {
    id: DeviceId,
    upstream: Option<Upstream>,
    script: Script,
    /// Upstream identity per device (stable across its reconnects), and
    /// the reverse map for relabelling senders.
    identities: Mutex<HashMap<DeviceId, SecretKey>>,
    devices: Mutex<HashMap<DeviceId, DeviceId>>,
    requests: AtomicU64,
    frames: AtomicU64,
}

/// A running fake relay; stops when dropped.
pub struct FakeRelay {
    /// `NODE_ID@127.0.0.1:PORT`, for `Device::set_relay` or `RelayAddr`.
    pub address: String,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    accept: tokio::task::JoinHandle<()>,
}

impl FakeRelay {
    /// A fake relay in front of the real relay at `relay` (`NODE_ID@HOST:PORT`),
    /// for the group of `keys`.
    pub async fn forwarding(relay: &str, keys: GroupKeys, script: Script) -> FakeRelay {
        let upstream = Upstream {
            relay: relay.parse().expect("relay address"),
            keys,
        };
        Self::start(Some(upstream), script).await
    }

    /// A fake relay with no real relay behind it: the script answers.
    pub async fn alone(script: Script) -> FakeRelay {
        Self::start(None, script).await
    }

    async fn start(upstream: Option<Upstream>, script: Script) -> FakeRelay {
        let endpoint = Endpoint::builder(presets::Minimal)
            .relay_mode(RelayMode::Disabled)
            .clear_address_lookup()
            .clear_ip_transports()
            .bind_addr("127.0.0.1:0".parse::<SocketAddr>().unwrap())
            .expect("bind address")
            .alpns(vec![sync_protocol::ALPN.to_vec()])
            .bind()
            .await
            .expect("bind the fake relay's endpoint");
        let address = format!("{}@{}", endpoint.id(), endpoint.bound_sockets()[0]);
        let shared = Arc::new(Shared {
            id: DeviceId(*endpoint.id().as_bytes()),
            upstream,
            script,
            identities: Mutex::new(HashMap::new()),
            devices: Mutex::new(HashMap::new()),
            requests: AtomicU64::new(0),
            frames: AtomicU64::new(0),
        });
        let ep = endpoint.clone();
        let sh = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            let mut sessions = tokio::task::JoinSet::new();
            while let Some(incoming) = ep.accept().await {
                let sh = Arc::clone(&sh);
                sessions.spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve(sh, conn).await;
                    }
                });
            }
        });
        FakeRelay {
            address,
            shared,
            endpoint,
            accept,
        }
    }

    /// Requests received from devices so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Answer frames sent to devices so far.
    pub fn frames_sent(&self) -> u64 {
        self.shared.frames.load(Ordering::SeqCst)
    }

    /// Close the endpoint cleanly.
    pub async fn close(self) {
        self.accept.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.endpoint.close()).await;
    }
}

impl Drop for FakeRelay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The `Welcome` of a relay with default limits and an empty group.
pub fn default_welcome(relay_id: DeviceId) -> Welcome {
    Welcome {
        version: PROTOCOL_VERSION,
        relay_id,
        head_cursor: 0,
        max_blob_size: DEFAULT_MAX_BLOB_SIZE,
        max_frame: max_frame_for_blob_size(DEFAULT_MAX_BLOB_SIZE),
        max_batch: DEFAULT_MAX_BATCH,
        default_ttl_s: 3600,
        max_ttl_s: 86_400,
    }
}

async fn serve(shared: Arc<Shared>, conn: Connection) {
    let device = DeviceId(*conn.remote_id().as_bytes());
    let Ok((mut send, mut recv)) = conn.accept_bi().await else {
        return;
    };
    let Ok(Some(Message::Hello(hello))) = read_message(&mut recv, HANDSHAKE_MAX_FRAME).await else {
        return;
    };
    if let Some(max) = shared.script.max_version
        && hello.version > max
    {
        let error = ErrorMsg::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {} is not supported", hello.version),
        );
        let _ = write_message(&mut send, &Message::Error(error), HANDSHAKE_MAX_FRAME).await;
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
        conn.close(4u32.into(), b"unsupported version");
        return;
    }
    let version = hello.version;
    let upstream = match &shared.upstream {
        Some(up) => match open_upstream(&shared, up, device, hello.device_name).await {
            Ok(session) => Some(Arc::new(session)),
            Err(e) => {
                let error = match e {
                    ClientError::Relay(e) => e,
                    other => ErrorMsg::new(ErrorCode::Internal, other.to_string()),
                };
                let _ = write_message(&mut send, &Message::Error(error), HANDSHAKE_MAX_FRAME).await;
                let _ = send.finish();
                conn.closed().await;
                return;
            }
        },
        None => None,
    };
    let mut welcome = match &upstream {
        Some(s) => s.welcome().clone(),
        None => default_welcome(shared.id),
    };
    welcome.relay_id = shared.id;
    welcome.version = welcome.version.min(version);
    if let Some(hook) = &shared.script.welcome {
        hook(&mut welcome);
    }
    if write_message(&mut send, &Message::Welcome(welcome), HANDSHAKE_MAX_FRAME)
        .await
        .is_err()
    {
        return;
    }
    let _ = send.finish();
    let mut tasks = tokio::task::JoinSet::new();
    if let Some(session) = &upstream {
        tasks.spawn(forward_notify(conn.clone(), session.heads()));
    } else if let Some(hook) = &shared.script.notify {
        let frames = hook(device);
        let conn = conn.clone();
        tasks.spawn(async move {
            if let Ok(mut uni) = conn.open_uni().await {
                for frame in frames {
                    if write_message(&mut uni, &frame, NOTIFY_MAX_FRAME)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                // Keep the stream open: a finished stream ends the session's notifications.
                std::future::pending::<()>().await;
            }
        });
    }
    while let Ok((send, recv)) = conn.accept_bi().await {
        let shared = Arc::clone(&shared);
        let upstream = upstream.clone();
        tasks.spawn(async move {
            request(shared, upstream, device, send, recv).await;
        });
    }
    if let Some(s) = upstream {
        s.close().await;
    }
}

/// A session with the real relay on behalf of `device`.
async fn open_upstream(
    shared: &Shared,
    up: &Upstream,
    device: DeviceId,
    device_name: Option<String>,
) -> Result<RelaySession, ClientError> {
    let key = shared
        .identities
        .lock()
        .unwrap()
        .entry(device)
        .or_insert_with(SecretKey::generate)
        .clone();
    shared
        .devices
        .lock()
        .unwrap()
        .insert(DeviceId(*key.public().as_bytes()), device);
    RelaySession::connect(&ConnectOptions {
        relay: up.relay.clone(),
        keys: up.keys.clone(),
        device_key: key,
        device_name,
        connect_timeout: Duration::from_secs(10),
        // Upstream relays in these tests run in open mode (the harness's default).
        access_token: None,
    })
    .await
}

async fn forward_notify(conn: Connection, mut heads: tokio::sync::watch::Receiver<u64>) {
    let Ok(mut uni) = conn.open_uni().await else {
        return;
    };
    loop {
        let head = *heads.borrow_and_update();
        if write_message(
            &mut uni,
            &Message::Notify(Notify { head }),
            HANDSHAKE_MAX_FRAME,
        )
        .await
        .is_err()
            || heads.changed().await.is_err()
        {
            return;
        }
    }
}

async fn request(
    shared: Arc<Shared>,
    upstream: Option<Arc<RelaySession>>,
    device: DeviceId,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let Ok(Some(req)) = read_message(&mut recv, MAX_FRAME_CEILING).await else {
        return;
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let reply = match &shared.script.request {
        Some(hook) => hook(device, &req),
        None => Reply::Forward,
    };
    let send_all = |frames: Vec<Message>| frames.into_iter();
    let frames: Box<dyn Iterator<Item = Message> + Send> = match reply {
        Reply::Answer(frames) => Box::new(send_all(frames)),
        Reply::Stream(frames) => frames,
        Reply::Forward => Box::new(send_all(forward(&shared, upstream.as_deref(), &req).await)),
        Reply::ForwardAs(other) => Box::new(send_all(
            forward(&shared, upstream.as_deref(), &other).await,
        )),
    };
    for frame in frames {
        if write_message(&mut send, &frame, MAX_FRAME_CEILING)
            .await
            .is_err()
        {
            return; // the device stopped reading
        }
        shared.frames.fetch_add(1, Ordering::SeqCst);
    }
    let _ = send.finish();
}

/// Send `req` to the real relay (or, alone, answer what needs no relay)
/// and return its answer's frames, each passed through the response hook
/// and with upstream senders relabelled.
async fn forward(shared: &Shared, upstream: Option<&RelaySession>, req: &Message) -> Vec<Message> {
    let Some(session) = upstream else {
        return match req {
            Message::Ack(ack) => vec![Message::AckOk(AckOk { cursor: ack.cursor })],
            _ => vec![Message::Error(ErrorMsg::new(
                ErrorCode::Internal,
                "the fake relay has no real relay behind it",
            ))],
        };
    };
    let error = |e: ClientError| match e {
        ClientError::Relay(e) => Message::Error(e),
        other => Message::Error(ErrorMsg::new(ErrorCode::Internal, other.to_string())),
    };
    let mut frames = Vec::new();
    match req {
        Message::Push(push) => frames.push(match session.push(push.items.clone()).await {
            Ok(ok) => Message::PushOk(ok),
            Err(e) => error(e),
        }),
        Message::Ack(ack) => frames.push(match session.ack(ack.cursor).await {
            Ok(cursor) => Message::AckOk(AckOk { cursor }),
            Err(e) => error(e),
        }),
        Message::Pull(pull) => match session.pull(pull.after, pull.limit).await {
            Ok(mut response) => loop {
                match response.next_batch().await {
                    Ok(Some(batch)) => frames.push(Message::PullBatch(relabel(shared, batch))),
                    Ok(None) => break,
                    Err(e) => {
                        frames.push(error(e));
                        break;
                    }
                }
            },
            Err(e) => frames.push(error(e)),
        },
        other => frames.push(Message::Error(ErrorMsg::new(
            ErrorCode::InvalidMessage,
            format!("the fake relay does not forward {}", other.kind()),
        ))),
    }
    match &shared.script.response {
        Some(hook) => frames.into_iter().flat_map(|f| hook(req, f)).collect(),
        None => frames,
    }
}

/// Blobs the real relay says an upstream session sent carry the device's
/// own node id instead.
fn relabel(shared: &Shared, mut batch: PullBatch) -> PullBatch {
    let devices = shared.devices.lock().unwrap();
    for blob in &mut batch.blobs {
        if let Some(device) = devices.get(&blob.sender) {
            blob.sender = *device;
        }
    }
    batch
}
