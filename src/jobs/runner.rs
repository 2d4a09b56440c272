//! Running one job: the work in a task of its own, and beside it the writer that copies the
//! work's progress into the row every [`EVERY`], reads the row's cancel mark, and ends the row.
//!
//! The work never waits on the row: it reports into a [`Meter`] (atomics and two small locks),
//! and the writer is the only one that talks to the database, so a slow write slows no page.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::watch;
use uuid::Uuid;

use super::meter::{Meter, Rate};
use super::{row, Inner, Kind, State, EVERY};
use crate::replay::progress::Reporter;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;

/// How a job's work ended when it did not fail.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its report, stored in the row.
    pub report: Value,
    /// It stopped before its end because its stop token asked it to.
    pub stopped: bool,
}

/// What a job's work gets: where its progress goes, and the token that asks it to stop at its
/// next page boundary.
#[derive(Clone)]
pub struct Sink {
    meter: Arc<Meter>,
    stop: Shutdown,
}

impl Sink {
    /// Progress reported here goes to the job's row (and to `tracing`).
    pub fn reporter(&self) -> Reporter {
        let meter = self.meter.clone();
        Reporter::to(move |_, total| meter.view(total))
    }

    /// Triggered when the job is cancelled (or its process stops).
    pub fn stop(&self) -> &Shutdown {
        &self.stop
    }
}

/// A started job: its id, and its status as this process sees it.
#[derive(Debug, Clone)]
pub struct Started {
    pub id: Uuid,
    pub status: watch::Receiver<Status>,
}

/// Where a job running in this process stands; updated with each write of its row.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub state: State,
    pub done: u64,
    pub total: Option<u64>,
    pub rate: Option<f64>,
    /// At the end: the work's report.
    pub report: Option<Value>,
    /// At the end: why it failed or was interrupted.
    pub error: Option<String>,
}

/// Why a job was asked to stop. The first reason given is the one that counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Its row was marked to be cancelled.
    Cancel,
    /// Its row was marked interrupted by another process.
    Taken,
    /// This process is stopping.
    Shutdown,
}

/// How a running job is told to stop.
pub(super) struct Control {
    token: Shutdown,
    reason: OnceLock<Stop>,
}

impl Control {
    pub(super) fn stop(&self, reason: Stop) {
        let _ = self.reason.set(reason);
        self.token.trigger();
    }
}

/// Runs `work` for job `id` (its row just inserted) and writes its row until it ends.
pub(super) fn spawn<W, F>(jobs: Arc<Inner>, id: Uuid, kind: Kind, work: W) -> Started
where
    W: FnOnce(Sink) -> F,
    F: Future<Output = anyhow::Result<Finished>> + Send + 'static,
{
    let control = Arc::new(Control {
        token: Shutdown::new(),
        reason: OnceLock::new(),
    });
    let meter = Arc::new(Meter::default());
    let sink = Sink {
        meter: meter.clone(),
        stop: control.token.clone(),
    };
    let (status, watched) = watch::channel(Status {
        state: State::Running,
        done: 0,
        total: None,
        rate: None,
        report: None,
        error: None,
    });
    jobs.running
        .lock()
        .expect("jobs lock")
        .insert(id, control.clone());
    let work = tokio::spawn(work(sink));
    tokio::spawn(write(jobs, id, kind, control, meter, work, status));
    Started {
        id,
        status: watched,
    }
}

async fn write(
    jobs: Arc<Inner>,
    id: Uuid,
    kind: Kind,
    control: Arc<Control>,
    meter: Arc<Meter>,
    mut work: tokio::task::JoinHandle<anyhow::Result<Finished>>,
    status: watch::Sender<Status>,
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + EVERY, EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rate = Rate::new();
    let mut failing = false;
    let ended = loop {
        tokio::select! {
            ended = &mut work => break ended,
            _ = tick.tick() => {}
        }
        let at = meter.read(rate.sample(Instant::now(), meter.done()));
        status.send_modify(|s| (s.done, s.total, s.rate) = (at.done, at.total, at.rate));
        match (row::beat(&jobs.pool, id, &at).await, failing) {
            (Ok(Some(false)), _) => failing = false,
            (Ok(Some(true)), _) => control.stop(Stop::Cancel),
            (Ok(None), _) => control.stop(Stop::Taken),
            (Err(e), false) => {
                failing = true;
                tracing::warn!(job = %id, error = %e, "cannot write a job's progress; retrying");
            }
            (Err(_), true) => {}
        }
    };
    let at = meter.read(status.borrow().rate);
    let (state, report, mut error) = outcome(ended, control.reason.get().copied());
    if control.reason.get() == Some(&Stop::Shutdown) && state == State::Interrupted {
        let why = format!("keel process {} stopped while it ran", jobs.process);
        let cursor = at.cursor.map(|c| c.encode());
        error = Some(row::interrupted(&why, kind.as_str(), id, cursor.as_deref()));
    }
    let write = || {
        row::end(
            &jobs.pool,
            id,
            jobs.owner,
            state,
            &at,
            report.as_ref(),
            error.as_deref(),
        )
    };
    let policy = RetryPolicy::exponential(EVERY / 4, EVERY * 8).with_max_attempts(8);
    match policy
        .retry(write, |_, _| std::ops::ControlFlow::Continue(()))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job = %id, state = %state, "a job ended after its row was ended by another process; its end is not recorded")
        }
        Err(e) => {
            tracing::error!(job = %id, state = %state, error = %e, "cannot record a job's end; its row shows interrupted once its heartbeat is stale")
        }
    }
    jobs.running.lock().expect("jobs lock").remove(&id);
    status.send_modify(|s| {
        (s.state, s.done, s.total) = (state, at.done, at.total);
        (s.report, s.error) = (report, error);
    });
}

/// The row's end for how the work ended and why it was asked to stop.
fn outcome(
    ended: Result<anyhow::Result<Finished>, tokio::task::JoinError>,
    reason: Option<Stop>,
) -> (State, Option<Value>, Option<String>) {
    match ended {
        Ok(Ok(f)) if !f.stopped => (State::Done, Some(f.report), None),
        Ok(Ok(f)) => match reason {
            Some(Stop::Taken) | Some(Stop::Shutdown) => (State::Interrupted, Some(f.report), None),
            Some(Stop::Cancel) | None => (State::Cancelled, Some(f.report), None),
        },
        Ok(Err(e)) => {
            let message = format!("{e:#}");
            tracing::error!(error = %message, "an operator job failed");
            (State::Failed, None, Some(message))
        }
        Err(e) => {
            tracing::error!(error = %e, "an operator job's task panicked");
            (
                State::Failed,
                None,
                Some(format!("the job's task ended abnormally: {e}")),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_job_ends_cancelled_or_interrupted_by_why_it_was_stopped() {
        let stopped = || {
            Ok(Ok(Finished {
                report: Value::Null,
                stopped: true,
            }))
        };
        assert_eq!(outcome(stopped(), Some(Stop::Cancel)).0, State::Cancelled);
        assert_eq!(outcome(stopped(), Some(Stop::Taken)).0, State::Interrupted);
        assert_eq!(
            outcome(stopped(), Some(Stop::Shutdown)).0,
            State::Interrupted
        );
        let done = Ok(Ok(Finished {
            report: Value::Null,
            stopped: false,
        }));
        assert_eq!(outcome(done, Some(Stop::Cancel)).0, State::Done);
        let failed = outcome(Ok(Err(anyhow::anyhow!("broke"))), None);
        assert_eq!(
            (failed.0, failed.2.as_deref()),
            (State::Failed, Some("broke"))
        );
    }
}
