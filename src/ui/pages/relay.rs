//! `/ui/relay`: each sink's backlog, oldest age, rate and parked rows (from the monitor's
//! readings), the relay instances and the partitions each leases, failures by class, and the
//! parked rows grouped by aggregate with what is held behind them and their actions.

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use chrono::{DateTime, Utc};
use futures_util::future::BoxFuture;

use super::super::chart::{Chart, Series};
use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::auth::Action;

pub struct SinkRow {
    pub sink: String,
    pub per_s: String,
    pub backlog: String,
    pub oldest: String,
    pub parked: String,
}

#[derive(sqlx::FromRow)]
pub struct Instance {
    pub name: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_age_s: f64,
    pub partitions: i64,
}

#[derive(sqlx::FromRow)]
pub struct Failures {
    pub sink: String,
    pub error_class: String,
    pub state: String,
    pub rows: i64,
}

#[derive(Template)]
#[template(path = "ui/relay_live.html")]
struct Live {
    sinks: Vec<SinkRow>,
    chart: String,
    legend: String,
}

#[derive(Template)]
#[template(path = "ui/relay.html")]
struct Page {
    layout: Layout,
    live: String,
    instances: Vec<Instance>,
    failures: Vec<Failures>,
    parked: String,
}

fn render_live(state: &UiState) -> Result<String, Failure> {
    let readings = state.app.monitor.history().readings();
    let mut sinks = Vec::new();
    let mut series = Vec::new();
    if let Some(last) = readings.last() {
        for s in &last.sinks {
            let name = s.sink.as_str();
            let per_s = super::overview::recent_rate(&readings, |r| r.sink(name).map(|s| s.passed));
            sinks.push(SinkRow {
                sink: s.sink.clone(),
                per_s: format::rate(per_s),
                backlog: format!(
                    "{}{}",
                    if s.capped { "≥ " } else { "" },
                    format::count(s.waiting)
                ),
                oldest: format::duration(s.oldest_s),
                parked: format::count(s.parked),
            });
            let name = s.sink.clone();
            series.push(Series {
                name: format!("{name} backlog"),
                points: readings
                    .iter()
                    .filter_map(|r| {
                        r.sink(&name)
                            .map(|s| (r.at.timestamp_millis(), s.waiting as f64))
                    })
                    .collect(),
            });
        }
    }
    let chart = Chart {
        id: "chart-backlog",
        title: "outbox rows waiting per sink",
        unit: "",
        series,
    };
    Ok(Live {
        sinks,
        legend: chart.legend(),
        chart: chart.render(),
    }
    .render()?)
}

/// `GET /ui/relay`
pub async fn page(State(state): State<UiState>, viewer: Viewer) -> Result<Html<String>, Failure> {
    if !viewer.may(Action::OutboxRead, "*") {
        return Err(Failure::forbidden(Action::OutboxRead));
    }
    let pool = state.app.store.pool();
    let instances = sqlx::query_as(
        "SELECT m.name, m.started_at,
                extract(epoch FROM now() - m.heartbeat_at)::float8 AS heartbeat_age_s,
                (SELECT count(*) FROM relay_leases l WHERE l.owner = m.id AND l.lease_until > now())
                    AS partitions
           FROM relay_members m ORDER BY m.name",
    )
    .fetch_all(pool)
    .await?;
    // Bounded by the parked table, which operators keep small; the index serves the grouping.
    let failures = sqlx::query_as(
        "SELECT sink, coalesce(error_class, 'held') AS error_class, state, count(*) AS rows
           FROM relay_parked GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await?;
    let page = Page {
        layout: viewer.layout("Relay", "relay"),
        live: render_live(&state)?,
        instances,
        failures,
        parked: super::dead_letters::relay_sequences(&state, &viewer).await?,
    };
    Ok(Html(page.render()?))
}

/// The relay page's live part, re-rendered after each reading.
pub fn fragments<'a>(
    state: &'a UiState,
    _viewer: &'a Viewer,
) -> BoxFuture<'a, Vec<(String, String)>> {
    Box::pin(async move {
        match render_live(state) {
            Ok(html) => vec![("relay-live".to_owned(), html)],
            Err(_) => vec![],
        }
    })
}

impl Instance {
    pub fn started(&self) -> Time {
        Time(self.started_at)
    }

    pub fn beat(&self) -> String {
        format::duration(self.heartbeat_age_s)
    }
}
