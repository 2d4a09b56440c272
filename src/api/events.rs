//! `/v1/aggregates/...` and `/v1/events...`: append, point reads, stream reads and the log query.
//! HTTP only: the append's checks are the write path's ([`crate::append`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::auth::{Action, Caller};
use crate::model::{
    AggregateType, EventType, ExpectedVersion, Metadata, NewEvent, RecordedEvent, VersionSpec,
};
use crate::registry::UpcastError;
use crate::store::{self, LogCursor, LogFilter};
use crate::telemetry;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    #[serde(default = "any_version")]
    expected_version: ExpectedVersion,
    events: Vec<EventInput>,
}

fn any_version() -> ExpectedVersion {
    ExpectedVersion::Any
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventInput {
    id: Option<Uuid>,
    #[serde(rename = "type")]
    event_type: String,
    payload: Value,
    metadata: Option<Map<String, Value>>,
    /// Validate against this version of the event type's schema instead of the latest.
    schema_version: Option<i32>,
}

/// `POST /v1/aggregates/{aggregate_type}/{aggregate_id}/events`: 201 with the stored events, or 200
/// when the whole batch was already stored (an idempotent retry).
///
/// With trace export on, each event whose metadata has no `traceparent` stores the context of the
/// `keel.append` span, a child of the request's (which continues the client's `traceparent`
/// header, see `api::trace`): the relay's and the consumers' spans join its trace.
pub async fn append(
    state: State<AppState>,
    caller: Extension<Caller>,
    path: Path<(String, String)>,
    request: Result<Json<AppendRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = match request {
        Ok(request) => append_checked(state, caller, path, request).await,
        Err(rejected) => Err(rejected),
    };
    let outcome = match &result {
        Ok(r) if r.status() == StatusCode::CREATED => "created",
        Ok(_) => "replayed",
        Err(e) if e.status == StatusCode::CONFLICT => "conflict",
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        Err(e) if e.status.is_client_error() => "rejected",
        Err(_) => "error",
    };
    metrics::counter!(crate::metrics::APPEND_REQUESTS, "outcome" => outcome).increment(1);
    metrics::histogram!(crate::metrics::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
    result
}

/// The append, in the `keel.append` span: the one events store as their creation context.
#[tracing::instrument(name = "keel.append", skip_all, fields(http.request.method = "POST", http.route = "/v1/aggregates/{aggregate_type}/{aggregate_id}/events"))]
async fn append_checked(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Json(request): Json<AppendRequest>,
) -> Result<Response, ApiError> {
    let aggregate_type = parse_aggregate_type(aggregate_type)?;
    let aggregate_id = parse_uuid(&aggregate_id, "invalid_aggregate_id", "aggregate id")?;
    // This span's context (a child of the request's), for events that bring none; `None` when
    // traces are not exported.
    let trace = telemetry::enabled()
        .then(|| telemetry::context::of(&tracing::Span::current()))
        .flatten();
    let events = parse_events(&state, request.events, trace.as_ref())?;
    if caller.method != crate::auth::Method::Open {
        state.rate.check_events(&caller.name, events.len() as u32)?;
    }
    let result = state
        .appender
        .append(
            &caller.access,
            &aggregate_type,
            aggregate_id,
            request.expected_version,
            events,
        )
        .await?;
    let status = if result.idempotent_replay {
        StatusCode::OK
    } else {
        metrics::counter!(crate::metrics::APPEND_EVENTS).increment(result.events.len() as u64);
        StatusCode::CREATED
    };
    Ok((status, axum::Json(result)).into_response())
}

/// The request's events as the write path takes them. Only what is about the request's shape is
/// checked here (the batch limit, names and metadata that do not parse); everything else is the
/// validator's, the same for every path (`crate::append`).
///
/// `trace` (`traceparent`, `tracestate`) goes into the metadata of each event that has no
/// `traceparent` of its own.
fn parse_events(
    state: &AppState,
    inputs: Vec<EventInput>,
    trace: Option<&(String, Option<String>)>,
) -> Result<Vec<NewEvent>, ApiError> {
    let max = state.limits.max_batch_events;
    if inputs.len() > max {
        return Err(ApiError::batch_too_large(max, inputs.len()));
    }
    inputs
        .into_iter()
        .enumerate()
        .map(|(index, input)| {
            let at = |code, message: String| {
                ApiError::unprocessable(code, message).with_details(json!({"index": index}))
            };
            let event_type = EventType::parse(input.event_type)
                .map_err(|e| at("invalid_event_type", e.to_string()))?;
            let mut metadata = Metadata::parse(input.metadata.unwrap_or_default())
                .map_err(|e| at("invalid_metadata", e.to_string()))?;
            if let Some((traceparent, tracestate)) = trace {
                metadata = metadata.or_trace_context(traceparent, tracestate.as_deref());
            }
            Ok(NewEvent {
                id: input.id.unwrap_or_else(Uuid::now_v7),
                event_type,
                payload: input.payload,
                metadata,
                schema_version: input.schema_version,
            })
        })
        .collect()
}

/// `GET /v1/events/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    schema_version: Option<String>,
}

pub async fn get_event(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id, "invalid_event_id", "event id")?;
    let wanted = wanted_version(query.schema_version.as_deref())?;
    let readable = |e: &RecordedEvent| {
        caller
            .access
            .allows(Action::EventRead, e.aggregate_type.as_str())
    };
    // An event the caller may not read answers as a missing one: an id is no existence oracle.
    match store::get_event(state.store.pool(), id)
        .await?
        .filter(readable)
    {
        Some(event) => {
            let mut events = present(&state, vec![event], wanted, true).await?;
            Ok(axum::Json(events.remove(0)).into_response())
        }
        None => Err(event_not_found(id)),
    }
}

