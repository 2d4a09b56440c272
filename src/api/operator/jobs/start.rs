//! What starting any job takes: the audit rows of its start and its end around the work handed
//! to [`crate::jobs::Jobs::start`], and what a dry run answers ([`Preview`]). Each kind's checks
//! and work are in [`super::rebuild`] and [`super::republish`]; the HTTP handlers, `resume` and
//! a UI all start jobs through those, so every way of starting one checks and records the same
//! things.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::super::Op;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::auth::audit::{self, Entry, Outcome};
use crate::jobs::{Finished, Kind, Spec, Started};

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

/// Records the start of `spec` in the audit log and starts it; its end is recorded when the
/// work ends, whoever waits for it.
pub(super) async fn start<W, F>(
    state: &AppState,
    op: Op,
    spec: Spec,
    work: W,
) -> Result<Started, ApiError>
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
pub(super) fn failed_preview(e: anyhow::Error) -> ApiError {
    tracing::error!(error = %format!("{e:#}"), "cannot preview an operator job");
    ApiError::unavailable(
        "preview_failed",
        "cannot count the events the job would touch; see keel's log",
    )
}

/// An old job's `params` as a request body again, for its resume.
pub(super) fn resumed<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T, ApiError> {
    serde_json::from_value(params.clone()).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "job_not_resumable",
            format!("the job's parameters no longer make a request: {e}"),
        )
    })
}
