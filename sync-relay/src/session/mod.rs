//! One QUIC connection = one session (DESIGN §3, §5.1). This driver does the
//! I/O; [`state::SessionState`] decides.
//!
//! - The first bidirectional stream must carry `Hello` within
//!   `hello_timeout_s`; it is answered with `Welcome` or an `Error` and a
//!   close (`CloseCode::HelloRejected`).
//! - After `Welcome` the relay opens one unidirectional stream and forwards
//!   the group's head on it as `Notify` frames (coalesced).
//! - Every later bidirectional stream carries one request, answered on the
//!   same stream, served concurrently (QUIC caps concurrent streams).
//! - On shutdown, requests already being served get `shutdown_grace_s` to
//!   finish; new ones are answered SHUTTING_DOWN; then the connection is
//!   closed with `CloseCode::ShuttingDown`.

pub mod state;

use crate::auth::check_hello;
use crate::context::{RelayContext, now_ms};
use crate::handlers::{self, pull::PullError};
use iroh::endpoint::{Connection, RecvStream, SendStream, VarInt};
use state::{Action, Event, SessionState};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use sync_protocol::limits::HANDSHAKE_MAX_FRAME;
use sync_protocol::{
    CloseCode, DeviceId, ErrorCode, ErrorMsg, FrameError, GroupId, Message, Notify, read_message,
    write_message,
};
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
    group: OnceLock<GroupId>,
    state: Mutex<SessionState>,
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

    fn close(&self, code: CloseCode, reason: &str) {
        self.conn
            .close(VarInt::from_u32(code.as_u32()), reason.as_bytes());
    }

    /// Carry out an action that is not `Serve`/`SendWelcome` on `send`.
    async fn perform(&self, action: Action, send: &mut SendStream, message: String) {
        match action {
            Action::Reply(code) => {
                reply_error(send, ErrorMsg::new(code, message), &self.ctx).await;
            }
            Action::RejectAndClose(code, close) => {
                reply_error(send, ErrorMsg::new(code, message.clone()), &self.ctx).await;
                let _ = timeout(REJECT_FLUSH, send.stopped()).await;
                self.close(close, &message);
            }
            Action::Close(close) => self.close(close, &message),
            Action::Serve(_) | Action::SendWelcome | Action::Ignore => {}
        }
    }
}

async fn reply_error(send: &mut SendStream, err: ErrorMsg, ctx: &RelayContext) {
    debug!(code = err.code, message = %err.message, "error reply");
    let _ = write_message(send, &Message::Error(err), ctx.max_frame()).await;
    let _ = send.finish();
}

/// Serve one accepted connection until it ends or the relay stops.
pub async fn serve_connection(ctx: Arc<RelayContext>, conn: Connection) {
    let device = DeviceId(*conn.remote_id().as_bytes());
    let session = Arc::new(Session {
        ctx: Arc::clone(&ctx),
        conn,
        device,
        group: OnceLock::new(),
        state: Mutex::new(SessionState::AwaitingHello),
    });
    let Some((mut send, head)) = handshake(&session).await else {
        return;
    };
    let Some(&group) = session.group.get() else {
        return;
    };
    let _live = ctx.session_guard();
    info!(device = %device, "session active");

    let mut subscription = ctx.notify.subscribe(group);
    // Publish the stored head after subscribing, so no commit is missed.
    ctx.notify.publish(group, head);
    let welcome = Message::Welcome(ctx.welcome(head));
    if write_message(&mut send, &welcome, HANDSHAKE_MAX_FRAME)
        .await
        .is_err()
    {
        return;
    }
    let _ = send.finish();
    drop(send);

    let conn = session.conn.clone();
    let _notify = AbortOnDropHandle::new(tokio::spawn(async move {
        forward_notify(conn, subscription.receiver(), head).await;
    }));

    let requests = TaskTracker::new();
    let mut drain_deadline: Option<Instant> = None;
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
    if drain_deadline.is_some() {
        session.close(CloseCode::ShuttingDown, "relay shutting down");
    } else {
        session.close(CloseCode::Normal, "");
    }
    info!(device = %device, "session closed");
}

