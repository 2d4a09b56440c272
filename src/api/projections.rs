//! Read-only access to projections: `/v1/projections` (each one's status) and their rows.

use axum::extract::{Path, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::AppState;
use crate::projection::{self, agent_status, live_schema, service_invocations};
use crate::store;

fn db(e: sqlx::Error) -> ApiError {
    store::Error::from(e).into()
}

/// `GET /v1/projections`
pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut all = Vec::new();
    for p in projection::builtin() {
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

type StatusRow = (
    String,
    i64,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    Option<i64>,
    Option<String>,
    Option<DateTime<Utc>>,
);

async fn status_of(state: &AppState, name: &str) -> Result<Value, ApiError> {
    let pool = state.store.pool();
    let row: Option<StatusRow> = sqlx::query_as(
        "SELECT state, events_applied, last_event_at, last_applied_at, lag_records, error, rebuilt_at
           FROM projections WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .map_err(db)?;
    let Some((run_state, applied, last_event, last_applied, lag, error, rebuilt)) = row else {
        return Ok(json!({"name": name, "state": "not_started", "events_applied": 0}));
    };
    let offsets: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM projection_offsets
          WHERE projection = $1 ORDER BY topic, partition",
    )
    .bind(name)
    .fetch_all(pool)
    .await
    .map_err(db)?;
    let offsets: Vec<Value> = offsets
        .into_iter()
        .map(|(t, p, o)| json!({"topic": t, "partition": p, "next_offset": o}))
        .collect();
    // How old the newest applied event is, while records are waiting: how far behind it runs.
    let lag_seconds = match (lag, last_event) {
        (Some(n), Some(at)) if n > 0 => {
            ((Utc::now() - at).num_milliseconds() as f64 / 1000.0).max(0.0)
        }
        _ => 0.0,
    };
    Ok(json!({
        "name": name,
        "state": run_state,
        "schema": live_schema(name),
        "events_applied": applied,
        "last_event_at": last_event,
        "last_applied_at": last_applied,
        "lag_records": lag,
        "lag_seconds": lag_seconds,
        "error": error,
        "rebuilt_at": rebuilt,
        "position": offsets,
    }))
}

/// 404 until the projection has run once (its tables do not exist yet).
async fn started(state: &AppState, name: &str) -> Result<(), ApiError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projections WHERE name = $1)")
            .bind(name)
            .fetch_one(state.store.pool())
            .await
            .map_err(db)?;
    if exists {
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
    let mut conn = state.store.pool().acquire().await.map_err(db)?;
    let rows = agent_status::list(&mut conn, q.state.as_deref(), after, limit)
        .await
        .map_err(db)?;
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
    let mut conn = state.store.pool().acquire().await.map_err(db)?;
    match agent_status::get(&mut conn, id).await.map_err(db)? {
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
    let mut conn = state.store.pool().acquire().await.map_err(db)?;
    let rows = service_invocations::list(&mut conn, q.service.as_deref())
        .await
        .map_err(db)?;
    Ok(Json(json!({"methods": rows})))
}
