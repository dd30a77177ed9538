//! One QUIC connection = one session (docs/protocol.md, §5.1). This driver does the
//! I/O; [`state::SessionState`] decides.
//!
//! - The first bidirectional stream must carry `Hello` within
//!   `hello_timeout_s`; it is answered with `Welcome` or an `Error` and a
//!   close (`CloseCode::HelloRejected`).
//! - After `Welcome` the relay opens one unidirectional stream and forwards
//!   the group's head on it as `Notify` frames (coalesced).
//! - Every later bidirectional stream carries one request, answered on the
//!   same stream, served concurrently: at most `max_requests_in_flight`
//!   at once (the QUIC stream limit, raised from 1 once the `Hello` is
//!   accepted, [`crate::endpoint::open_session`]). A request body is paid
//!   for from the session's byte budget before it is read, and refused
//!   when the budget is spent ([`crate::budget`]); every answer frame must
//!   be taken by the device within its write deadline, or the connection is
//!   closed (`CloseCode::TooSlow`).
//! - A session of a device that a close of its group does not keep (or
//!   once the close's grace ends) is ended with `CloseCode::GroupClosed`
//!   when the close commits on this instance ([`crate::close_feed`]); its
//!   pulls, acks and closes are refused with GROUP_CLOSED when the close
//!   came through another instance ([`handlers::close::check_served`]).
//! - On shutdown, requests already being served get `shutdown_grace_s` to
//!   finish; new ones are answered SHUTTING_DOWN; then the connection is
//!   closed with `CloseCode::ShuttingDown`.

mod forward;
pub mod state;

pub use forward::QUIET_RESEND;

