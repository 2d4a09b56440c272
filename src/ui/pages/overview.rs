//! `/ui`: the pipeline at a glance. Health of each component, rates and backlogs, lag per
//! consumer group and projection, parked totals, two live charts, the last audit entries.
//! Everything but the audit entries comes from the monitor's readings, none from a query of
//! its own, so an open overview costs the database nothing beyond the monitor's sample.

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use futures_util::future::BoxFuture;

use super::super::chart::{Chart, Series};
use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::auth::{audit, Action};
use crate::health::reading::rate;
use crate::health::{Reading, Status};

pub struct HealthRow {
    pub name: String,
    pub status: &'static str,
    pub reason: String,
    pub since: Time,
}

pub struct Tile {
    pub label: String,
    pub value: String,
    pub note: String,
    /// `ok`, `warn` or `bad`: the tile's colour.
    pub tone: &'static str,
}

#[derive(Template)]
#[template(path = "ui/overview_live.html")]
struct Live {
    sampled: Option<Time>,
    health: Vec<HealthRow>,
    tiles: Vec<Tile>,
    flow: String,
    flow_legend: String,
    lag: String,
    lag_legend: String,
}

#[derive(Template)]
#[template(path = "ui/overview.html")]
struct Page {
    layout: Layout,
    live: String,
    audit: Option<Vec<audit::Row>>,
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Ok => "ok",
        Status::Degraded => "degraded",
        Status::Unhealthy => "unhealthy",
    }
}

/// Rates between consecutive readings of a counter.
fn rates(readings: &[Arc<Reading>], counter: impl Fn(&Reading) -> Option<i64>) -> Vec<(i64, f64)> {
    readings
        .windows(2)
        .filter_map(|w| {
            let (a, b) = (counter(&w[0])?, counter(&w[1])?);
            Some((w[1].at.timestamp_millis(), rate((w[0].at, a), (w[1].at, b))))
        })
        .collect()
}

/// The rate of a counter over the last few seconds of readings.
pub(super) fn recent_rate(
    readings: &[Arc<Reading>],
    counter: impl Fn(&Reading) -> Option<i64>,
) -> f64 {
    let Some(last) = readings.last() else {
        return 0.0;
    };
    let since = last.at - chrono::Duration::seconds(10);
    let first = readings.iter().find(|r| r.at >= since).unwrap_or(last);
    match (counter(first), counter(last)) {
        (Some(a), Some(b)) => rate((first.at, a), (last.at, b)),
        _ => 0.0,
    }
}

