//! Liveness (the process answers), readiness (the database answers) and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::store;

pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// The endpoints of a keel process that serves no API (`keel relay`): liveness and `/metrics`,
/// with the same handlers and shapes as `keel serve`'s.
pub fn status_router(metrics: Option<PrometheusHandle>) -> Router {
    Router::new().route("/v1/health/live", get(live)).route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { render(metrics.as_ref()) }
        }),
    )
}

/// Ready when the database answers. Also reports how long the log is being held back by the
/// oldest open write transaction (informational: a long one delays delivery, it does not make keel
/// unready).
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    let horizon = store::log::horizon_age(state.store.pool()).await?;
    Ok(Json(json!({
        "status": "ready",
        "checks": {"database": "ok"},
        "log_horizon_age_seconds": horizon,
    })))
}

/// `GET /metrics`, in Prometheus' text format.
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Without keel's recorder there is nothing to render: answer that before asking the database.
    if state.metrics.is_some() {
        let horizon = store::log::horizon_age(state.store.pool()).await?;
        metrics::gauge!(crate::metrics::LOG_HORIZON_AGE).set(horizon);
    }
    render(state.metrics.as_ref())
}

/// Prometheus' text format, or 503 when the embedding program installed its own recorder.
fn render(handle: Option<&PrometheusHandle>) -> Result<Response, ApiError> {
    let Some(handle) = handle else {
        return Err(ApiError::unavailable(
            "metrics_unavailable",
            "the embedding program installed its own metrics recorder",
        ));
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
