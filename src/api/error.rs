//! The API's error type: every failure leaves as `{"error": {"code", "message", "details"}}` with a
//! stable, machine-readable `code`. HTTP statuses are decided here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::{registry, store};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
    /// Seconds for a `retry-after` header, if the client should wait before retrying.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: json!({}),
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    /// Adds a `retry-after` header of `seconds`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn batch_too_large(max: usize, events: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("a batch may hold at most {max} events"),
        )
        .with_details(json!({"max_batch_events": max, "events": events}))
    }

    /// 410 `archived`: the read starts below a retention horizon; what it asks for is in the
    /// archive, not the store.
    pub fn archived(a: crate::archive::read::Archived) -> Self {
        Self::new(StatusCode::GONE, "archived", a.to_string()).with_details(json!({
            "event_type": a.event_type,
            "horizon": a.horizon,
            "archive": a.archive,
        }))
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed for this route",
        )
    }

    /// A dependency keel needs for this request is missing or down; retrying later may help.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 403 `forbidden`: the caller's grants do not allow `action` here. Says nothing about
    /// whether the resource exists.
    pub fn forbidden(action: crate::auth::Action) -> Self {
        metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => "forbidden").increment(1);
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this credential is not allowed {action} here"),
        )
        .with_details(json!({"action": action.as_str()}))
    }

    /// keel's own fault; the details stay in the log.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({
            "error": {"code": self.code, "message": self.message, "details": self.details}
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<store::Error> for ApiError {
    fn from(err: store::Error) -> Self {
        use store::Error as E;
        match err {
            E::WrongExpectedVersion { expected, current } => Self::new(
                StatusCode::CONFLICT,
                "wrong_expected_version",
                format!("the aggregate is at version {current}, not the expected one"),
            )
            .with_details(json!({"expected_version": expected, "current_version": current})),
            E::IdempotencyConflict { event_id } => Self::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                format!("event {event_id} is already stored with different content"),
            )
            .with_details(json!({"event_id": event_id})),
            E::DuplicateEventId { event_id } => Self::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "an event id in the batch is already stored",
            )
            .with_details(json!({"event_id": event_id})),
            E::TransactionOrder => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "append_contended",
                "the aggregate is under heavy concurrent writes; retry with the same event ids",
            ),
            E::EmptyBatch => {
                Self::unprocessable("empty_batch", "an append needs at least one event")
            }
            E::UnsupportedText => Self::unprocessable(
                "unsupported_character",
                "the request holds a character that cannot be stored, such as \\u0000",
            ),
            E::Unavailable(source) => {
                tracing::warn!(error = %source, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable; retry with the same event ids",
                )
            }
            E::Stopped => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "keel is shutting down; retry with the same event ids",
            ),
            E::Database(source) => {
                tracing::error!(error = ?source, "database error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// A registry failure on keel's own API (not under `/registry`, which speaks Confluent's dialect):
/// the database's failures as the store's, anything else is keel's fault.
/// A driver error, through the store's one SQLSTATE table (so a handler's own query maps as the
/// store's do).
impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        store::Error::from(e).into()
    }
}

impl From<registry::Error> for ApiError {
    fn from(err: registry::Error) -> Self {
        use registry::Error as E;
        match err {
            E::Unavailable(source) => store::Error::Unavailable(source).into(),
            E::UnsupportedText => store::Error::UnsupportedText.into(),
            other => {
                tracing::error!(error = ?other, "schema registry error");
                Self::internal()
            }
        }
    }
}

impl From<crate::jobs::Error> for ApiError {
    fn from(err: crate::jobs::Error) -> Self {
        use crate::jobs::Error as E;
        let message = err.to_string();
        match err {
            E::NotFound(_) => Self::not_found("job_not_found", message),
            E::NotRunning { state, .. } => {
                Self::new(StatusCode::CONFLICT, "job_not_running", message)
                    .with_details(json!({"state": state}))
            }
            E::NotResumable { state, .. } => {
                Self::new(StatusCode::CONFLICT, "job_not_resumable", message)
                    .with_details(json!({"state": state}))
            }
            E::Database(e) => e.into(),
        }
    }
}

impl From<crate::append::Refusal> for ApiError {
    fn from(refusal: crate::append::Refusal) -> Self {
        Self::unprocessable(refusal.code(), refusal.to_string()).with_details(refusal.details())
    }
}

impl From<crate::auth::Error> for ApiError {
    fn from(err: crate::auth::Error) -> Self {
        use crate::auth::Error as E;
        let message = err.to_string();
        match err {
            E::Unauthenticated(_) | E::TokenExpired | E::TokenInvalid(_) => {
                Self::new(StatusCode::UNAUTHORIZED, err.code(), message)
            }
            E::PrincipalExists(_) | E::KeyExists(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            E::PrincipalNotFound(_) | E::KeyNotFound(_) => Self::not_found("not_found", message),
            E::InvalidName(_) | E::InvalidRole(_) => Self::bad_request("invalid_input", message),
            E::Unavailable(_) => {
                Self::unavailable("unavailable", "the database is unavailable; retry later")
            }
            E::Random(_) | E::Database(_) => {
                tracing::error!(error = %format!("{:#}", anyhow::Error::from(err)), "auth store error");
                Self::internal()
            }
        }
    }
}

impl From<crate::append::Error> for ApiError {
    fn from(err: crate::append::Error) -> Self {
        use crate::append::{Error as E, ValidationError as V};
        match err {
            E::Check(V::Refused(refusal)) => refusal.into(),
            E::Check(V::Registry(e)) => e.into(),
            E::Store(e) => e.into(),
            E::Forbidden { index, .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this credential is not allowed event.append for this aggregate type and event type",
            )
            .with_details(json!({"action": "event.append", "index": index})),
        }
    }
}
