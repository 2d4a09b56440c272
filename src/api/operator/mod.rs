//! Operator routes: the outbox, dead letters, replay and rebuild jobs, principals and the audit
//! log. `keel outbox`, `keel dlq`, `keel replay`, `keel principal`, `keel grant` and `keel audit`
//! act only through these, so no operator action skips authorisation or the audit log.
//!
//! Every change commits with its audit row ([`audited`]); a failure is recorded on its own, and
//! a refusal by the route's guard is recorded as `denied` (`super::routes`). Long jobs have a row
//! each, answer their start with NDJSON progress lines and record their start and end ([`jobs`]).
//! Retries and skips of parked rows, in both stores, run in chunks ([`bulk`]) over key sequences
//! ([`page`]).
//!
//! [`dlq`], [`outbox`] and [`jobs`] offer what their routes run as `pub(crate)` functions of the
//! state, the caller and a typed request, so that another front end in the process (the UI) runs
//! the same code, with the same checks ([`allow`]) and the same audit rows.

mod audit;
pub(crate) mod bulk;
pub(crate) mod dlq;
pub(crate) mod jobs;
pub(crate) mod outbox;
pub(crate) mod page;
mod principals;
pub(crate) mod sagas;

use axum::http::Method;
use futures_util::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgConnection;

use super::auth::RequestId;
use super::error::ApiError;
use super::routes::{Need, Table};
use super::AppState;
use crate::auth::{self, audit::Entry, audit::Outcome, Action, Caller};

/// The operator routes and their guards.
pub(super) fn routes() -> Table<AppState> {
    use Action as A;
    let (get, post, delete) = (Method::GET, Method::POST, Method::DELETE);
    Table::new()
        .at(
            get.clone(),
            "/v1/outbox/status",
            Need::Action(A::OutboxRead),
            outbox::status,
        )
        .at(
            get.clone(),
            "/v1/outbox/parked",
            Need::Action(A::OutboxRead),
            outbox::parked,
        )
        .at(
            get.clone(),
            "/v1/outbox/parked/sequences",
            Need::Action(A::OutboxRead),
            outbox::sequences_page,
        )
        .at(
            post.clone(),
            "/v1/outbox/retry",
            Need::Action(A::OutboxRetry),
            outbox::retry,
        )
        .at(
            post.clone(),
            "/v1/outbox/skip",
            Need::Action(A::OutboxSkip),
            outbox::skip,
        )
        // Every group the caller may read: the handler filters.
        .at(
            get.clone(),
            "/v1/dlq",
            Need::Some(A::DlqRead),
            dlq::overview,
        )
        .at(
            get.clone(),
            "/v1/dlq/{group}",
            Need::Path(A::DlqRead, "group"),
            dlq::list,
        )
        .at(
            get.clone(),
            "/v1/dlq/{group}/sequences",
            Need::Path(A::DlqRead, "group"),
            dlq::sequences_page,
        )
        .at(
            get.clone(),
            "/v1/dlq/{group}/rows/{id}",
            Need::Path(A::DlqRead, "group"),
            dlq::show,
        )
        .at(
            post.clone(),
            "/v1/dlq/{group}/retry",
            Need::Path(A::DlqRetry, "group"),
            dlq::retry,
        )
        .at(
            post.clone(),
            "/v1/dlq/{group}/skip",
            Need::Path(A::DlqSkip, "group"),
            dlq::skip,
        )
        // The topic is in the body: the handler checks it before the job starts.
        .at(
            post.clone(),
            "/v1/replay/republish",
            Need::Some(A::ReplayRun),
            jobs::republish,
        )
        .at(
            post.clone(),
            "/v1/projections/{name}/rebuild",
            Need::Path(A::ProjectionRebuild, "name"),
            jobs::rebuild,
        )
        // Every saga the caller may read: the handler filters.
        .at(
            get.clone(),
            "/v1/sagas",
            Need::Some(A::SagaRead),
            sagas::overview,
        )
        .at(
            get.clone(),
            "/v1/sagas/{name}/instances",
            Need::Path(A::SagaRead, "name"),
            sagas::instances,
        )
        .at(
            get.clone(),
            "/v1/sagas/{name}/instances/{id}",
            Need::Path(A::SagaRead, "name"),
            sagas::instance,
        )
        .at(
            post.clone(),
            "/v1/sagas/{name}/retry",
            Need::Path(A::SagaRedrive, "name"),
            sagas::retry,
        )
        .at(
            post.clone(),
            "/v1/sagas/{name}/skip",
            Need::Path(A::SagaRedrive, "name"),
            sagas::skip,
        )
        .at(
            get.clone(),
            "/v1/jobs",
            Need::Action(A::JobRead),
            jobs::list,
        )
        .at(
            get.clone(),
            "/v1/jobs/{id}",
            Need::Action(A::JobRead),
            jobs::show,
        )
        // The job's kind and target are in its row: the handler checks the grant that starts it.
        .at(
            post.clone(),
            "/v1/jobs/{id}/cancel",
            Need::Action(A::JobRead),
            jobs::cancel,
        )
        .at(
            post.clone(),
            "/v1/jobs/{id}/resume",
            Need::Action(A::JobRead),
            jobs::resume,
        )
        .at(
            get.clone(),
            "/v1/principals",
            Need::Action(A::PrincipalManage),
            principals::list,
        )
        .at(
            post.clone(),
            "/v1/principals",
            Need::Action(A::PrincipalManage),
            principals::create,
        )
        .at(
            post.clone(),
            "/v1/principals/{principal}/disable",
            Need::Action(A::PrincipalManage),
            principals::disable,
        )
        .at(
            get.clone(),
            "/v1/principals/{principal}/keys",
            Need::Action(A::PrincipalManage),
            principals::keys,
        )
        .at(
            post.clone(),
            "/v1/principals/{principal}/keys",
            Need::Action(A::PrincipalManage),
            principals::create_key,
        )
        .at(
            delete,
            "/v1/keys/{key_id}",
            Need::Action(A::PrincipalManage),
            principals::revoke_key,
        )
        .at(
            post.clone(),
            "/v1/principals/{principal}/grants",
            Need::Action(A::PrincipalManage),
            principals::add_grant,
        )
        .at(
            post,
            "/v1/principals/{principal}/grants/remove",
            Need::Action(A::PrincipalManage),
            principals::remove_grant,
        )
        .at(
            get.clone(),
            "/v1/audit",
            Need::Action(A::AuditRead),
            audit::list,
        )
        .at(
            get,
            "/v1/audit/verify",
            Need::Action(A::AuditRead),
            audit::verify,
        )
}

