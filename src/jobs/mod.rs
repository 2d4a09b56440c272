//! Operator jobs: projection rebuilds and republishes, each with a row in `jobs` that says who
//! started it, which keel process runs it, how far it got and how it ended, so that every keel
//! process of the database (the API, the CLI, a UI) can list, follow, cancel and resume it.
//!
//! Contracts:
//!
//! * **One row per run.** [`Jobs::start`] inserts the row (`running`) and runs the work in a task
//!   of its own: nobody waiting on it (an HTTP client that went away) stops it.
//! * **Progress at most once a second, never per event.** The work reports into its [`Sink`]
//!   (atomics, no IO); a writer beside it copies done, total, rate and cursor into the row every
//!   [`EVERY`], with the heartbeat, and ends the row with the work's last figures.
//! * **Cancel goes through the row.** [`Jobs::cancel`] marks the row; the runner, in whichever
//!   process runs the job, reads the mark at its next write and trips the work's stop token. The
//!   work stops at its next page boundary and the row ends `cancelled`: a rebuild keeps its
//!   cursor in its shadow schema, a republish's row keeps the cursor after its last sent page.
//! * **A dead runner is found by its heartbeat.** A `running` row whose heartbeat is older than
//!   [`STALE_AFTER`] belongs to a process that died: [`Jobs::sweep`] (when `keel serve` starts,
//!   then every [`SWEEP_EVERY`]) marks it `interrupted`, with a message saying how to resume. A
//!   process that stops cleanly stops its jobs at their next page boundary ([`Jobs::stop_all`]),
//!   and they end `interrupted` so; rows still running when it exits are marked at once
//!   ([`Jobs::shutdown`]).
//! * **An ended row stays ended**, but for its own runner: a runner whose row was marked
//!   interrupted while it lived (its process froze past the threshold) stops at its next write,
//!   and records its outcome if the work ended first.
//! * **Resuming starts a new row** (`resumes` names the old one) with the old one's parameters:
//!   a rebuild continues from its cursor, a republish after the row's cursor. The caller builds
//!   the new run's work; [`Jobs::resumable`] checks the old row may be resumed.

mod meter;
mod names;
mod row;
mod runner;
pub mod work;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub use names::{Kind, State};
pub use row::{Filter, Job};
pub use runner::{Finished, Sink, Started, Status};

use crate::shutdown::Shutdown;

/// How often a running job's row is written (progress and heartbeat) and its cancel mark read.
pub const EVERY: Duration = Duration::from_secs(1);
/// A running job whose heartbeat is older than this has lost its process.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// How often `keel serve` looks for such jobs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// A job about to start: what, on what, with which parameters, by whom.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Its id, known before it starts (for the audit row of its start).
    pub id: Uuid,
    pub kind: Kind,
    /// The projection (rebuild) or topic (republish).
    pub target: String,
    /// The request's parameters, as the caller wants them shown and resumed.
    pub params: Value,
    /// The principal's name.
    pub started_by: String,
    /// The job this run resumes.
    pub resumes: Option<Uuid>,
}

impl Spec {
    /// A new job (with a fresh id) of `kind` on `target`, started by `started_by`.
    pub fn new(kind: Kind, target: &str, params: Value, started_by: &str) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            target: target.to_owned(),
            params,
            started_by: started_by.to_owned(),
            resumes: None,
        }
    }

    /// The same job, resuming `job`.
    pub fn resuming(self, job: Option<Uuid>) -> Self {
        Self {
            resumes: job,
            ..self
        }
    }
}

/// Why a job request cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no job {0}")]
    NotFound(Uuid),
    #[error("job {id} is {state}, not running")]
    NotRunning { id: Uuid, state: State },
    #[error("job {id} is {state}: only an interrupted, cancelled or failed job can be resumed")]
    NotResumable { id: Uuid, state: State },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// This process's jobs, and the database's. Cheap to clone; clones share the running jobs.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    /// This process's name in job rows (see [`crate::heartbeat::process_name`]).
    process: String,
    /// This handle's own id in job rows: tells its rows from another process's.
    owner: Uuid,
    /// The jobs running here, by id.
    running: Mutex<HashMap<Uuid, Arc<runner::Control>>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("process", &self.inner.process)
            .field("owner", &self.inner.owner)
            .finish()
    }
}

