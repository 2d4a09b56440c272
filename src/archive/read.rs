//! Reading through the archive: the log in its gap-safe order, from any cursor, even where the
//! purge has deleted events from PostgreSQL.
//!
//! Below a type's retention horizon (`retention_horizons`) some of its events are gone from the
//! store, and every one of them is in a verified segment (the purge deletes nothing else). So
//! for each type a tiered read takes the type's events at or below its horizon **only from the
//! archive** and those above it **only from the store**, then merges everything by
//! `(tx_id, position)`. An event kept in the store below the horizon (the prefix rule kept it)
//! is in the archive too, and is read from there, once: no gap and no duplicate at the boundary.
//!
//! Readers that cannot go through the archive (`GET /v1/events`, a stream read) use
//! [`below_horizon`] to refuse instead: [`Archived`] says where the horizon is and where the
//! archive is, and the API answers 410. None of them returns a short page that looks like the
//! end of the log.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::manifest::{self, SegmentRow};
use super::objects::Objects;
use super::segment::{self, ArchivedEvent};
use super::Error;
use crate::model::RecordedEvent;
use crate::store::log::{count_committed_after, read_committed_after};
use crate::store::{LogCursor, LogFilter, LoggedEvent};

/// A type's retention horizon: below it, the type's events may be only in the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Horizon {
    pub event_type: String,
    pub tx_id: i64,
    pub position: i64,
    pub purged_events: i64,
    pub purged_at: chrono::DateTime<chrono::Utc>,
}

impl Horizon {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            tx_id: self.tx_id,
            position: self.position,
        }
    }
}

/// Every type's horizon.
pub async fn horizons(pool: &PgPool) -> Result<Vec<Horizon>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_type, tx_id, position, purged_events, purged_at
           FROM retention_horizons ORDER BY event_type",
    )
    .fetch_all(pool)
    .await
}

/// A read that starts below a horizon, where the reader does not go through the archive.
#[derive(Debug, Clone, Serialize, thiserror::Error)]
#[error("events of type {event_type} before {horizon} were moved to the archive and purged from the store; read them through the archive (keel replay, or keel archive restore), or start after the horizon")]
pub struct Archived {
    pub event_type: String,
    /// The horizon, as the log's opaque cursor token.
    pub horizon: String,
    /// Where the archive is (`archive.url`), when one is configured.
    pub archive: Option<String>,
}

/// The first horizon a read of `filter` after `after` would reach below, if any.
pub async fn below_horizon(
    pool: &PgPool,
    after: LogCursor,
    filter: &LogFilter,
    archive: Option<&str>,
) -> Result<Option<Archived>, sqlx::Error> {
    let reached = horizons(pool)
        .await?
        .into_iter()
        .find(|h| after < h.cursor() && wants_type(filter, &h.event_type));
    if let Some(h) = &reached {
        metrics::counter!(crate::metrics::READS_ARCHIVED, "event_type" => h.event_type.clone())
            .increment(1);
    }
    Ok(reached.map(|h| Archived {
        horizon: h.cursor().encode(),
        event_type: h.event_type,
        archive: archive.map(str::to_owned),
    }))
}

fn wants_type(filter: &LogFilter, event_type: &str) -> bool {
    filter.event_types.is_empty() || filter.event_types.iter().any(|t| t.as_str() == event_type)
}

/// Whether an archived event passes the filter's conditions (the store applies them in SQL).
fn matches(filter: &LogFilter, e: &RecordedEvent) -> bool {
    filter
        .aggregate_type
        .as_ref()
        .is_none_or(|t| t.as_str() == e.aggregate_type)
        && filter.aggregate_id.is_none_or(|id| id == e.aggregate_id)
        && wants_type(filter, &e.event_type)
        && filter.from.is_none_or(|f| e.created_at >= f)
        && filter.to.is_none_or(|t| e.created_at < t)
        && filter.correlation_id.as_ref().is_none_or(|c| {
            e.metadata.get("correlation_id").and_then(|v| v.as_str()) == Some(c.as_str())
        })
        && filter
            .readable
            .as_ref()
            .is_none_or(|s| s.contains(&e.aggregate_type))
}

/// The log, read through the archive below each type's horizon. Cheap to clone; keeps the last
/// few decoded segments so that paging through one does not fetch it again per page. The
/// default has no archive: it reads the store and fails below a horizon.
#[derive(Clone, Default)]
pub struct Tiered {
    objects: Option<Objects>,
    cache: Arc<Mutex<HashMap<Uuid, Arc<Vec<ArchivedEvent>>>>>,
}

impl std::fmt::Debug for Tiered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tiered")
            .field("archive", &self.objects.as_ref().map(|o| o.location()))
            .finish()
    }
}

/// Decoded segments kept per reader.
const CACHED_SEGMENTS: usize = 8;

