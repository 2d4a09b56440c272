//! `/v1/dlq/{group}`: a consumer group's dead-letter rows, and redriving or skipping them.

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Path, Query};
use super::super::AppState;
use super::{audited, target, Op};
use crate::auth::Caller;
use crate::consumer::dlq::{self, ManageError, Selection};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    key: Option<String>,
    #[serde(default)]
    closed: bool,
}

/// `GET /v1/dlq/{group}?key=&closed=`: the group's rows, oldest first per partition.
pub async fn list(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = dlq::list(
        state.store.pool(),
        &group,
        query.key.as_deref(),
        query.closed,
    )
    .await?;
    Ok(Json(json!({ "rows": rows })))
}

/// `GET /v1/dlq/{group}/rows/{id}`: one row, with its value as base64.
pub async fn show(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let row = dlq::show(state.store.pool(), id)
        .await?
        .filter(|r| r.group_id == group)
        .ok_or_else(|| {
            ApiError::not_found(
                "not_found",
                format!("no dead-letter row {id} in group {group:?}"),
            )
        })?;
    let mut value = json!(row);
    value["value_base64"] = row
        .value
        .as_deref()
        .map(|v| base64::engine::general_purpose::STANDARD.encode(v))
        .into();
    Ok(Json(value))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Which {
    id: Option<i64>,
    key: Option<String>,
    #[serde(default)]
    all: bool,
}

impl Which {
    fn selection(&self) -> Result<Selection, ApiError> {
        match (self.id, &self.key, self.all) {
            (Some(id), None, false) => Ok(Selection::Id(id)),
            (None, Some(key), false) => Ok(Selection::Key(key.clone())),
            (None, None, true) => Ok(Selection::All),
            _ => Err(ApiError::bad_request(
                "invalid_selection",
                "name exactly one of id, key, or all: true",
            )),
        }
    }

    fn target(&self, group: &str) -> Value {
        target(&[
            ("group", json!(group)),
            ("id", json!(self.id)),
            ("key", json!(self.key)),
            ("all", if self.all { json!(true) } else { Value::Null }),
        ])
    }
}

fn manage(e: ManageError) -> ApiError {
    match e {
        ManageError::NotFound(..) => ApiError::not_found("not_found", e.to_string()),
        ManageError::NotParked { .. } => ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_parked",
            e.to_string(),
        ),
        ManageError::Database(e) => e.into(),
    }
}

/// `POST /v1/dlq/{group}/retry`: mark parked rows (and those held behind them) for redelivery.
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(group): Path<String>,
    Body(which): Body<Which>,
) -> Result<Json<Value>, ApiError> {
    let selection = which.selection()?;
    let op = Op::new(&caller, &request, "dlq.retry", which.target(&group));
    let marked = audited(&state, op, |conn| {
        Box::pin(async move { dlq::retry(conn, &group, &selection).await.map_err(manage) })
    })
    .await?;
    Ok(Json(json!({ "marked": marked })))
}

/// `POST /v1/dlq/{group}/skip`: drop rows; skipping one parked row releases those held behind it.
pub async fn skip(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(group): Path<String>,
    Body(which): Body<Which>,
) -> Result<Json<Value>, ApiError> {
    let selection = which.selection()?;
    let op = Op::new(&caller, &request, "dlq.skip", which.target(&group));
    let skipped = audited(&state, op, |conn| {
        Box::pin(async move { dlq::skip(conn, &group, &selection).await.map_err(manage) })
    })
    .await?;
    Ok(Json(json!({ "skipped": skipped })))
}
