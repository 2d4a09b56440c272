//! The registry API's extractors: axum's, with rejections in Confluent's dialect (a [`Refusal`])
//! instead of axum's plain text.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::StatusCode;

use super::Refusal;

/// Path parameters; a malformed path is a Confluent-shaped 404.
pub(super) struct RPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for RPath<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r| Refusal::http(StatusCode::NOT_FOUND, "invalid_path", r.body_text()))
    }
}

/// Query parameters; a malformed query string is a Confluent-shaped 400.
pub(super) struct RQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for RQuery<T> {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r| Refusal::http(StatusCode::BAD_REQUEST, "invalid_query", r.body_text()))
    }
}

/// The raw body; one over the size limit is a Confluent-shaped 413.
pub(super) struct RBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RBody {
    type Rejection = Refusal;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(Self)
            .map_err(|r| Refusal::http(r.status(), "invalid_body", r.body_text()))
    }
}
