//! `/ui/events`: the global log, newest first, keyset-paged by position (or, with the API's
//! `after` cursor, in log order from it), filtered by the API's parameters, with a live tail
//! and events per minute by type. `/ui/events/{event_id}`: one event, decoded, with what caused
//! it, what it caused, its correlation, and its delivery journey.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use super::super::chart::{Chart, Series};
use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::auth::Action;
use crate::model::{AggregateType, EventType, Metadata, RecordedEvent, Scope, VersionSpec};
use crate::store::log::{read_committed_after, read_newest, LogCursor, LogFilter};
use crate::store::{self};

/// Rows per page.
const PAGE: i64 = 50;
/// The per-type chart counts at most this many of the newest events (one index range).
const RATE_WINDOW: i64 = 20_000;

/// The Events page's filters: the API's query parameters, plus `before` (a position, for paging
/// back from the newest).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    event_type: Option<String>,
    correlation_id: Option<String>,
    from: Option<String>,
    to: Option<String>,
    after: Option<String>,
    before: Option<i64>,
}

fn blank(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

fn time(v: &Option<String>, name: &str) -> Result<Option<DateTime<Utc>>, Failure> {
    blank(v)
        .map(|t| {
            DateTime::parse_from_rfc3339(t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    Failure::bad_request(
                        "invalid_query",
                        format!(
                            "{name} must be an RFC 3339 time, for example 2026-12-01T15:00:00Z"
                        ),
                    )
                })
        })
        .transpose()
}

impl Filters {
    /// The store's filter, limited to what `scope` may read.
    fn log_filter(&self, scope: Scope) -> Result<LogFilter, Failure> {
        Ok(LogFilter {
            aggregate_type: blank(&self.aggregate_type)
                .map(AggregateType::parse)
                .transpose()
                .map_err(|e| Failure::bad_request("invalid_aggregate_type", e.to_string()))?,
            aggregate_id: blank(&self.aggregate_id)
                .map(|id| {
                    Uuid::parse_str(id).map_err(|_| {
                        Failure::bad_request("invalid_aggregate_id", "aggregate_id must be a UUID")
                    })
                })
                .transpose()?,
            event_types: blank(&self.event_type)
                .map(EventType::parse)
                .transpose()
                .map_err(|e| Failure::bad_request("invalid_event_type", e.to_string()))?
                .into_iter()
                .collect(),
            correlation_id: blank(&self.correlation_id).map(str::to_owned),
            from: time(&self.from, "from")?,
            to: time(&self.to, "to")?,
            readable: Some(scope),
        })
    }

    /// The query string of these filters with `extra` set.
    fn link(&self, extra: &[(&str, Option<&str>)]) -> String {
        let mut pairs = vec![
            ("aggregate_type", blank(&self.aggregate_type)),
            ("aggregate_id", blank(&self.aggregate_id)),
            ("event_type", blank(&self.event_type)),
            ("correlation_id", blank(&self.correlation_id)),
            ("from", blank(&self.from)),
            ("to", blank(&self.to)),
        ];
        pairs.extend_from_slice(extra);
        format!("/ui/events{}", format::query(&pairs))
    }
}

/// One row of the events table.
pub struct Row {
    pub id: String,
    pub position: i64,
    pub at: Time,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub version: i32,
    pub event_type: String,
    pub correlation: String,
}