impl Jobs {
    /// The jobs of the database behind `pool`, run as this process.
    pub fn new(pool: PgPool) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                process: crate::heartbeat::process_name(),
                owner: Uuid::new_v4(),
                running: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Inserts `spec`'s row and runs `work` in a task of its own. `work` gets the job's [`Sink`]:
    /// where its progress goes and the token that asks it to stop.
    pub async fn start<W, F>(&self, spec: Spec, work: W) -> Result<Started, Error>
    where
        W: FnOnce(Sink) -> F,
        F: Future<Output = anyhow::Result<Finished>> + Send + 'static,
    {
        row::insert(
            &self.inner.pool,
            &spec,
            &self.inner.process,
            self.inner.owner,
        )
        .await?;
        Ok(runner::spawn(self.inner.clone(), spec.id, spec.kind, work))
    }

    /// Asks running job `id` to stop at its next page boundary, as `by`, in the caller's
    /// transaction (so that the request commits with its audit row). Asking again is no error.
    pub async fn cancel(&self, conn: &mut PgConnection, id: Uuid, by: &str) -> Result<Job, Error> {
        match row::mark_cancel(conn, id, by).await? {
            Some(job) => Ok(job),
            None => match row::get(conn, id).await? {
                Some(job) => Err(Error::NotRunning {
                    id,
                    state: job.state,
                }),
                None => Err(Error::NotFound(id)),
            },
        }
    }

    /// Job `id`, if it may be resumed: it ended interrupted, cancelled or failed.
    pub async fn resumable(&self, id: Uuid) -> Result<Job, Error> {
        let job = self.get(id).await?.ok_or(Error::NotFound(id))?;
        if !job.state.resumable() {
            return Err(Error::NotResumable {
                id,
                state: job.state,
            });
        }
        Ok(job)
    }

    pub async fn get(&self, id: Uuid) -> Result<Option<Job>, Error> {
        Ok(row::get(&mut *self.inner.pool.acquire().await?, id).await?)
    }

    /// Jobs that `filter` selects, newest first.
    pub async fn list(&self, filter: &Filter) -> Result<Vec<Job>, Error> {
        Ok(row::list(&self.inner.pool, filter).await?)
    }

    /// Marks `running` jobs whose heartbeat is older than [`STALE_AFTER`] as `interrupted`, but
    /// those running here: their process died. Returns how many.
    pub async fn sweep(&self) -> Result<u64, Error> {
        let here = self.running_here();
        let swept = row::interrupt_stale(&self.inner.pool, STALE_AFTER, &here).await?;
        if swept > 0 {
            tracing::warn!(
                jobs = swept,
                "marked jobs whose keel process stopped beating as interrupted"
            );
        }
        Ok(swept)
    }

    /// [`Jobs::sweep`] every [`SWEEP_EVERY`] until `stop`.
    pub async fn sweep_until(self, stop: Shutdown) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = stop.wait() => return,
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %e, "cannot look for interrupted jobs; trying again later");
            }
        }
    }

    /// This process is stopping: its running jobs are asked to stop at their next page
    /// boundary, and end `interrupted`, with how to resume.
    pub fn stop_all(&self) {
        for control in self.inner.running.lock().expect("jobs lock").values() {
            control.stop(runner::Stop::Shutdown);
        }
    }

    /// This process stops now: [`Jobs::stop_all`], and the rows of jobs still running are marked
    /// `interrupted` before the process is gone (a job that still ends in time records its own
    /// outcome).
    pub async fn shutdown(&self) {
        if self.running_here().is_empty() {
            return;
        }
        self.stop_all();
        let marked =
            row::interrupt_own(&self.inner.pool, self.inner.owner, &self.inner.process).await;
        match marked {
            Ok(n) => tracing::warn!(
                jobs = n,
                "keel stops with jobs running: marked them interrupted; resume them with keel jobs resume"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot mark this process's running jobs interrupted; they will be once their heartbeat is stale")
            }
        }
    }

    fn running_here(&self) -> Vec<Uuid> {
        self.inner
            .running
            .lock()
            .expect("jobs lock")
            .keys()
            .copied()
            .collect()
    }
}
