//! The one mapping from every failure to an HTTP status and a Kubernetes-style `Status` body.

use wisp_api::{Status, StatusCause, ValidationErrors};
use wisp_store::StoreError;

/// An API failure; [`ApiError::status`] turns it into the response body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    StoreTooLarge(String),
    #[error("{kind} {name:?} is invalid: {errors}")]
    Invalid {
        kind: String,
        name: String,
        errors: ValidationErrors,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_secs: u64 },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::BadRequest(_) => 400,
            ApiError::Unauthorized(_) => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::NotFound(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::AlreadyExists(_) | ApiError::Conflict(_) => 409,
            ApiError::Gone(_) => 410,
            ApiError::TooLarge { .. } | ApiError::StoreTooLarge(_) => 413,
            ApiError::Invalid { .. } => 422,
            ApiError::Unavailable(_) => 503,
            ApiError::RequestTimeout(_) => 408,
            ApiError::TooManyRequests { .. } => 429,
            ApiError::Internal(_) => 500,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unauthorized(_) => "Unauthorized",
            ApiError::Forbidden(_) => "Forbidden",
            ApiError::NotFound(_) => "NotFound",
            ApiError::MethodNotAllowed(_) => "MethodNotAllowed",
            ApiError::AlreadyExists(_) => "AlreadyExists",
            ApiError::Conflict(_) => "Conflict",
            ApiError::Gone(_) => "Expired",
            ApiError::TooLarge { .. } | ApiError::StoreTooLarge(_) => "RequestEntityTooLarge",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::Unavailable(_) => "ServiceUnavailable",
            ApiError::RequestTimeout(_) => "Timeout",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalError",
        }
    }

    /// The `Status` body for this error.
    pub fn status(&self) -> Status {
        let status = Status::failure(self.code(), self.reason(), self.to_string());
        match self {
            ApiError::Invalid { errors, .. } => status.with_causes(
                errors
                    .0
                    .iter()
                    .map(|e| StatusCause {
                        field: e.path.clone(),
                        message: e.message.clone(),
                        reason: "FieldValueInvalid".into(),
                    })
                    .collect(),
            ),
            _ => status,
        }
    }

    /// Map a store failure on `what` (e.g. `pods "web"`).
    pub fn from_store(err: StoreError, what: &str) -> Self {
        match err {
            StoreError::AlreadyExists(_) => ApiError::AlreadyExists(format!("{what} already exists")),
            StoreError::NotFound(_) => ApiError::NotFound(format!("{what} not found")),
            StoreError::Conflict { expected, actual, .. } => ApiError::Conflict(format!(
                "Operation cannot be fulfilled on {what}: the object has been modified (resourceVersion \
                 {expected} is stale, current is {actual}); please apply your changes to the latest version \
                 and try again"
            )),
            StoreError::Compacted { requested, compacted } => ApiError::Gone(format!(
                "too old resource version: {requested} (oldest kept: {compacted}); re-list and watch again"
            )),
            StoreError::LeaseNotFound(id) => ApiError::Internal(format!("store lease {id} not found")),
            StoreError::TooLarge(e) => ApiError::StoreTooLarge(format!("{what}: {e}")),
            StoreError::Closed => ApiError::Unavailable("the store is shutting down".into()),
            StoreError::Backend(e) => ApiError::Unavailable(format!("store unavailable: {e}")),
        }
    }
}