use crate::admission;
use crate::admission::session::{Granted, Refusal};
use crate::auth::check_hello;
use crate::budget::{PendingHello, Reservation, SessionBudget, WriteError, write_frame};
use crate::context::RelayContext;
use crate::handlers::{self, pull::PullError};
use crate::storage::GroupClosure;
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use state::{Action, Event, HelloVerdict, SessionState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use sync_protocol::limits::HANDSHAKE_MAX_FRAME;
use sync_protocol::{
    CloseCode, DeviceId, ErrorCode, ErrorMsg, FrameError, GroupId, Message, decode_body,
    encode_frame, read_frame_body, read_frame_header, read_message,
};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tracing::{debug, info, warn};

/// How long the relay waits for the peer to take an error frame before it
/// closes the connection after a rejection.
const REJECT_FLUSH: Duration = Duration::from_secs(2);

struct Session {
    ctx: Arc<RelayContext>,
    conn: Connection,
    device: DeviceId,
    /// The peer's IP address (`None` through an iroh relay server).
    remote: Option<IpAddr>,
    group: OnceLock<GroupId>,
    /// The group's close, once this session has seen it.
    closure: OnceLock<Arc<GroupClosure>>,
    /// The protocol version of the accepted `Hello` (docs/protocol.md
    /// "Version 2: no echo"); set with `group`.
    version: OnceLock<u16>,
    state: Mutex<SessionState>,
    activity: Arc<forward::Activity>,
    budget: SessionBudget,
    /// The highest cursor storage has recorded as acknowledged through this
    /// session (an `Ack`, or a `Pull`'s `after`): acks at or below it are
    /// answered without a storage write ([`crate::handlers::ack`]).
    acked: std::sync::atomic::AtomicU64,
}

impl Session {
    fn step(&self, event: Event) -> Action {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (next, action) = state.on(event);
        if next != *state {
            debug!(device = %self.device, from = ?*state, to = ?next, "session state");
        }
        *state = next;
        action
    }

    /// Whether the session spoke version 2 or later: its own blobs are not
    /// sent back (docs/protocol.md "Version 2: no echo").
    fn no_echo(&self) -> bool {
        self.version.get().is_some_and(|v| *v >= 2)
    }

    /// Whether the session spoke version 3 or later: new small blobs go
    /// inline in `Deliver` frames (docs/protocol.md "Version 3: inline
    /// delivery").
    fn inline(&self) -> bool {
        self.version
            .get()
            .is_some_and(|v| *v >= sync_protocol::INLINE_PROTOCOL_VERSION)
    }

    fn close(&self, code: CloseCode, reason: &str) {
        self.conn
            .close(VarInt::from_u32(code.as_u32()), reason.as_bytes());
    }

    /// Carry out an action that is not `Serve`/`SendWelcome` on `send`.
    async fn perform(&self, action: Action, send: &mut SendStream, message: String) {
        self.perform_with_retry(action, send, message, None).await;
    }

    async fn perform_with_retry(
        &self,
        action: Action,
        send: &mut SendStream,
        message: String,
        retry_after_ms: Option<u32>,
    ) {
        let error = |code| {
            let e = ErrorMsg::new(code, message.clone());
            match retry_after_ms {
                Some(ms) => e.with_retry_after(ms),
                None => e,
            }
        };
        match action {
            Action::Reply(code) => {
                self.reply_error(send, error(code)).await;
            }
            Action::RejectAndClose(code, close) => {
                self.reply_error(send, error(code)).await;
                let _ = timeout(REJECT_FLUSH, send.stopped()).await;
                self.close(close, &message);
            }
            Action::Close(close) => self.close(close, &message),
            Action::Serve(_) | Action::SendWelcome | Action::Ignore => {}
        }
    }

    /// Write one answer on `send` within its deadline
    /// ([`RelayContext::transfer_deadline`]); a device that does not take
    /// it in time has its connection closed (`CloseCode::TooSlow`).
    /// `false` when nothing more can be written.
    async fn answer(&self, send: &mut SendStream, msg: &Message, max_frame: u32) -> bool {
        let frame = encode_frame(msg);
        let allowed = self.ctx.transfer_deadline(frame.len());
        let written = write_frame(send, &frame, max_frame, allowed).await;
        self.written(written)
    }

    /// Act on the outcome of writing an answer frame: a missed deadline
    /// closes the connection. `true` when it was written.
    fn written(&self, written: Result<(), WriteError>) -> bool {
        match written {
            Ok(()) => true,
            Err(WriteError::Deadline { len, allowed }) => {
                self.ctx.metrics.slow_readers.inc();
                info!(device = %self.device, len, ?allowed, "device took no answer in time; closing");
                self.close(
                    CloseCode::TooSlow,
                    "an answer was not taken within its write deadline",
                );
                false
            }
            Err(err) => {
                debug!(device = %self.device, error = %err, "answer not written");
                false
            }
        }
    }

    async fn reply_error(&self, send: &mut SendStream, err: ErrorMsg) {
        debug!(code = err.code, message = %err.message, "error reply");
        self.ctx.metrics.error_sent(err.error_code());
        if self
            .answer(send, &Message::Error(err), self.ctx.max_frame())
            .await
        {
            let _ = send.finish();
        }
    }
}

/// Serve one accepted connection from `remote` until it ends or the relay
/// stops. `awaiting_hello` counts the connection against
/// `limits.max_connections_awaiting_hello` until its `Hello` is answered
/// (the per-address connection rate was checked before the handshake).
pub async fn serve_connection(
    ctx: Arc<RelayContext>,
    conn: Connection,
    remote: Option<IpAddr>,
    awaiting_hello: PendingHello,
) {
    let device = DeviceId(*conn.remote_id().as_bytes());
    let session = Arc::new(Session {
        ctx: Arc::clone(&ctx),
        conn,
        device,
        remote,
        group: OnceLock::new(),
        closure: OnceLock::new(),
        version: OnceLock::new(),
        state: Mutex::new(SessionState::AwaitingHello),
        activity: Arc::new(forward::Activity::default()),
        budget: ctx.session_budget(),
        acked: std::sync::atomic::AtomicU64::new(0),
    });
    // Before the group is opened in storage: a close committed after that
    // is announced to this receiver.
    let mut closes = ctx.closes.subscribe();
    let admitted = handshake(&session).await;
    drop(awaiting_hello);
    let Some(Admitted { mut send, granted }) = admitted else {
        return;
    };
    let Granted {
        head,
        mut subscription,
        live: _live,
        owner: _owner_live,
    } = granted;
    info!(device = %device, "session active");
    crate::endpoint::open_session(&session.conn, &ctx.limits);
    let version = session
        .version
        .get()
        .copied()
        .unwrap_or(sync_protocol::MIN_PROTOCOL_VERSION);
    let welcome = Message::Welcome(ctx.welcome(head, version));
    if !session
        .answer(&mut send, &welcome, HANDSHAKE_MAX_FRAME)
        .await
    {
        return;
    }
    let _ = send.finish();
    drop(send);

    let conn = session.conn.clone();
    let notify_ctx = Arc::clone(&ctx);
    let activity = Arc::clone(&session.activity);
    let no_echo = session.no_echo();
    let inline_on = session.inline();
    let group = session.group.get().copied();
    let _notify = AbortOnDropHandle::new(tokio::spawn(async move {
        let hub = Arc::clone(&notify_ctx.notify);
        let only_own = move |after: u64, head: u64| {
            no_echo && group.is_some_and(|g| hub.only_own(g, device, after, head))
        };
        let cache = Arc::clone(&notify_ctx.notify);
        let recent = move |after: u64, head: u64| {
            group.and_then(|g| cache.recent(g, after, head, crate::context::now_ms()))
        };
        let inline = inline_on.then(|| forward::Inline {
            device,
            recent: &recent,
            budget: &notify_ctx.budget,
        });
        // Streams are lazy: opening costs nothing until the first Notify.
        if let Ok(uni) = conn.open_uni().await {
            forward::forward_notify(
                uni,
                subscription.receiver(),
                head,
                &activity,
                &notify_ctx.metrics,
                &only_own,
                inline,
            )
            .await;
        }
        // The subscription is also what marks the group live for the
        // cleanup (never pruned while a session is on it): keep it until the
        // session ends (this task is aborted then), even if the peer stopped
        // the notify stream.
        std::future::pending::<()>().await;
        drop(subscription);
    }));

    let requests = TaskTracker::new();
    let mut drain_deadline: Option<Instant> = None;
    let mut ended_by_close = false;
    let mut feed_open = true;
    loop {
        tokio::select! {
            biased;
            _ = ctx.shutdown.cancelled(), if drain_deadline.is_none() => {
                session.step(Event::Shutdown);
                drain_deadline = Some(Instant::now() + RelayContext::secs(ctx.limits.shutdown_grace_s));
                requests.close();
            }
            _ = requests.wait(), if drain_deadline.is_some() => break,
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(Instant::now)), if drain_deadline.is_some() => {
                warn!(device = %device, "shutdown grace period over with requests in flight");
                break;
            }
            closed = closes.recv(), if feed_open => {
                feed_open = !matches!(closed, Err(broadcast::error::RecvError::Closed));
                if ended_by_a_close(&session, closed).await {
                    info!(device = %device, "group closed without this device; ending the session");
                    session.close(CloseCode::GroupClosed, handlers::GROUP_CLOSED_MESSAGE);
                    ended_by_close = true;
                    break;
                }
            }
            accepted = session.conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    requests.spawn(serve_stream(Arc::clone(&session), send, recv));
                }
                Err(err) => {
                    debug!(device = %device, error = %err, "connection ended");
                    session.step(Event::PeerClosed);
                    break;
                }
            },
        }
    }
    if ended_by_close {
        // Closed above with its own code.
    } else if drain_deadline.is_some() {
        session.close(CloseCode::ShuttingDown, "relay shutting down");
    } else {
        session.close(CloseCode::Normal, "");
    }
    info!(device = %device, "session closed");
}