impl Tiered {
    pub fn new(objects: Option<Objects>) -> Self {
        Self {
            objects,
            cache: Default::default(),
        }
    }

    /// Where the archive is (`archive.url`), when one is configured.
    pub fn location(&self) -> Option<&str> {
        self.objects.as_ref().map(|o| o.location())
    }

    /// Up to `limit` events after `after` in log order, as [`read_committed_after`] returns
    /// them, reading below each horizon from the archive. Fails with [`Error::NotConfigured`]
    /// when a read reaches below a horizon and no archive is configured.
    pub async fn read_after(
        &self,
        pool: &PgPool,
        after: LogCursor,
        filter: &LogFilter,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>, Error> {
        // The store first, then the horizons: a purge that commits in between has moved its
        // horizon past events this page still saw, and they are then read from the archive
        // instead. Horizons only rise, so the later reading is always the safe one.
        let mut from_store = Vec::new();
        let mut store_cursor = after;
        let mut reached: Vec<Horizon>;
        loop {
            let page = read_committed_after(pool, store_cursor, filter, limit, 0)
                .await
                .map_err(store_error)?;
            let full = page.len() as i64 == limit;
            if let Some(last) = page.last() {
                store_cursor = last.cursor();
            }
            from_store.extend(page);
            reached = horizons(pool)
                .await?
                .into_iter()
                .filter(|h| after < h.cursor() && wants_type(filter, &h.event_type))
                .collect();
            from_store.retain(|e| {
                !reached
                    .iter()
                    .any(|h| h.event_type == e.event.event_type && e.cursor() <= h.cursor())
            });
            if !full || from_store.len() as i64 >= limit {
                break;
            }
        }
        if reached.is_empty() {
            from_store.truncate(limit as usize);
            return Ok(from_store);
        }
        let objects = self.objects.as_ref().ok_or(Error::NotConfigured)?;
        let mut merged = from_store;
        for h in &reached {
            merged.extend(
                self.archived_part(pool, objects, h, after, filter, limit)
                    .await?,
            );
        }
        merged.sort_by_key(|e| e.cursor());
        merged.truncate(limit as usize);
        Ok(merged)
    }

    /// About how many events [`Self::read_after`] would return from `after` with no limit, for
    /// progress bars: the store's, plus the archived segments' record counts.
    pub async fn count_after(
        &self,
        pool: &PgPool,
        after: LogCursor,
        filter: &LogFilter,
    ) -> Result<u64, Error> {
        let mut n = count_committed_after(pool, after, filter)
            .await
            .map_err(store_error)? as u64;
        for h in horizons(pool).await? {
            if after < h.cursor() && wants_type(filter, &h.event_type) {
                let segments = manifest::list(pool, Some(&h.event_type)).await?;
                n += segments
                    .iter()
                    .filter(|s| s.segment.hi() > after && s.segment.lo() <= h.cursor())
                    .map(|s| s.segment.record_count as u64)
                    .sum::<u64>();
            }
        }
        Ok(n)
    }

    /// The type's first `limit` events after `after`, at or below its horizon, from the archive.
    async fn archived_part(
        &self,
        pool: &PgPool,
        objects: &Objects,
        h: &Horizon,
        after: LogCursor,
        filter: &LogFilter,
        limit: i64,
    ) -> Result<Vec<LoggedEvent>, Error> {
        let segments = manifest::list(pool, Some(&h.event_type)).await?;
        let mut out = Vec::new();
        for s in segments
            .iter()
            .filter(|s| s.segment.hi() > after && s.segment.lo() <= h.cursor())
        {
            for e in self.segment(objects, s).await?.iter() {
                if e.cursor() <= after || e.cursor() > h.cursor() {
                    continue;
                }
                let logged = e.to_logged()?;
                if matches(filter, &logged.event) {
                    out.push(logged);
                }
            }
            if out.len() as i64 >= limit {
                break;
            }
        }
        Ok(out)
    }

    async fn segment(
        &self,
        objects: &Objects,
        row: &SegmentRow,
    ) -> Result<Arc<Vec<ArchivedEvent>>, Error> {
        let id = row.segment.segment_id;
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(hit.clone());
        }
        let bytes = objects.get(&row.segment.object_key).await?;
        if segment::sha256(&bytes) != row.segment.file_sha256 {
            return Err(Error::Verify {
                key: row.segment.object_key.clone(),
                why: "its sha256 is not the catalog's; run keel archive verify".into(),
            });
        }
        let events = Arc::new(segment::decode(&bytes)?.events);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED_SEGMENTS {
            cache.clear();
        }
        cache.insert(id, events.clone());
        Ok(events)
    }
}

fn store_error(e: crate::store::Error) -> Error {
    match e {
        crate::store::Error::Database(db) | crate::store::Error::Unavailable(db) => {
            Error::Database(db)
        }
        other => Error::Database(sqlx::Error::Protocol(other.to_string())),
    }
}