impl Row {
    fn of(e: &RecordedEvent) -> Self {
        Self {
            id: e.id.to_string(),
            position: e.position,
            at: Time(e.created_at),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.to_string(),
            version: e.version,
            event_type: e.event_type.clone(),
            correlation: e
                .metadata
                .get(Metadata::CORRELATION_ID)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned(),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/event_rows.html")]
struct Rows<'a> {
    rows: &'a [Row],
}

#[derive(Template)]
#[template(path = "ui/events.html")]
struct ListPage {
    layout: Layout,
    f: FilterValues,
    rows: String,
    count: usize,
    older: Option<String>,
    newer: Option<String>,
    live: bool,
    live_query: String,
    chart: String,
    legend: String,
}

/// The filter form's values, as typed.
struct FilterValues {
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    correlation_id: String,
    from: String,
    to: String,
}

fn scope_of(viewer: &Viewer) -> Result<Scope, Failure> {
    if !viewer.may_some(Action::EventRead) {
        return Err(Failure::forbidden(Action::EventRead));
    }
    Ok(viewer.caller.access.scope(Action::EventRead))
}

/// `GET /ui/events`
pub async fn list(
    State(state): State<UiState>,
    viewer: Viewer,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, Failure> {
    let scope = scope_of(&viewer)?;
    let filter = filters.log_filter(scope)?;
    if let Some(t) = &filter.aggregate_type {
        if !viewer.may(Action::EventRead, t.as_str()) {
            return Err(Failure::forbidden(Action::EventRead));
        }
    }
    let pool = state.app.store.pool();
    let (events, older, newer) = match blank(&filters.after) {
        Some(token) => {
            let after = LogCursor::decode(token).ok_or_else(|| {
                Failure::bad_request("invalid_cursor", "after is not a cursor returned by keel")
            })?;
            let page = read_committed_after(pool, after, &filter, PAGE, 0).await?;
            let next = page.last().map(|e| e.cursor().encode());
            let events: Vec<RecordedEvent> = page.into_iter().map(|e| e.event).collect();
            let newer = next
                .filter(|_| events.len() as i64 == PAGE)
                .map(|n| filters.link(&[("after", Some(&n))]));
            (events, None, newer)
        }
        None => {
            let events = read_newest(pool, filters.before, &filter, PAGE).await?;
            let older = (events.len() as i64 == PAGE)
                .then(|| events.last().map(|e| e.position.to_string()))
                .flatten()
                .map(|p| filters.link(&[("before", Some(&p))]));
            let newer = filters.before.map(|_| filters.link(&[]));
            (events, older, newer)
        }
    };
    let rows: Vec<Row> = events.iter().map(Row::of).collect();
    let chart = per_type_chart(&state, &filter).await?;
    let page = ListPage {
        layout: viewer.layout("Events", "events"),
        f: FilterValues {
            aggregate_type: blank(&filters.aggregate_type).unwrap_or("").to_owned(),
            aggregate_id: blank(&filters.aggregate_id).unwrap_or("").to_owned(),
            event_type: blank(&filters.event_type).unwrap_or("").to_owned(),
            correlation_id: blank(&filters.correlation_id).unwrap_or("").to_owned(),
            from: blank(&filters.from).unwrap_or("").to_owned(),
            to: blank(&filters.to).unwrap_or("").to_owned(),
        },
        rows: Rows { rows: &rows }.render()?,
        count: rows.len(),
        older,
        newer,
        // The tail shows new events on top: only on the newest page, in newest-first order.
        live: filters.before.is_none() && blank(&filters.after).is_none(),
        live_query: filters
            .link(&[("view", Some("events"))])
            .replacen("/ui/events", "/ui/live", 1),
        legend: chart.legend(),
        chart: chart.render(),
    };
    Ok(Html(page.render()?))
}

/// Events per minute by type over the newest [`RATE_WINDOW`] events that match `filter`.
async fn per_type_chart(state: &UiState, filter: &LogFilter) -> Result<Chart, Failure> {
    let recent = read_newest(state.app.store.pool(), None, filter, RATE_WINDOW).await?;
    let since = Utc::now() - chrono::Duration::minutes(15);
    let mut by_type: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for e in recent.iter().filter(|e| e.created_at >= since) {
        let minute = e.created_at.timestamp() / 60 * 60_000;
        *by_type
            .entry(e.event_type.clone())
            .or_default()
            .entry(minute)
            .or_default() += 1.0;
    }
    let now_minute = Utc::now().timestamp() / 60 * 60_000;
    let minutes: Vec<i64> = (0..15).rev().map(|m| now_minute - m * 60_000).collect();
    let series = by_type
        .into_iter()
        .take(6)
        .map(|(name, counts)| Series {
            name,
            points: minutes
                .iter()
                .map(|m| (*m, counts.get(m).copied().unwrap_or(0.0)))
                .collect(),
        })
        .collect();
    Ok(Chart {
        id: "chart-types",
        title: "events per minute by type, last 15 minutes",
        unit: "/min",
        series,
    })
}

/// What a tab's live tail shows: the page's filters, limited to what its viewer may read.
pub struct TailFilter {
    filter: LogFilter,
    scope: Scope,
}

impl TailFilter {
    pub fn from_params(params: &HashMap<String, String>, viewer: &Viewer) -> Result<Self, Failure> {
        let get = |k: &str| params.get(k).cloned();
        let filters = Filters {
            aggregate_type: get("aggregate_type"),
            aggregate_id: get("aggregate_id"),
            event_type: get("event_type"),
            correlation_id: get("correlation_id"),
            from: get("from"),
            to: get("to"),
            after: None,
            before: None,
        };
        let scope = scope_of(viewer)?;
        Ok(Self {
            filter: filters.log_filter(scope.clone())?,
            scope,
        })
    }

    fn matches(&self, e: &RecordedEvent) -> bool {
        let f = &self.filter;
        self.scope.contains(&e.aggregate_type)
            && f.aggregate_type
                .as_ref()
                .is_none_or(|t| t.as_str() == e.aggregate_type)
            && f.aggregate_id.is_none_or(|id| id == e.aggregate_id)
            && (f.event_types.is_empty()
                || f.event_types.iter().any(|t| t.as_str() == e.event_type))
            && f.correlation_id.as_deref().is_none_or(|c| {
                e.metadata
                    .get(Metadata::CORRELATION_ID)
                    .and_then(|v| v.as_str())
                    == Some(c)
            })
            && f.from.is_none_or(|t| e.created_at >= t)
            && f.to.is_none_or(|t| e.created_at < t)
    }
}

/// New events for a live tail, newest first, as table rows ("" when none match).
pub fn tail_rows(
    _state: &UiState,
    _viewer: &Viewer,
    filter: &TailFilter,
    batch: &[RecordedEvent],
) -> String {
    let rows: Vec<Row> = batch
        .iter()
        .rev()
        .filter(|e| filter.matches(e))
        .map(Row::of)
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    Rows { rows: &rows }.render().unwrap_or_default()
}

/// A linked event in the detail page (cause, effects, correlation).
pub struct Link {
    pub id: String,
    pub event_type: String,
    pub aggregate: String,
    pub at: Time,
}

impl Link {
    fn of(e: &RecordedEvent) -> Self {
        Self {
            id: e.id.to_string(),
            event_type: e.event_type.clone(),
            aggregate: format!("{}/{}", e.aggregate_type, e.aggregate_id),
            at: Time(e.created_at),
        }
    }
}

#[derive(Template)]
#[template(path = "ui/event.html")]
struct DetailPage {
    layout: Layout,
    e: Row,
    schema: Option<(i32, i32)>,
    subject: String,
    payload: String,
    metadata: String,
    masked: bool,
    cause: Option<Link>,
    caused: Vec<Link>,
    correlation: Option<String>,
    correlated: Vec<Link>,
    journey: String,
}

/// How many effects and correlated events the detail page lists.
const RELATED: i64 = 50;

/// `GET /ui/events/{event_id}`
pub async fn detail(
    State(state): State<UiState>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Result<Html<String>, Failure> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| Failure::bad_request("invalid_event_id", "the event id must be a UUID"))?;
    let scope = scope_of(&viewer)?;
    let pool = state.app.store.pool();
    // An event the viewer may not read answers as a missing one, as on the API.
    let Some(mut event) = store::get_event(pool, id)
        .await?
        .filter(|e| scope.contains(&e.aggregate_type))
    else {
        return Err(Failure::not_found(
            "event_not_found",
            format!("no event with id {id}"),
        ));
    };
    let stored = (event.schema_id, event.schema_version);
    if let Err(e) = state
        .app
        .registry
        .upcast(&mut event, VersionSpec::Latest)
        .await
    {
        tracing::debug!(event_id = %event.id, error = %e, "showing an event as stored");
    }
    let related =
        |filter: LogFilter| async move { read_newest(pool, None, &filter, RELATED).await };
    let cause = match event
        .metadata
        .get(Metadata::CAUSATION_ID)
        .and_then(|v| v.as_str())
    {
        Some(c) => match Uuid::parse_str(c) {
            Ok(c) => store::get_event(pool, c)
                .await?
                .filter(|e| scope.contains(&e.aggregate_type))
                .map(|e| Link::of(&e)),
            Err(_) => None,
        },
        None => None,
    };
    let caused: Vec<RecordedEvent> = sqlx::query_as(&format!(
        "SELECT {} FROM events WHERE metadata ? 'causation_id' AND metadata->>'causation_id' = $1
          ORDER BY position LIMIT $2",
        crate::store::EVENT_COLUMNS
    ))
    .bind(id.to_string())
    .bind(RELATED)
    .fetch_all(pool)
    .await?;
    let correlation = event
        .metadata
        .get(Metadata::CORRELATION_ID)
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let correlated = match &correlation {
        Some(c) => related(LogFilter {
            correlation_id: Some(c.clone()),
            readable: Some(scope.clone()),
            ..Default::default()
        })
        .await?
        .iter()
        .filter(|e| e.id != id)
        .map(Link::of)
        .collect(),
        None => vec![],
    };
    let page = DetailPage {
        layout: viewer.layout(format!("Event {}", event.event_type), "events"),
        schema: match stored {
            (Some(id), Some(v)) => Some((id, v)),
            _ => None,
        },
        subject: event.event_type.clone(),
        payload: format::payload(&event.payload, state.payloads),
        metadata: serde_json::to_string_pretty(&event.metadata).unwrap_or_default(),
        masked: state.payloads == crate::config::Payloads::Masked,
        cause,
        caused: caused
            .iter()
            .filter(|e| scope.contains(&e.aggregate_type))
            .map(Link::of)
            .collect(),
        correlation,
        correlated,
        journey: super::journey::render(&state, &viewer, id)
            .await?
            .unwrap_or_default(),
        e: Row::of(&event),
    };
    Ok(Html(page.render()?))
}
