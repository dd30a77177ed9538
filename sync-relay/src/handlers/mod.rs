//! Request handlers, one file per request (`Push`, `Pull`, `Ack`). Each takes
//! the session's group and device and answers with a message or an
//! [`ErrorMsg`] carrying its wire code.

pub mod ack;
pub mod pull;
pub mod push;

use crate::storage::StorageError;
use sync_protocol::{ErrorCode, ErrorMsg};

/// Storage failures as wire errors: the client's own (quota, cursor) keep
/// their meaning; database failures become INTERNAL (details only in the log).
impl From<StorageError> for ErrorMsg {
    fn from(err: StorageError) -> Self {
        match &err {
            StorageError::GroupQuotaExceeded { .. } | StorageError::GroupBlobsExceeded { .. } => {
                ErrorMsg::new(ErrorCode::GroupQuotaExceeded, err.to_string())
            }
            StorageError::RelayStorageFull { .. } => ErrorMsg::new(
                ErrorCode::Overloaded,
                "the relay's storage is full; try again later",
            )
            .with_retry_after(60_000),
            StorageError::CursorBeyondHead { .. } => {
                ErrorMsg::new(ErrorCode::InvalidMessage, err.to_string())
            }
            StorageError::Closed => {
                ErrorMsg::new(ErrorCode::ShuttingDown, "the relay is shutting down")
                    .with_retry_after(1000)
            }
            StorageError::Database(_) | StorageError::Migration(_) => {
                tracing::error!(error = %err, "storage failure");
                ErrorMsg::new(ErrorCode::Internal, "internal storage error").with_retry_after(1000)
            }
        }
    }
}
