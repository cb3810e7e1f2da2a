//! The Kubernetes-style `Status` body every API error is returned as.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{FieldError, ValidationErrors};

/// Machine-readable reasons, as in Kubernetes.
pub mod reason {
    pub const BAD_REQUEST: &str = "BadRequest";
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const FORBIDDEN: &str = "Forbidden";
    pub const NOT_FOUND: &str = "NotFound";
    pub const ALREADY_EXISTS: &str = "AlreadyExists";
    pub const CONFLICT: &str = "Conflict";
    pub const GONE: &str = "Expired";
    pub const REQUEST_ENTITY_TOO_LARGE: &str = "RequestEntityTooLarge";
    pub const INVALID: &str = "Invalid";
    pub const METHOD_NOT_ALLOWED: &str = "MethodNotAllowed";
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UnsupportedMediaType";
    pub const INTERNAL_ERROR: &str = "InternalError";
    pub const SERVICE_UNAVAILABLE: &str = "ServiceUnavailable";
    pub const TIMEOUT: &str = "Timeout";
}

/// An API error body: `{"apiVersion":"v1","kind":"Status","status":"Failure",...}`.
/// Unknown fields are tolerated so clients can read bodies from newer servers.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[serde(rename_all = "camelCase", default)]
#[error("{message} ({code} {reason})")]
pub struct Status {
    pub api_version: String,
    pub kind: String,
    /// Always `Failure` for errors.
    pub status: String,
    pub message: String,
    pub reason: String,
    /// The HTTP status code.
    pub code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            api_version: "v1".into(),
            kind: "Status".into(),
            status: "Failure".into(),
            message: String::new(),
            reason: String::new(),
            code: 500,
            details: None,
        }
    }
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct StatusDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
}

/// One field-level cause, e.g. `{field: "spec.replicas", message: "must be >= 0", reason: "FieldValueInvalid"}`.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct StatusCause {
    pub field: String,
    pub message: String,
    pub reason: String,
}

impl From<&FieldError> for StatusCause {
    fn from(e: &FieldError) -> Self {
        let reason = if e.message == "required" {
            "FieldValueRequired"
        } else {
            "FieldValueInvalid"
        };
        Self {
            field: e.path.clone(),
            message: e.message.clone(),
            reason: reason.into(),
        }
    }
}

impl Status {
    pub fn failure(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_owned(),
            message: message.into(),
            ..Self::default()
        }
    }

    /// Attaches field causes (keeping any name/kind already in `details`).
    pub fn with_causes(mut self, causes: Vec<StatusCause>) -> Self {
        self.details.get_or_insert_with(StatusDetails::default).causes = causes;
        self
    }

    /// Sets `details.kind` and `details.name`.
    pub fn with_object(mut self, kind: &str, name: &str) -> Self {
        let d = self.details.get_or_insert_with(StatusDetails::default);
        d.kind = Some(kind.to_owned());
        d.name = (!name.is_empty()).then(|| name.to_owned());
        self
    }

    /// 422 Invalid with one cause per field error.
    pub fn invalid(kind: &str, name: &str, errors: &ValidationErrors) -> Self {
        let what = if name.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind} {name:?}")
        };
        Self::failure(422, reason::INVALID, format!("{what} is invalid: {errors}"))
            .with_object(kind, name)
            .with_causes(errors.0.iter().map(StatusCause::from).collect())
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, reason::BAD_REQUEST, message)
    }

    pub fn not_found(kind: &str, name: &str) -> Self {
        Self::failure(404, reason::NOT_FOUND, format!("{kind} {name:?} not found")).with_object(kind, name)
    }

    pub fn already_exists(kind: &str, name: &str) -> Self {
        Self::failure(
            409,
            reason::ALREADY_EXISTS,
            format!("{kind} {name:?} already exists"),
        )
        .with_object(kind, name)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::failure(409, reason::CONFLICT, message)
    }

    pub fn gone(message: impl Into<String>) -> Self {
        Self::failure(410, reason::GONE, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(500, reason::INTERNAL_ERROR, message)
    }

    pub fn is_not_found(&self) -> bool {
        self.code == 404
    }

    pub fn is_conflict(&self) -> bool {
        self.code == 409
    }

    pub fn is_gone(&self) -> bool {
        self.code == 410
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_status_has_causes() {
        let errs = ValidationErrors(vec![FieldError::required("metadata.name")]);
        let s = Status::invalid("Pod", "", &errs);
        assert_eq!(s.code, 422);
        let v = serde_json::to_value(&s).ok();
        assert_eq!(
            v,
            Some(serde_json::json!({
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": "Pod is invalid: metadata.name: required", "reason": "Invalid", "code": 422,
                "details": {"kind": "Pod", "causes": [
                    {"field": "metadata.name", "message": "required", "reason": "FieldValueRequired"}
                ]}
            }))
        );
        let back: Result<Status, _> = serde_json::from_value(v.unwrap_or_default());
        assert_eq!(back.ok(), Some(s));
    }
}
