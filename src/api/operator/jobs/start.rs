//! Starting the two kinds of job, and previewing them (`"dry_run": true`): the checks (body,
//! grants, the rebuild lock), the audit rows of the start and the end, and the work handed to
//! [`crate::jobs::Jobs::start`]. The HTTP handlers, `resume` and a UI all come through
//! [`start_republish`] and [`start_rebuild`] (and [`preview_republish`], [`preview_rebuild`]),
//! so every way of starting a job checks and records the same things.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::super::auth::RequestId;
use super::super::super::error::ApiError;
use super::super::super::AppState;
use super::super::{target, Op};
use super::allow;
use crate::auth::audit::{self, Entry, Outcome};
use crate::auth::{Action, Caller};
use crate::jobs::{work, Finished, Kind, Spec, Started};
use crate::model::EventType;
use crate::projection::rebuild::{self, RebuildOptions, Until};
use crate::projection::Projection;
use crate::relay::kafka::KafkaSink;
use crate::replay::republish::{self, RepublishOptions};
use crate::store::LogCursor;

/// The body of `POST /v1/replay/republish`, and a republish job's `params`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishBody {
    pub topic: String,
    #[serde(default)]
    pub event_types: Vec<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Resume after this cursor (from a report or a job's row).
    pub after: Option<String>,
    /// Most events per second; 5,000 when absent.
    pub rate: Option<u64>,
    /// Answer what the job would send instead of starting it.
    #[serde(default, skip_serializing)]
    pub dry_run: bool,
}

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

/// What a job would touch, were it started now: "`events` events of `event_types` (all types
/// when empty) between `from` and `to`, after `after`, to `target`".
#[derive(Debug, Clone, Serialize)]
pub struct Preview {
    pub dry_run: bool,
    pub kind: Kind,
    /// The projection or topic.
    pub target: String,
    /// The events it would read (rebuild) or send (republish).
    pub events: u64,
    pub event_types: Vec<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// The cursor it would start after (a rebuild resuming, a republish's `after`).
    pub after: Option<String>,
    /// A rebuild's schema.
    pub schema: Option<String>,
}

