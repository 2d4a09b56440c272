//! Health at three levels, and metrics.
//!
//! * `/v1/health/live`: the process answers. Nothing else is checked, so a restart is never
//!   asked for because of a dependency.
//! * `/v1/health/ready`: this process can do its own job. For `keel serve`, its database (a
//!   broker outage is what the outbox absorbs: API pods stay in their Service); for `keel relay`,
//!   its database, its own sink loops and, when it writes canaries, their arrival on each sink.
//! * `/v1/health/pipeline`: the whole pipeline's verdict from [`crate::health::Monitor`], 503
//!   when any component is unhealthy, on every keel process.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};

use super::error::ApiError;
use super::AppState;
use crate::health::{Monitor, Status};
use crate::heartbeat::{StageState, Stages};
use crate::store;

pub async fn live() -> Json<Value> {
    Json(json!({"status": "live"}))
}

/// What a keel process that serves no API (`keel relay`) needs for its health endpoints.
#[derive(Clone)]
pub struct StatusState {
    pub metrics: Option<PrometheusHandle>,
    pub pool: sqlx::PgPool,
    pub monitor: Monitor,
    /// The process's own stages: it is ready only once they have all started and while each of
    /// them beats.
    pub stages: Stages,
    pub stall_after: Duration,
    /// This process writes canaries: it is ready only while they arrive on every sink.
    pub canary: bool,
}

/// The endpoints of a keel process that serves no API (`keel relay`): the three health levels
/// and `/metrics`, with the same shapes as `keel serve`'s.
pub fn status_router(state: StatusState) -> Router {
    Router::new()
        .route("/v1/health/live", get(live))
        .route("/v1/health/ready", get(stages_ready))
        .route(
            "/v1/health/pipeline",
            get(|State(s): State<StatusState>| async move { verdict(&s.monitor).await }),
        )
        .route(
            "/metrics",
            get(|State(s): State<StatusState>| async move { render(s.metrics.as_ref()) }),
        )
        .with_state(state)
}

/// `/v1/health/pipeline`: the monitor's verdict, 503 when any component is unhealthy.
pub async fn pipeline(State(state): State<AppState>) -> Response {
    verdict(&state.monitor).await
}

async fn verdict(monitor: &Monitor) -> Response {
    let verdict = monitor.verdict().await;
    let code = match verdict.status {
        Status::Unhealthy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(verdict)).into_response()
}

/// Ready when the database answers and each of this process's stages beats: a sink loop stuck
/// for `observability.stall_after_ms` makes its relay unready.
async fn stages_ready(State(state): State<StatusState>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => {
            checks.insert("database".into(), json!("ok"));
        }
        Err(e) => {
            ready = false;
            checks.insert("database".into(), json!(format!("unavailable: {e}")));
        }
    }
    let (starting, stages) = state.stages.read();
    if starting > 0 {
        ready = false;
        checks.insert("stages".into(), json!(format!("{starting} still starting")));
    }
    for (component, stage) in stages {
        let said = match stage {
            StageState::Beating(age) if age < state.stall_after => json!("ok"),
            StageState::Beating(age) => json!(format!(
                "its loop has not turned for {:.0} s",
                age.as_secs_f64()
            )),
            StageState::Stopped => json!("stopped"),
        };
        ready &= said == "ok";
        checks.insert(component, said);
    }
    let verdict = state.monitor.current().filter(|_| state.canary);
    for (name, c) in verdict.iter().flat_map(|v| &v.components) {
        if name.starts_with("canary.") {
            let ok = c.status != Status::Unhealthy;
            ready &= ok;
            checks.insert(
                name.clone(),
                json!(if ok { "ok" } else { c.reason.as_str() }),
            );
        }
    }
    let (code, status) = match ready {
        true => (StatusCode::OK, "ready"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "unready"),
    };
    (code, Json(json!({"status": status, "checks": checks}))).into_response()
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
