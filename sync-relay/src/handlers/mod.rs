//! Request handlers, one file per request (`Push`, `Pull`, `Ack`,
//! `CloseGroup`). Each takes
//! the session's group and device and answers with a message or an
//! [`ErrorMsg`] carrying its wire code.

pub mod ack;
pub mod close;
pub mod pull;
pub mod push;

use crate::storage::StorageError;
use sync_protocol::{ErrorCode, ErrorMsg};

/// `retry_after_ms` of STORAGE_UNAVAILABLE: about the time a restarted
/// PostgreSQL takes to accept connections again (docs/deploy.md "When the
/// database is away").
pub const UNAVAILABLE_RETRY_MS: u32 = 5_000;

/// The message of GROUP_CLOSED (docs/protocol.md §Errors).
pub const GROUP_CLOSED_MESSAGE: &str = "this group was closed by a member: this device was removed, \
     or the group moved to a new key epoch (the relay serves this device no more in it; devices \
     the close kept may pull and push until its grace period ends)";

/// Storage failures as wire errors, the one place they are mapped: the
/// client's own (quota, admission, cursor) keep their meaning, each with a
/// message that says what to do; a database out of reach becomes
/// STORAGE_UNAVAILABLE with [`UNAVAILABLE_RETRY_MS`]; other database
/// failures become INTERNAL (details only in the log).
/// (A function, not `From`: neither type is this crate's.)
pub fn error_msg(err: StorageError) -> ErrorMsg {
    {
        match &err {
            StorageError::AccessTokenRequired => ErrorMsg::new(
                ErrorCode::AccessTokenRequired,
                "this relay creates new groups only with an access token from its operator: \
                 ask them for one and run `sync-cli init --relay <relay address> --token <token>` \
                 (devices joining an existing group with an invite need no token)",
            ),
            StorageError::AccessTokenInvalid => ErrorMsg::new(
                ErrorCode::AccessTokenInvalid,
                "this access token is not valid on this relay (unknown or revoked): \
                 ask the relay's operator for a new one",
            ),
            StorageError::TokenRevoked => ErrorMsg::new(
                ErrorCode::AccessTokenInvalid,
                "the relay's operator revoked the access token this group was created with: \
                 the group takes no new data (what it stores stays readable until it expires); \
                 create a new group with a new token",
            ),
            StorageError::TokenGroupLimit { count, limit } => ErrorMsg::new(
                ErrorCode::GroupLimitReached,
                format!(
                    "this access token has created {count} groups, the most it allows ({limit}): \
                     ask the relay's operator for a token with a higher --max-groups"
                ),
            ),
            StorageError::AddressGroupRate {
                count,
                limit,
                retry_after_ms,
            } => ErrorMsg::new(
                ErrorCode::GroupLimitReached,
                format!(
                    "your address created {count} new groups this hour, the most this relay allows \
                     ({limit}); try again in {} minutes or use an access token",
                    retry_after_ms.div_ceil(60_000)
                ),
            )
            .with_retry_after((*retry_after_ms).min(u64::from(u32::MAX)) as u32),
            StorageError::AddressesFull { limit } => ErrorMsg::new(
                ErrorCode::GroupLimitReached,
                format!(
                    "this open relay already stores groups for {limit} addresses, all it can \
                     promise storage to: try again later or ask its operator for an access token"
                ),
            ),
            StorageError::OwnerQuotaExceeded {
                kind,
                used,
                adding,
                limit,
            } => {
                let whose = if *kind == "token" {
                    "the groups created with this group's access token"
                } else {
                    "the groups created from this group's address"
                };
                ErrorMsg::new(
                    ErrorCode::OwnerQuotaExceeded,
                    format!(
                        "{whose} store {used} bytes; this push adds {adding}, over their budget of \
                         {limit} bytes: let data expire, or ask the relay's operator for more"
                    ),
                )
            }
            StorageError::TokenNotFound(_) | StorageError::TokenIdTaken(_) => {
                tracing::error!(error = %err, "token management error in a session");
                ErrorMsg::new(ErrorCode::Internal, "internal storage error").with_retry_after(1000)
            }
            StorageError::GroupQuotaExceeded { .. } | StorageError::GroupBlobsExceeded { .. } => {
                ErrorMsg::new(ErrorCode::GroupQuotaExceeded, err.to_string())
            }
            StorageError::RelayStorageFull { .. } => ErrorMsg::new(
                ErrorCode::Overloaded,
                "the relay's storage is full; try again later",
            )
            .with_retry_after(60_000),
            StorageError::UnknownGroup => ErrorMsg::new(
                ErrorCode::NotInSession,
                "this session's group is no longer stored on the relay: reconnect (a new Hello) \
                 to open it again",
            ),
            StorageError::GroupClosed => {
                ErrorMsg::new(ErrorCode::GroupClosed, GROUP_CLOSED_MESSAGE)
            }
            StorageError::CursorBeyondHead { .. } => {
                ErrorMsg::new(ErrorCode::InvalidMessage, err.to_string())
            }
            StorageError::Closed => {
                ErrorMsg::new(ErrorCode::ShuttingDown, "the relay is shutting down")
                    .with_retry_after(1000)
            }
            StorageError::Unavailable(_) => {
                tracing::warn!(error = %err, "database unavailable");
                ErrorMsg::new(
                    ErrorCode::StorageUnavailable,
                    format!(
                        "the relay's database is unavailable; nothing was stored. \
                         Try again in {} s",
                        UNAVAILABLE_RETRY_MS / 1000
                    ),
                )
                .with_retry_after(UNAVAILABLE_RETRY_MS)
            }
            StorageError::Database(_) | StorageError::Migration(_) => {
                tracing::error!(error = %err, "storage failure");
                ErrorMsg::new(ErrorCode::Internal, "internal storage error").with_retry_after(1000)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every admission and budget refusal keeps its own code and tells the
    /// user what to do; the hourly limit carries its wait.
    #[test]
    fn access_refusals_map_to_their_codes_with_a_way_out() {
        let cases = [
            (
                StorageError::AccessTokenRequired,
                ErrorCode::AccessTokenRequired,
                "--token",
            ),
            (
                StorageError::AccessTokenInvalid,
                ErrorCode::AccessTokenInvalid,
                "operator",
            ),
            (
                StorageError::TokenRevoked,
                ErrorCode::AccessTokenInvalid,
                "revoked",
            ),
            (
                StorageError::TokenGroupLimit { count: 3, limit: 3 },
                ErrorCode::GroupLimitReached,
                "--max-groups",
            ),
            (
                StorageError::UnknownGroup,
                ErrorCode::NotInSession,
                "reconnect",
            ),
            (
                StorageError::GroupClosed,
                ErrorCode::GroupClosed,
                "new key epoch",
            ),
            (
                StorageError::AddressesFull { limit: 4 },
                ErrorCode::GroupLimitReached,
                "access token",
            ),
            (
                StorageError::OwnerQuotaExceeded {
                    kind: "token",
                    used: 10,
                    adding: 5,
                    limit: 12,
                },
                ErrorCode::OwnerQuotaExceeded,
                "12 bytes",
            ),
        ];
        for (err, code, hint) in cases {
            let e = error_msg(err);
            assert_eq!(e.error_code(), code, "{e}");
            assert!(e.message.contains(hint), "{e}");
            assert!(e.message.len() <= sync_protocol::limits::MAX_ERROR_MESSAGE);
        }
        let e = error_msg(StorageError::AddressGroupRate {
            count: 10,
            limit: 10,
            retry_after_ms: 90_000,
        });
        assert_eq!(e.error_code(), ErrorCode::GroupLimitReached);
        assert_eq!(e.retry_after_ms, Some(90_000));
        assert!(e.message.contains("2 minutes"), "{e}");
    }

    /// A database out of reach gets its own retry-able code, a message
    /// naming it and the retry hint, without the backend's error text
    /// (addresses, names); any other database failure stays INTERNAL.
    #[test]
    fn an_unreachable_database_is_storage_unavailable_not_internal() {
        let e = error_msg(StorageError::unavailable(
            "pool timed out connecting to 10.0.0.7:5432/secretdb",
        ));
        assert_eq!(e.error_code(), ErrorCode::StorageUnavailable, "{e}");
        assert_eq!(e.retry_after_ms, Some(UNAVAILABLE_RETRY_MS));
        assert!(e.message.contains("database is unavailable"), "{e}");
        assert!(e.message.contains("5 s"), "{e}");
        assert!(!e.message.contains("secretdb"), "{e}");
        assert!(e.error_code().is_retryable());
        let e = error_msg(StorageError::database("duplicate key value"));
        assert_eq!(e.error_code(), ErrorCode::Internal, "{e}");
    }
}
