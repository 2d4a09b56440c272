//! `/v1/outbox`: each sink's backlog, the parked events, and retrying or skipping them.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Query};
use super::super::AppState;
use super::{audited, target, Op};
use crate::auth::Caller;
use crate::relay::{self, admin, sink::SinkKind};

/// `GET /v1/outbox/status`: the enabled sinks' backlogs.
pub async fn status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let enabled = |sink: &str| match SinkKind::parse(sink) {
        Some(SinkKind::Kafka) => state.relay.kafka.enabled,
        Some(SinkKind::Redis) => state.relay.redis.enabled,
        None => false,
    };
    let sinks: Vec<_> = admin::status(state.store.pool(), &relay::all_partitions())
        .await?
        .into_iter()
        .filter(|s| enabled(&s.sink))
        .collect();
    Ok(Json(json!({ "sinks": sinks })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkedQuery {
    limit: Option<i64>,
}

/// `GET /v1/outbox/parked?limit=`: parked rows and the rows held behind them, oldest first.
pub async fn parked(
    State(state): State<AppState>,
    Query(query): Query<ParkedQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = state.page_limit(query.limit)?;
    let parked = admin::parked(state.store.pool(), limit).await?;
    Ok(Json(json!({ "parked": parked })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Which {
    event_id: Option<Uuid>,
    #[serde(default)]
    all: bool,
    sink: Option<String>,
}

impl Which {
    fn sink(&self) -> Result<Option<SinkKind>, ApiError> {
        self.sink
            .as_deref()
            .map(|s| {
                SinkKind::parse(s).ok_or_else(|| {
                    ApiError::bad_request("invalid_sink", "sink must be \"kafka\" or \"redis\"")
                })
            })
            .transpose()
    }

    fn target(&self) -> Value {
        target(&[
            ("event_id", json!(self.event_id)),
            ("all", if self.all { json!(true) } else { Value::Null }),
            ("sink", json!(self.sink)),
        ])
    }
}

fn nothing_parked() -> ApiError {
    ApiError::not_found("not_found", "no parked event matches")
}

/// `POST /v1/outbox/retry`: re-send a parked event, or every parked event.
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Body(which): Body<Which>,
) -> Result<Json<Value>, ApiError> {
    let sink = which.sink()?;
    let selection = match (which.event_id, which.all) {
        (Some(id), false) => admin::Selection::Event(id, sink),
        (None, true) => admin::Selection::All(sink),
        _ => {
            return Err(ApiError::bad_request(
                "invalid_selection",
                "name an event_id, or set all to true (not both)",
            ))
        }
    };
    let op = Op::new(&caller, &request, "outbox.retry", which.target());
    let one = which.event_id.is_some();
    let released = audited(&state, op, move |conn| {
        Box::pin(async move {
            let n = admin::retry(conn, selection).await?;
            if n == 0 && one {
                return Err(nothing_parked());
            }
            Ok(n)
        })
    })
    .await?;
    Ok(Json(json!({ "released": released })))
}

/// `POST /v1/outbox/skip`: give up on a parked event for a sink.
pub async fn skip(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request): Extension<RequestId>,
    Body(which): Body<Which>,
) -> Result<Json<Value>, ApiError> {
    let sink = which.sink()?;
    let Some(id) = which.event_id.filter(|_| !which.all) else {
        return Err(ApiError::bad_request(
            "invalid_selection",
            "name the event_id to skip (skipping is one event at a time)",
        ));
    };
    let op = Op::new(&caller, &request, "outbox.skip", which.target());
    let skipped = audited(&state, op, move |conn| {
        Box::pin(async move {
            let skipped = admin::skip(conn, admin::Selection::Event(id, sink)).await?;
            if skipped.is_empty() {
                return Err(nothing_parked());
            }
            Ok(skipped)
        })
    })
    .await?;
    for p in &skipped {
        tracing::warn!(event_id = %p.event_id, sink = %p.sink, principal = %caller.name, "skipped a parked event: it will not be delivered to this sink");
    }
    let skipped: Vec<Value> = skipped
        .iter()
        .map(|p| json!({"event_id": p.event_id, "sink": p.sink}))
        .collect();
    Ok(Json(json!({ "skipped": skipped })))
}