/// Whether an announced close (or, after falling behind the feed, the
/// group's close read from storage) ends this session: its group is closed
/// and the close does not keep this device, or its grace ended.
async fn ended_by_a_close(
    session: &Session,
    closed: Result<crate::close_feed::Closed, broadcast::error::RecvError>,
) -> bool {
    let Some(&group) = session.group.get() else {
        return false;
    };
    let closure = match closed {
        Ok((g, closure)) if g == group => closure,
        Ok(_) => return false,
        Err(broadcast::error::RecvError::Lagged(_)) => {
            match session.ctx.storage.closure(group).await {
                Ok(Some(c)) => Arc::new(c),
                // Open, or storage unreachable: the next request checks.
                _ => return false,
            }
        }
        // Not reached: the context holds the sender as long as a session
        // lives (the loop stops listening then).
        Err(broadcast::error::RecvError::Closed) => return false,
    };
    let closure = Arc::clone(session.closure.get_or_init(|| closure));
    !closure.admits(&session.device, crate::context::now_ms())
}

/// What a session that passed its `Hello` holds.
struct Admitted {
    send: SendStream,
    granted: Granted,
}

/// Read and check the `Hello` (its proof, [`crate::auth`], then its
/// admission, [`crate::admission::session`]). Returns the first stream's
/// send half and what admission granted when the session became active.
async fn handshake(session: &Arc<Session>) -> Option<Admitted> {
    let ctx = &session.ctx;
    let hello_timeout = RelayContext::secs(ctx.limits.hello_timeout_s);
    let first = tokio::select! {
        _ = ctx.shutdown.cancelled() => {
            let action = session.step(Event::Shutdown);
            if let Action::Close(code) = action {
                session.close(code, "relay shutting down");
            }
            return None;
        }
        first = timeout(hello_timeout, async {
            let (send, mut recv) = session.conn.accept_bi().await.ok()?;
            Some((send, read_message(&mut recv, HANDSHAKE_MAX_FRAME).await))
        }) => first,
    };
    let (mut send, read) = match first {
        Err(_) => {
            if let Action::Close(code) = session.step(Event::HelloTimeout) {
                debug!(device = %session.device, "no Hello in time");
                session.close(code, "no Hello within the handshake timeout");
            }
            return None;
        }
        Ok(None) => return None, // connection lost before any stream
        Ok(Some(pair)) => pair,
    };
    let (hello, token) = match read {
        Ok(Some(Message::Hello(hello))) => (hello, None),
        Ok(Some(Message::HelloWithToken(h))) => (h.hello, Some(h.access_token)),
        Ok(Some(other)) => {
            let action = session.step(Event::Request(other.kind()));
            let msg = format!("expected Hello as the first message, got {}", other.kind());
            session.perform(action, &mut send, msg).await;
            return None;
        }
        Ok(None) => {
            let action = session.step(Event::BadFrame { too_large: false });
            session
                .perform(
                    action,
                    &mut send,
                    "first stream ended without a Hello".into(),
                )
                .await;
            return None;
        }
        Err(FrameError::Io(_)) => return None,
        Err(err) => {
            let too_large = matches!(err, FrameError::TooLarge { .. });
            let action = session.step(Event::BadFrame { too_large });
            session.perform(action, &mut send, err.to_string()).await;
            return None;
        }
    };
    let group = hello.group_id;
    let verdict = check_hello(&hello, &ctx.relay_id, &session.device);
    if verdict != HelloVerdict::Accepted {
        let msg = match verdict {
            HelloVerdict::UnsupportedVersion => format!(
                "protocol version {} is not supported; this relay speaks {} to {}",
                hello.version,
                sync_protocol::MIN_PROTOCOL_VERSION,
                sync_protocol::PROTOCOL_VERSION
            ),
            _ => "membership proof does not verify for this group, relay and device".into(),
        };
        return reject(session, verdict, &mut send, msg, None).await;
    }
    let granted =
        match admission::session::admit(ctx, group, session.device, session.remote, token.as_ref())
            .await
        {
            Ok(granted) => granted,
            // A refused Hello holds no session slot while its error is flushed
            // (up to REJECT_FLUSH): refused Hellos must not fill max_sessions.
            Err(Refusal::Refused(err)) => {
                let verdict = match err.error_code() {
                    ErrorCode::Overloaded => HelloVerdict::Overloaded,
                    ErrorCode::RateLimited => HelloVerdict::RateLimited,
                    code => HelloVerdict::Refused(code),
                };
                return reject(session, verdict, &mut send, err.message, err.retry_after_ms).await;
            }
            Err(Refusal::Failed(err, close)) => {
                // The hint goes along (STORAGE_UNAVAILABLE's wait, INTERNAL's).
                session
                    .perform_with_retry(
                        Action::RejectAndClose(err.error_code(), close),
                        &mut send,
                        err.message,
                        err.retry_after_ms,
                    )
                    .await;
                return None;
            }
        };
    let action = session.step(Event::Hello(HelloVerdict::Accepted));
    if action != Action::SendWelcome {
        drop(granted);
        session
            .perform(action, &mut send, "unexpected Hello".into())
            .await;
        return None;
    }
    let _ = session.group.set(group);
    let _ = session.version.set(hello.version);
    // Publish the stored head after subscribing, so no commit is missed.
    ctx.notify.publish(group, granted.head);
    Some(Admitted { send, granted })
}

