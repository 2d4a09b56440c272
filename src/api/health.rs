//! Liveness (the process answers), readiness (the database answers) and metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::store;

pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
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
    let Some(handle) = &state.metrics else {
        return Err(ApiError::unavailable(
            "metrics_unavailable",
            "the embedding program installed its own metrics recorder",
        ));
    };
    let horizon = store::log::horizon_age(state.store.pool()).await?;
    metrics::gauge!(crate::metrics::LOG_HORIZON_AGE).set(horizon);
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response())
}