fn render_live(state: &UiState) -> Result<String, Failure> {
    let readings = state.app.monitor.history().readings();
    let latest = readings.last().cloned();
    let mut health = Vec::new();
    let mut tiles = Vec::new();
    if let Some(r) = &latest {
        for (name, c) in &r.verdict.components {
            health.push(HealthRow {
                name: name.clone(),
                status: status_name(c.status),
                reason: c.reason.clone(),
                since: Time(c.since),
            });
        }
        tiles.push(Tile {
            label: "Appended".into(),
            value: format!(
                "{}/s",
                format::rate(recent_rate(&readings, |r| Some(r.head)))
            ),
            note: format!("head at position {}", format::count(r.head)),
            tone: "ok",
        });
        for s in &r.sinks {
            let sink = s.sink.clone();
            let per_s = recent_rate(&readings, |r| r.sink(&sink).map(|s| s.passed));
            tiles.push(Tile {
                label: format!("Relayed to {}", s.sink),
                value: format!("{}/s", format::rate(per_s)),
                note: format!(
                    "backlog {}{}, oldest {}",
                    if s.capped { "≥ " } else { "" },
                    format::count(s.waiting),
                    format::duration(s.oldest_s)
                ),
                tone: if s.oldest_s > 30.0 { "warn" } else { "ok" },
            });
        }
        let worst = r
            .followers
            .iter()
            .filter(|f| f.component.starts_with("group."))
            .max_by(|a, b| a.lag_s.total_cmp(&b.lag_s));
        if let Some(f) = worst {
            tiles.push(Tile {
                label: "Most behind group".into(),
                value: format::duration(f.lag_s),
                note: format!("{}: {} messages", &f.component[6..], format::count(f.lag)),
                tone: if f.lag_s > 60.0 { "warn" } else { "ok" },
            });
        }
        let relay_parked: i64 = r.sinks.iter().map(|s| s.parked).sum();
        let consumer_parked: i64 = r.dead_letters.values().sum();
        tiles.push(Tile {
            label: "Parked".into(),
            value: format::count(relay_parked + consumer_parked),
            note: format!(
                "relay {}, consumers {}",
                format::count(relay_parked),
                format::count(consumer_parked)
            ),
            tone: if relay_parked + consumer_parked > 0 {
                "warn"
            } else {
                "ok"
            },
        });
        let stalled: Vec<&str> = r
            .verdict
            .components
            .iter()
            .filter(|(n, c)| n.starts_with("projection.") && c.status == Status::Unhealthy)
            .map(|(n, _)| &n["projection.".len()..])
            .collect();
        tiles.push(Tile {
            label: "Stalled projections".into(),
            value: stalled.len().to_string(),
            note: if stalled.is_empty() {
                "none".into()
            } else {
                stalled.join(", ")
            },
            tone: if stalled.is_empty() { "ok" } else { "bad" },
        });
    }
    let mut flow = vec![Series {
        name: "appended/s".into(),
        points: rates(&readings, |r| Some(r.head)),
    }];
    let sinks: Vec<String> = latest
        .iter()
        .flat_map(|r| r.sinks.iter().map(|s| s.sink.clone()))
        .collect();
    for sink in sinks {
        flow.push(Series {
            name: format!("relayed to {sink}/s"),
            points: rates(&readings, |r| r.sink(&sink).map(|s| s.passed)),
        });
    }
    let followers: Vec<String> = latest
        .iter()
        .flat_map(|r| r.followers.iter().map(|f| f.component.clone()))
        .collect();
    let lag: Vec<Series> = followers
        .into_iter()
        .map(|name| Series {
            points: readings
                .iter()
                .filter_map(|r| {
                    r.follower(&name)
                        .map(|f| (r.at.timestamp_millis(), f.lag_s))
                })
                .collect(),
            name,
        })
        .collect();
    let flow = Chart {
        id: "chart-flow",
        title: "appended and relayed per second",
        unit: "/s",
        series: flow,
    };
    let lag = Chart {
        id: "chart-lag",
        title: "lag in seconds per group and projection",
        unit: " s",
        series: lag,
    };
    Ok(Live {
        sampled: latest.map(|r| Time(r.at)),
        health,
        tiles,
        flow: flow.render(),
        flow_legend: flow.legend(),
        lag: lag.render(),
        lag_legend: lag.legend(),
    }
    .render()?)
}

/// `GET /ui`
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Result<Html<String>, Failure> {
    let audit = if viewer.may(Action::AuditRead, "*") {
        let query = audit::Query {
            before: None,
            limit: 10,
            principal: None,
            action: None,
        };
        Some(
            audit::list(state.app.store.pool(), &query)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "the overview cannot read the audit log");
                    Failure::new(
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "the audit log cannot be read now; reload in a moment",
                    )
                })?,
        )
    } else {
        None
    };
    let page = Page {
        layout: viewer.layout("Overview", "overview"),
        live: render_live(&state)?,
        audit,
    };
    Ok(Html(page.render()?))
}

/// The overview's live part, re-rendered after each reading.
pub fn fragments<'a>(
    state: &'a UiState,
    _viewer: &'a Viewer,
) -> BoxFuture<'a, Vec<(String, String)>> {
    Box::pin(async move {
        match render_live(state) {
            Ok(html) => vec![("overview-live".to_owned(), html)],
            Err(_) => vec![],
        }
    })
}
