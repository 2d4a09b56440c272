//! Operator jobs over HTTP: republishing history to a topic, rebuilding a projection, and the
//! jobs' rows ([`crate::jobs`]).
//!
//! * `POST /v1/replay/republish` and `POST /v1/projections/{name}/rebuild` check the body and
//!   the grants, then start the job (its row, its `started` audit row) and answer 200 with NDJSON
//!   progress lines ([`stream`]) until it ends; with `"dry_run": true` they answer 200 JSON with
//!   what the job would touch ([`Preview`]) and start nothing. The job runs in a task of its own:
//!   a client that goes away does not stop it. Its end is in its row and in the audit log.
//! * `GET /v1/jobs?state=&kind=&limit=` lists jobs newest first; `GET /v1/jobs/{id}` shows one.
//!   Both need `job.read`.
//! * `POST /v1/jobs/{id}/cancel` asks a running job to stop at its next page boundary, in
//!   whichever keel process runs it (the row ends `cancelled`); `POST /v1/jobs/{id}/resume`
//!   starts a new job with an interrupted, cancelled or failed job's parameters (a rebuild
//!   continues from its cursor, a republish after the old row's cursor) and answers its row.
//!   Both need `job.read` to reach the job, then the grant that starts it on its target
//!   (`projection.rebuild` on the projection, `replay.run` on the topic), checked here; a cancel
//!   is audited as `job.cancel`, a resume as the start of its kind (with `resumes`).
//!
//! Every route calls a `pub(crate)` function that does the whole work from an [`AppState`] and
//! a [`Caller`] ([`start_rebuild`], [`start_republish`], [`preview_rebuild`],
//! [`preview_republish`], [`list_jobs`], [`show_job`], [`cancel_job`], [`resume_job`]), so that
//! another front end (a UI) runs the same checks, writes the same audit rows and starts the
//! same jobs as the API.

mod rebuild;
mod republish;
mod start;
mod stream;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

pub(crate) use rebuild::{preview_rebuild, start_rebuild, RebuildBody};
pub(crate) use republish::{preview_republish, start_republish, RepublishBody};
pub(crate) use start::Preview;

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Path, Query};
use super::super::AppState;
use super::{audited, Op};
use crate::auth::audit;
use crate::auth::{Action, Caller};
use crate::jobs::{self, Filter, Job, Kind, Started};

/// The grant that starts (and so cancels and resumes) a job of `kind`, on its target.
fn action(kind: Kind) -> Action {
    match kind {
        Kind::Rebuild => Action::ProjectionRebuild,
        Kind::Republish => Action::ReplayRun,
    }
}

/// `op` if `caller` may do `action` on `resource`; otherwise the refusal, audited as `denied`
/// for operator actions, and 403.
pub(super) async fn allow(
    state: &AppState,
    caller: &Caller,
    op: Op,
    action: Action,
    resource: &str,
) -> Result<Op, ApiError> {
    if caller.access.allows(action, resource) {
        return Ok(op);
    }
    if action.is_operator() {
        audit::record_denied(state.store.pool(), op.entry).await;
    }
    Err(ApiError::forbidden(action))
}

/// Reads of jobs need `job.read`, which is not audited.
fn may_read(caller: &Caller) -> Result<(), ApiError> {
    match caller.access.allows(Action::JobRead, "*") {
        true => Ok(()),
        false => Err(ApiError::forbidden(Action::JobRead)),
    }
}

/// `POST /v1/replay/republish`
pub async fn republish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Body(body): Body<RepublishBody>,
) -> Result<Response, ApiError> {
    if body.dry_run {
        let preview: Preview = preview_republish(&state, &caller, &request, &body).await?;
        return Ok(Json(preview).into_response());
    }
    Ok(stream::ndjson(
        start_republish(&state, &caller, &request, body).await?,
    ))
}

