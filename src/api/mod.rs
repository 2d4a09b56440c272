//! The HTTP API (axum), under `/v1`. Handlers validate input into domain types, call the store,
//! and map every error to one JSON shape (see [`error`]). [`server`] serves a router with the
//! connection-level limits (header timeout, header count, connection limit); the request timeout
//! is a layer of [`router`].

mod error;
mod events;
mod extract;
mod health;
mod projections;
pub mod rate;
pub mod server;
mod timeout;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, Uri};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;
pub use health::status_router;

use crate::append::Appender;
use crate::catalog::Catalog;
use crate::config::ApiConfig;
use crate::registry::{self, Registry};
use crate::store::Store;

/// What every handler shares. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// The write path: the validator and the store, for appends.
    pub appender: Appender,
    pub catalog: Arc<Catalog>,
    pub registry: Arc<Registry>,
    pub limits: Arc<ApiConfig>,
    /// Requests and events per principal, failed authentications per peer.
    pub rate: rate::RateLimits,
    pub metrics: Option<PrometheusHandle>,
}

impl AppState {
    /// The page size for a read: the default when absent, 400 when out of range.
    fn page_limit(&self, limit: Option<i64>) -> Result<i64, ApiError> {
        let max = self.limits.max_page_size;
        match limit {
            None => Ok(self.limits.default_page_size),
            Some(n) if (1..=max).contains(&n) => Ok(n),
            Some(_) => Err(ApiError::bad_request(
                "invalid_limit",
                format!("limit must be between 1 and {max}"),
            )),
        }
    }
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let request_timeout = Duration::from_millis(state.limits.request_timeout_ms);
    let registry = state.registry.clone();
    let rate = state.rate.clone();
    Router::new()
        .route("/v1/health/live", get(health::live))
        .route("/v1/health/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route(
            "/v1/aggregates/{aggregate_type}/{aggregate_id}/events",
            post(events::append).get(events::read_stream),
        )
        .route("/v1/events", get(events::query_log))
        .route("/v1/events/{id}", get(events::get_event))
        .merge(projections::routes())
        .with_state(state)
        .merge(registry::api::router(registry))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            timeout::limit,
        ))
        // Before everything that looks at a credential (authentication goes inside this).
        .layer(middleware::from_fn_with_state(rate, rate::guard_peers))
        .layer(TraceLayer::new_for_http())
        .layer(sensitive_headers())
}

/// Marks credentials in request headers as sensitive, so that `Debug` of the headers (in traces,
/// in logs of any layer inside this one) shows `Sensitive` instead of the value. Outermost, so
/// that every layer sees the marks.
fn sensitive_headers() -> SetSensitiveRequestHeadersLayer {
    SetSensitiveRequestHeadersLayer::new([
        header::AUTHORIZATION,
        header::PROXY_AUTHORIZATION,
        header::COOKIE,
    ])
}

/// An unknown route, in the dialect of the API the path belongs to.
async fn not_found(uri: Uri) -> Response {
    if registry::api::owns(uri.path()) {
        return registry::api::Refusal::route_not_found().into_response();
    }
    ApiError::not_found("route_not_found", "no such route").into_response()
}

/// A known route with a method it does not serve, in the dialect of the API the path belongs to.
async fn method_not_allowed(uri: Uri) -> Response {
    if registry::api::owns(uri.path()) {
        return registry::api::Refusal::method_not_allowed().into_response();
    }
    ApiError::method_not_allowed().into_response()
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderMap;

    use super::*;

    #[tokio::test]
    async fn credentials_in_request_headers_are_marked_sensitive_and_others_are_not() {
        let app = Router::new()
            .route(
                "/",
                get(|headers: HeaderMap| async move {
                    let sensitive = |name: &str| headers.get(name).map(|v| v.is_sensitive());
                    axum::Json(serde_json::json!({
                        "authorization": sensitive("authorization"),
                        "proxy-authorization": sensitive("proxy-authorization"),
                        "cookie": sensitive("cookie"),
                        "x-other": sensitive("x-other"),
                        "shown": format!("{headers:?}").contains("s3cret"),
                    }))
                }),
            )
            .layer(sensitive_headers());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = crate::shutdown::Shutdown::new();
        let limits = server::Limits::from(&ApiConfig::default());
        tokio::spawn(server::serve(listener, app, limits, stop.clone()));
        let seen: serde_json::Value = reqwest::Client::new()
            .get(format!("http://{addr}/"))
            .header("authorization", "Bearer s3cret")
            .header("proxy-authorization", "Basic s3cret")
            .header("cookie", "session=s3cret")
            .header("x-other", "visible")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stop.trigger();
        assert_eq!(
            seen,
            serde_json::json!({"authorization": true, "proxy-authorization": true,
                "cookie": true, "x-other": false, "shown": false})
        );
    }
}