/// Answer a `Hello` that was not admitted with `verdict`'s error and close.
async fn reject(
    session: &Session,
    verdict: HelloVerdict,
    send: &mut SendStream,
    msg: String,
    retry_after_ms: Option<u32>,
) -> Option<Admitted> {
    let action = session.step(Event::Hello(verdict));
    info!(device = %session.device, ?verdict, "Hello rejected");
    session
        .perform_with_retry(action, send, msg, retry_after_ms)
        .await;
    None
}

/// Why a request frame was not read.
enum ReadFailed {
    /// The frame did not arrive within its deadline.
    Deadline(Duration),
    /// Admission refused it ([`crate::admission::request`]): over the
    /// device's request rate, or the byte budget could not hold it.
    Refused(ErrorMsg),
}

/// Read one request frame: the length prefix within `request_timeout_s`;
/// then the request is counted against the device's request rate, and
/// the session's byte budget must hold `len` bytes (both checked before a
/// byte of the body is read, so a refused request costs nothing); then the
/// whole frame within `request_timeout_s + len / min_transfer_rate`. The
/// reservation is returned with the message; the caller keeps it while the
/// message's bytes are in memory.
async fn read_request(
    session: &Session,
    recv: &mut RecvStream,
) -> Result<(Result<Option<Message>, FrameError>, Option<Reservation>), ReadFailed> {
    let ctx = &session.ctx;
    let base = RelayContext::secs(ctx.limits.request_timeout_s);
    let started = Instant::now();
    let len = match timeout(base, read_frame_header(recv, ctx.max_frame())).await {
        Err(_) => return Err(ReadFailed::Deadline(base)),
        Ok(Ok(Some(len))) => len,
        Ok(other) => return Ok((other.map(|_| None), None)),
    };
    let reserved = admission::request::admit(ctx, &session.budget, &session.device, len as usize)
        .map_err(ReadFailed::Refused)?;
    let allowed = ctx.transfer_deadline(len as usize);
    let mut body = Vec::new();
    match tokio::time::timeout_at(started + allowed, read_frame_body(recv, len, &mut body)).await {
        Err(_) => Err(ReadFailed::Deadline(allowed)),
        Ok(Err(e)) => Ok((Err(e), None)),
        Ok(Ok(())) => Ok((
            decode_body(&body).map(Some).map_err(FrameError::from),
            Some(reserved),
        )),
    }
}