/// 404 for an event that is missing or that the caller may not read: the two answer alike.
pub(super) fn event_not_found(id: Uuid) -> ApiError {
    ApiError::not_found("event_not_found", format!("no event with id {id}"))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    from_version: Option<i32>,
    limit: Option<i64>,
    schema_version: Option<String>,
}

/// `GET /v1/aggregates/{aggregate_type}/{aggregate_id}/events`: the aggregate's events in version
/// order. Sees every committed event at once.
pub async fn read_stream(
    State(state): State<AppState>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Query(query): Query<StreamQuery>,
) -> Result<Response, ApiError> {
    let aggregate_type = parse_aggregate_type(aggregate_type)?;
    let aggregate_id = parse_uuid(&aggregate_id, "invalid_aggregate_id", "aggregate id")?;
    let limit = state.page_limit(query.limit)?;
    let wanted = wanted_version(query.schema_version.as_deref())?;
    let from_version = query.from_version.unwrap_or(1);
    if from_version < 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "from_version must be >= 0",
        ));
    }
    let pool = state.store.pool();
    let Some(version) = store::stream_version(pool, &aggregate_type, aggregate_id).await? else {
        return Err(ApiError::not_found(
            "aggregate_not_found",
            format!("aggregate {aggregate_type}/{aggregate_id} has no events"),
        ));
    };
    // Versions below truncated_before were purged (retention): refused, never skipped.
    let truncated: i32 = sqlx::query_scalar(
        "SELECT truncated_before FROM streams WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type.as_str())
    .bind(aggregate_id)
    .fetch_optional(pool)
    .await
    .map_err(store::Error::Database)?
    .unwrap_or(1);
    if from_version < truncated {
        metrics::counter!(crate::metrics::READS_ARCHIVED, "event_type" => "*").increment(1);
        return Err(ApiError::new(
            axum::http::StatusCode::GONE,
            "archived",
            format!("versions of {aggregate_type}/{aggregate_id} before {truncated} were moved to the archive and purged from the store; read from_version={truncated}, or restore them with keel archive restore"),
        )
        .with_details(json!({
            "truncated_before": truncated,
            "archive": state.archive.location(),
        })));
    }
    let events =
        store::read_stream(pool, &aggregate_type, aggregate_id, from_version, limit).await?;
    let events = present(&state, events, wanted, false).await?;
    let next_version = match events.last() {
        Some(last) if last.version < version => Some(last.version + 1),
        _ => None,
    };
    Ok(axum::Json(json!({
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "version": version,
        "events": events,
        "next_version": next_version,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    limit: Option<i64>,
    after: Option<String>,
    offset: Option<i64>,
    schema_version: Option<String>,
}

/// `GET /v1/events`: committed events in log order, filtered, paged with the opaque `next` cursor.
/// `next` is always returned; passing it as `after` continues without skipping anything, even
/// events whose transactions commit later.
pub async fn query_log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let readable = caller.access.scope(Action::EventRead);
    let limit = state.page_limit(query.limit)?;
    let wanted = wanted_version(query.schema_version.as_deref())?;
    let offset = query.offset.unwrap_or(0);
    let max_offset = state.limits.max_offset;
    if !(0..=max_offset).contains(&offset) {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!(
                "offset must be between 0 and {max_offset}; page further with the after cursor"
            ),
        ));
    }
    let after = match query.after.as_deref() {
        None => LogCursor::START,
        Some(token) => LogCursor::decode(token).ok_or_else(|| {
            ApiError::bad_request("invalid_cursor", "after is not a cursor returned by keel")
        })?,
    };
    let filter = LogFilter {
        aggregate_type: query.aggregate_type.map(parse_aggregate_type).transpose()?,
        aggregate_id: query
            .aggregate_id
            .as_deref()
            .map(|id| parse_uuid(id, "invalid_aggregate_id", "aggregate id"))
            .transpose()?,
        event_types: query
            .event_type
            .map(EventType::parse)
            .transpose()
            .map_err(|e| ApiError::bad_request("invalid_event_type", e.to_string()))?
            .into_iter()
            .collect(),
        from: query.from,
        to: query.to,
        correlation_id: query.correlation_id,
        readable: Some(readable.clone()),
    };
    if let Some(t) = &filter.aggregate_type {
        if !readable.contains(t.as_str()) {
            return Err(ApiError::forbidden(Action::EventRead));
        }
    }
    // Below a type's retention horizon some events are only in the archive: refused (410),
    // never a short page that looks like the end.
    if let Some(archived) = crate::archive::read::below_horizon(
        state.store.pool(),
        after,
        &filter,
        state.archive.location(),
    )
    .await
    .map_err(store::Error::Database)?
    {
        return Err(ApiError::archived(archived));
    }
    let page =
        store::log::read_committed_after(state.store.pool(), after, &filter, limit, offset).await?;
    let next = page.last().map_or(after, |e| e.cursor());
    let has_more = page.len() as i64 == limit;
    let events = present(
        &state,
        page.into_iter().map(|e| e.event).collect(),
        wanted,
        false,
    )
    .await?;
    Ok(
        axum::Json(json!({"events": events, "next": next.encode(), "has_more": has_more}))
            .into_response(),
    )
}

pub(super) fn parse_aggregate_type(value: String) -> Result<AggregateType, ApiError> {
    AggregateType::parse(value)
        .map_err(|e| ApiError::bad_request("invalid_aggregate_type", e.to_string()))
}

pub(super) fn parse_uuid(value: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| {
        ApiError::bad_request(code, format!("{what} must be a UUID"))
            .with_details(json!({"value": value.chars().take(100).collect::<String>()}))
    })
}

