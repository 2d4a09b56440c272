//! `/ui/projections` and `/ui/jobs`: each projection's state, lag and last error, with a
//! rebuild (full, one aggregate, or a point-in-time view) started after a preview of what it
//! will read; every job (rebuilds and republishes) with its progress, rate, ETA, who started it,
//! and cancel or resume. Jobs started here are the API's and the CLI's jobs: the same functions
//! start them (`api::operator::jobs`), with the same rows, audit entries and resumes.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::super::chart::{Chart, Series};
use super::super::form::Posted;
use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::api::operator::jobs::{
    cancel_job, list_jobs, preview_rebuild, preview_republish, resume_job, start_rebuild,
    start_republish, ListQuery, RebuildBody, RepublishBody,
};
use crate::api::RequestId;
use crate::auth::Action;
use crate::jobs::Job;

/// One projection's row.
pub struct ProjectionRow {
    pub name: String,
    pub state: String,
    pub applied: String,
    pub lag: String,
    pub lag_s: String,
    pub health: String,
    pub error: String,
    pub last_event: Option<Time>,
    pub may_rebuild: bool,
}

#[derive(Template)]
#[template(path = "ui/projections.html")]
struct ProjectionsPage {
    layout: Layout,
    rows: Vec<ProjectionRow>,
    chart: String,
    legend: String,
}

/// `GET /ui/projections`
pub async fn projections(
    State(state): State<UiState>,
    viewer: Viewer,
) -> Result<Html<String>, Failure> {
    if !viewer.may_some(Action::ProjectionRead) {
        return Err(Failure::forbidden(Action::ProjectionRead));
    }
    let readings = state.app.monitor.history().readings();
    let latest = readings.last().cloned();
    let mut rows = Vec::new();
    let mut series = Vec::new();
    let mut conn = state.app.store.pool().acquire().await?;
    for p in state.app.projections.iter() {
        let name = p.name().to_owned();
        if !viewer.may(Action::ProjectionRead, &name) {
            continue;
        }
        let status = crate::projection::status::of(&mut conn, &name).await?;
        let component = format!("projection.{name}");
        let follower = latest
            .as_ref()
            .and_then(|r| r.follower(&component).cloned());
        let health = latest
            .as_ref()
            .and_then(|r| r.verdict.components.get(&component))
            .map(|c| format!("{:?}: {}", c.status, c.reason).to_lowercase())
            .unwrap_or_else(|| "no runner reports".into());
        series.push(Series {
            name: name.clone(),
            points: readings
                .iter()
                .filter_map(|r| {
                    r.follower(&component)
                        .map(|f| (r.at.timestamp_millis(), f.lag as f64))
                })
                .collect(),
        });
        rows.push(ProjectionRow {
            state: status
                .as_ref()
                .map_or("not started".into(), |s| s.state.clone()),
            applied: status
                .as_ref()
                .map_or("0".into(), |s| format::count(s.events_applied)),
            lag: follower
                .as_ref()
                .map_or("–".into(), |f| format::count(f.lag)),
            lag_s: follower
                .as_ref()
                .map_or("–".into(), |f| format::duration(f.lag_s)),
            health,
            error: status
                .as_ref()
                .and_then(|s| s.error.clone())
                .unwrap_or_default(),
            last_event: status.as_ref().and_then(|s| s.last_event_at).map(Time),
            may_rebuild: viewer.may(Action::ProjectionRebuild, &name),
            name,
        });
    }
    let chart = Chart {
        id: "chart-projections",
        title: "events behind the partitions' ends, per projection",
        unit: "",
        series,
    };
    let page = ProjectionsPage {
        layout: viewer.layout("Projections", "projections"),
        rows,
        legend: chart.legend(),
        chart: chart.render(),
    };
    Ok(Html(page.render()?))
}

/// One job's row, as the table shows it.
pub struct JobRow {
    pub id: String,
    pub kind: &'static str,
    pub target: String,
    pub state: &'static str,
    pub started_by: String,
    pub progress: String,
    /// 0 to 100 for the progress bar; none when the total is unknown.
    pub percent: Option<u8>,
    pub rate: String,
    pub eta: String,
    pub created: Time,
    pub ended: Option<Time>,
    pub error: String,
    pub may_cancel: bool,
    pub may_resume: bool,
}