/// Serve one request stream of an active session.
async fn serve_stream(session: Arc<Session>, mut send: SendStream, recv: RecvStream) {
    serve_request(&session, &mut send, recv).await;
    // During shutdown the connection is closed as soon as no request is in
    // flight, and a QUIC close drops stream data the peer has not received:
    // keep this request in flight until the peer has its answer (bounded),
    // so a push committed during the drain is never left unanswered.
    if session.ctx.shutdown.is_cancelled() {
        let _ = timeout(REJECT_FLUSH, send.stopped()).await;
    }
}

async fn serve_request(session: &Arc<Session>, send: &mut SendStream, mut recv: RecvStream) {
    let ctx = &session.ctx;
    let (msg, mut reserved) = match read_request(session, &mut recv).await {
        Err(ReadFailed::Deadline(allowed)) => {
            let msg = format!(
                "no complete request within {:.0} s (the first {} s, then at least {} bytes/s)",
                allowed.as_secs_f64(),
                ctx.limits.request_timeout_s,
                ctx.limits.min_transfer_rate
            );
            let _ = recv.stop(VarInt::from_u32(0));
            session
                .reply_error(send, ErrorMsg::new(ErrorCode::InvalidMessage, msg))
                .await;
            return;
        }
        Err(ReadFailed::Refused(err)) => {
            // Not read: QUIC drops what already arrived of it.
            let _ = recv.stop(VarInt::from_u32(0));
            session.reply_error(send, err).await;
            return;
        }
        Ok((Ok(Some(msg)), reserved)) => (msg, reserved),
        Ok((Ok(None) | Err(FrameError::Io(_)), _)) => return,
        Ok((Err(err), _)) => {
            let too_large = matches!(err, FrameError::TooLarge { .. });
            let action = session.step(Event::BadFrame { too_large });
            session.perform(action, send, err.to_string()).await;
            return;
        }
    };
    let kind = msg.kind();
    // Only a push keeps its request bytes (the payloads) until it is served.
    if !matches!(msg, Message::Push(_)) {
        reserved = None;
    }
    // Where the device says it is, for inline delivery (before the
    // request wakes the forwarder).
    match &msg {
        Message::Pull(pull) => session.activity.pulled(pull.after),
        Message::Ack(ack) => session.activity.acked(ack.cursor),
        _ => {}
    }
    session.activity.request();
    match session.step(Event::Request(kind)) {
        Action::Serve(_) => {
            dispatch(session, msg, send).await;
            drop(reserved);
        }
        action => {
            let text = match action {
                Action::Reply(ErrorCode::ShuttingDown) => "the relay is shutting down".to_string(),
                Action::Reply(_) => format!("{kind} is not allowed in an active session"),
                _ => format!("{kind} is not a request a device may send"),
            };
            session.perform(action, send, text).await;
        }
    }
}