/// Kafka's topic name rule: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
fn valid_topic(topic: &str) -> bool {
    (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The audit operation of a republish, checked: topic, grant, then the rest of the body.
async fn checked_republish(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    body: &RepublishBody,
) -> Result<(Op, RepublishOptions), ApiError> {
    if !valid_topic(&body.topic) {
        return Err(ApiError::bad_request(
            "invalid_topic",
            "topic must be 1 to 249 of A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    let op = Op::new(
        caller,
        request,
        "replay.run",
        target(&[("topic", json!(body.topic))]),
    )
    .params(json!({
        "event_types": body.event_types, "from": body.from, "to": body.to,
        "after": body.after, "rate": body.rate,
    }));
    let op = allow(state, caller, op, Action::ReplayRun, &body.topic).await?;
    let rate = body.rate.unwrap_or(5_000);
    if rate == 0 {
        return Err(ApiError::bad_request(
            "invalid_rate",
            "rate must be positive",
        ));
    }
    let after = match body.after.as_deref() {
        None => LogCursor::START,
        Some(token) => LogCursor::decode(token).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "after is not a cursor returned by keel")
        })?,
    };
    let event_types = body
        .event_types
        .iter()
        .map(|t| EventType::parse(t.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::bad_request("invalid_event_type", e.to_string()))?;
    let options = RepublishOptions {
        event_types,
        from: body.from,
        to: body.to,
        after,
        rate,
    };
    Ok((op, options))
}

/// What a republish with `body` would send now.
pub(crate) async fn preview_republish(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    body: &RepublishBody,
) -> Result<Preview, ApiError> {
    let (_, options) = checked_republish(state, caller, request, body).await?;
    let events = republish::count(state.store.pool(), &options)
        .await
        .map_err(failed_preview)?;
    Ok(Preview {
        dry_run: true,
        kind: Kind::Republish,
        target: body.topic.clone(),
        events,
        event_types: body.event_types.clone(),
        from: body.from,
        to: body.to,
        after: body.after.clone(),
        schema: None,
    })
}

/// Starts republishing as `body` says, as `caller`.
pub(crate) async fn start_republish(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    body: RepublishBody,
) -> Result<Started, ApiError> {
    republish_job(state, caller, request, body, None).await
}

/// [`start_republish`], resuming job `resumes` when it is given.
pub(super) async fn republish_job(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    body: RepublishBody,
    resumes: Option<Uuid>,
) -> Result<Started, ApiError> {
    let (op, options) = checked_republish(state, caller, request, &body).await?;
    let kafka = KafkaSink::new(
        &state.kafka_brokers,
        state.relay.kafka.clone(),
        state.catalog.clone(),
        state.registry.clone(),
    )
    .map_err(|e| {
        tracing::error!(error = %format!("{e:#}"), "cannot configure the kafka producer for a republish");
        ApiError::unavailable("kafka_unavailable", "cannot configure the kafka producer; see keel's log")
    })?
    .to_topic(&body.topic);
    let spec = Spec::new(Kind::Republish, &body.topic, json!(body), &caller.name).resuming(resumes);
    let pool = state.store.pool().clone();
    start(state, op, spec, move |sink| {
        work::republish(sink, pool, kafka, body.topic, options)
    })
    .await
}

/// The projection, its options and the audit operation of a rebuild, checked: grant, then the
/// projection, then the body.
async fn checked_rebuild(
    state: &AppState,
    caller: &Caller,
    request: &RequestId,
    name: &str,
    body: &RebuildBody,
) -> Result<(Op, std::sync::Arc<dyn Projection>, RebuildOptions), ApiError> {
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

/// Records the start of `spec` in the audit log and starts it; its end is recorded when the
/// work ends, whoever waits for it.
async fn start<W, F>(state: &AppState, op: Op, spec: Spec, work: W) -> Result<Started, ApiError>
where
    W: FnOnce(crate::jobs::Sink) -> F,
    F: Future<Output = anyhow::Result<Finished>> + Send + 'static,
{
    let pool = state.store.pool().clone();
    let mut params = op.entry.params.clone();
    params["job"] = json!(spec.id);
    if let Some(resumes) = spec.resumes {
        params["resumes"] = json!(resumes);
    }
    let entry = op.entry.params(params);
    audit::record_alone(&pool, &entry.clone().outcome(Outcome::Started, None)).await?;
    let (id, unstarted) = (spec.id, entry.clone());
    let started = state
        .jobs
        .start(spec, |sink| recorded(pool.clone(), entry, id, work(sink)))
        .await;
    match started {
        Ok(started) => Ok(started),
        Err(e) => {
            tracing::error!(error = %e, "cannot start an operator job");
            let entry = unstarted.outcome(Outcome::Failed, Some("the job could not start".into()));
            if let Err(e) = audit::record_alone(&pool, &entry).await {
                tracing::error!(error = %e, "cannot record a job that did not start in the audit log");
            }
            Err(e.into())
        }
    }
}

/// `work`, with its end recorded in the audit log (the report, or why it failed).
async fn recorded(
    pool: sqlx::PgPool,
    entry: Entry,
    job: Uuid,
    work: impl Future<Output = anyhow::Result<Finished>>,
) -> anyhow::Result<Finished> {
    let ended = work.await;
    let entry = match &ended {
        Ok(finished) => entry
            .params(json!({"job": job, "report": finished.report}))
            .outcome(Outcome::Ok, None),
        Err(e) => entry.outcome(Outcome::Failed, Some(format!("{e:#}"))),
    };
    if let Err(e) = audit::record_alone(&pool, &entry).await {
        tracing::error!(error = %e, "cannot record the end of an operator job in the audit log");
    }
    ended
}

/// A preview that could not count: keel's fault (the database), not the request's.
fn failed_preview(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "cannot preview an operator job");
    ApiError::unavailable(
        "preview_failed",
        "cannot count the events the job would touch; see keel's log",
    )
}

/// The body of a resumed job: `params` as they were, with a republish continuing after the
/// old row's cursor and a rebuild never starting over.
pub(super) fn resumed<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T, ApiError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "job_not_resumable",
            format!("the job's parameters no longer make a request: {e}"),
        )
    })
}
