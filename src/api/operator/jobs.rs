//! Long operator jobs over HTTP: republishing history to a topic, and rebuilding a projection.
//!
//! A job is checked (body, grants) before it starts; refusals are ordinary 4xx replies. Once it
//! starts, the reply is 200 with NDJSON lines: `{"state":"started"}`, `{"state":"running",
//! "elapsed_s":..}` about every 2 s, then one `{"state":"done","report":..}` or
//! `{"state":"failed","error":..}`. The job runs in a task of its own: a client that goes away
//! does not stop it (both jobs resume where they stopped when run again). The audit log records
//! its start and its end.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body_, Path};
use super::super::AppState;
use super::{target, Op};
use crate::auth::audit::{self, Outcome};
use crate::auth::{Action, Caller};
use crate::model::EventType;
use crate::projection::rebuild::{rebuild as run_rebuild, RebuildOptions, Until};
use crate::relay::kafka::KafkaSink;
use crate::replay::republish::{republish as run_republish, RepublishOptions};
use crate::shutdown::Shutdown;
use crate::store::LogCursor;

const HEARTBEAT: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepublishBody {
    topic: String,
    #[serde(default)]
    event_types: Vec<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<String>,
    rate: Option<u64>,
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

/// `POST /v1/replay/republish`
pub async fn republish(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Body_(body): Body_<RepublishBody>,
) -> Result<Response, ApiError> {
    if !valid_topic(&body.topic) {
        return Err(ApiError::bad_request(
            "invalid_topic",
            "topic must be 1 to 249 of A-Z, a-z, 0-9, '.', '_' and '-'",
        ));
    }
    let target = target(&[("topic", json!(body.topic))]);
    let op = Op::new(&caller, &request, "replay.run", target.clone()).params(json!({
        "event_types": body.event_types, "from": body.from, "to": body.to,
        "after": body.after, "rate": body.rate,
    }));
    if !caller.access.allows(Action::ReplayRun, &body.topic) {
        return Err(denied(&state, op, Action::ReplayRun).await);
    }
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
    let sink = KafkaSink::new(
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
    let pool = state.store.pool().clone();
    let label = format!("republishing to {}", body.topic);
    start(&state, op, async move {
        let done = run_republish(&pool, &sink, &options, &label, &Shutdown::new()).await?;
        Ok(json!({"sent": done.sent, "cursor": done.cursor.encode(), "interrupted": done.interrupted}))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RebuildBody {
    until: Option<String>,
    aggregate: Option<Uuid>,
    #[serde(default)]
    restart: bool,
    page: Option<i64>,
}

/// `POST /v1/projections/{name}/rebuild`
pub async fn rebuild(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: RebuildBody = super::optional_body(&body)?;
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
    let op = Op::new(&caller, &request, "projection.rebuild", json!({"projection": name}))
        .params(json!({"until": body.until, "aggregate": body.aggregate, "restart": body.restart, "page": body.page}));
    let options = RebuildOptions {
        until,
        aggregate: body.aggregate,
        restart: body.restart,
        page: body.page.unwrap_or(10_000),
    };
    let mut guard = rebuild_lock(&state, &name).await?;
    let (pool, registry) = (state.store.pool().clone(), state.registry.clone());
    start(&state, op, async move {
        let report = run_rebuild(
            &pool,
            &registry,
            projection.as_ref(),
            &options,
            std::future::pending(),
        )
        .await;
        // Released before the job reports its end, so the next rebuild may start at once; if
        // this fails (or the task is dropped), closing the connection releases it.
        let _ = sqlx::query(REBUILD_UNLOCK)
            .bind(&name)
            .execute(&mut guard)
            .await;
        let _ = sqlx::Connection::close(guard).await;
        Ok(json!(report?))
    })
    .await
}

const REBUILD_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('keel.rebuild.' || $1))";
const REBUILD_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('keel.rebuild.' || $1))";

/// One rebuild of a projection at a time, across every keel process of the database: a session
/// advisory lock on a connection of the job's own, taken out of the pool so that closing it (at
/// the job's end, or when the process dies) always releases the lock. 409 `job_running` otherwise.
async fn rebuild_lock(state: &AppState, name: &str) -> Result<sqlx::PgConnection, ApiError> {
    let mut conn = state.store.pool().acquire().await?.detach();
    let locked: bool = sqlx::query_scalar(REBUILD_LOCK)
        .bind(name)
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(conn)
    } else {
        Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "job_running",
            format!(
                "a rebuild of {name} is already running; wait for it to end (keel audit list --action projection.rebuild)"
            ),
        ))
    }
}

/// A refusal of the handler's own grant check: audited as `denied`, answered 403.
async fn denied(state: &AppState, op: Op, action: Action) -> ApiError {
    audit::record_denied(state.store.pool(), op.entry).await;
    ApiError::forbidden(action)
}

/// Records the start, runs `job` in a task of its own, and streams its progress.
async fn start(
    state: &AppState,
    op: Op,
    job: impl std::future::Future<Output = anyhow::Result<Value>> + Send + 'static,
) -> Result<Response, ApiError> {
    let pool = state.store.pool().clone();
    audit::record_alone(&pool, &op.entry.clone().outcome(Outcome::Started, None)).await?;
    let (lines, mut received) = mpsc::channel::<String>(8);
    tokio::spawn(async move {
        let started = Instant::now();
        let _ = lines.send(json!({"state": "started"}).to_string()).await;
        tokio::pin!(job);
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        let result = loop {
            tokio::select! {
                result = &mut job => break result,
                _ = heartbeat.tick() => {
                    let line = json!({"state": "running", "elapsed_s": started.elapsed().as_secs_f64()});
                    // A client that went away does not stop the job.
                    let _ = lines.send(line.to_string()).await;
                }
            }
        };
        let (line, entry) = match result {
            Ok(report) => (
                json!({"state": "done", "report": report}),
                op.entry
                    .params(json!({"report": report}))
                    .outcome(Outcome::Ok, None),
            ),
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(error = %message, action = %op.entry.action, "an operator job failed");
                (
                    json!({"state": "failed", "error": {"code": "job_failed", "message": message}}),
                    op.entry.outcome(Outcome::Failed, Some(message)),
                )
            }
        };
        if let Err(e) = audit::record_alone(&pool, &entry).await {
            tracing::error!(error = %e, "cannot record the end of an operator job in the audit log");
        }
        let _ = lines.send(line.to_string()).await;
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        received
            .poll_recv(cx)
            .map(|line| line.map(|l| Ok::<_, Infallible>(format!("{l}\n"))))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
