//! The archiver: writes each event type's history to segments, in the log's gap-safe order.
//!
//! For each type whose policy purges and requires an archive, it walks the type's events after
//! `archive_progress` in `(tx_id, position)` order, reading **only below the transaction
//! horizon** ([`crate::store::log::below_horizon`]). Every transaction below it has finished, so
//! a transaction still open (holding an early position) can never commit inside a range already
//! sealed: its rows sort after the walk's cursor and go into a later segment. The walk stops at
//! the first event not yet old enough to leave the hot store (`created_at` at or after
//! `now - hot`), so segments are contiguous runs of the type, cut further by schema id, record
//! count and bytes.
//!
//! Crash safety: the data object, then its manifest, are created (never overwritten); only then
//! does one transaction insert the catalog row and move `archive_progress`. A crash before that
//! commit leaves objects no row names; the next run finds them at the same key, and adopts them
//! only if their records are exactly the database's next events (same content digest), else it
//! stops and names the object. So a rerun never writes a duplicate segment and never loses one.
//! A new segment is `written`; it becomes `verified` once read back from storage and compared
//! with the database ([`super::verify`]), and only verified segments may be purged.
//!
//! One archiver at a time: the run holds a PostgreSQL advisory lock (the lease) on a connection
//! of its own for its whole length; a second one is refused with [`Error::Busy`].

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

use super::manifest::{self, Segment};
use super::objects::{Created, Objects};
use super::segment::{self, ArchivedEvent, Header, ARCHIVED_COLUMNS};
use super::Error;
use crate::catalog::Catalog;
use crate::config::ArchiveConfig;
use crate::store::log::below_horizon;
use crate::store::LogCursor;

/// The advisory lock key of the archive lease (shared by `keel archive run` and the purge).
pub(crate) const LEASE_KEY: i64 = 0x6b65_656c_6172_6368; // "keelarch"

/// What to archive.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The time that decides what is old enough; tests pass a future time to age data.
    pub now: DateTime<Utc>,
    /// Only these types; empty for every type whose policy requires an archive.
    pub types: Vec<String>,
}

/// What a run did, per type.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunReport {
    pub types: Vec<TypeReport>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TypeReport {
    pub event_type: String,
    pub segments: usize,
    pub events: u64,
    pub bytes: u64,
    /// Objects a crashed earlier run had left that this run adopted.
    pub adopted: usize,
    /// Every event of the type up to here is in a segment (`tx_id/position`).
    #[serde(serialize_with = "as_text")]
    pub archived_through: LogCursor,
}

fn as_text<S: serde::Serializer>(cursor: &LogCursor, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(cursor)
}

/// Progress for a bar: events archived so far of `total`.
pub trait Progress: Send + Sync {
    fn start(&self, total: u64);
    fn advance(&self, events: u64);
}

impl Progress for () {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// The archive lease: a session advisory lock on a connection of its own, taken out of the pool
/// so that the lock can never stay behind on a pooled connection. [`Lease::release`] gives it
/// back; dropped (a failed run), the connection is closed, which releases it too.
pub struct Lease {
    conn: Option<PgConnection>,
}

/// Takes the archive lease or says that someone else has it.
pub async fn lease(pool: &PgPool) -> Result<Lease, Error> {
    let mut conn = pool.acquire().await?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LEASE_KEY)
        .fetch_one(&mut conn)
        .await?;
    if !got {
        let _ = conn.close().await;
        return Err(Error::Busy);
    }
    Ok(Lease { conn: Some(conn) })
}

impl Lease {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(LEASE_KEY)
                .execute(&mut conn)
                .await;
            let _ = conn.close().await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = conn.close().await;
                });
            }
        }
    }
}

/// The types a run archives: those named, or every type whose policy purges with an archive.
pub fn types_to_archive(catalog: &Catalog, named: &[String]) -> Result<Vec<(String, i64)>, Error> {
    let mut out = Vec::new();
    for entry in catalog.iter() {
        let name = entry.event_type.as_str();
        let policy = &entry.retention;
        if !named.is_empty() && !named.iter().any(|n| n == name) {
            continue;
        }
        // Named types are archived up to their hot age, or entirely when they have none.
        let hot_days = policy.hot.map(|h| i64::from(h.days()));
        match (named.is_empty(), policy.purges() && policy.needs_archive()) {
            (true, false) => continue,
            _ => out.push((name.to_owned(), hot_days.unwrap_or(0))),
        }
    }
    if let Some(unknown) = named
        .iter()
        .find(|n| !catalog.iter().any(|e| e.event_type.as_str() == n.as_str()))
    {
        return Err(Error::UnknownType(unknown.clone()));
    }
    Ok(out)
}

