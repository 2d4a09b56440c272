//! `/v1/dlq`: every group's open dead letters, a group's rows and key sequences, and retrying or
//! skipping them ([`super::bulk`]).
//!
//! The `pub(crate)` functions are what the routes run, for any caller that holds an
//! [`AppState`] (the UI): each checks the caller's grants itself, so that a caller who comes in
//! past the router is refused (and, for changes, audited) as the route would refuse it.

use axum::extract::State;
use axum::{Extension, Json};
use base64::Engine;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::super::auth::RequestId;
use super::super::error::ApiError;
use super::super::extract::{Json as Body, Path, Query};
use super::super::AppState;
use super::bulk::{self, Outcome, Request, Selection, Verb};
use super::page::{Page, SequencesQuery};
use super::{allow, record_failure, Op};
use crate::auth::{Action, Caller};
use crate::consumer::dlq;
use crate::consumer::dlq::sequence::{self, GroupDepth, HeadError, Id, Scope, Sequence};
use crate::model::sequence::{Change, Chunk, Filter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    key: Option<String>,
    #[serde(default)]
    closed: bool,
}

/// `GET /v1/dlq/{group}?key=&closed=`: the group's rows, oldest first per partition.
pub async fn list(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let rows = dlq::list(
        state.store.pool(),
        &group,
        query.key.as_deref(),
        query.closed,
    )
    .await?;
    Ok(Json(json!({ "rows": rows })))
}

/// `GET /v1/dlq/{group}/rows/{id}`: one row, with its value as base64.
pub async fn show(
    State(state): State<AppState>,
    Path((group, id)): Path<(String, i64)>,
) -> Result<Json<Value>, ApiError> {
    let row = dlq::show(state.store.pool(), id)
        .await?
        .filter(|r| r.group_id == group)
        .ok_or_else(|| {
            ApiError::not_found(
                "not_found",
                format!("no dead-letter row {id} in group {group:?}"),
            )
        })?;
    let mut value = json!(row);
    value["value_base64"] = row
        .value
        .as_deref()
        .map(|v| base64::engine::general_purpose::STANDARD.encode(v))
        .into();
    Ok(Json(value))
}

/// A page of the group's key sequences, in key order: each with its head, the number of rows
/// held behind it, and when it first and last failed.
pub(crate) async fn sequences(
    state: &AppState,
    caller: &Caller,
    group: &str,
    query: &SequencesQuery,
) -> Result<Page<Sequence>, ApiError> {
    allow(state, caller, None, Action::DlqRead, group).await?;
    if query.sink.is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            "sink is for the outbox's sequences",
        ));
    }
    let limit = state.page_limit(query.limit)?;
    let filter = query.filter();
    let scope = Scope {
        group,
        filter: &filter,
        head: None,
    };
    let after: Option<Id> = query.after()?;
    let found = sequence::list(state.store.pool(), &scope, after.as_ref(), limit).await?;
    Ok(Page::of(found, limit, |s| Id {
        key: s.key.clone(),
        topic: s.topic.clone(),
        partition: s.partition,
    }))
}

/// `GET /v1/dlq/{group}/sequences?key=&reason_class=&event_type=&older_than=&limit=&after=`
pub async fn sequences_page(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(group): Path<String>,
    Query(query): Query<SequencesQuery>,
) -> Result<Json<Page<Sequence>>, ApiError> {
    sequences(&state, &caller, &group, &query).await.map(Json)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupsQuery {
    /// The last group of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
}

/// The groups with open dead letters, by name.
#[derive(Debug, Clone, Serialize)]
pub struct Groups {
    pub groups: Vec<GroupDepth>,
    /// The `after` of the next page, when more may follow.
    pub next: Option<String>,
}

/// A page of every group with open rows that the caller may read, each with its open depth
/// (counted up to [`sequence::DEPTH_COUNTED`]) and the age of its oldest row.
pub(crate) async fn groups(
    state: &AppState,
    caller: &Caller,
    query: &GroupsQuery,
) -> Result<Groups, ApiError> {
    if !caller.access.allows_some(Action::DlqRead) {
        return Err(ApiError::forbidden(Action::DlqRead));
    }
    let limit = state.page_limit(query.limit)?;
    let found = sequence::groups(state.store.pool(), query.after.as_deref(), limit).await?;
    // The page is cut by the groups found, then filtered: a short page may still have a next.
    let next = (found.len() as i64 == limit)
        .then(|| found.last().map(|g| g.group.clone()))
        .flatten();
    let readable = caller.access.scope(Action::DlqRead);
    let groups = found
        .into_iter()
        .filter(|g| readable.contains(&g.group))
        .collect();
    Ok(Groups { groups, next })
}

/// `GET /v1/dlq?after=&limit=`
pub async fn overview(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<GroupsQuery>,
) -> Result<Json<Groups>, ApiError> {
    groups(&state, &caller, &query).await.map(Json)
}

/// The dead-letter store's walk, for [`bulk::run`].
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

fn head_error(e: HeadError) -> ApiError {
    match e {
        HeadError::NotFound(..) => ApiError::not_found("not_found", e.to_string()),
        HeadError::NotParked { .. } => ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "not_parked",
            e.to_string(),
        ),
        HeadError::Database(e) => e.into(),
    }
}

