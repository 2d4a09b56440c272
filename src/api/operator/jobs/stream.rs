//! The NDJSON answer of a start route, for the command line: `{"state":"started","job":ID}`,
//! then `{"state":"running","job","elapsed_s","done","total","rate"}` about every
//! [`LINE_EVERY`] (`total` and `rate` once known), then one final line: `done` or `cancelled`
//! with the job's `report`, or `failed` or `interrupted` with an `error`. The answer only
//! follows the job: a client that goes away stops the answer, never the job.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;
use uuid::Uuid;

use crate::jobs::{Started, State, Status};

pub(super) const LINE_EVERY: Duration = Duration::from_secs(2);

struct Follow {
    job: Uuid,
    status: watch::Receiver<Status>,
    lines: tokio::time::Interval,
    since: Instant,
    said: Said,
}

#[derive(PartialEq)]
enum Said {
    Nothing,
    Started,
    End,
}

/// The answer that follows `started` to its end.
pub(super) fn ndjson(started: Started) -> Response {
    let follow = Follow {
        job: started.id,
        status: started.status,
        lines: tokio::time::interval_at(tokio::time::Instant::now() + LINE_EVERY, LINE_EVERY),
        since: Instant::now(),
        said: Said::Nothing,
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let line = f.next().await?;
        Some((Ok::<_, Infallible>(format!("{line}\n")), f))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

impl Follow {
    async fn next(&mut self) -> Option<Value> {
        match self.said {
            Said::End => return None,
            Said::Nothing => {
                self.said = Said::Started;
                return Some(json!({"state": "started", "job": self.job}));
            }
            Said::Started => {}
        }
        loop {
            tokio::select! {
                changed = self.status.changed() => {
                    let status = self.status.borrow_and_update().clone();
                    // A runner gone without an end line cannot happen but by a panic.
                    if changed.is_err() || status.state != State::Running {
                        self.said = Said::End;
                        return Some(self.end(&status));
                    }
                }
                _ = self.lines.tick() => return Some(self.running(&self.status.borrow())),
            }
        }
    }

    fn running(&self, status: &Status) -> Value {
        let mut line = json!({
            "state": "running", "job": self.job,
            "elapsed_s": self.since.elapsed().as_secs_f64(), "done": status.done,
        });
        if let Some(total) = status.total {
            line["total"] = json!(total);
        }
        if let Some(rate) = status.rate {
            line["rate"] = json!(rate);
        }
        line
    }

    fn end(&self, status: &Status) -> Value {
        let error = |code: &str, fallback: &str| json!({"code": code, "message": status.error.as_deref().unwrap_or(fallback)});
        match status.state {
            State::Done | State::Cancelled => {
                json!({"state": status.state, "job": self.job, "report": status.report})
            }
            State::Interrupted => json!({"state": "interrupted", "job": self.job,
                "error": error("job_interrupted", "the job was interrupted")}),
            State::Failed | State::Running => json!({"state": "failed", "job": self.job,
                "error": error("job_failed", "the job's runner stopped without an end")}),
        }
    }
}
