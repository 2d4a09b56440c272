//! `/v1/aggregates/...` and `/v1/events...`: append, point reads, stream reads and the log query.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Json, Path, Query};
use super::AppState;
use crate::model::VersionSpec;
use crate::model::{
    AggregateType, AppendResult, AppendedEvent, EventType, ExpectedVersion, Metadata, NewEvent,
    RecordedEvent, SchemaRef,
};
use crate::registry::UpcastError;
use crate::schema;
use crate::store::{self, LogCursor, LogFilter};

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

/// An event that passed the checks that need no database, with the schema version it asked for.
struct Checked {
    event: NewEvent,
    schema_version: Option<i32>,
    /// The client chose the id, so this may be a retry of a stored event.
    client_id: bool,
}

/// `POST /v1/aggregates/{aggregate_type}/{aggregate_id}/events`: 201 with the stored events, or 200
/// when the whole batch was already stored (an idempotent retry).
pub async fn append(
    state: State<AppState>,
    path: Path<(String, String)>,
    request: Result<Json<AppendRequest>, ApiError>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let result = match request {
        Ok(request) => append_checked(state, path, request).await,
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

async fn append_checked(
    State(state): State<AppState>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Json(request): Json<AppendRequest>,
) -> Result<Response, ApiError> {
    let aggregate_type = parse_aggregate_type(aggregate_type)?;
    let aggregate_id = parse_uuid(&aggregate_id, "invalid_aggregate_id", "aggregate id")?;
    let checked = validate_batch(&state, request.events)?;
    // As sent, for recognising a retry after the type's schema changed (see `replay_as_sent`).
    // Only a batch whose ids the client chose can be a retry, so only such a batch pays the copy.
    let sent: Option<Vec<(Uuid, String, Value)>> = checked.iter().all(|c| c.client_id).then(|| {
        checked
            .iter()
            .map(|c| {
                (
                    c.event.id,
                    c.event.event_type.to_string(),
                    c.event.payload.clone(),
                )
            })
            .collect()
    });
    let events = apply_schemas(&state, &aggregate_type, checked).await?;
    let appended = state
        .store
        .append(
            &aggregate_type,
            aggregate_id,
            request.expected_version,
            events,
        )
        .await;
    let result = match appended {
        Err(conflict @ store::Error::IdempotencyConflict { .. }) => {
            let replayed = match &sent {
                Some(sent) => replay_as_sent(&state, &aggregate_type, aggregate_id, sent).await?,
                None => None,
            };
            replayed.ok_or_else(|| ApiError::from(conflict))?
        }
        other => other?,
    };
    let status = if result.idempotent_replay {
        StatusCode::OK
    } else {
        metrics::counter!(crate::metrics::APPEND_EVENTS).increment(result.events.len() as u64);
        StatusCode::CREATED
    };
    Ok((status, axum::Json(result)).into_response())
}

/// Recognises a retry whose payloads were normalised against a newer schema than the original
/// (a version registered between the attempts adds defaults, so the stored and the new normalised
/// payloads differ although the client sent the same thing): each sent payload is normalised
/// against the schema its stored event was validated with and compared again.
async fn replay_as_sent(
    state: &AppState,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    sent: &[(Uuid, String, Value)],
) -> Result<Option<AppendResult>, ApiError> {
    let mut events: Vec<AppendedEvent> = Vec::with_capacity(sent.len());
    for (id, event_type, payload) in sent {
        let Some(stored) = store::get_event(state.store.pool(), *id).await? else {
            return Ok(None);
        };
        let same_place = stored.aggregate_type == aggregate_type.as_str()
            && stored.aggregate_id == aggregate_id
            && &stored.event_type == event_type;
        let as_stored = match stored.schema_id {
            Some(schema_id) => {
                let schema = state
                    .registry
                    .parsed_by_id(schema_id)
                    .await
                    .map_err(super::registry_error)?;
                schema::validate(&schema, payload).ok()
            }
            None => Some(payload.clone()),
        };
        let contiguous = events
            .last()
            .is_none_or(|last| stored.version == last.version + 1);
        if !same_place || as_stored.as_ref() != Some(&stored.payload) || !contiguous {
            return Ok(None);
        }
        events.push(AppendedEvent {
            id: stored.id,
            version: stored.version,
            position: stored.position,
        });
    }
    let Some(version) = events.last().map(|e| e.version) else {
        return Ok(None);
    };
    Ok(Some(AppendResult {
        aggregate_type: aggregate_type.clone(),
        aggregate_id,
        version,
        events,
        idempotent_replay: true,
    }))
}

/// Turns the request's events into [`NewEvent`]s, refusing the whole batch on the first problem
/// with the event's index in `details`.
fn validate_batch(state: &AppState, inputs: Vec<EventInput>) -> Result<Vec<Checked>, ApiError> {
    let limits = &state.limits;
    if inputs.is_empty() {
        return Err(ApiError::unprocessable(
            "empty_batch",
            "an append needs at least one event",
        ));
    }
    if inputs.len() > limits.max_batch_events {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "a batch may hold at most {} events",
                limits.max_batch_events
            ),
        )
        .with_details(
            json!({"max_batch_events": limits.max_batch_events, "events": inputs.len()}),
        ));
    }
    let mut seen = std::collections::HashSet::with_capacity(inputs.len());
    let mut events = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.into_iter().enumerate() {
        let at = |err: ApiError| at_index(err, index);
        let event_type = EventType::parse(input.event_type)
            .map_err(|e| at(ApiError::unprocessable("invalid_event_type", e.to_string())))?;
        if !input.payload.is_object() {
            return Err(at(ApiError::unprocessable(
                "invalid_payload",
                "payload must be a JSON object",
            )));
        }
        let metadata = Metadata::parse(input.metadata.unwrap_or_default())
            .map_err(|e| at(ApiError::unprocessable("invalid_metadata", e.to_string())))?;
        let id = input.id.unwrap_or_else(Uuid::now_v7);
        if !seen.insert(id) {
            return Err(at(ApiError::unprocessable(
                "duplicate_event_id",
                format!("event id {id} appears twice in the batch"),
            )));
        }
        events.push(Checked {
            event: NewEvent {
                id,
                event_type,
                payload: input.payload,
                metadata,
                schema: None,
            },
            schema_version: input.schema_version,
            client_id: input.id.is_some(),
        });
    }
    Ok(events)
}