/// Archives every selected type, then verifies what it wrote (read back and compared with the
/// database).
pub async fn run(
    pool: &PgPool,
    objects: &Objects,
    catalog: &Catalog,
    config: &ArchiveConfig,
    options: &RunOptions,
    progress: &dyn Progress,
) -> Result<RunReport, Error> {
    let lease = lease(pool).await?;
    let types = types_to_archive(catalog, &options.types)?;
    let mut total = 0u64;
    for (event_type, hot_days) in &types {
        let from = cursor_of(pool, event_type).await?;
        total += pending(pool, event_type, from, cutoff(options.now, *hot_days)).await?;
    }
    progress.start(total);
    let mut report = RunReport::default();
    for (event_type, hot_days) in types {
        let mut walk = Walk {
            pool,
            objects,
            config,
            event_type: &event_type,
            cutoff: cutoff(options.now, hot_days),
            report: TypeReport {
                event_type: event_type.clone(),
                ..Default::default()
            },
        };
        let written = walk.all(progress).await?;
        for segment_id in written {
            super::verify::verify_one(pool, objects, segment_id).await?;
        }
        report.types.push(walk.report);
    }
    lease.release().await;
    Ok(report)
}

/// Events older than this may leave the hot store; `hot_days` 0 means every event.
fn cutoff(now: DateTime<Utc>, hot_days: i64) -> DateTime<Utc> {
    now - Duration::days(hot_days)
}

async fn cursor_of(pool: &PgPool, event_type: &str) -> Result<LogCursor, Error> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT tx_id, position FROM archive_progress WHERE event_type = $1")
            .bind(event_type)
            .fetch_optional(pool)
            .await?;
    Ok(row.map_or(LogCursor::START, |(tx_id, position)| LogCursor {
        tx_id,
        position,
    }))
}

/// About how many events a run would archive of a type (for the progress bar).
async fn pending(
    pool: &PgPool,
    event_type: &str,
    after: LogCursor,
    cutoff: DateTime<Utc>,
) -> Result<u64, Error> {
    let n: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM events
          WHERE event_type = $1 AND (tx_id, position) > ($2::bigint::text::xid8, $3)
            AND {} AND created_at < $4",
        below_horizon("tx_id")
    ))
    .bind(event_type)
    .bind(after.tx_id)
    .bind(after.position)
    .bind(cutoff)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}

/// The next `limit` events of a type after `after`, below the horizon, in log order.
pub(crate) async fn next_events(
    pool: &PgPool,
    event_type: &str,
    after: LogCursor,
    limit: i64,
) -> Result<Vec<ArchivedEvent>, Error> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ARCHIVED_COLUMNS} FROM events
          WHERE event_type = $1 AND (tx_id, position) > ($2::bigint::text::xid8, $3) AND {}
          ORDER BY events.tx_id, events.position LIMIT $4",
        below_horizon("tx_id")
    ))
    .bind(event_type)
    .bind(after.tx_id)
    .bind(after.position)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

struct Walk<'a> {
    pool: &'a PgPool,
    objects: &'a Objects,
    config: &'a ArchiveConfig,
    event_type: &'a str,
    cutoff: DateTime<Utc>,
    report: TypeReport,
}

