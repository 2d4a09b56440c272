//! `/v1/outbox`: each sink's backlog, the parked events and their aggregate sequences, and
//! retrying or skipping them ([`super::bulk`]).
//!
//! As in [`super::dlq`], the `pub(crate)` functions are what the routes run, for any caller that
//! holds an [`AppState`] (the UI), and check the caller's grants themselves.

use axum::extract::State;
use axum::{Extension, Json};
use futures_util::future::BoxFuture;
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Query};
use super::super::AppState;
use super::bulk::{self, Outcome, Request, Selection, Verb};
use super::page::{aggregate_filter, Page, SequencesQuery};
use super::{allow, Op};
use crate::auth::{Action, Caller};
use crate::model::sequence::{Change, Chunk, Filter};
use crate::relay::admin::sequence::{self, Id, Scope, Sequence};
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

fn sink(name: Option<&str>) -> Result<Option<SinkKind>, ApiError> {
    name.map(|s| {
        SinkKind::parse(s).ok_or_else(|| {
            ApiError::bad_request("invalid_sink", "sink must be \"kafka\" or \"redis\"")
        })
    })
    .transpose()
}

/// A page of the parked aggregate sequences (of one sink, or of every sink), in (sink,
/// aggregate) order: each with its head, the rows held behind it, and when it failed.
pub(crate) async fn sequences(
    state: &AppState,
    caller: &Caller,
    query: &SequencesQuery,
) -> Result<Page<Sequence>, ApiError> {
    allow(state, caller, None, Action::OutboxRead, "*").await?;
    let limit = state.page_limit(query.limit)?;
    let filter = aggregate_filter(query.filter())?;
    let scope = Scope {
        sink: sink(query.sink.as_deref())?,
        filter: &filter,
        head: None,
    };
    let after: Option<Id> = query.after()?;
    let found = sequence::list(state.store.pool(), &scope, after.as_ref(), limit).await?;
    Ok(Page::of(found, limit, |s| Id {
        sink: s.sink.clone(),
        key: s.key,
        aggregate_type: s.aggregate_type.clone(),
    }))
}

/// `GET /v1/outbox/parked/sequences?sink=&key=&reason_class=&event_type=&older_than=&limit=&after=`
pub async fn sequences_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<SequencesQuery>,
) -> Result<Json<Page<Sequence>>, ApiError> {
    sequences(&state, &caller, &query).await.map(Json)
}

/// The outbox's walk, for [`bulk::run`].
struct Walk<'a> {
    scope: Scope<'a>,
    change: Change,
}

impl bulk::Walker for Walk<'_> {
    type Id = Id;

    fn chunk<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        after: Option<&'a Id>,
        budget: Option<u64>,
        apply: bool,
    ) -> BoxFuture<'a, Result<Chunk<Id>, sqlx::Error>> {
        Box::pin(sequence::walk(
            conn,
            &self.scope,
            self.change,
            after,
            bulk::CHUNK,
            budget,
            apply,
        ))
    }
}

/// Retries or skips the parked sequences that `request` selects (see [`bulk`]): a retry
/// re-sends each head (with a fresh attempt count) and then the rows held behind it, in order; a
/// skip drops each head (its held rows then flow) or, `whole`, every row: those events are never
/// delivered to that sink.
pub(crate) async fn act(
    state: &AppState,
    caller: &Caller,
    request_id: &RequestId,
    verb: Verb,
    request: &Request,
) -> Result<Outcome, ApiError> {
    let action = match verb {
        Verb::Retry => Action::OutboxRetry,
        Verb::Skip => Action::OutboxSkip,
    };
    allow(state, caller, Some(request_id), action, "*").await?;
    if request.id.is_some() {
        return Err(ApiError::bad_request(
            "invalid_selection",
            "id selects a dead-letter row; the outbox selects an event by event_id",
        ));
    }
    let sink = sink(request.sink.as_deref())?;
    let selection = request.selection(request.event_id)?;
    let change = request.change(verb)?;
    let op = Op::new(
        caller,
        request_id,
        action.as_str(),
        request.target(serde_json::Map::new()),
    );
    let (filter, head) = match selection {
        Selection::One(event) => {
            // The event's aggregate: the walk seeks straight to its sequences.
            let key = crate::store::get_event(state.store.pool(), event)
                .await?
                .map(|e| e.aggregate_id);
            let filter = Filter {
                key: Some(key.unwrap_or_default()),
                ..Filter::default()
            };
            (filter, Some(event))
        }
        Selection::Matching(filter) => (aggregate_filter(filter)?, None),
        Selection::All => (Filter::default(), None),
    };
    let walk = Walk {
        scope: Scope {
            sink,
            filter: &filter,
            head,
        },
        change,
    };
    let command = |r: &Request| command_line(verb, r);
    let store = bulk::Store {
        walker: &walk,
        command: &command,
        none: head.map(|_| ApiError::not_found("not_found", "no parked event matches")),
    };
    let outcome = bulk::run(state, op, request, store).await?;
    if change.is_skip() && outcome.touched.unwrap_or_default() > 0 {
        tracing::warn!(sink = ?request.sink, touched = outcome.touched, principal = %caller.name,
            "skipped parked events: they will not be delivered to that sink");
    }
    Ok(outcome)
}

/// The `keel outbox` command that sends `request` to the `verb` route.
pub(crate) fn command_line(verb: Verb, request: &Request) -> String {
    bulk::command_line(
        &["outbox", verb.as_str()],
        request.event_id.map(|id| id.to_string()),
        request,
    )
}

/// `POST /v1/outbox/retry`
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Body(request): Body<Request>,
) -> Result<Json<Outcome>, ApiError> {
    act(&state, &caller, &request_id, Verb::Retry, &request)
        .await
        .map(Json)
}

/// `POST /v1/outbox/skip`
pub async fn skip(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Body(request): Body<Request>,
) -> Result<Json<Outcome>, ApiError> {
    act(&state, &caller, &request_id, Verb::Skip, &request)
        .await
        .map(Json)
}
