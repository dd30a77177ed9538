//! The per-connection session state machine (docs/protocol.md and docs/deploy.md):
//! `AwaitingHello → Active → Closing`. Pure: it decides what to do with each
//! event and the driver in [`super`] does the I/O, so every transition is
//! unit-tested here.

use sync_protocol::{CloseCode, ErrorCode, MessageKind};

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Connected; the first stream must carry a `Hello`.
    AwaitingHello,
    /// Hello accepted; requests are served.
    Active,
    /// The connection is being closed with this code.
    Closing(CloseCode),
}

/// What the relay learned about a `Hello`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloVerdict {
    /// Version supported and proof valid.
    Accepted,
    /// `Hello::version` is not spoken here.
    UnsupportedVersion,
    /// The proof does not verify against the group id.
    Unauthorized,
    /// Valid, but over a rate limit (connections per IP, sessions per
    /// group): the device may retry later.
    RateLimited,
    /// Valid, but the relay is at its session capacity.
    Overloaded,
    /// Valid, but the group may not be created for this device (access
    /// token required or invalid, a group limit): answered with this code.
    Refused(ErrorCode),
}

/// Something that happened to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first frame was a `Hello`, checked.
    Hello(HelloVerdict),
    /// A decoded message (in `AwaitingHello`: any message but `Hello`).
    Request(MessageKind),
    /// A frame that broke the protocol; `too_large` for an oversized length.
    BadFrame {
        /// The length prefix exceeded the limit.
        too_large: bool,
    },
    /// No `Hello` within the handshake timeout.
    HelloTimeout,
    /// The peer closed the connection or it was lost.
    PeerClosed,
    /// The relay is shutting down.
    Shutdown,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer the Hello with `Welcome` and start the NOTIFY stream.
    SendWelcome,
    /// Run the request's handler.
    Serve(MessageKind),
    /// Answer this stream with an `Error`; the session goes on.
    Reply(ErrorCode),
    /// Answer this stream with an `Error`, then close the connection.
    RejectAndClose(ErrorCode, CloseCode),
    /// Close the connection.
    Close(CloseCode),
    /// Nothing to do.
    Ignore,
}

fn is_client_request(kind: MessageKind) -> bool {
    matches!(
        kind,
        MessageKind::Push | MessageKind::Pull | MessageKind::Ack | MessageKind::CloseGroup
    )
}

fn bad_frame_code(too_large: bool) -> CloseCode {
    if too_large {
        CloseCode::FrameTooLarge
    } else {
        CloseCode::ProtocolViolation
    }
}

