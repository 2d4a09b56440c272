//! Rebuilding a projection as a job: `POST /v1/projections/{name}/rebuild`'s body, its checks
//! (grant, projection, `until` and `aggregate`), what a dry run counts, the rebuild lock, and
//! the job's start.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::super::Op;
use super::allow;
use super::start::{failed_preview, start, Preview};
use crate::api::auth::RequestId;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{Action, Caller};
use crate::jobs::{work, Kind, Spec, Started};
use crate::projection::rebuild::{self, RebuildOptions, Until};
use crate::projection::Projection;

/// The body of `POST /v1/projections/{name}/rebuild`, and a rebuild job's `params`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildBody {
    pub until: Option<String>,
    pub aggregate: Option<Uuid>,
    #[serde(default)]
    pub restart: bool,
    /// Events per transaction; 10,000 when absent.
    pub page: Option<i64>,
    /// Answer what the job would read instead of starting it.
    #[serde(default, skip_serializing)]
    pub dry_run: bool,
}

/// The projection, its options and the audit operation of a rebuild, checked: grant, then the
/// projection, then the body.
async fn checked_rebuild(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    name: &str,
    body: &RebuildBody,
) -> Result<(Op, Arc<dyn Projection>, RebuildOptions), ApiError> {
    let op = Op::new(
        caller,
        request,
        "projection.rebuild",
        json!({"projection": name}),
    )
    .params(json!({"until": body.until, "aggregate": body.aggregate, "restart": body.restart, "page": body.page}));
    let op = allow(state, caller, op, Action::ProjectionRebuild, name).await?;
    let Some(projection) = state.projections.iter().find(|p| p.name() == name).cloned() else {
        return Err(ApiError::not_found(
            "projection_not_found",
            format!("no projection named {name:?}"),
        ));
    };
    let until = body
        .until
        .as_deref()
        .map(str::parse::<Until>)
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_until", e))?;
    if until.is_some() && body.aggregate.is_some() {
        return Err(ApiError::bad_request(
            "invalid_selection",
            "until and aggregate cannot be combined",
        ));
    }
    let options = RebuildOptions {
        until,
        aggregate: body.aggregate,
        restart: body.restart,
        page: body.page.unwrap_or(10_000),
        fold_rows: None,
        archive: state.archive.clone(),
    };
    Ok((op, projection, options))
}

/// What a rebuild of projection `name` with `body` would read now.
pub(crate) async fn preview_rebuild(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    name: &str,
    body: &RebuildBody,
) -> Result<Preview, ApiError> {
    let (_, projection, options) = checked_rebuild(state, caller, request, name, body).await?;
    let found = rebuild::preview(state.store.pool(), projection.as_ref(), &options)
        .await
        .map_err(failed_preview)?;
    Ok(Preview {
        dry_run: true,
        kind: Kind::Rebuild,
        target: name.to_owned(),
        events: found.events,
        event_types: projection
            .event_types()
            .iter()
            .map(|t| t.to_string())
            .collect(),
        from: None,
        to: None,
        after: found.resumes_after.map(|c| c.encode()),
        schema: Some(found.schema),
    })
}

/// Starts rebuilding projection `name` as `body` says, as `caller`. 409 `job_running` while a
/// rebuild of it runs in any keel process of the database.
pub(crate) async fn start_rebuild(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    name: &str,
    body: RebuildBody,
) -> Result<Started, ApiError> {
    rebuild_job(state, caller, request, name, body, None).await
}

/// [`start_rebuild`], resuming job `resumes` when it is given.
pub(super) async fn rebuild_job(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    name: &str,
    body: RebuildBody,
    resumes: Option<Uuid>,
) -> Result<Started, ApiError> {
    let (op, projection, options) = checked_rebuild(state, caller, request, name, &body).await?;
    let pool = state.store.pool().clone();
    let Some(lock) = work::RebuildLock::take(&pool, name).await? else {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "job_running",
            format!("a rebuild of {name} is already running; wait for it to end (keel jobs list --kind rebuild)"),
        ));
    };
    let spec = Spec::new(Kind::Rebuild, name, json!(body), &caller.name).resuming(resumes);
    let registry = state.registry.clone();
    start(state, op, spec, move |sink| {
        work::rebuild(sink, pool, registry, projection, options, lock)
    })
    .await
}
