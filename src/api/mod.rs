//! The HTTP API (axum), under `/v1`. Handlers validate input into domain types, call the store,
//! and map every error to one JSON shape (see [`error`]). [`server`] serves a router with the
//! connection-level limits (header timeout, header count, connection limit), over TLS with
//! [`tls`]; the request timeout is a layer of [`router`].

pub mod auth;
mod error;
mod events;
mod extract;
mod health;
mod journey;
pub(crate) mod operator;
mod projections;
pub mod rate;
pub mod routes;
pub mod server;
mod state;
mod timeout;
pub mod tls;
mod trace;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, Method, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Authn, Login, LoginRefused, RequestId};
pub use error::ApiError;
pub use health::{status_router, StatusState};
pub use routes::{Need, Route};

use crate::append::Appender;
use crate::auth::{Action, Caller, Keys};
use crate::catalog::Catalog;
use crate::config::{ApiConfig, RelayConfig};
use crate::projection::Projection;
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
    /// Authentication: the mode and the key store.
    pub authn: Arc<Authn>,
    /// The key store, for principal management; `None` when authentication is off.
    pub keys: Option<Keys>,
    /// The relay's settings and the brokers, for republish jobs and the outbox status.
    pub relay: Arc<RelayConfig>,
    pub kafka_brokers: String,
    /// The projections this process knows, for rebuild jobs.
    pub projections: Arc<[Arc<dyn Projection>]>,
    /// The pipeline monitor behind `/v1/health/pipeline`.
    pub monitor: crate::health::Monitor,
    /// Operator jobs: this process's, and the database's rows.
    pub jobs: crate::jobs::Jobs,
    /// Where `/v1/events/{id}/journey` looks.
    pub journey: Arc<crate::journey::Sources>,
    /// The event archive, for reads below a retention horizon (rebuilds and republishes read
    /// through it; the log and stream reads name it in their 410).
    pub archive: crate::archive::read::Tiered,
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

/// Every route and its guard, built together ([`routes::Table`]): the router serves exactly
/// these routes, and the authorisation tests walk exactly this list.
fn table(state: &AppState) -> routes::Table<AppState> {
    use Method as M;
    let metrics = if state.authn.anonymous_metrics() {
        Need::Anyone
    } else {
        Need::Action(Action::Metrics)
    };
    let stream = "/v1/aggregates/{aggregate_type}/{aggregate_id}/events";
    let mut table = routes::Table::new()
        .at(M::GET, "/v1/health/live", Need::Anyone, health::live)
        .at(M::GET, "/v1/health/ready", Need::Anyone, health::ready)
        .at(
            M::GET,
            "/v1/health/pipeline",
            Need::Anyone,
            health::pipeline,
        )
        .at(M::GET, "/metrics", metrics, health::metrics)
        // Each event's aggregate type and event type are checked by the write path.
        .at(
            M::POST,
            stream,
            Need::Some(Action::EventAppend),
            events::append,
        )
        .at(
            M::GET,
            stream,
            Need::Path(Action::EventRead, "aggregate_type"),
            events::read_stream,
        )
        .at(
            M::GET,
            "/v1/events",
            Need::Some(Action::EventRead),
            events::query_log,
        )
        .at(
            M::GET,
            "/v1/events/{id}",
            Need::Some(Action::EventRead),
            events::get_event,
        )
        // The handler checks the event's aggregate type before it looks any further.
        .at(
            M::GET,
            "/v1/events/{id}/journey",
            Need::Some(Action::EventRead),
            journey::show,
        )
        .at(
            M::GET,
            "/v1/aggregates/{aggregate_type}/{aggregate_id}/state",
            Need::Path(Action::EventRead, "aggregate_type"),
            state::show,
        )
        .merge(projections::routes())
        .merge(operator::routes());
    for (method, path, guard, handler) in registry::api::routes(state.registry.clone()) {
        let handler = handler.layer(middleware::from_fn(readable_subjects));
        table = table.route(method, path, registry_need(guard), handler);
    }
    table
}

/// What a registry route's guard means in grants.
fn registry_need(guard: registry::api::Guard) -> Need {
    use registry::api::{Guard, Op};
    let action = |op| match op {
        Op::Read => Action::RegistryRead,
        Op::Write => Action::RegistryWrite,
        Op::Delete => Action::RegistryDelete,
        Op::Config => Action::RegistryConfig,
    };
    match guard {
        Guard::Open | Guard::Global(Op::Read) => Need::Authenticated,
        Guard::Subject(op) => Need::Path(action(op), "subject"),
        Guard::Readable => Need::Some(Action::RegistryRead),
        Guard::Global(op) => Need::Action(action(op)),
    }
}

/// Tells the registry's handlers which subjects the caller may read.
async fn readable_subjects(mut req: Request, next: Next) -> Response {
    let scope = req
        .extensions()
        .get::<Caller>()
        .map(|c| c.access.scope(Action::RegistryRead))
        .unwrap_or_default();
    req.extensions_mut().insert(registry::api::Readable(scope));
    next.run(req).await
}

/// Every route of the API with its guard.
pub fn route_table(state: &AppState) -> Vec<Route> {
    table(state).into_parts().1
}

pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The API's router with `extra` routes (the dashboard's, see `crate::ui`) served inside the
/// same layers: authentication, rate limits, timeouts, tracing, body limits.
pub fn router_with(state: AppState, extra: Router) -> Router {
    let body_limit = state.limits.max_body_bytes;
    let request_timeout = Duration::from_millis(state.limits.request_timeout_ms);
    let authn = state.authn.clone();
    let rate = state.rate.clone();
    let (routes, _) = table(&state).into_parts();
    routes
        .with_state(state)
        .merge(extra)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal().into_response()
        }))
        .layer(middleware::from_fn_with_state(authn, auth::authenticate))
        .layer(middleware::from_fn_with_state(
            request_timeout,
            timeout::limit,
        ))
        // Before everything that looks at a credential (authentication goes inside this).
        .layer(middleware::from_fn_with_state(rate, rate::guard_peers))
        .layer(
            TraceLayer::new(trace::Classify)
                .make_span_with(trace::request_span)
                .on_response(trace::RecordStatus),
        )
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
    use axum::routing::get;

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