impl SessionState {
    /// The next state and the action for `event`.
    pub fn on(self, event: Event) -> (SessionState, Action) {
        use SessionState::*;
        match (self, event) {
            (AwaitingHello, Event::Hello(HelloVerdict::Accepted)) => (Active, Action::SendWelcome),
            (AwaitingHello, Event::Hello(HelloVerdict::UnsupportedVersion)) => (
                Closing(CloseCode::HelloRejected),
                Action::RejectAndClose(ErrorCode::UnsupportedVersion, CloseCode::HelloRejected),
            ),
            (AwaitingHello, Event::Hello(HelloVerdict::Unauthorized)) => (
                Closing(CloseCode::HelloRejected),
                Action::RejectAndClose(ErrorCode::Unauthorized, CloseCode::HelloRejected),
            ),
            (AwaitingHello, Event::Hello(HelloVerdict::RateLimited)) => (
                Closing(CloseCode::HelloRejected),
                Action::RejectAndClose(ErrorCode::RateLimited, CloseCode::HelloRejected),
            ),
            (AwaitingHello, Event::Hello(HelloVerdict::Overloaded)) => (
                Closing(CloseCode::Overloaded),
                Action::RejectAndClose(ErrorCode::Overloaded, CloseCode::Overloaded),
            ),
            (AwaitingHello, Event::Hello(HelloVerdict::Refused(code))) => (
                Closing(CloseCode::HelloRejected),
                Action::RejectAndClose(code, CloseCode::HelloRejected),
            ),
            (AwaitingHello, Event::Request(kind)) => {
                let code = if is_client_request(kind) {
                    ErrorCode::NotInSession
                } else {
                    ErrorCode::InvalidMessage
                };
                (
                    Closing(CloseCode::ProtocolViolation),
                    Action::RejectAndClose(code, CloseCode::ProtocolViolation),
                )
            }
            (AwaitingHello | Active, Event::BadFrame { too_large }) => {
                let close = bad_frame_code(too_large);
                (
                    Closing(close),
                    Action::RejectAndClose(ErrorCode::InvalidMessage, close),
                )
            }
            (AwaitingHello, Event::HelloTimeout) => (
                Closing(CloseCode::HelloTimeout),
                Action::Close(CloseCode::HelloTimeout),
            ),
            (AwaitingHello | Active, Event::PeerClosed) => {
                (Closing(CloseCode::Normal), Action::Close(CloseCode::Normal))
            }
            (AwaitingHello | Active, Event::Shutdown) => (
                Closing(CloseCode::ShuttingDown),
                Action::Close(CloseCode::ShuttingDown),
            ),
            (Active, Event::Request(kind)) if is_client_request(kind) => {
                (Active, Action::Serve(kind))
            }
            (
                Active,
                Event::Request(MessageKind::Hello | MessageKind::HelloWithToken) | Event::Hello(_),
            ) => (Active, Action::Reply(ErrorCode::InvalidMessage)),
            (Active, Event::Request(_)) => (
                Closing(CloseCode::ProtocolViolation),
                Action::RejectAndClose(ErrorCode::InvalidMessage, CloseCode::ProtocolViolation),
            ),
            (Active, Event::HelloTimeout) => (Active, Action::Ignore),
            (Closing(CloseCode::ShuttingDown), Event::Request(_) | Event::Hello(_)) => (
                Closing(CloseCode::ShuttingDown),
                Action::Reply(ErrorCode::ShuttingDown),
            ),
            (Closing(code), _) => (Closing(code), Action::Ignore),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;
    use SessionState::*;

    fn check(from: SessionState, event: Event, to: SessionState, action: Action) {
        assert_eq!(from.on(event), (to, action), "{from:?} + {event:?}");
    }

    #[test]
    fn accepted_hello_activates() {
        check(
            AwaitingHello,
            Event::Hello(HelloVerdict::Accepted),
            Active,
            SendWelcome,
        );
    }

    #[test]
    fn rejected_hello_answers_and_closes() {
        check(
            AwaitingHello,
            Event::Hello(HelloVerdict::Unauthorized),
            Closing(CloseCode::HelloRejected),
            RejectAndClose(ErrorCode::Unauthorized, CloseCode::HelloRejected),
        );
        check(
            AwaitingHello,
            Event::Hello(HelloVerdict::UnsupportedVersion),
            Closing(CloseCode::HelloRejected),
            RejectAndClose(ErrorCode::UnsupportedVersion, CloseCode::HelloRejected),
        );
    }

    #[test]
    fn hello_over_a_limit_answers_and_closes() {
        check(
            AwaitingHello,
            Event::Hello(HelloVerdict::RateLimited),
            Closing(CloseCode::HelloRejected),
            RejectAndClose(ErrorCode::RateLimited, CloseCode::HelloRejected),
        );
        check(
            AwaitingHello,
            Event::Hello(HelloVerdict::Overloaded),
            Closing(CloseCode::Overloaded),
            RejectAndClose(ErrorCode::Overloaded, CloseCode::Overloaded),
        );
    }

    #[test]
    fn hello_refused_admission_answers_its_code_and_closes() {
        for code in [
            ErrorCode::AccessTokenRequired,
            ErrorCode::AccessTokenInvalid,
            ErrorCode::GroupLimitReached,
        ] {
            check(
                AwaitingHello,
                Event::Hello(HelloVerdict::Refused(code)),
                Closing(CloseCode::HelloRejected),
                RejectAndClose(code, CloseCode::HelloRejected),
            );
        }
    }

    #[test]
    fn request_before_hello_is_not_in_session() {
        for kind in [
            MessageKind::Push,
            MessageKind::Pull,
            MessageKind::Ack,
            MessageKind::CloseGroup,
        ] {
            check(
                AwaitingHello,
                Event::Request(kind),
                Closing(CloseCode::ProtocolViolation),
                RejectAndClose(ErrorCode::NotInSession, CloseCode::ProtocolViolation),
            );
        }
        check(
            AwaitingHello,
            Event::Request(MessageKind::Welcome),
            Closing(CloseCode::ProtocolViolation),
            RejectAndClose(ErrorCode::InvalidMessage, CloseCode::ProtocolViolation),
        );
    }

    #[test]
    fn bad_frames_close_in_either_live_state() {
        for state in [AwaitingHello, Active] {
            check(
                state,
                Event::BadFrame { too_large: true },
                Closing(CloseCode::FrameTooLarge),
                RejectAndClose(ErrorCode::InvalidMessage, CloseCode::FrameTooLarge),
            );
            check(
                state,
                Event::BadFrame { too_large: false },
                Closing(CloseCode::ProtocolViolation),
                RejectAndClose(ErrorCode::InvalidMessage, CloseCode::ProtocolViolation),
            );
        }
    }

    #[test]
    fn hello_timeout_closes_only_before_hello() {
        check(
            AwaitingHello,
            Event::HelloTimeout,
            Closing(CloseCode::HelloTimeout),
            Close(CloseCode::HelloTimeout),
        );
        check(Active, Event::HelloTimeout, Active, Ignore);
    }

    #[test]
    fn active_serves_client_requests() {
        for kind in [
            MessageKind::Push,
            MessageKind::Pull,
            MessageKind::Ack,
            MessageKind::CloseGroup,
        ] {
            check(Active, Event::Request(kind), Active, Serve(kind));
        }
    }

    #[test]
    fn second_hello_is_answered_but_keeps_the_session() {
        for kind in [MessageKind::Hello, MessageKind::HelloWithToken] {
            check(
                Active,
                Event::Request(kind),
                Active,
                Reply(ErrorCode::InvalidMessage),
            );
        }
        check(
            Active,
            Event::Hello(HelloVerdict::Accepted),
            Active,
            Reply(ErrorCode::InvalidMessage),
        );
    }

    #[test]
    fn relay_messages_from_a_client_are_violations() {
        for kind in [
            MessageKind::Welcome,
            MessageKind::PushOk,
            MessageKind::PullBatch,
            MessageKind::AckOk,
            MessageKind::Notify,
            MessageKind::Error,
            MessageKind::CloseGroupOk,
        ] {
            check(
                Active,
                Event::Request(kind),
                Closing(CloseCode::ProtocolViolation),
                RejectAndClose(ErrorCode::InvalidMessage, CloseCode::ProtocolViolation),
            );
        }
    }

    #[test]
    fn peer_close_and_shutdown_end_live_sessions() {
        for state in [AwaitingHello, Active] {
            check(
                state,
                Event::PeerClosed,
                Closing(CloseCode::Normal),
                Close(CloseCode::Normal),
            );
            check(
                state,
                Event::Shutdown,
                Closing(CloseCode::ShuttingDown),
                Close(CloseCode::ShuttingDown),
            );
        }
    }

    #[test]
    fn requests_while_shutting_down_get_shutting_down() {
        let s = Closing(CloseCode::ShuttingDown);
        check(
            s,
            Event::Request(MessageKind::Push),
            s,
            Reply(ErrorCode::ShuttingDown),
        );
        check(s, Event::PeerClosed, s, Ignore);
    }

    #[test]
    fn closing_ignores_everything_else() {
        let s = Closing(CloseCode::ProtocolViolation);
        for event in [
            Event::Request(MessageKind::Push),
            Event::Hello(HelloVerdict::Accepted),
            Event::BadFrame { too_large: true },
            Event::HelloTimeout,
            Event::PeerClosed,
            Event::Shutdown,
        ] {
            check(s, event, s, Ignore);
        }
    }
}
