//! Errors to gRPC statuses. Invalid input carries `google.rpc.BadRequest` field
//! violations; overload and outages carry `google.rpc.RetryInfo`; internal causes are
//! logged here and never sent to the client.

use std::time::Duration;

use corvus_storage::StorageError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::auth::AuthError;

/// INVALID_ARGUMENT naming the offending field.
pub fn invalid_argument(field: impl Into<String>, description: impl Into<String>) -> Status {
    let (field, description) = (field.into(), description.into());
    let message = format!("{field}: {description}");
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// A status that tells the client to come back after `retry_after`.
pub fn retryable(code: Code, message: impl Into<String>, retry_after: Duration) -> Status {
    Status::with_error_details(code, message, ErrorDetails::with_retry_info(Some(retry_after)))
}

pub fn storage_status(err: StorageError) -> Status {
    match err {
        StorageError::Unavailable(cause) => {
            tracing::warn!(error = %cause, "storage unavailable");
            retryable(
                Code::Unavailable,
                "storage is unavailable, retry",
                Duration::from_secs(1),
            )
        }
        StorageError::Conflict(cause) => Status::aborted(cause),
        StorageError::Internal(cause) => {
            tracing::error!(error = %cause, "storage error");
            Status::internal("internal error")
        }
    }
}

impl From<AuthError> for Status {
    fn from(err: AuthError) -> Self {
        match err {
            AuthError::MissingKey | AuthError::InvalidKey => Status::unauthenticated(err.to_string()),
            AuthError::WrongWorkspace | AuthError::Forbidden { .. } => Status::permission_denied(err.to_string()),
            AuthError::Storage(e) => storage_status(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field() {
        let status = invalid_argument("events[2].user_id", "blocked identifier value");
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status.get_error_details();
        let violations = &details.bad_request().expect("bad request details").field_violations;
        assert_eq!(violations[0].field, "events[2].user_id");
    }

    #[test]
    fn unavailable_storage_asks_for_a_retry() {
        let status = storage_status(StorageError::Unavailable("down".into()));
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.get_error_details().retry_info().is_some());
        let status = storage_status(StorageError::Internal("secret detail".into()));
        assert!(!status.message().contains("secret"));
    }
}
