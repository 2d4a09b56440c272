//! `/ui/aggregates/{type}/{id}`: one aggregate's events in version order, paged by
//! `from_version` (one index range of its stream), its current version, and where its events
//! go on Kafka: the key is the aggregate id, the topic is each event type's (from the catalog).

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Html;
use serde::Deserialize;
use uuid::Uuid;

use super::super::format::{self, Time};
use super::super::page::Layout;
use super::super::{Failure, UiState, Viewer};
use crate::auth::Action;
use crate::model::AggregateType;
use crate::store;

/// Events per page.
const PAGE: i64 = 50;

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    from_version: Option<String>,
    /// The state at this version (or RFC 3339 time); the newest when absent.
    as_of: Option<String>,
}

pub struct Row {
    pub id: String,
    pub version: i32,
    pub event_type: String,
    pub position: i64,
    pub at: Time,
}

#[derive(Template)]
#[template(path = "ui/aggregate.html")]
struct Page {
    layout: Layout,
    aggregate_type: String,
    aggregate_id: String,
    current: Option<i32>,
    topics: Vec<String>,
    rows: Vec<Row>,
    earlier: Option<String>,
    later: Option<String>,
    events_link: String,
    /// The model's state, when keel has a model for the type: (version, JSON).
    model: Option<(i32, String)>,
    as_of: String,
}

/// `GET /ui/aggregates/{aggregate_type}/{aggregate_id}`
pub async fn page(
    State(state): State<UiState>,
    viewer: Viewer,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Query(filters): Query<Filters>,
) -> Result<Html<String>, Failure> {
    let kind = AggregateType::parse(&aggregate_type)
        .map_err(|e| Failure::bad_request("invalid_aggregate_type", e.to_string()))?;
    let id = Uuid::parse_str(&aggregate_id)
        .map_err(|_| Failure::bad_request("invalid_aggregate_id", "aggregate_id must be a UUID"))?;
    if !viewer.may(Action::EventRead, kind.as_str()) {
        return Err(Failure::forbidden(Action::EventRead));
    }
    let from = match filters.from_version.as_deref().map(str::trim) {
        None | Some("") => 1,
        Some(v) => v.parse::<i32>().ok().filter(|v| *v >= 1).ok_or_else(|| {
            Failure::bad_request("invalid_from_version", "from_version must be 1 or more")
        })?,
    };
    let pool = state.app.store.pool();
    let current = store::stream_version(pool, &kind, id).await?;
    let events = store::read_stream(pool, &kind, id, from, PAGE).await?;
    let link = |v: i32| {
        format!(
            "/ui/aggregates/{}/{id}{}",
            format::url_encode(kind.as_str()),
            format::query(&[("from_version", Some(&v.to_string()))])
        )
    };
    let later = events
        .last()
        .filter(|_| events.len() as i64 == PAGE)
        .map(|e| link(e.version + 1));
    let earlier = (from > 1).then(|| link((from - PAGE as i32).max(1)));
    let prefix = &state.app.relay.kafka.topic_prefix;
    let topics: BTreeSet<String> = events
        .iter()
        .map(|e| {
            state
                .app
                .catalog
                .topic(&e.event_type, kind.as_str(), prefix)
        })
        .collect();
    let as_of = filters
        .as_of
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse::<crate::replay::AsOf>()
                .map_err(|e| Failure::bad_request("invalid_as_of", e))
        })
        .transpose()?;
    let model = match (crate::replay::state_of(kind.as_str()), current) {
        (Some(_), Some(_)) => {
            match crate::replay::state::state_at(
                &state.app.store,
                &state.app.registry,
                &kind,
                id,
                as_of,
            )
            .await
            {
                Ok(s) => Some((
                    s.version,
                    crate::ui::format::payload(&s.state, state.payloads),
                )),
                Err(e) => {
                    tracing::debug!(error = %e, "no state to show for an aggregate");
                    None
                }
            }
        }
        _ => None,
    };
    let page = Page {
        model,
        as_of: filters.as_of.clone().unwrap_or_default(),
        layout: viewer.layout(format!("Aggregate {}", kind.as_str()), "events"),
        aggregate_type: kind.as_str().to_owned(),
        aggregate_id: id.to_string(),
        current,
        topics: topics.into_iter().collect(),
        rows: events
            .iter()
            .map(|e| Row {
                id: e.id.to_string(),
                version: e.version,
                event_type: e.event_type.clone(),
                position: e.position,
                at: Time(e.created_at),
            })
            .collect(),
        earlier,
        later,
        events_link: format!(
            "/ui/events{}",
            format::query(&[
                ("aggregate_type", Some(kind.as_str())),
                ("aggregate_id", Some(&id.to_string()))
            ])
        ),
    };
    Ok(Html(page.render()?))
}