/// Adds the event's index to an error's details.
fn at_index(err: ApiError, index: usize) -> ApiError {
    let mut details = err.details.as_object().cloned().unwrap_or_default();
    details.insert("index".into(), json!(index));
    err.with_details(Value::Object(details))
}

/// The checks that need the registry: the event type exists, belongs to this aggregate type, and
/// its payload conforms to the schema (the latest version unless the event names one). Payloads
/// come out normalised (defaults filled in) and each event records its schema.
async fn apply_schemas(
    state: &AppState,
    aggregate_type: &AggregateType,
    checked: Vec<Checked>,
) -> Result<Vec<NewEvent>, ApiError> {
    let mut events = Vec::with_capacity(checked.len());
    for (
        index,
        Checked {
            mut event,
            schema_version,
            ..
        },
    ) in checked.into_iter().enumerate()
    {
        let at = |err: ApiError| at_index(err, index);
        let event_type = &event.event_type;
        let schema = state
            .registry
            .event_schema(event_type.as_str(), schema_version)
            .await
            .map_err(|e| at(super::registry_error(e)))?;
        let Some(schema) = schema else {
            return Err(at(match schema_version {
                None => ApiError::unprocessable(
                    "unknown_event_type",
                    format!("event type {event_type} is not registered"),
                )
                .with_details(json!({"event_type": event_type})),
                Some(v) => ApiError::unprocessable(
                    "unknown_schema_version",
                    format!("event type {event_type} has no schema version {v}"),
                )
                .with_details(json!({"event_type": event_type, "schema_version": v})),
            }));
        };
        if let Some(required) = state
            .catalog
            .get(event_type)
            .and_then(|e| e.spec.aggregate_type.as_ref())
        {
            if required != aggregate_type {
                return Err(at(ApiError::unprocessable(
                    "aggregate_type_mismatch",
                    format!("events of type {event_type} belong to aggregates of type {required}"),
                )
                .with_details(
                    json!({"event_type": event_type, "aggregate_type": required}),
                )));
            }
        }
        if state.limits.validate_payloads {
            event.payload = schema::validate(&schema.schema, &event.payload).map_err(|e| {
                at(ApiError::unprocessable(
                    "schema_validation_failed",
                    format!(
                        "payload does not match schema version {} of {event_type}: {e}",
                        schema.version
                    ),
                )
                .with_details(json!({
                    "path": e.path,
                    "expected": e.expected,
                    "schema_id": schema.id,
                    "schema_version": schema.version,
                })))
            })?;
            event.schema = Some(SchemaRef {
                id: schema.id,
                version: schema.version,
            });
        }
        events.push(event);
    }
    Ok(events)
}

/// `GET /v1/events/{id}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    schema_version: Option<String>,
}

pub async fn get_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<EventQuery>,
) -> Result<Response, ApiError> {
    let id = parse_uuid(&id, "invalid_event_id", "event id")?;
    let wanted = wanted_version(query.schema_version.as_deref())?;
    match store::get_event(state.store.pool(), id).await? {
        Some(event) => {
            let mut events = present(&state, vec![event], wanted, true).await?;
            Ok(axum::Json(events.remove(0)).into_response())
        }
        None => Err(ApiError::not_found(
            "event_not_found",
            format!("no event with id {id}"),
        )),
    }
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
    Query(query): Query<LogQuery>,
) -> Result<Response, ApiError> {
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
    };
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

fn parse_aggregate_type(value: String) -> Result<AggregateType, ApiError> {
    AggregateType::parse(value)
        .map_err(|e| ApiError::bad_request("invalid_aggregate_type", e.to_string()))
}

fn parse_uuid(value: &str, code: &'static str, what: &str) -> Result<Uuid, ApiError> {
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
            Err(UpcastError::Registry(e)) => return Err(super::registry_error(e)),
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
