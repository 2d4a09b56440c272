//! Republishing as a job: `POST /v1/replay/republish`'s body, its checks (topic, grant, rate,
//! cursor, event types), what a dry run counts, and the job's start.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::super::{target, Op};
use super::allow;
use super::start::{failed_preview, start, Preview};
use crate::api::auth::RequestId;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::{Action, Caller};
use crate::jobs::{work, Kind, Spec, Started};
use crate::model::EventType;
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
        archive: state.archive.clone(),
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