/// `POST /v1/projections/{name}/rebuild`; the body may be left out.
pub async fn rebuild(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: RebuildBody = super::optional_body(&body)?;
    if body.dry_run {
        let preview: Preview = preview_rebuild(&state, &caller, &request, &name, &body).await?;
        return Ok(Json(preview).into_response());
    }
    Ok(stream::ndjson(
        start_rebuild(&state, &caller, &request, &name, body).await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub state: Option<String>,
    pub kind: Option<String>,
    pub limit: Option<i64>,
}

/// Jobs newest first, as `query` selects them.
pub(crate) async fn list_jobs(
    state: &AppState,
    caller: &Caller,
    query: &ListQuery,
) -> Result<Vec<Job>, ApiError> {
    may_read(caller)?;
    let words = |what: &str, all: &[&str]| format!("{what} must be one of {}", all.join(", "));
    let filter = Filter {
        state: match query.state.as_deref() {
            None => None,
            Some(s) => Some(jobs::State::parse(s).ok_or_else(|| {
                let all: Vec<_> = jobs::State::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request("invalid_state", words("state", &all))
            })?),
        },
        kind: match query.kind.as_deref() {
            None => None,
            Some(k) => Some(Kind::parse(k).ok_or_else(|| {
                let all: Vec<_> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                ApiError::bad_request("invalid_kind", words("kind", &all))
            })?),
        },
        limit: state.page_limit(query.limit)?,
    };
    Ok(state.jobs.list(&filter).await?)
}

/// `GET /v1/jobs?state=&kind=&limit=`
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let jobs = list_jobs(&state, &caller, &query).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

fn job_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::bad_request("invalid_job_id", "a job id is a UUID"))
}

/// Job `id`; 404 `job_not_found`.
pub(crate) async fn show_job(state: &AppState, caller: &Caller, id: Uuid) -> Result<Job, ApiError> {
    may_read(caller)?;
    state
        .jobs
        .get(id)
        .await?
        .ok_or_else(|| jobs::Error::NotFound(id).into())
}

/// `GET /v1/jobs/{id}`
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(show_job(&state, &caller, job_id(&id)?).await?))
}

/// Asks running job `id` to stop, as `caller`: it stops at its next page boundary, wherever it
/// runs. Audited as `job.cancel`; 409 `job_not_running` once it has ended.
pub(crate) async fn cancel_job(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    id: Uuid,
) -> Result<Job, ApiError> {
    let job = show_job(state, caller, id).await?;
    let target = json!({"job": id, "kind": job.kind, "target": job.target});
    let op = Op::new(caller, request, "job.cancel", target);
    let op = allow(state, caller, op, action(job.kind), &job.target).await?;
    let (jobs, by) = (state.jobs.clone(), caller.name.clone());
    audited(state, op, |conn| {
        Box::pin(async move { Ok(jobs.cancel(conn, id, &by).await?) })
    })
    .await
}

/// `POST /v1/jobs/{id}/cancel`
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(
        cancel_job(&state, &caller, &request, job_id(&id)?).await?,
    ))
}

/// Starts job `id` again as `caller`, with its parameters, as a new job that `resumes` it: a
/// rebuild continues from its cursor (it never starts over), a republish after the cursor of
/// the old row's last progress. 409 `job_not_resumable` unless it ended interrupted, cancelled
/// or failed.
pub(crate) async fn resume_job(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    id: Uuid,
) -> Result<Started, ApiError> {
    may_read(caller)?;
    let job = state.jobs.resumable(id).await?;
    match job.kind {
        Kind::Rebuild => {
            let body = RebuildBody {
                restart: false,
                ..start::resumed(&job.params)?
            };
            rebuild::rebuild_job(state, caller, request, &job.target, body, Some(id)).await
        }
        Kind::Republish => {
            let mut body: RepublishBody = start::resumed(&job.params)?;
            body.after = job.cursor.or(body.after);
            republish::republish_job(state, caller, request, body, Some(id)).await
        }
    }
}

/// `POST /v1/jobs/{id}/resume`: the new job's row.
pub async fn resume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    let started = resume_job(&state, &caller, &request, job_id(&id)?).await?;
    Ok(Json(show_job(&state, &caller, started.id).await?))
}