/// `?schema_version=latest|N`.
fn wanted_version(text: Option<&str>) -> Result<Option<VersionSpec>, ApiError> {
    text.map(|t| {
        VersionSpec::parse(t).map_err(|_| {
            ApiError::bad_request(
                "invalid_query",
                "schema_version must be \"latest\" or a positive integer",
            )
        })
    })
    .transpose()
}

/// Events as the reader asked to see them (see [`crate::registry::Registry::upcast`]).
///
/// A single event (`strict`) that cannot be shown in the wanted version is an error. In a list, such
/// an event (its type has no such version, or it cannot be resolved to it) is returned as stored,
/// with its own `schema_version`, so that one event never blocks a reader's whole page.
async fn present(
    state: &AppState,
    mut events: Vec<RecordedEvent>,
    wanted: Option<VersionSpec>,
    strict: bool,
) -> Result<Vec<RecordedEvent>, ApiError> {
    let Some(wanted) = wanted else {
        return Ok(events);
    };
    for event in &mut events {
        // On failure `upcast` leaves the event untouched.
        match state.registry.upcast(event, wanted).await {
            Ok(()) => {}
            Err(UpcastError::Registry(e)) => return Err(e.into()),
            Err(_) if !strict => {}
            Err(err @ UpcastError::NoSuchVersion { .. }) => {
                return Err(ApiError::not_found(
                    "schema_version_not_found",
                    err.to_string(),
                ))
            }
            Err(err) => {
                return Err(ApiError::unprocessable(
                    "schema_resolution_failed",
                    err.to_string(),
                ))
            }
        }
    }
    Ok(events)
}
