//! [`Refusal`]: a failed registry request in Confluent's error shape, `{"error_code", "message"}`,
//! plus keel's `error` object, which Confluent clients ignore. Statuses and codes for the registry
//! API are decided here.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::CONTENT_TYPE;
use crate::model::InvalidVersion;
use crate::registry::Error;

/// Why a registry request failed, in Confluent's shape (plus keel's `error` object).
pub struct Refusal {
    status: StatusCode,
    error_code: u32,
    code: &'static str,
    message: String,
    details: Value,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = json!({
            "error_code": self.error_code,
            "message": self.message,
            "error": {"code": self.code, "message": self.message, "details": self.details},
        });
        (
            self.status,
            [(header::CONTENT_TYPE, CONTENT_TYPE)],
            body.to_string(),
        )
            .into_response()
    }
}

impl Refusal {
    /// No route at this path under `/registry`.
    pub fn route_not_found() -> Self {
        Self::http(
            StatusCode::NOT_FOUND,
            "route_not_found",
            "HTTP 404 Not Found",
        )
    }

    /// A `/registry` route that does not serve this method.
    pub fn method_not_allowed() -> Self {
        Self::http(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "HTTP 405 Method Not Allowed",
        )
    }

    /// A request not answered within the API's request timeout (`api.request_timeout_ms`).
    pub fn request_timeout() -> Self {
        Self::http(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "HTTP 408 Request Timeout",
        )
    }

    /// No valid credential: 401 with Confluent's `error_code` 40101.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self {
            error_code: 40101,
            ..Self::http(StatusCode::UNAUTHORIZED, "unauthenticated", message)
        }
    }

    /// A credential whose grants do not allow this: 403 with Confluent's `error_code` 40301. The
    /// same whether or not the subject exists.
    pub fn forbidden(message: impl Into<String>, details: Value) -> Self {
        Self {
            error_code: 40301,
            details,
            ..Self::http(StatusCode::FORBIDDEN, "forbidden", message)
        }
    }

    /// A request over one of the API's rate limits (`api.rate_limit`); the caller adds the
    /// `retry-after` header.
    pub fn rate_limited(message: String, details: Value) -> Self {
        Self {
            details,
            ..Self::http(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
        }
    }

    /// A failure of HTTP itself, whose Confluent `error_code` is the status, as Confluent's are.
    pub(super) fn http(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_code: u32::from(status.as_u16()),
            code,
            message: message.into(),
            details: json!({}),
        }
    }
}

impl From<Error> for Refusal {
    fn from(err: Error) -> Self {
        let error_code = err.code();
        let (status, code) = match &err {
            Error::SubjectNotFound(_) => (StatusCode::NOT_FOUND, "subject_not_found"),
            Error::VersionNotFound { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
            Error::SchemaNotFound => (StatusCode::NOT_FOUND, "schema_not_found"),
            Error::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, "subject_soft_deleted"),
            Error::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, "subject_not_soft_deleted"),
            Error::VersionSoftDeleted { .. } => (StatusCode::NOT_FOUND, "version_soft_deleted"),
            Error::VersionNotSoftDeleted { .. } => {
                (StatusCode::NOT_FOUND, "version_not_soft_deleted")
            }
            Error::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, "subject_config_not_found"),
            Error::Incompatible { .. } => (StatusCode::CONFLICT, "incompatible_schema"),
            Error::InvalidSchema(_) | Error::UnsupportedSchemaType(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_schema")
            }
            Error::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_version"),
            Error::InvalidCompatibility(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_compatibility_level",
            ),
            Error::UnsupportedText => (StatusCode::UNPROCESSABLE_ENTITY, "unsupported_character"),
            Error::Unavailable(_) | Error::Database(_) => {
                tracing::error!(error = ?err, "schema registry store error");
                let status = if err.is_retriable() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                // Never the driver's text: it can hold SQL.
                return Self {
                    status,
                    error_code,
                    code: "registry_store_error",
                    message: "error in the backend data store".into(),
                    details: json!({}),
                };
            }
        };
        let details = match &err {
            Error::Incompatible { found, .. } => json!({"incompatibilities": found}),
            _ => json!({}),
        };
        Self {
            status,
            error_code,
            code,
            message: err.to_string(),
            details,
        }
    }
}

impl From<InvalidVersion> for Refusal {
    fn from(err: InvalidVersion) -> Self {
        Error::from(err).into()
    }
}

pub(super) fn bad_body(message: String) -> Refusal {
    Refusal::http(StatusCode::BAD_REQUEST, "malformed_json", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_failures_are_503_when_transient_500_otherwise_and_never_show_driver_text() {
        let transient = Refusal::from(Error::Unavailable(sqlx::Error::PoolTimedOut));
        assert_eq!(transient.status, StatusCode::SERVICE_UNAVAILABLE);
        let fault = Refusal::from(Error::from(sqlx::Error::RowNotFound));
        assert_eq!(fault.status, StatusCode::INTERNAL_SERVER_ERROR);
        for refusal in [transient, fault] {
            assert_eq!(refusal.error_code, 50001);
            assert_eq!(refusal.message, "error in the backend data store");
        }
    }
}
