//! The request timeout (`api.request_timeout_ms`): a request not answered within it of its head
//! being read gets 408 `request_timeout`, in the dialect of the API its path belongs to, with
//! `connection: close`, and its handler is dropped.
//!
//! The body is read inside the handler, so a body that trickles in (R.U.D.Y.) ends here. A
//! handler dropped after its append reached the database may still commit: a client that chose
//! its event ids retries with them, which the append treats as a replay; events sent without ids
//! get new ones on the retry and would be stored twice.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::registry;

/// The middleware; its state is the timeout.
pub async fn limit(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let registry_path = registry::api::owns(request.uri().path());
    let Ok(response) = tokio::time::timeout(timeout, next.run(request)).await else {
        let mut response = if registry_path {
            registry::api::Refusal::request_timeout().into_response()
        } else {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request took longer than the request timeout",
            )
            .with_details(serde_json::json!({"timeout_ms": timeout.as_millis()}))
            .into_response()
        };
        // Whatever of the body is still coming is not read: the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    response
}