impl JobRow {
    fn of(job: &Job) -> Self {
        let running = job.state == crate::jobs::State::Running;
        let percent = job
            .total
            .filter(|t| *t > 0)
            .map(|t| ((job.done as f64 / t as f64) * 100.0).clamp(0.0, 100.0) as u8);
        Self {
            id: job.id.to_string(),
            kind: job.kind.as_str(),
            target: job.target.clone(),
            state: job.state.as_str(),
            started_by: job.started_by.clone(),
            progress: match job.total {
                Some(t) => format!("{} of {}", format::count(job.done), format::count(t)),
                None => format::count(job.done),
            },
            percent,
            rate: job
                .rate
                .map_or("–".into(), |r| format!("{}/s", format::rate(r))),
            eta: job
                .eta_s
                .filter(|_| running)
                .map_or("–".into(), format::duration),
            created: Time(job.created_at),
            ended: job.ended_at.map(Time),
            error: job.error.clone().unwrap_or_default(),
            may_cancel: running && job.cancel_requested_at.is_none(),
            may_resume: job.state.resumable(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/jobs_table.html")]
struct JobsTable<'a> {
    rows: &'a [JobRow],
    csrf: &'a str,
    operator: bool,
}

#[derive(Template)]
#[template(path = "ui/jobs.html")]
struct JobsPage {
    layout: Layout,
    table: String,
    may_republish: bool,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    state: Option<String>,
    kind: Option<String>,
    /// `1`: only the table, for the page's refresh.
    fragment: Option<String>,
}

/// `GET /ui/jobs`
pub async fn jobs(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(query): Query<JobsQuery>,
) -> Result<Response, Failure> {
    let list = ListQuery {
        state: query.state.filter(|s| !s.is_empty()),
        kind: query.kind.filter(|s| !s.is_empty()),
        limit: Some(100),
    };
    let found = list_jobs(&state.app, &viewer.caller, &list).await?;
    let rows: Vec<JobRow> = found.iter().map(JobRow::of).collect();
    let operator = viewer.may_some(Action::ProjectionRebuild) || viewer.may_some(Action::ReplayRun);
    let table = JobsTable {
        rows: &rows,
        csrf: &viewer.csrf,
        operator,
    }
    .render()?;
    if query.fragment.as_deref() == Some("1") {
        return Ok(Html(table).into_response());
    }
    let page = JobsPage {
        layout: viewer.layout("Jobs", "jobs"),
        table,
        may_republish: viewer.may_some(Action::ReplayRun),
    };
    Ok(Html(page.render()?).into_response())
}

/// The rebuild form: which kind of rebuild, and whether this is the preview or the start.
#[derive(Debug, Deserialize)]
pub struct RebuildForm {
    /// `full`, `aggregate` or `until`.
    mode: String,
    #[serde(default)]
    aggregate: String,
    #[serde(default)]
    until: String,
    /// `preview` or `start`.
    step: String,
}

#[derive(Template)]
#[template(path = "ui/preview.html")]
struct PreviewPage {
    layout: Layout,
    summary: String,
    command: String,
    action: String,
    fields: Vec<(&'static str, String)>,
}

fn rebuild_body(form: &RebuildForm) -> Result<RebuildBody, Failure> {
    let mut body = RebuildBody::default();
    match form.mode.as_str() {
        "full" => {}
        "aggregate" => {
            body.aggregate = Some(Uuid::parse_str(form.aggregate.trim()).map_err(|_| {
                Failure::bad_request("invalid_aggregate", "the aggregate must be a UUID")
            })?)
        }
        "until" => body.until = Some(form.until.trim().to_owned()),
        _ => {
            return Err(Failure::bad_request(
                "invalid_mode",
                "mode must be full, aggregate or until",
            ))
        }
    }
    Ok(body)
}

/// `POST /ui/projections/{name}/rebuild`: `step=preview` shows what the rebuild would read and
/// asks to confirm; `step=start` starts it and goes to the jobs page.
pub async fn rebuild(
    State(state): State<UiState>,
    Extension(request): Extension<RequestId>,
    Path(name): Path<String>,
    Posted { viewer, form }: Posted<RebuildForm>,
) -> Result<Response, Failure> {
    let body = rebuild_body(&form)?;
    let mut command = format!("keel replay projection {name}");
    if let Some(a) = body.aggregate {
        command.push_str(&format!(" --aggregate {a}"));
    }
    if let Some(u) = &body.until {
        command.push_str(&format!(" --until {u}"));
    }
    if form.step == "start" {
        start_rebuild(&state.app, &viewer.caller, &request, &name, body).await?;
        return Ok(Redirect::to("/ui/jobs").into_response());
    }
    let preview = preview_rebuild(&state.app, &viewer.caller, &request, &name, &body).await?;
    let summary = format!(
        "Rebuilding {name} will read {} events{}{}.",
        format::count(preview.events as i64),
        match &preview.event_types[..] {
            [] => String::new(),
            types => format!(" of types {}", types.join(", ")),
        },
        preview.after.as_ref().map_or(String::new(), |_| {
            " (resuming where the last rebuild stopped)".into()
        }),
    );
    let page = PreviewPage {
        layout: viewer.layout(format!("Rebuild {name}?"), "projections"),
        summary,
        command: format!("{command} --dry-run"),
        action: format!("/ui/projections/{}/rebuild", format::url_encode(&name)),
        fields: vec![
            ("mode", form.mode),
            ("aggregate", form.aggregate),
            ("until", form.until),
            ("step", "start".into()),
        ],
    };
    Ok(Html(page.render()?).into_response())
}

#[derive(Debug, Deserialize)]
pub struct RepublishForm {
    topic: String,
    #[serde(default)]
    event_types: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    step: String,
}

fn when(text: &str, name: &str) -> Result<Option<DateTime<Utc>>, Failure> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(t)
        .map(|t| Some(t.with_timezone(&Utc)))
        .map_err(|_| {
            Failure::bad_request("invalid_time", format!("{name} must be an RFC 3339 time"))
        })
}

/// `POST /ui/jobs/republish`: preview, then start, as for a rebuild.
pub async fn republish(
    State(state): State<UiState>,
    Extension(request): Extension<RequestId>,
    Posted { viewer, form }: Posted<RepublishForm>,
) -> Result<Response, Failure> {
    let event_types: Vec<String> = form
        .event_types
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let body = RepublishBody {
        topic: form.topic.trim().to_owned(),
        event_types: event_types.clone(),
        from: when(&form.from, "from")?,
        to: when(&form.to, "to")?,
        ..Default::default()
    };
    if form.step == "start" {
        start_republish(&state.app, &viewer.caller, &request, body).await?;
        return Ok(Redirect::to("/ui/jobs").into_response());
    }
    let preview = preview_republish(&state.app, &viewer.caller, &request, &body).await?;
    let mut command = format!("keel replay republish --topic {}", body.topic);
    for t in &event_types {
        command.push_str(&format!(" --event-type {t}"));
    }
    let summary = format!(
        "{} events of {} to topic {}{}{}.",
        format::count(preview.events as i64),
        if event_types.is_empty() {
            "every type".to_owned()
        } else {
            format!("types {}", event_types.join(", "))
        },
        preview.target,
        preview
            .from
            .map_or(String::new(), |t| format!(" from {}", Time(t))),
        preview
            .to
            .map_or(String::new(), |t| format!(" to {}", Time(t))),
    );
    let page = PreviewPage {
        layout: viewer.layout("Republish?", "jobs"),
        summary,
        command: format!("{command} --dry-run"),
        action: "/ui/jobs/republish".into(),
        fields: vec![
            ("topic", form.topic),
            ("event_types", form.event_types),
            ("from", form.from),
            ("to", form.to),
            ("step", "start".into()),
        ],
    };
    Ok(Html(page.render()?).into_response())
}

#[derive(Debug, Deserialize)]
pub struct JobAction {}

/// `POST /ui/jobs/{id}/cancel`
pub async fn cancel(
    State(state): State<UiState>,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
    Posted { viewer, .. }: Posted<JobAction>,
) -> Result<Response, Failure> {
    let id = job_id(&id)?;
    cancel_job(&state.app, &viewer.caller, &request, id).await?;
    Ok(Redirect::to("/ui/jobs").into_response())
}

/// `POST /ui/jobs/{id}/resume`
pub async fn resume(
    State(state): State<UiState>,
    Extension(request): Extension<RequestId>,
    Path(id): Path<String>,
    Posted { viewer, .. }: Posted<JobAction>,
) -> Result<Response, Failure> {
    let id = job_id(&id)?;
    resume_job(&state.app, &viewer.caller, &request, id).await?;
    Ok(Redirect::to("/ui/jobs").into_response())
}

fn job_id(text: &str) -> Result<Uuid, Failure> {
    Uuid::parse_str(text).map_err(|_| {
        Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_job_id",
            "a job id is a UUID",
        )
    })
}