impl Walk<'_> {
    /// Writes segments until the type has nothing old enough left; returns their ids.
    async fn all(&mut self, progress: &dyn Progress) -> Result<Vec<Uuid>, Error> {
        let mut written = Vec::new();
        loop {
            let after = cursor_of(self.pool, self.event_type).await?;
            self.report.archived_through = after;
            let batch = next_events(
                self.pool,
                self.event_type,
                after,
                self.config.max_segment_records as i64,
            )
            .await?;
            let events = self.cut(batch);
            if events.is_empty() {
                return Ok(written);
            }
            let n = events.len() as u64;
            written.push(self.write(events).await?);
            progress.advance(n);
        }
    }

    /// The longest prefix of `batch` that forms one segment: old enough, one schema, within the
    /// byte limit (always at least one event, however large).
    fn cut(&self, batch: Vec<ArchivedEvent>) -> Vec<ArchivedEvent> {
        let schema = batch.first().map(|e| e.schema_id);
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for event in batch {
            if event.created_at >= self.cutoff || Some(event.schema_id) != schema {
                break;
            }
            bytes += event.payload_json.len() + event.metadata_json.len();
            if !out.is_empty() && bytes > self.config.max_segment_bytes {
                break;
            }
            out.push(event);
        }
        out
    }

    async fn write(&mut self, events: Vec<ArchivedEvent>) -> Result<Uuid, Error> {
        let last = manifest::last(self.pool, self.event_type).await?;
        let seq = last.as_ref().map_or(1, |l| l.segment.seq + 1);
        let prev = last.map(|l| l.manifest_sha256);
        let (first, final_) = match (events.first(), events.last()) {
            (Some(f), Some(l)) => (f.clone(), l.clone()),
            _ => unreachable!("a segment has at least one event"),
        };
        let key = Segment::key_for(self.event_type, first.schema_id, first.created_at, seq);
        let mut segment_id = Uuid::new_v4();
        let header = |id: Uuid, events: &[ArchivedEvent]| Header {
            format: segment::FORMAT.into(),
            segment_id: id.to_string(),
            event_type: self.event_type.into(),
            schema_id: first.schema_id.map_or("none".into(), |s| s.to_string()),
            cursor_lo: first.cursor().to_string(),
            cursor_hi: events
                .last()
                .map(|e| e.cursor().to_string())
                .unwrap_or_default(),
            record_count: events.len().to_string(),
        };
        let encoded = segment::encode(&events, &header(segment_id, &events), &self.config.codec)?;
        let mut events = events;
        let mut bytes = encoded.bytes;
        let mut digest = encoded.content_digest;
        let mut hi = final_;
        match self
            .objects
            .create(&key, Bytes::from(bytes.clone()))
            .await?
        {
            Created::New => {}
            Created::Exists => {
                // An earlier run crashed after uploading this object. Adopt it if it holds
                // exactly the next events of the type, as the database has them now.
                let existing = self.objects.get(&key).await?;
                let decoded = segment::decode(&existing).map_err(|e| Error::Orphan {
                    key: key.clone(),
                    why: e.to_string(),
                })?;
                let after = cursor_of(self.pool, self.event_type).await?;
                let db = next_events(
                    self.pool,
                    self.event_type,
                    after,
                    decoded.events.len() as i64,
                )
                .await?;
                let mut expected = segment::ContentDigest::default();
                for e in &db {
                    expected.add(e)?;
                }
                if db.len() != decoded.events.len() || expected.finish() != decoded.content_digest {
                    return Err(Error::Orphan {
                        key,
                        why: "it holds other events than the database's next ones".into(),
                    });
                }
                segment_id = decoded
                    .header
                    .segment_id
                    .parse()
                    .map_err(|_| Error::Orphan {
                        key: key.clone(),
                        why: "its header has no segment id".into(),
                    })?;
                hi = match decoded.events.last() {
                    Some(l) => l.clone(),
                    None => {
                        return Err(Error::Orphan {
                            key,
                            why: "it holds no events".into(),
                        })
                    }
                };
                events = decoded.events;
                bytes = existing.to_vec();
                digest = decoded.content_digest;
                self.report.adopted += 1;
            }
        }
        let segment = Segment {
            segment_id,
            event_type: self.event_type.into(),
            seq,
            schema_id: first.schema_id,
            lo_tx_id: first.tx_id,
            lo_position: first.position,
            hi_tx_id: hi.tx_id,
            hi_position: hi.position,
            position_min: events.iter().map(|e| e.position).min().unwrap_or(0),
            position_max: events.iter().map(|e| e.position).max().unwrap_or(0),
            created_min: events
                .iter()
                .map(|e| e.created_at)
                .min()
                .unwrap_or(first.created_at),
            created_max: events
                .iter()
                .map(|e| e.created_at)
                .max()
                .unwrap_or(first.created_at),
            record_count: events.len() as i32,
            codec: self.config.codec.clone(),
            object_key: key.clone(),
            byte_size: bytes.len() as i64,
            file_sha256: segment::sha256(&bytes),
            content_digest: digest,
            prev_manifest_sha256: prev,
            keel_version: env!("CARGO_PKG_VERSION").into(),
        };
        let manifest = segment.manifest();
        let manifest_sha256 = segment::sha256(&manifest);
        let manifest_key = segment.manifest_key();
        if let Created::Exists = self
            .objects
            .create(&manifest_key, Bytes::from(manifest.clone()))
            .await?
        {
            let existing = self.objects.get(&manifest_key).await?;
            if existing.as_ref() != manifest.as_slice() {
                return Err(Error::Orphan {
                    key: manifest_key,
                    why: "a manifest is already there and says something else".into(),
                });
            }
        }
        let mut tx = self.pool.begin().await?;
        manifest::insert(&mut *tx, &segment, &manifest_sha256).await?;
        sqlx::query(
            "INSERT INTO archive_progress (event_type, tx_id, position) VALUES ($1, $2, $3)
             ON CONFLICT (event_type) DO UPDATE
                SET tx_id = EXCLUDED.tx_id, position = EXCLUDED.position, updated_at = now()",
        )
        .bind(self.event_type)
        .bind(hi.tx_id)
        .bind(hi.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        metrics::counter!(crate::metrics::ARCHIVED_EVENTS, "event_type" => self.event_type.to_owned())
            .increment(events.len() as u64);
        self.report.segments += 1;
        self.report.events += events.len() as u64;
        self.report.bytes += bytes.len() as u64;
        self.report.archived_through = hi.cursor();
        Ok(segment_id)
    }
}