/// Retries or skips the group's sequences that `request` selects (see [`bulk`]): a retry marks
/// each sequence's parked and held rows for redelivery by the group's running consumer, in
/// order; a skip drops each head (its held rows are then redelivered) or, `whole`, every row.
pub(crate) async fn act(
    state: &AppState,
    caller: &Caller,
    request_id: &RequestId,
    group: &str,
    verb: Verb,
    request: &Request,
) -> Result<Outcome, ApiError> {
    let action = match verb {
        Verb::Retry => Action::DlqRetry,
        Verb::Skip => Action::DlqSkip,
    };
    allow(state, caller, Some(request_id), action, group).await?;
    if request.event_id.is_some() || request.sink.is_some() {
        return Err(ApiError::bad_request(
            "invalid_selection",
            "event_id and sink select in the outbox; a dead-letter row is selected by id",
        ));
    }
    let selection = request.selection(request.id)?;
    let change = request.change(verb)?;
    let mut target = serde_json::Map::new();
    target.insert("group".into(), json!(group));
    let op = Op::new(caller, request_id, action.as_str(), request.target(target));
    let (filter, head) = match selection {
        Selection::One(id) => match sequence::parked_head(state.store.pool(), group, id).await {
            // The row's key: the walk seeks straight to its sequences.
            Ok(row) => {
                let filter = Filter {
                    key: Some(row.record_key),
                    ..Filter::default()
                };
                (filter, Some(id))
            }
            Err(e) => {
                let err = head_error(e);
                if !request.dry_run {
                    record_failure(state, op.entry, &err).await;
                }
                return Err(err);
            }
        },
        Selection::Matching(filter) => (filter, None),
        Selection::All => (Filter::default(), None),
    };
    let walk = Walk {
        scope: Scope {
            group,
            filter: &filter,
            head,
        },
        change,
    };
    let command = |r: &Request| command_line(group, verb, r);
    let store = bulk::Store {
        walker: &walk,
        command: &command,
        none: None,
    };
    let outcome = bulk::run(state, op, request, store).await?;
    if change.is_skip() && outcome.touched.unwrap_or_default() > 0 {
        tracing::warn!(group, touched = outcome.touched, principal = %caller.name,
            "skipped dead-letter rows: the group's handler will never see them");
    }
    Ok(outcome)
}

/// The `keel dlq` command that sends `request` to the group's `verb` route.
pub(crate) fn command_line(group: &str, verb: Verb, request: &Request) -> String {
    bulk::command_line(
        &["dlq", verb.as_str(), "--group", group],
        request.id.map(|id| id.to_string()),
        request,
    )
}

/// `POST /v1/dlq/{group}/retry`
pub async fn retry(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Path(group): Path<String>,
    Body(request): Body<Request>,
) -> Result<Json<Outcome>, ApiError> {
    act(&state, &caller, &request_id, &group, Verb::Retry, &request)
        .await
        .map(Json)
}

/// `POST /v1/dlq/{group}/skip`
pub async fn skip(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Extension(request_id): Extension<RequestId>,
    Path(group): Path<String>,
    Body(request): Body<Request>,
) -> Result<Json<Outcome>, ApiError> {
    act(&state, &caller, &request_id, &group, Verb::Skip, &request)
        .await
        .map(Json)
}