/// Read and check the `Hello`. Returns the first stream's send half and the
/// group's head when the session became active.
async fn handshake(session: &Arc<Session>) -> Option<(SendStream, u64)> {
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
    let hello = match read {
        Ok(Some(Message::Hello(hello))) => hello,
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
    let verdict = check_hello(&hello, &ctx.relay_id, &session.device);
    match session.step(Event::Hello(verdict)) {
        Action::SendWelcome => {}
        action => {
            let msg = match verdict {
                state::HelloVerdict::UnsupportedVersion => format!(
                    "protocol version {} is not supported; this relay speaks {}",
                    hello.version,
                    sync_protocol::PROTOCOL_VERSION
                ),
                _ => "membership proof does not verify for this group, relay and device".into(),
            };
            info!(device = %session.device, ?verdict, "Hello rejected");
            session.perform(action, &mut send, msg).await;
            return None;
        }
    }
    let group = hello.group_id;
    let head = match ctx
        .storage
        .open_session(group, session.device, now_ms())
        .await
    {
        Ok(head) => head,
        Err(err) => {
            let reply: ErrorMsg = err.into();
            let close = if reply.error_code() == ErrorCode::ShuttingDown {
                CloseCode::ShuttingDown
            } else {
                CloseCode::Internal
            };
            session
                .perform(
                    Action::RejectAndClose(reply.error_code(), close),
                    &mut send,
                    reply.message,
                )
                .await;
            return None;
        }
    };
    let _ = session.group.set(group);
    Some((send, head))
}

/// Serve one request stream of an active session.
async fn serve_stream(session: Arc<Session>, mut send: SendStream, mut recv: RecvStream) {
    let ctx = &session.ctx;
    let read = timeout(
        RelayContext::secs(ctx.limits.request_timeout_s),
        read_message(&mut recv, ctx.max_frame()),
    )
    .await;
    let msg = match read {
        Err(_) => {
            let msg = format!(
                "no complete request within {} s",
                ctx.limits.request_timeout_s
            );
            reply_error(
                &mut send,
                ErrorMsg::new(ErrorCode::InvalidMessage, msg),
                ctx,
            )
            .await;
            let _ = recv.stop(VarInt::from_u32(0));
            return;
        }
        Ok(Ok(Some(msg))) => msg,
        Ok(Ok(None)) | Ok(Err(FrameError::Io(_))) => return,
        Ok(Err(err)) => {
            let too_large = matches!(err, FrameError::TooLarge { .. });
            let action = session.step(Event::BadFrame { too_large });
            session.perform(action, &mut send, err.to_string()).await;
            return;
        }
    };
    let kind = msg.kind();
    match session.step(Event::Request(kind)) {
        Action::Serve(_) => dispatch(&session, msg, &mut send).await,
        action => {
            let text = match action {
                Action::Reply(ErrorCode::ShuttingDown) => "the relay is shutting down".to_string(),
                Action::Reply(_) => format!("{kind} is not allowed in an active session"),
                _ => format!("{kind} is not a request a device may send"),
            };
            session.perform(action, &mut send, text).await;
        }
    }
}

async fn dispatch(session: &Session, msg: Message, send: &mut SendStream) {
    let ctx = &session.ctx;
    let Some(&group) = session.group.get() else {
        return;
    };
    let device = session.device;
    let answer = match msg {
        Message::Push(push) => handlers::push::handle(ctx, group, device, push)
            .await
            .map(Message::PushOk),
        Message::Ack(ack) => handlers::ack::handle(ctx, group, device, ack)
            .await
            .map(Message::AckOk),
        Message::Pull(pull) => match handlers::pull::handle(ctx, group, device, pull, send).await {
            Ok(()) => {
                let _ = send.finish();
                return;
            }
            Err(PullError::Reply(err)) => Err(err),
            Err(PullError::Stream(_)) => return,
        },
        _ => return,
    };
    match answer {
        Ok(msg) => {
            let _ = write_message(send, &msg, ctx.max_frame()).await;
            let _ = send.finish();
        }
        Err(err) => reply_error(send, err, ctx).await,
    }
}

/// Forward the group's head as coalesced `Notify` frames on a uni stream.
async fn forward_notify(
    conn: Connection,
    rx: &mut tokio::sync::watch::Receiver<u64>,
    mut last_sent: u64,
) {
    let Ok(mut uni) = conn.open_uni().await else {
        return;
    };
    loop {
        let head = *rx.borrow_and_update();
        if head > last_sent {
            let frame = Message::Notify(Notify { head });
            if write_message(&mut uni, &frame, HANDSHAKE_MAX_FRAME)
                .await
                .is_err()
            {
                return;
            }
            last_sent = head;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
