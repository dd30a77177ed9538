//! Error codes of `Error` frames and QUIC application close codes
//! (`docs/protocol.md` §Errors, §Close codes).

use std::fmt;

/// Code of an [`crate::ErrorMsg`]. 1xxx: the client's request is wrong;
/// 2xxx: the client is over a limit and may retry later or smaller;
/// 3xxx: the relay cannot serve right now (not the client's fault).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1000: the frame or message is malformed, or not allowed here.
    InvalidMessage,
    /// 1001: `Hello::version` is not one the relay speaks.
    UnsupportedVersion,
    /// 1002: the membership proof does not verify against the group id.
    Unauthorized,
    /// 1003: a request other than `Hello` before the session is active, or
    /// (not while the session is live) a request whose group the relay no
    /// longer stores.
    NotInSession,
    /// 1004: the group does not exist and this relay creates groups only for
    /// a `HelloWithToken` carrying an operator-issued access token.
    AccessTokenRequired,
    /// 1005: the access token is unknown or revoked (at `Hello`), or the
    /// token that created the group was revoked (at `Push`).
    AccessTokenInvalid,
    /// 1006: the group was closed by a member (`CloseGroup`): this device
    /// is not on its keep list, or the grace period ended (a kept device
    /// may `Push` until then). Not retryable: the device was
    /// removed, or the group moved to a new key epoch
    /// (`docs/security.md` "What the relay must do").
    GroupClosed,
    /// 2000: over a rate limit; `retry_after_ms` says when to retry.
    RateLimited,
    /// 2001: a payload is larger than the relay's `max_blob_size`.
    BlobTooLarge,
    /// 2002: the push would take the group over its storage quota.
    GroupQuotaExceeded,
    /// 2003: a `ttl_s` is above the relay's `max_ttl`.
    TtlTooLong,
    /// 2004: the push would take the groups of the group's owner (its
    /// access token, or in open mode the address that created it) over the
    /// owner's storage budget. The message gives used, adding and limit.
    OwnerQuotaExceeded,
    /// 2005: no new group now: the access token has created its
    /// `max_groups`, or the address its new groups for this hour
    /// (`retry_after_ms` says when), or the open relay promises storage to
    /// as many addresses as it can.
    GroupLimitReached,
    /// 3000: the relay is out of capacity (storage, sessions).
    Overloaded,
    /// 3001: the relay is stopping; reconnect later.
    ShuttingDown,
    /// 3002: an internal relay failure (database, bug).
    Internal,
    /// 3003: the relay's database cannot be reached for now (connections
    /// refused or lost, none within the pool's timeout); nothing was
    /// stored. `retry_after_ms` says when to try again; relays of one
    /// cluster share the database, so another of them will not help.
    StorageUnavailable,
    /// A code this version does not know; kept so a newer relay's answer
    /// is still shown to the user.
    Unknown(u16),
}