/// One operator action about to happen: who, what, on what.
pub(super) struct Op {
    pub entry: Entry,
}

impl Op {
    pub fn new(caller: &Caller, request: &RequestId, action: &str, target: Value) -> Self {
        Self {
            entry: Entry::new(caller, action, target).request(Some(request.0.clone()), None),
        }
    }

    pub fn params(mut self, params: Value) -> Self {
        self.entry = self.entry.params(params);
        self
    }
}

/// Runs `change` in a transaction and commits it with its audit row; a failed change rolls back
/// and is recorded as `failed` on its own (a refused request is still an attempt).
pub(super) async fn audited<T, F>(state: &AppState, op: Op, change: F) -> Result<T, ApiError>
where
    F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<T, ApiError>>,
{
    let pool = state.store.pool();
    let mut tx = pool.begin().await?;
    match change(&mut tx).await {
        Ok(done) => {
            auth::audit::record(&mut tx, &op.entry).await?;
            tx.commit().await?;
            Ok(done)
        }
        Err(err) => {
            drop(tx);
            record_failure(state, op.entry, &err).await;
            Err(err)
        }
    }
}

/// Records `entry` as `failed` with `err`'s code, on its own (a refused request is still an
/// attempt). A failure to write it is logged: the caller gets `err` either way.
pub(super) async fn record_failure(state: &AppState, entry: Entry, err: &ApiError) {
    let entry = entry.outcome(Outcome::Failed, Some(err.code.to_owned()));
    if let Err(e) = auth::audit::record_alone(state.store.pool(), &entry).await {
        tracing::error!(error = %e, action = %entry.action, "cannot record a failed operator action in the audit log");
    }
}

/// Refuses a caller without `action` on `resource` (`*` for the whole system) as the route's
/// guard would, recording an operator action's refusal as `denied`. For callers that reach an
/// operator function past the router (the UI); behind a route it has already been decided.
pub(super) async fn allow(
    state: &AppState,
    caller: &Caller,
    request: Option<&RequestId>,
    action: Action,
    resource: &str,
) -> Result<(), ApiError> {
    if caller.access.allows(action, resource) {
        return Ok(());
    }
    if action.is_operator() {
        let entry = Entry::new(caller, action.as_str(), json!({"resource": resource}))
            .request(request.map(|r| r.0.clone()), None);
        auth::audit::record_denied(state.store.pool(), entry).await;
    }
    Err(ApiError::forbidden(action))
}

/// A JSON body that may be left out: an empty body is the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("malformed request body: {e}")))
}

/// `{"field": value}` for a JSON body field, for audit targets.
fn target(pairs: &[(&str, Value)]) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        if !v.is_null() {
            map.insert((*k).to_owned(), v.clone());
        }
    }
    json!(map)
}
