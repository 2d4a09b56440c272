//! Replay from the event store, PostgreSQL, which is the source of truth (not limited by Kafka
//! retention).
//!
//! So far: reading one aggregate's history as of a version or a time, resolved to its types'
//! latest schemas, and folding it into state with [`Aggregate`] (`keel replay aggregate`), and
//! re-sending stored events to a topic ([`republish`]). Projection rebuilds build on the same
//! reads. keel's own models ([`agent`]) are listed by type in [`state`], which folds them to
//! JSON (`GET /v1/aggregates/{type}/{id}/state`).

pub mod agent;
pub mod progress;
pub mod republish;
pub mod state;

pub use state::{state_of, Fold};

use std::str::FromStr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::model::{AggregateType, RecordedEvent, VersionSpec};
use crate::registry::Registry;
use crate::store::{self, Store};

/// How far into an aggregate's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// Up to and including this version.
    Version(i32),
    /// Events created at or before this time.
    Time(DateTime<Utc>),
}

impl FromStr for AsOf {
    type Err = String;

    /// A positive version number, or an RFC 3339 time.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match number_or_time::<i32>(text, "version")? {
            Ok(v) => AsOf::Version(v),
            Err(t) => AsOf::Time(t),
        })
    }
}

/// Parses a command-line bound: a positive number (`Ok`), or an RFC 3339 time (`Err`). `noun`
/// names the number in the error message.
pub(crate) fn number_or_time<N>(text: &str, noun: &str) -> Result<Result<N, DateTime<Utc>>, String>
where
    N: FromStr + PartialOrd + Default + std::fmt::Display,
{
    if let Ok(n) = text.parse::<N>() {
        return if n > N::default() {
            Ok(Ok(n))
        } else {
            Err(format!("{noun} {n}: {noun}s start at 1"))
        };
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| Err(t.with_timezone(&Utc)))
        .map_err(|_| format!("{text:?} is neither a {noun} nor an RFC 3339 time"))
}

impl AsOf {
    fn includes(&self, event: &RecordedEvent) -> bool {
        match *self {
            AsOf::Version(v) => event.version <= v,
            AsOf::Time(t) => event.created_at <= t,
        }
    }
}

/// State built from an aggregate's events, oldest first.
pub trait Aggregate: Default {
    fn apply(&mut self, event: &RecordedEvent);
}

/// Reads pages of this many events.
const PAGE: i64 = 1_000;

/// The aggregate's events in version order, up to `as_of`, each resolved to the latest schema of
/// its type (an event that cannot be resolved is returned as stored, with a warning).
pub async fn history(
    store: &Store,
    registry: &Registry,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    as_of: Option<AsOf>,
) -> Result<Vec<RecordedEvent>, store::Error> {
    history_from(store, registry, aggregate_type, aggregate_id, 1, as_of).await
}

/// [`history`] from version `from` on.
async fn history_from(
    store: &Store,
    registry: &Registry,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    mut from: i32,
    as_of: Option<AsOf>,
) -> Result<Vec<RecordedEvent>, store::Error> {
    let mut events = Vec::new();
    loop {
        let page =
            store::read_stream(store.pool(), aggregate_type, aggregate_id, from, PAGE).await?;
        let full = page.len() as i64 == PAGE;
        for mut event in page {
            if as_of.is_some_and(|a| !a.includes(&event)) {
                return Ok(events);
            }
            from = event.version + 1;
            if let Err(e) = registry.upcast(&mut event, VersionSpec::Latest).await {
                tracing::warn!(event_id = %event.id, error = %e, "returning an event as stored: it does not resolve to the latest schema");
            }
            events.push(event);
        }
        if !full {
            return Ok(events);
        }
    }
}

/// Folds the aggregate's history (up to `as_of`) into `A`; returns it with the version it
/// reflects (0 for an aggregate with no events).
pub async fn load<A: Aggregate>(
    store: &Store,
    registry: &Registry,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    as_of: Option<AsOf>,
) -> Result<(A, i32), store::Error> {
    let events = history(store, registry, aggregate_type, aggregate_id, as_of).await?;
    let mut state = A::default();
    for event in &events {
        state.apply(event);
    }
    Ok((state, events.last().map_or(0, |e| e.version)))
}

/// An aggregate whose state can be kept as a snapshot, so that loading it folds only the events
/// after the snapshot.
pub trait Snapshot: Aggregate + serde::Serialize + serde::de::DeserializeOwned {
    /// Names the state's shape, for example `"agent-v1"`. Change it whenever the state's fields
    /// or `apply` change: snapshots of another kind are ignored (and replaced), never misread.
    const KIND: &'static str;
}

/// Like [`load`], starting from the aggregate's snapshot of kind `A::KIND` when there is one. When
/// more than `every` events had to be folded after it, a new snapshot is stored.
pub async fn load_snapshotted<A: Snapshot>(
    store: &Store,
    registry: &Registry,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    every: i32,
) -> Result<(A, i32), store::Error> {
    let snapshot: Option<(i32, serde_json::Value)> = sqlx::query_as(
        "SELECT version, state FROM aggregate_snapshots
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND kind = $3",
    )
    .bind(aggregate_type.as_str())
    .bind(aggregate_id)
    .bind(A::KIND)
    .fetch_optional(store.pool())
    .await?;
    let (mut state, version) = match snapshot.map(|(v, s)| (v, serde_json::from_value::<A>(s))) {
        Some((v, Ok(state))) => (state, v),
        Some((_, Err(e))) => {
            tracing::warn!(%aggregate_id, kind = A::KIND, error = %e, "ignoring a snapshot that does not deserialize");
            (A::default(), 0)
        }
        None => (A::default(), 0),
    };
    let events = history_from(
        store,
        registry,
        aggregate_type,
        aggregate_id,
        version + 1,
        None,
    )
    .await?;
    for event in &events {
        state.apply(event);
    }
    let now = events.last().map_or(version, |e| e.version);
    if events.len() as i32 > every {
        let json = serde_json::to_value(&state)
            .map_err(|e| store::Error::Database(sqlx::Error::Encode(Box::new(e))))?;
        sqlx::query(
            "INSERT INTO aggregate_snapshots (aggregate_type, aggregate_id, kind, version, state)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (aggregate_type, aggregate_id, kind) DO UPDATE
                SET version = EXCLUDED.version, state = EXCLUDED.state, created_at = now()
              WHERE aggregate_snapshots.version < EXCLUDED.version",
        )
        .bind(aggregate_type.as_str())
        .bind(aggregate_id)
        .bind(A::KIND)
        .bind(now)
        .bind(json)
        .execute(store.pool())
        .await?;
    }
    Ok((state, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_of_takes_a_version_or_a_time_and_refuses_anything_else() {
        assert_eq!("3".parse(), Ok(AsOf::Version(3)));
        assert!(matches!(
            "2026-11-27T10:00:00Z".parse::<AsOf>(),
            Ok(AsOf::Time(_))
        ));
        assert!("0".parse::<AsOf>().is_err());
        assert!("yesterday".parse::<AsOf>().is_err());
    }
}
