//! `GET /v1/aggregates/{aggregate_type}/{aggregate_id}/state?version=N`: an aggregate's state as
//! keel's model of its type folds its history ([`crate::replay::state`]), as of version `N` (its
//! whole history without). HTTP only.

use axum::extract::State;
use serde::Deserialize;

use super::error::ApiError;
use super::events::{parse_aggregate_type, parse_uuid};
use super::extract::{Path, Query};
use super::AppState;
use crate::replay::state::{self, Error};
use crate::replay::AsOf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    version: Option<i32>,
}

/// `GET /v1/aggregates/{aggregate_type}/{aggregate_id}/state`: 404 `no_aggregate_model` for a type
/// keel has no model of, 404 `aggregate_not_found` for an aggregate with no events.
pub async fn show(
    State(app): State<AppState>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Query(query): Query<StateQuery>,
) -> Result<axum::Json<state::State>, ApiError> {
    let aggregate_type = parse_aggregate_type(aggregate_type)?;
    let aggregate_id = parse_uuid(&aggregate_id, "invalid_aggregate_id", "aggregate id")?;
    let as_of = match query.version {
        None => None,
        Some(v) if v >= 1 => Some(AsOf::Version(v)),
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                "version must be >= 1",
            ))
        }
    };
    let found = state::state_at(
        &app.store,
        &app.registry,
        &aggregate_type,
        aggregate_id,
        as_of,
    )
    .await;
    match found {
        Ok(s) => Ok(axum::Json(s)),
        Err(e @ Error::NoModel(_)) => Err(ApiError::not_found("no_aggregate_model", e.to_string())),
        Err(e @ Error::NoEvents(_)) => {
            Err(ApiError::not_found("aggregate_not_found", e.to_string()))
        }
        Err(Error::Store(e)) => Err(e.into()),
    }
}
