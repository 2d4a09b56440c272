//! `/ui/groups`: every consumer group and projection the viewer may read, from the pipeline
//! monitor's readings alone (no query of its own): lag in messages and seconds, its trend over
//! the last [`TREND`], a catch-up estimate, a sparkline, open dead letters, health. The table
//! is re-rendered live after each reading. `/ui/groups/{group}`: one group with larger charts.
//!
//! Rates come from two readings [`TREND`] apart: the group consumes at the rate its committed
//! position grows, and its partitions' ends grow at the rate position + lag grows (the
//! produce rate). It catches up in lag ÷ (consume − produce) when that is positive.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Html;
use futures_util::future::BoxFuture;

use super::super::chart::{self, Chart, Series};
use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::auth::Action;
use crate::health::reading::rate;
use crate::health::{Reading, Status};

/// How far back the trend and the rates look.
const TREND: chrono::Duration = chrono::Duration::seconds(60);
const GROUP: &str = "group.";
const PROJECTION: &str = "projection.";

/// One group or projection, as the table shows it.
pub struct Row {
    pub kind: &'static str,
    pub name: String,
    /// Its detail page, for groups.
    pub link: Option<String>,
    pub lag: String,
    pub lag_s: String,
    /// ↑ (falling behind), ↓ (catching up) or →.
    pub trend: &'static str,
    pub catch_up: String,
    pub consume: String,
    pub produce: String,
    pub spark: String,
    pub dead_letters: Option<String>,
    pub status: &'static str,
    pub reason: String,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Degraded => "degraded",
        Status::Unhealthy => "unhealthy",
    }
}

/// Whether `viewer` may see `component`, and its kind and name.
fn readable(viewer: &Viewer, component: &str) -> Option<(&'static str, String)> {
    if let Some(g) = component.strip_prefix(GROUP) {
        return viewer
            .may(Action::DlqRead, g)
            .then(|| ("group", g.to_owned()));
    }
    let p = component.strip_prefix(PROJECTION)?;
    viewer
        .may(Action::ProjectionRead, p)
        .then(|| ("projection", p.to_owned()))
}

/// The row of `component` from the readings (oldest first; the last is current).
fn row(
    readings: &[Arc<Reading>],
    kind: &'static str,
    name: String,
    component: &str,
) -> Option<Row> {
    let last = readings.last()?;
    let now = last.follower(component)?;
    let since = last.at - TREND;
    let (then_at, then) = readings
        .iter()
        .filter(|r| r.at >= since)
        .find_map(|r| r.follower(component).map(|f| (r.at, f)))
        .unwrap_or((last.at, now));
    let consume = rate((then_at, then.position), (last.at, now.position));
    let produce = rate(
        (then_at, then.position + then.lag),
        (last.at, now.position + now.lag),
    );
    let trend = match now.lag.cmp(&then.lag) {
        std::cmp::Ordering::Greater => "↑",
        std::cmp::Ordering::Less => "↓",
        std::cmp::Ordering::Equal => "→",
    };
    let catch_up = if now.lag == 0 {
        "caught up".to_owned()
    } else if consume - produce > 0.0 {
        format!(
            "in {}",
            format::duration(now.lag as f64 / (consume - produce))
        )
    } else {
        "not catching up".to_owned()
    };
    let points = lag_points(readings, component, |f| f.lag as f64);
    let health = last.verdict.components.get(component);
    Some(Row {
        kind,
        link: (kind == "group").then(|| format!("/ui/groups/{}", format::url_encode(&name))),
        lag: format::count(now.lag),
        lag_s: format::duration(now.lag_s),
        trend,
        catch_up,
        consume: format::rate(consume),
        produce: format::rate(produce),
        spark: chart::sparkline(&points),
        dead_letters: (kind == "group")
            .then(|| format::count(last.dead_letters.get(&name).copied().unwrap_or(0))),
        status: health.map_or("unknown", |c| status_name(c.status)),
        reason: health.map(|c| c.reason.clone()).unwrap_or_default(),
        name,
    })
}

fn lag_points(
    readings: &[Arc<Reading>],
    component: &str,
    value: impl Fn(&crate::health::reading::FollowerReading) -> f64,
) -> Vec<(i64, f64)> {
    readings
        .iter()
        .filter_map(|r| {
            r.follower(component)
                .map(|f| (r.at.timestamp_millis(), value(f)))
        })
        .collect()
}

#[derive(Template)]
#[template(path = "ui/groups_live.html")]
struct Live {
    sampled: Option<Time>,
    rows: Vec<Row>,
}

fn render_live(state: &UiState, viewer: &Viewer) -> Result<String, Failure> {
    let readings = state.app.monitor.history().readings();
    let rows = readings
        .last()
        .map(|last| {
            last.followers
                .iter()
                .filter_map(|f| {
                    let (kind, name) = readable(viewer, &f.component)?;
                    row(&readings, kind, name, &f.component)
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Live {
        sampled: readings.last().map(|r| Time(r.at)),
        rows,
    }
    .render()?)
}

#[derive(Template)]
#[template(path = "ui/groups.html")]
struct ListPage {
    layout: Layout,
    live: String,
}

/// `GET /ui/groups`
pub async fn list(State(state): State<UiState>, viewer: Viewer) -> Result<Html<String>, Failure> {
    if !viewer.may_some(Action::DlqRead) && !viewer.may_some(Action::ProjectionRead) {
        return Err(Failure::forbidden(Action::DlqRead));
    }
    let page = ListPage {
        layout: viewer.layout("Consumer groups", "groups"),
        live: render_live(&state, &viewer)?,
    };
    Ok(Html(page.render()?))
}

/// The groups table, re-rendered after each reading.
pub fn fragments<'a>(
    state: &'a UiState,
    viewer: &'a Viewer,
) -> BoxFuture<'a, Vec<(String, String)>> {
    Box::pin(async move {
        match render_live(state, viewer) {
            Ok(html) => vec![("groups-live".to_owned(), html)],
            Err(_) => vec![],
        }
    })
}

#[derive(Template)]
#[template(path = "ui/group.html")]
struct DetailPage {
    layout: Layout,
    group: String,
    row: Option<Row>,
    seconds: String,
    messages: String,
    dead_letters: String,
}

/// `GET /ui/groups/{group}`
pub async fn detail(
    State(state): State<UiState>,
    viewer: Viewer,
    Path(group): Path<String>,
) -> Result<Html<String>, Failure> {
    if !viewer.may(Action::DlqRead, &group) {
        return Err(Failure::forbidden(Action::DlqRead));
    }
    let component = format!("{GROUP}{group}");
    let readings = state.app.monitor.history().readings();
    let series = |value: fn(&crate::health::reading::FollowerReading) -> f64| {
        vec![Series {
            name: group.clone(),
            points: lag_points(&readings, &component, value),
        }]
    };
    let seconds = Chart {
        id: "chart-group-seconds",
        title: "lag in seconds",
        unit: " s",
        series: series(|f| f.lag_s),
    };
    let messages = Chart {
        id: "chart-group-messages",
        title: "lag in messages",
        unit: "",
        series: series(|f| f.lag as f64),
    };
    let page = DetailPage {
        layout: viewer.layout(format!("Consumer group {group}"), "groups"),
        row: row(&readings, "group", group.clone(), &component),
        seconds: seconds.render(),
        messages: messages.render(),
        dead_letters: format!(
            "/ui/dead-letters{}",
            format::query(&[("group", Some(&group))])
        ),
        group,
    };
    Ok(Html(page.render()?))
}