impl ErrorCode {
    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            ErrorCode::InvalidMessage => 1000,
            ErrorCode::UnsupportedVersion => 1001,
            ErrorCode::Unauthorized => 1002,
            ErrorCode::NotInSession => 1003,
            ErrorCode::AccessTokenRequired => 1004,
            ErrorCode::AccessTokenInvalid => 1005,
            ErrorCode::GroupClosed => 1006,
            ErrorCode::RateLimited => 2000,
            ErrorCode::BlobTooLarge => 2001,
            ErrorCode::GroupQuotaExceeded => 2002,
            ErrorCode::TtlTooLong => 2003,
            ErrorCode::OwnerQuotaExceeded => 2004,
            ErrorCode::GroupLimitReached => 2005,
            ErrorCode::Overloaded => 3000,
            ErrorCode::ShuttingDown => 3001,
            ErrorCode::Internal => 3002,
            ErrorCode::StorageUnavailable => 3003,
            ErrorCode::Unknown(n) => n,
        }
    }

    /// The code for a wire number; unknown numbers give [`ErrorCode::Unknown`].
    pub fn from_u16(n: u16) -> Self {
        match n {
            1000 => ErrorCode::InvalidMessage,
            1001 => ErrorCode::UnsupportedVersion,
            1002 => ErrorCode::Unauthorized,
            1003 => ErrorCode::NotInSession,
            1004 => ErrorCode::AccessTokenRequired,
            1005 => ErrorCode::AccessTokenInvalid,
            1006 => ErrorCode::GroupClosed,
            2000 => ErrorCode::RateLimited,
            2001 => ErrorCode::BlobTooLarge,
            2002 => ErrorCode::GroupQuotaExceeded,
            2003 => ErrorCode::TtlTooLong,
            2004 => ErrorCode::OwnerQuotaExceeded,
            2005 => ErrorCode::GroupLimitReached,
            3000 => ErrorCode::Overloaded,
            3001 => ErrorCode::ShuttingDown,
            3002 => ErrorCode::Internal,
            3003 => ErrorCode::StorageUnavailable,
            other => ErrorCode::Unknown(other),
        }
    }

    /// The SCREAMING_SNAKE name used in docs, logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidMessage => "INVALID_MESSAGE",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::NotInSession => "NOT_IN_SESSION",
            ErrorCode::AccessTokenRequired => "ACCESS_TOKEN_REQUIRED",
            ErrorCode::AccessTokenInvalid => "ACCESS_TOKEN_INVALID",
            ErrorCode::GroupClosed => "GROUP_CLOSED",
            ErrorCode::RateLimited => "RATE_LIMITED",
            ErrorCode::BlobTooLarge => "BLOB_TOO_LARGE",
            ErrorCode::GroupQuotaExceeded => "GROUP_QUOTA_EXCEEDED",
            ErrorCode::TtlTooLong => "TTL_TOO_LONG",
            ErrorCode::OwnerQuotaExceeded => "OWNER_QUOTA_EXCEEDED",
            ErrorCode::GroupLimitReached => "GROUP_LIMIT_REACHED",
            ErrorCode::Overloaded => "OVERLOADED",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::StorageUnavailable => "STORAGE_UNAVAILABLE",
            ErrorCode::Unknown(_) => "UNKNOWN",
        }
    }

    /// True for 1xxx and 2xxx: the client caused it (a bad request, or over a
    /// limit). False for 3xxx: the relay failed or is busy.
    pub fn is_client_error(self) -> bool {
        self.as_u16() < 3000
    }

    /// True where the same request may succeed later unchanged
    /// (RATE_LIMITED, OVERLOADED, SHUTTING_DOWN, INTERNAL,
    /// STORAGE_UNAVAILABLE).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
                | ErrorCode::Internal
                | ErrorCode::StorageUnavailable
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// QUIC application close code with which the relay closes a connection
/// (`Connection::close(code, reason)`); the reason is a short UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 0: normal end of a session (either side).
    Normal,
    /// 1: a frame or message broke the protocol (bad length, unknown tag,
    /// malformed body, a message not allowed in the session's state).
    ProtocolViolation,
    /// 2: a frame's length prefix exceeded the limit.
    FrameTooLarge,
    /// 3: no `Hello` within the handshake timeout (10 s).
    HelloTimeout,
    /// 4: the `Hello` was refused (UNAUTHORIZED, UNSUPPORTED_VERSION,
    /// ACCESS_TOKEN_REQUIRED, ACCESS_TOKEN_INVALID, GROUP_LIMIT_REACHED,
    /// RATE_LIMITED); the
    /// `Error` frame on the first stream says why.
    HelloRejected,
    /// 5: the relay is shutting down.
    ShuttingDown,
    /// 6: the relay is over capacity and drops the session.
    Overloaded,
    /// 7: the relay failed internally while setting up or serving the session.
    Internal,
    /// 8: the device did not take an answer within its write deadline
    /// (`request_timeout_s` plus one second per `min_transfer_rate` bytes):
    /// a reader that stops reading is cut off. Reconnect and read.
    TooSlow,
    /// 9: the session's group was closed (`CloseGroup`) and this device is
    /// not on its keep list, or its grace period ended: the same meaning
    /// as the GROUP_CLOSED error, for a session ended without a request.
    GroupClosed,
    /// A code this version does not know.
    Unknown(u32),
}

impl CloseCode {
    /// The number passed to QUIC's `CONNECTION_CLOSE`.
    pub fn as_u32(self) -> u32 {
        match self {
            CloseCode::Normal => 0,
            CloseCode::ProtocolViolation => 1,
            CloseCode::FrameTooLarge => 2,
            CloseCode::HelloTimeout => 3,
            CloseCode::HelloRejected => 4,
            CloseCode::ShuttingDown => 5,
            CloseCode::Overloaded => 6,
            CloseCode::Internal => 7,
            CloseCode::TooSlow => 8,
            CloseCode::GroupClosed => 9,
            CloseCode::Unknown(n) => n,
        }
    }

    /// The close code for a wire number.
    pub fn from_u32(n: u32) -> Self {
        match n {
            0 => CloseCode::Normal,
            1 => CloseCode::ProtocolViolation,
            2 => CloseCode::FrameTooLarge,
            3 => CloseCode::HelloTimeout,
            4 => CloseCode::HelloRejected,
            5 => CloseCode::ShuttingDown,
            6 => CloseCode::Overloaded,
            7 => CloseCode::Internal,
            8 => CloseCode::TooSlow,
            9 => CloseCode::GroupClosed,
            other => CloseCode::Unknown(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_and_classify() {
        for n in [
            1000, 1001, 1002, 1003, 1004, 1005, 1006, 2000, 2001, 2002, 2003, 2004, 2005, 3000,
            3001, 3002, 3003,
        ] {
            let code = ErrorCode::from_u16(n);
            assert!(!matches!(code, ErrorCode::Unknown(_)), "{n} is known");
            assert_eq!(code.as_u16(), n);
            assert_eq!(code.is_client_error(), n < 3000);
        }
        assert_eq!(ErrorCode::from_u16(4242), ErrorCode::Unknown(4242));
        assert_eq!(ErrorCode::Unauthorized.to_string(), "UNAUTHORIZED (1002)");
    }

    #[test]
    fn close_codes_round_trip() {
        for n in 0..10 {
            assert_eq!(CloseCode::from_u32(n).as_u32(), n);
            assert!(!matches!(CloseCode::from_u32(n), CloseCode::Unknown(_)));
        }
        assert_eq!(CloseCode::from_u32(99), CloseCode::Unknown(99));
    }
}
