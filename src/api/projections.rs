//! Read-only access to projections: `/v1/projections` (each one's status) and their rows. HTTP
//! only: the queries live with the projections ([`crate::projection::status`] and each
//! projection's module), and bad input is refused by keel's extractors in keel's error shape.

use axum::extract::State;
use axum::http::Method;
use axum::{Extension, Json};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Path, Query};
use super::routes::{Need, Table};
use super::AppState;
use crate::auth::{Action, Caller};

const GET: Method = Method::GET;
use crate::projection::{self, agent_status, live_schema, service_invocations, status};

/// The routes under `/v1/projections`: every projection's status, and the read APIs of the
/// projections keel ships.
pub(super) fn routes() -> Table<AppState> {
    use Action::ProjectionRead as Read;
    Table::new()
        .at(GET, "/v1/projections", Need::Some(Read), list)
        .at(
            GET,
            "/v1/projections/{name}",
            Need::Path(Read, "name"),
            status,
        )
        .at(
            GET,
            "/v1/projections/agent_status/agents",
            Need::Named(Read, "agent_status"),
            agents,
        )
        .at(
            GET,
            "/v1/projections/agent_status/agents/{agent_id}",
            Need::Named(Read, "agent_status"),
            agent,
        )
        .at(
            GET,
            "/v1/projections/service_invocations/methods",
            Need::Named(Read, "service_invocations"),
            methods,
        )
}

/// `GET /v1/projections`
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let mut all = Vec::new();
    let readable = caller.access.scope(Action::ProjectionRead);
    for p in projection::builtin()
        .into_iter()
        .filter(|p| readable.contains(p.name()))
    {
        all.push(status_of(&state, p.name()).await?);
    }
    Ok(Json(json!({ "projections": all })))
}

/// `GET /v1/projections/{name}`
pub async fn status(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    known(&name)?;
    Ok(Json(status_of(&state, &name).await?))
}

fn known(name: &str) -> Result<(), ApiError> {
    projection::find(name)
        .map(|_| ())
        .map_err(|e| ApiError::not_found("projection_not_found", e.to_string()))
}

async fn status_of(state: &AppState, name: &str) -> Result<Value, ApiError> {
    let mut conn = state.store.pool().acquire().await?;
    let Some(found) = status::of(&mut conn, name).await? else {
        return Ok(json!({"name": name, "state": "not_started", "events_applied": 0}));
    };
    let position = status::positions(&mut conn, name).await?;
    Ok(json!({
        "name": name,
        "state": found.state,
        "schema": live_schema(name),
        "events_applied": found.events_applied,
        "last_event_at": found.last_event_at,
        "last_applied_at": found.last_applied_at,
        "lag_records": found.lag_records,
        "lag_seconds": found.lag_seconds(Utc::now()),
        "error": found.error,
        "rebuilt_at": found.rebuilt_at,
        "position": position,
    }))
}

/// 404 until the projection has run once (its tables do not exist yet).
async fn started(state: &AppState, name: &str) -> Result<(), ApiError> {
    let mut conn = state.store.pool().acquire().await?;
    if status::started(&mut conn, name).await? {
        Ok(())
    } else {
        Err(ApiError::not_found(
            "projection_not_started",
            format!("projection {name} has not run yet: start `keel project` or `keel serve --projections`"),
        ))
    }
}

#[derive(Debug, Deserialize)]
pub struct AgentQuery {
    state: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
}

fn agent_id(text: &str) -> Result<Uuid, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("invalid_agent_id", format!("{text:?} is not a UUID")))
}

/// `GET /v1/projections/agent_status/agents?state=&after=&limit=`
pub async fn agents(
    State(state): State<AppState>,
    Query(q): Query<AgentQuery>,
) -> Result<Json<Value>, ApiError> {
    started(&state, "agent_status").await?;
    let limit = state.page_limit(q.limit)?;
    let after = q.after.as_deref().map(agent_id).transpose()?;
    let mut conn = state.store.pool().acquire().await?;
    let rows = agent_status::list(&mut conn, q.state.as_deref(), after, limit).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.agent_id))
        .flatten();
    Ok(Json(json!({"agents": rows, "next_after": next})))
}

/// `GET /v1/projections/agent_status/agents/{agent_id}`
pub async fn agent(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    started(&state, "agent_status").await?;
    let id = agent_id(&id)?;
    let mut conn = state.store.pool().acquire().await?;
    match agent_status::get(&mut conn, id).await? {
        Some(row) => Ok(Json(json!(row))),
        None => Err(ApiError::not_found(
            "agent_not_found",
            format!("no state change of agent {id} has been applied"),
        )),
    }
}

#[derive(Debug, Deserialize)]
pub struct MethodQuery {
    service: Option<String>,
}

/// `GET /v1/projections/service_invocations/methods?service=`
pub async fn methods(
    State(state): State<AppState>,
    Query(q): Query<MethodQuery>,
) -> Result<Json<Value>, ApiError> {
    started(&state, "service_invocations").await?;
    let mut conn = state.store.pool().acquire().await?;
    let rows = service_invocations::list(&mut conn, q.service.as_deref()).await?;
    Ok(Json(json!({"methods": rows})))
}