async fn dispatch(session: &Session, msg: Message, send: &mut SendStream) {
    let ctx = &session.ctx;
    let Some(&group) = session.group.get() else {
        return;
    };
    let device = session.device;
    let started = std::time::Instant::now();
    if matches!(
        msg,
        Message::Pull(_) | Message::Ack(_) | Message::CloseGroup(_)
    ) && let Err(err) =
        handlers::close::check_served(ctx, group, &device, &session.closure).await
    {
        session.reply_error(send, err).await;
        return;
    }
    let (op, answer) = match msg {
        Message::Push(push) => (
            "push",
            handlers::push::handle(ctx, group, device, push)
                .await
                .map(Message::PushOk),
        ),
        Message::Ack(ack) => (
            "ack",
            handlers::ack::handle(ctx, group, device, ack, &session.acked)
                .await
                .map(Message::AckOk),
        ),
        Message::CloseGroup(close) => {
            let closed = handlers::close::handle(ctx, group, close).await;
            ctx.metrics.observe("close", started);
            match closed {
                Ok((answer, closure)) => {
                    if session
                        .answer(send, &Message::CloseGroupOk(answer), ctx.max_frame())
                        .await
                    {
                        let _ = send.finish();
                        // Let the answer reach the closer before sessions
                        // it did not keep (its own among them) are ended.
                        let _ = timeout(REJECT_FLUSH, send.stopped()).await;
                    }
                    info!(device = %device, keep = closure.keep.len(), "close of the group answered");
                    ctx.closes.announce(group, closure);
                }
                Err(err) => session.reply_error(send, err).await,
            }
            return;
        }
        Message::Pull(pull) => {
            let no_echo = session.no_echo();
            // The device is where the answer ends once it applies it: an
            // inline delivery starts from there (docs/protocol.md "Version
            // 3: inline delivery"), not from the pull's `after` or its next
            // ack. Set before the last frame goes, not after: the device
            // may push on seeing it, and that push's delivery must find
            // the position already moved.
            let activity = &session.activity;
            let served = handlers::pull::handle(
                ctx,
                group,
                device,
                no_echo,
                pull,
                (&session.budget, &session.acked, &|end| {
                    activity.answered(end)
                }),
                send,
            )
            .await;
            ctx.metrics.observe("pull", started);
            match served {
                Ok(_) => {
                    let _ = send.finish();
                    return;
                }
                Err(PullError::Reply(err)) => ("pull", Err(err)),
                Err(PullError::Stream(err)) => {
                    session.written(Err(err));
                    return;
                }
            }
        }
        _ => return,
    };
    if op != "pull" {
        ctx.metrics.observe(op, started);
    }
    match answer {
        Ok(msg) => {
            if session.answer(send, &msg, ctx.max_frame()).await {
                let _ = send.finish();
            }
        }
        Err(err) => session.reply_error(send, err).await,
    }
}
