//! `/v1/sagas`: every saga's counts, a saga's instances, one instance in full, and redriving
//! parked instances (`retry`, `skip`), which are audited.

use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use futures_util::FutureExt;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Path, Query};
use super::super::AppState;
use super::{audited, Op};
use crate::auth::{Action, Caller};
use crate::saga::status::{self, Filter};
use crate::saga::{store, stream_type};

/// `GET /v1/sagas`: the sagas the caller may read.
pub async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let sagas: Vec<_> = status::overview(state.store.pool())
        .await?
        .into_iter()
        .filter(|s| caller.access.allows(Action::SagaRead, &s.name))
        .collect();
    Ok(Json(json!({ "sagas": sagas })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstancesQuery {
    status: Option<String>,
    correlation: Option<String>,
    /// `30s`, `5m`, `1h`, `2d`.
    stuck_for: Option<String>,
    limit: Option<i64>,
}

/// A duration as `30s`, `5m`, `1h` or `2d`, in seconds.
pub fn parse_age(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(per)
}

/// `GET /v1/sagas/{name}/instances?status=&correlation=&stuck_for=&limit=`
pub async fn instances(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<InstancesQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(s) = &query.status {
        if !store::STATUSES.contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "invalid_status",
                format!("status {s:?}: use one of {}", store::STATUSES.join(", ")),
            ));
        }
    }
    let stuck_for_secs = match &query.stuck_for {
        None => None,
        Some(age) => Some(parse_age(age).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_age",
                format!("stuck_for {age:?}: give a number and a unit, as 30s, 5m, 1h or 2d"),
            )
        })?),
    };
    let limit = query.limit.unwrap_or(100);
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 10000",
        ));
    }
    let filter = Filter {
        status: query.status,
        correlation: query.correlation,
        stuck_for_secs,
        limit,
    };
    let rows = status::instances(state.store.pool(), &name, &filter).await?;
    Ok(Json(json!({ "saga": name, "instances": rows })))
}

/// `GET /v1/sagas/{name}/instances/{id}`
pub async fn instance(
    State(state): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = Uuid::parse_str(&id).map_err(|_| {
        ApiError::bad_request(
            "invalid_id",
            format!("{id:?} is not an instance id (a UUID)"),
        )
    })?;
    let detail = status::instance(state.store.pool(), &name, Some(id), None)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("not_found", format!("saga {name} has no instance {id}"))
        })?;
    Ok(Json(json!(detail)))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    instance_id: Option<Uuid>,
    correlation: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `POST /v1/sagas/{name}/retry` with one of `instance_id`, `correlation` or `all`: asks the
/// runners to redrive those parked instances (their inbox, oldest first).
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Path(name): Path<String>,
    Body(request): Body<RetryRequest>,
) -> Result<Json<Value>, ApiError> {
    let chosen = [
        request.instance_id.is_some(),
        request.correlation.is_some(),
        request.all,
    ];
    if chosen.iter().filter(|c| **c).count() != 1 {
        return Err(ApiError::bad_request(
            "invalid_selection",
            "name exactly one of instance_id, correlation or all",
        ));
    }
    let op = Op::new(
        &caller,
        &request_id,
        "saga.retry",
        json!({"saga": name, "instance_id": request.instance_id, "correlation": request.correlation, "all": request.all}),
    );
    let (saga, one) = (name.clone(), !request.all);
    let requested: Vec<Uuid> = audited(&state, op, move |conn| {
        async move {
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE saga_instances SET retry_requested_at = now()
                  WHERE saga = $1 AND status = 'parked'
                    AND ($2::uuid IS NULL OR instance_id = $2)
                    AND ($3::text IS NULL OR correlation = $3)
                 RETURNING instance_id",
            )
            .bind(&saga)
            .bind(request.instance_id)
            .bind(&request.correlation)
            .fetch_all(&mut *conn)
            .await?;
            if one && ids.is_empty() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_parked",
                    format!("saga {saga} has no parked instance by that name; `keel saga list {saga} --status parked` lists them"),
                ));
            }
            Ok(ids)
        }
        .boxed()
    })
    .await?;
    Ok(Json(
        json!({ "saga": name, "requested": requested, "count": requested.len() }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SkipRequest {
    instance_id: Uuid,
    /// The inbox row to drop (`inbox[].id` in the instance); the parked one by default.
    input: Option<i64>,
}

/// `POST /v1/sagas/{name}/skip`: drops one input from a parked instance's inbox (the one it
/// parked on, or `input`) and redrives the rest.
pub async fn skip(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Path(name): Path<String>,
    Body(request): Body<SkipRequest>,
) -> Result<Json<Value>, ApiError> {
    let op = Op::new(
        &caller,
        &request_id,
        "saga.skip",
        json!({"saga": name, "instance_id": request.instance_id, "input": request.input}),
    );
    let saga = name.clone();
    let skipped: Value = audited(&state, op, move |conn| {
        async move {
            // The instance's lock, as a step takes it, so that a redrive is not half-way.
            let stream = crate::model::AggregateType::parse(stream_type(&saga))
                .map_err(|_| ApiError::not_found("not_found", format!("no saga named {saga:?}")))?;
            crate::store::append::lock_aggregates(conn, &[(&stream, request.instance_id)])
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot lock a saga instance");
                    ApiError::internal()
                })?;
            let status: Option<String> = sqlx::query_scalar(
                "SELECT status FROM saga_instances WHERE saga = $1 AND instance_id = $2",
            )
            .bind(&saga)
            .bind(request.instance_id)
            .fetch_optional(&mut *conn)
            .await?;
            if status.as_deref() != Some("parked") {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_parked",
                    format!("instance {} of saga {saga} is not parked", request.instance_id),
                ));
            }
            let dropped: Option<Value> = sqlx::query_scalar(
                "DELETE FROM saga_inbox WHERE id = (
                     SELECT id FROM saga_inbox WHERE saga = $1 AND instance_id = $2
                        AND (($3::bigint IS NULL AND state = 'parked') OR id = $3)
                      ORDER BY id LIMIT 1)
                 RETURNING json_build_object('id', id, 'kind', kind, 'state', state,
                                             'event_id', input->>'id', 'timeout', input->>'name')",
            )
            .bind(&saga)
            .bind(request.instance_id)
            .bind(request.input)
            .fetch_optional(&mut *conn)
            .await?;
            let Some(dropped) = dropped else {
                return Err(ApiError::not_found(
                    "not_found",
                    "no such input in the instance's inbox; `keel saga show` lists it",
                ));
            };
            sqlx::query(
                "UPDATE saga_instances SET retry_requested_at = now() WHERE saga = $1 AND instance_id = $2",
            )
            .bind(&saga)
            .bind(request.instance_id)
            .execute(&mut *conn)
            .await?;
            Ok(dropped)
        }
        .boxed()
    })
    .await?;
    Ok(Json(json!({ "saga": name, "skipped": skipped })))
}
