//! The client library's errors: one enum, each variant saying what happened
//! in words a user can act on.

use crate::crypto::EnvelopeError;
use std::path::PathBuf;
use sync_protocol::{ErrorCode, ErrorMsg, FrameError};

/// Everything the client library can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// A relay address, invite or other user input is invalid.
    #[error("{0}")]
    InvalidInput(String),
    /// The relay could not be reached.
    #[error("cannot connect to relay {addr}: {reason}")]
    Connect {
        /// The address dialed.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The relay answered with an error frame.
    #[error("relay refused the request: {0}")]
    Relay(ErrorMsg),
    /// The group was closed by a member (GROUP_CLOSED, at `Hello` or a
    /// request, or the relay ended the session with close code 9): this
    /// device was removed, or the group moved to a new key epoch
    /// (docs/security.md "What the relay must do"). Not retryable. Holds
    /// the relay's own words.
    #[error(
        "this group was closed by a member: this device was removed, or the group moved to a new key epoch (relay: {0})"
    )]
    GroupClosed(String),
    /// The relay broke the protocol (unexpected message, bad frame).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The connection or a stream failed mid-request.
    #[error("connection to the relay lost: {0}")]
    ConnectionLost(String),
    /// A blob could not be sealed.
    #[error("cannot seal blob: {0}")]
    Envelope(#[from] EnvelopeError),
    /// A local file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// The device home is missing, incomplete or corrupt.
    #[error("{0}")]
    Home(String),
    /// A request saw no bytes from the relay for the stall timeout.
    #[error("no progress from the relay for {0:?}; the connection looks dead")]
    Stalled(std::time::Duration),
    /// A relay announced a head for the group below one this device has
    /// already seen (on another relay, or as its saved cursor): it is not
    /// an instance of the same relay cluster, or it lost data. Nothing is
    /// pulled from or pushed to it (docs/client.md "Several relays").
    #[error(
        "relay {relay} has the group's head at cursor {head}, behind cursor {known} this device already saw: \
         it does not share the group's history (not an instance of the same relay cluster, or it lost data)"
    )]
    RelayBehind {
        /// The relay.
        relay: String,
        /// The head it announced.
        head: u64,
        /// The cursor this device had already seen.
        known: u64,
    },
    /// Reconnecting failed `attempts` times in a row.
    #[error("gave up after {attempts} attempts to reach the relay; last error: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// The relay's error code, when the relay refused the request.
    pub fn relay_code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Relay(e) => Some(e.error_code()),
            ClientError::GroupClosed(_) => Some(ErrorCode::GroupClosed),
            _ => None,
        }
    }

    /// True when the relay said the group is closed to this device
    /// (GROUP_CLOSED, docs/protocol.md §CloseGroup): a
    /// [`ClientError::GroupClosed`], or a retry loop that gave up
    /// ([`ClientError::GaveUp`]) with one as its last error. Retrying
    /// cannot help: the device was removed, or the group moved to a new key
    /// epoch and its grace ended.
    pub fn is_group_closed(&self) -> bool {
        match self {
            ClientError::GroupClosed(_) => true,
            ClientError::GaveUp { last, .. } => last.is_group_closed(),
            _ => false,
        }
    }

    /// True for failures of the connection (not of the request): the
    /// request may be repeated on a new connection.
    pub fn is_transport(&self) -> bool {
        match self {
            ClientError::ConnectionLost(_)
            | ClientError::Stalled(_)
            | ClientError::Connect { .. } => true,
            ClientError::Relay(e) => e.error_code() == ErrorCode::ShuttingDown,
            _ => false,
        }
    }

    /// The error for an `Error` frame from the relay: GROUP_CLOSED as
    /// [`ClientError::GroupClosed`], every other code as
    /// [`ClientError::Relay`].
    pub fn from_relay(e: ErrorMsg) -> ClientError {
        if e.error_code() == ErrorCode::GroupClosed {
            ClientError::GroupClosed(e.message)
        } else {
            ClientError::Relay(e)
        }
    }

    /// Wrap an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> ClientError {
        let path = path.into();
        move |error| ClientError::Io { path, error }
    }
}

impl From<FrameError> for ClientError {
    fn from(err: FrameError) -> Self {
        match err {
            FrameError::Io(e) => ClientError::ConnectionLost(e.to_string()),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// Result alias.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn gave_up(last: ClientError) -> ClientError {
        ClientError::GaveUp {
            attempts: 3,
            last: Box::new(last),
        }
    }

    #[test]
    fn group_closed_is_recognised_directly_and_behind_a_retry_loop() {
        let closed = || ClientError::from_relay(ErrorMsg::new(ErrorCode::GroupClosed, "closed"));
        assert!(closed().is_group_closed());
        assert!(gave_up(closed()).is_group_closed());
        assert!(gave_up(gave_up(closed())).is_group_closed());
        let other = || ClientError::from_relay(ErrorMsg::new(ErrorCode::Unauthorized, "no"));
        assert!(!other().is_group_closed());
        assert!(!gave_up(other()).is_group_closed());
        assert!(!gave_up(ClientError::ConnectionLost("reset".into())).is_group_closed());
    }
}
