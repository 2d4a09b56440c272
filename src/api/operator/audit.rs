//! `/v1/audit`: the audit log, newest first, and the check of its hash chain.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::error::ApiError;
use super::super::extract::Query;
use super::super::AppState;
use crate::auth::audit;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    before: Option<i64>,
    limit: Option<i64>,
    principal: Option<String>,
    action: Option<String>,
}

/// `GET /v1/audit?before=&limit=&principal=&action=`
pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let query = audit::Query {
        before: q.before,
        limit: state.page_limit(q.limit)?,
        principal: q.principal,
        action: q.action,
    };
    let rows = audit::list(state.store.pool(), &query).await?;
    Ok(Json(json!({ "rows": rows })))
}

/// `GET /v1/audit/verify`: recomputes the chain; `broken_at` names the first row that does not
/// follow from its predecessor.
pub async fn verify(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let found = audit::verify(state.store.pool()).await?;
    Ok(Json(json!(found)))
}
