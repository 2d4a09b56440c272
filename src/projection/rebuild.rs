//! `keel replay projection NAME`: rebuild a projection from the PostgreSQL event store, the source
//! of truth, so it is not limited by Kafka retention.
//!
//! * **Full rebuild.** Events are read in the gap-safe log order, page by page, into a shadow
//!   schema (`keel_proj_<name>_rebuild`), each page in one transaction together with the rebuild's
//!   cursor. Live runners keep applying to the live schema meanwhile. A cancelled rebuild resumes
//!   from its cursor when run again (`--restart` starts over).
//! * **Swap.** Once the shadow has caught up, one transaction locks the projection's row
//!   `FOR UPDATE` (live batches take it `FOR SHARE`, so they pause), reads the last events, brings
//!   every aggregate up to at least the version the live schema had applied (events the live
//!   runner got from Kafka before they were below the log's horizon), and renames the shadow into
//!   place. The live runner then carries on from its stored offsets, and skips whatever the
//!   rebuild already applied by each aggregate's version: no gap and no double application.
//! * **`--until`** builds a point-in-time view into `keel_proj_<name>_until`, left beside the live
//!   one, from the events at or before a position or a time.
//! * **`--aggregate`** rebuilds one aggregate in place, for projections whose rows are per
//!   aggregate.
//!
//! Rebuilds call [`Projection::apply`] with `replaying` set, so side effects can be suppressed.
//! Progress goes to the caller's [`Reporter`] (a page at a time, with the cursor reached), and
//! [`preview`] says what a rebuild would read without touching anything.
//!
//! (About 510 lines, on purpose: the full rebuild, the swap and `--aggregate` share the shadow
//! schema's SQL and one lock protocol with the live runner; split, that protocol would be read in
//! three files.)

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context as _};
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::{
    apply_once, create_schema, live_schema, record_applied, run_script, ApplyContext, Fold,
    Projection,
};
use crate::archive::read::Tiered;
use crate::model::{EventType, RecordedEvent};
use crate::registry::Registry;
use crate::replay::progress::Reporter;
use crate::store::log::{LogCursor, LogFilter};
use crate::store::LoggedEvent;

/// Where a point-in-time view stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// Events at or before this global position.
    Position(i64),
    /// Events created at or before this time.
    Time(DateTime<Utc>),
}

impl FromStr for Until {
    type Err = String;

    /// A positive global position, or an RFC 3339 time.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(
            match crate::replay::number_or_time::<i64>(text, "position")? {
                Ok(p) => Until::Position(p),
                Err(t) => Until::Time(t),
            },
        )
    }
}

impl Until {
    fn includes(&self, e: &RecordedEvent) -> bool {
        match *self {
            Until::Position(p) => e.position <= p,
            Until::Time(t) => e.created_at <= t,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct RebuildOptions {
    pub until: Option<Until>,
    pub aggregate: Option<Uuid>,
    /// Start a full rebuild over instead of resuming an interrupted one.
    pub restart: bool,
    /// Events per read (and, for projections without a [`Fold`], per transaction).
    pub page: i64,
    /// For a projection with a [`Fold`]: most rows held in memory before they are written
    /// with the cursor; [`FOLD_ROWS`] when `None`.
    pub fold_rows: Option<usize>,
    /// Reads below a retention horizon through the archive (a purged store otherwise refuses).
    pub archive: Tiered,
}

/// What a rebuild did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RebuildReport {
    /// The schema the result is in.
    pub schema: String,
    pub events_read: u64,
    pub events_applied: u64,
    pub seconds: f64,
    /// Whether the result replaced the live read model.
    pub swapped: bool,
    /// Cancelled before the end; run again to resume.
    pub cancelled: bool,
}

/// What a rebuild would do now, from [`preview`].
#[derive(Debug, Clone)]
pub struct Preview {
    /// The schema it would build in.
    pub schema: String,
    /// The cursor an interrupted full rebuild would resume after.
    pub resumes_after: Option<LogCursor>,
    /// The events it would read: what its progress counts to.
    pub events: u64,
}

/// What [`rebuild`] with `options` would read now, without creating or changing anything. For a
/// full rebuild this counts the projection's events in the log once.
pub async fn preview(
    pool: &PgPool,
    projection: &dyn Projection,
    options: &RebuildOptions,
) -> anyhow::Result<Preview> {
    let mut filter = filter_for(projection);
    if let Some(aggregate) = options.aggregate {
        filter.aggregate_id = Some(aggregate);
        let events = options
            .archive
            .count_after(pool, LogCursor::START, &filter)
            .await?;
        return Ok(Preview {
            schema: live_schema(projection.name()),
            resumes_after: None,
            events,
        });
    }
    let schema = shadow_schema(projection.name(), options);
    let resumes_after = resumes_after(&mut *pool.acquire().await?, &schema, options).await?;
    let after = resumes_after.unwrap_or(LogCursor::START);
    Ok(Preview {
        schema,
        resumes_after,
        events: options.archive.count_after(pool, after, &filter).await?,
    })
}

/// The schema a full rebuild (or a point-in-time view) builds in.
fn shadow_schema(name: &str, options: &RebuildOptions) -> String {
    match options.until {
        Some(_) => format!("{}_until", live_schema(name)),
        None => format!("{}_rebuild", live_schema(name)),
    }
}

/// The cursor a full rebuild into `schema` resumes after, if it resumes: one cut short left it,
/// and `options` asks neither to start over nor for a point-in-time view.
async fn resumes_after(
    conn: &mut PgConnection,
    schema: &str,
    options: &RebuildOptions,
) -> anyhow::Result<Option<LogCursor>> {
    if options.until.is_some() || options.restart {
        return Ok(None);
    }
    cursor(conn, schema).await
}

/// Rebuilds `projection` as `options` say, reporting progress to `reporter`, until done or
/// `cancel` completes (checked after each page; the cursor stays for the next run).
pub async fn rebuild(
    pool: &PgPool,
    registry: &Arc<Registry>,
    projection: &dyn Projection,
    options: &RebuildOptions,
    reporter: &Reporter,
    cancel: impl Future<Output = ()>,
) -> anyhow::Result<RebuildReport> {
    super::ensure(pool, projection).await?;
    let page = if options.page > 0 {
        options.page
    } else {
        10_000
    };
    let started = Instant::now();
    let mut r = Rebuild {
        pool: pool.clone(),
        archive: options.archive.clone(),
        registry: registry.clone(),
        projection,
        filter: filter_for(projection),
        report: RebuildReport {
            schema: String::new(),
            events_read: 0,
            events_applied: 0,
            seconds: 0.0,
            swapped: false,
            cancelled: false,
        },
    };
    if let Some(aggregate) = options.aggregate {
        r.one_aggregate(pool, aggregate).await?;
    } else {
        r.full(pool, options, page, reporter, cancel).await?;
    }
    r.report.seconds = started.elapsed().as_secs_f64();
    Ok(r.report)
}

/// The log filter for a projection's event types.
fn filter_for(projection: &dyn Projection) -> LogFilter {
    LogFilter {
        event_types: projection
            .event_types()
            .iter()
            .filter_map(|t| EventType::parse(*t).ok())
            .collect(),
        ..Default::default()
    }
}

struct Rebuild<'p> {
    pool: PgPool,
    archive: Tiered,
    registry: Arc<Registry>,
    projection: &'p dyn Projection,
    filter: LogFilter,
    report: RebuildReport,
}

const REPLAYING: ApplyContext = ApplyContext { replaying: true };

/// Most rows a full rebuild holds in a [`Fold`] (and versions applied) before it writes them,
/// by default: some 15 MiB for `service_invocations`' histogram rows.
pub const FOLD_ROWS: usize = 100_000;

/// A full rebuild's fold, the versions it applied since it last wrote, and the next page's read.
struct Folding {
    fold: Box<dyn Fold>,
    /// Per aggregate type, per aggregate: nested so that a hit needs no owned key.
    applied: HashMap<String, HashMap<Uuid, i32>>,
    ahead: Option<ReadAhead>,
}

type ReadAhead = tokio::task::JoinHandle<Result<Vec<LoggedEvent>, crate::archive::Error>>;

/// Reads the page after `after` in a task of its own, so that PostgreSQL's scan runs while the
/// page before is folded.
fn read_ahead(
    archive: &Tiered,
    pool: &PgPool,
    filter: &LogFilter,
    after: LogCursor,
    page: i64,
) -> ReadAhead {
    let (archive, pool, filter) = (archive.clone(), pool.clone(), filter.clone());
    tokio::spawn(async move { archive.read_after(&pool, after, &filter, page).await })
}

impl Folding {
    /// Whether `e` is past its aggregate's version applied so far, noting it if so. (The store
    /// holds each event once and the log's order is each aggregate's version order, so this
    /// holds for every event read; `keel_applied` is still never lowered.)
    fn fresh(&mut self, e: &RecordedEvent) -> bool {
        let of_type = match self.applied.get_mut(&e.aggregate_type) {
            Some(of_type) => of_type,
            None => self.applied.entry(e.aggregate_type.clone()).or_default(),
        };
        let v = of_type.entry(e.aggregate_id).or_insert(0);
        if e.version > *v {
            *v = e.version;
            true
        } else {
            false
        }
    }

    fn rows(&self) -> usize {
        self.fold.rows() + self.applied.values().map(HashMap::len).sum::<usize>()
    }
}

impl Rebuild<'_> {
    async fn full(
        &mut self,
        pool: &PgPool,
        options: &RebuildOptions,
        page: i64,
        reporter: &Reporter,
        cancel: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let name = self.projection.name();
        let schema = shadow_schema(name, options);
        self.report.schema = schema.clone();
        let resume = resumes_after(&mut *pool.acquire().await?, &schema, options).await?;
        if resume.is_none() {
            let mut tx = pool.begin().await?;
            run_script(&mut tx, format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
            create_schema(&mut tx, self.projection, &schema).await?;
            run_script(
                &mut tx,
                format!(
                    "CREATE TABLE {schema}.keel_rebuild (tx_id bigint NOT NULL, position bigint NOT NULL);
                     INSERT INTO {schema}.keel_rebuild VALUES (0, 0);"
                ),
            )
            .await?;
            tx.commit().await?;
        }
        let mut after = resume.unwrap_or(LogCursor::START);
        let total = self.archive.count_after(pool, after, &self.filter).await?;
        let progress = reporter.start(&format!("rebuilding {name}"), Some(total));
        if resume.is_some() {
            progress.note(&format!("resuming an interrupted rebuild from {after}"));
        }
        tokio::pin!(cancel);
        let mut folding = self.projection.fold().map(|fold| Folding {
            fold,
            applied: HashMap::new(),
            ahead: None,
        });
        loop {
            let (read, last) = match &mut folding {
                Some(f) => self.fold_page(f, after, page, options.until).await?,
                None => {
                    let mut tx = pool.begin().await?;
                    let paged = self
                        .page(&mut tx, &schema, after, page, options.until)
                        .await?;
                    tx.commit().await?;
                    paged
                }
            };
            if let Some(last) = last {
                after = last;
            }
            progress.advance_to(read, after);
            let done = (read as i64) < page;
            let cancelled = !done && futures_cancelled(&mut cancel).await;
            if let Some(f) = &mut folding {
                if done || cancelled || f.rows() >= options.fold_rows.unwrap_or(FOLD_ROWS) {
                    self.write_fold(pool, &schema, f, after).await?;
                }
            }
            if done {
                break;
            }
            if cancelled {
                if let Some(read) = folding.and_then(|f| f.ahead) {
                    read.abort();
                }
                self.report.cancelled = true;
                progress.finish(&format!(
                    "cancelled at {after}; run the same command again to resume"
                ));
                return Ok(());
            }
        }
        if options.until.is_some() {
            run_script(
                &mut *pool.acquire().await?,
                format!("DROP TABLE {schema}.keel_rebuild"),
            )
            .await?;
            progress.finish(&format!("point-in-time view built in schema {schema}"));
            return Ok(());
        }
        self.swap(pool, &schema, page).await?;
        progress.finish(&format!("rebuilt {name} and swapped it in"));
        Ok(())
    }

    /// Takes the page after `after` (read ahead while the one before was folded) and adds its
    /// events to the fold; starts reading the next page if this one was full. Returns the events
    /// read and the last one's cursor.
    async fn fold_page(
        &mut self,
        f: &mut Folding,
        after: LogCursor,
        page: i64,
        until: Option<Until>,
    ) -> anyhow::Result<(u64, Option<LogCursor>)> {
        let logged = match f.ahead.take() {
            Some(read) => read.await??,
            None => read_ahead(&self.archive, &self.pool, &self.filter, after, page).await??,
        };
        let read = logged.len() as u64;
        let last = logged.last().map(|e| e.cursor());
        if let Some(last) = last.filter(|_| read as i64 == page) {
            f.ahead = Some(read_ahead(
                &self.archive,
                &self.pool,
                &self.filter,
                last,
                page,
            ));
        }
        let events = self.select(logged, until).await?;
        let fresh: Vec<RecordedEvent> = events.into_iter().filter(|e| f.fresh(e)).collect();
        f.fold.add(&fresh)?;
        self.report.events_applied += fresh.len() as u64;
        self.report.events_read += read;
        Ok((read, last))
    }

    /// Writes what the fold holds, the versions it applied and the cursor `after` into `schema`,
    /// in one transaction (without waiting for the WAL flush: a write lost to a server crash is
    /// simply read again from the cursor before it).
    async fn write_fold(
        &mut self,
        pool: &PgPool,
        schema: &str,
        f: &mut Folding,
        after: LogCursor,
    ) -> anyhow::Result<()> {
        let mut tx = pool.begin().await?;
        run_script(
            &mut tx,
            format!(
                "SET LOCAL search_path TO {schema}, public; SET LOCAL synchronous_commit = off"
            ),
        )
        .await?;
        f.fold.write(&mut tx).await?;
        let rows = f.applied.values().map(HashMap::len).sum();
        let mut types = Vec::with_capacity(rows);
        let mut ids = Vec::with_capacity(rows);
        let mut versions = Vec::with_capacity(rows);
        for (t, of_type) in f.applied.drain() {
            for (id, v) in of_type {
                types.push(t.clone());
                ids.push(id);
                versions.push(v);
            }
        }
        record_applied(&mut tx, &types, &ids, &versions).await?;
        sqlx::query("UPDATE keel_rebuild SET tx_id = $1, position = $2")
            .bind(after.tx_id)
            .bind(after.position)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Reads and applies one page after `after` into `schema`, storing the cursor. Returns the
    /// events read and the last one's cursor.
    async fn page(
        &mut self,
        conn: &mut PgConnection,
        schema: &str,
        after: LogCursor,
        page: i64,
        until: Option<Until>,
    ) -> anyhow::Result<(u64, Option<LogCursor>)> {
        let (events, read, last) = self.read_page(after, page, until).await?;
        // The page and the cursor commit together, so a page lost to a server crash is read
        // again: the commit need not wait for the WAL flush.
        run_script(
            conn,
            format!(
                "SET LOCAL search_path TO {schema}, public; SET LOCAL synchronous_commit = off"
            ),
        )
        .await?;
        self.report.events_applied +=
            apply_once(conn, self.projection, &events, REPLAYING).await? as u64;
        self.report.events_read += read;
        if let Some(c) = last {
            sqlx::query("UPDATE keel_rebuild SET tx_id = $1, position = $2")
                .bind(c.tx_id)
                .bind(c.position)
                .execute(&mut *conn)
                .await?;
        }
        Ok((read, last))
    }

    /// One page of the log after `after`: the projection's events (at or before `until`), upcast
    /// to its reader version; the events read, and the last one's cursor.
    async fn read_page(
        &mut self,
        after: LogCursor,
        page: i64,
        until: Option<Until>,
    ) -> anyhow::Result<(Vec<RecordedEvent>, u64, Option<LogCursor>)> {
        // Through the archive below a retention horizon, so a purged store rebuilds whole.
        let logged = self
            .archive
            .read_after(&self.pool, after, &self.filter, page)
            .await?;
        let read = logged.len() as u64;
        let last = logged.last().map(|e| e.cursor());
        Ok((self.select(logged, until).await?, read, last))
    }

    /// The projection's events of a page (at or before `until`), upcast to its reader version.
    async fn select(
        &self,
        logged: Vec<LoggedEvent>,
        until: Option<Until>,
    ) -> anyhow::Result<Vec<RecordedEvent>> {
        let wanted = self.projection.event_types();
        let mut events = Vec::with_capacity(logged.len());
        let mut upcaster = self.registry.upcaster(self.projection.reader());
        for l in logged {
            let e = l.event;
            if !wanted.contains(&e.event_type.as_str()) || until.is_some_and(|u| !u.includes(&e)) {
                continue;
            }
            let id = e.id;
            let e = upcaster.upcast(e).await.with_context(|| {
                format!("event {id} cannot be read as the projection's version")
            })?;
            events.push(e);
        }
        Ok(events)
    }

    /// Catches the shadow up and renames it into place, with live batches paused.
    async fn swap(&mut self, pool: &PgPool, shadow: &str, page: i64) -> anyhow::Result<()> {
        let name = self.projection.name();
        let live = live_schema(name);
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT 1 FROM projections WHERE name = $1 FOR UPDATE")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let mut after = cursor(&mut tx, shadow).await?.unwrap_or(LogCursor::START);
        loop {
            let (read, last) = self.page(&mut tx, shadow, after, page, None).await?;
            if let Some(last) = last {
                after = last;
            }
            if (read as i64) < page {
                break;
            }
        }
        // Aggregates the live schema has applied further than the log's horizon let the shadow.
        let behind: Vec<(String, Uuid, i32, i32)> = sqlx::query_as(&format!(
            "SELECT l.aggregate_type, l.aggregate_id, COALESCE(s.version, 0), l.version
               FROM {live}.keel_applied l
               LEFT JOIN {shadow}.keel_applied s USING (aggregate_type, aggregate_id)
              WHERE l.version > COALESCE(s.version, 0)"
        ))
        .fetch_all(&mut *tx)
        .await?;
        for (aggregate_type, id, from, to) in behind {
            let events = self
                .aggregate_events(&mut tx, &aggregate_type, id, from, Some(to))
                .await?;
            self.report.events_read += events.len() as u64;
            self.report.events_applied +=
                apply_once(&mut tx, self.projection, &events, REPLAYING).await? as u64;
        }
        run_script(
            &mut tx,
            format!(
                "DROP TABLE {shadow}.keel_rebuild;
                 ALTER SCHEMA {live} RENAME TO {live}_old;
                 ALTER SCHEMA {shadow} RENAME TO {live};
                 DROP SCHEMA {live}_old CASCADE;"
            ),
        )
        .await?;
        sqlx::query(
            "UPDATE projections SET rebuilt_at = now(), state = 'running', error = NULL,
                    updated_at = now() WHERE name = $1",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.report.swapped = true;
        self.report.schema = live;
        Ok(())
    }

    /// One aggregate's events of the projection's types with versions in `(from, to]`, resolved
    /// to the projection's reader version.
    async fn aggregate_events(
        &self,
        conn: &mut PgConnection,
        aggregate_type: &str,
        id: Uuid,
        from: i32,
        to: Option<i32>,
    ) -> anyhow::Result<Vec<RecordedEvent>> {
        let types: Vec<String> = self
            .projection
            .event_types()
            .iter()
            .map(|t| t.to_string())
            .collect();
        let events: Vec<RecordedEvent> = sqlx::query_as(&format!(
            "SELECT {} FROM public.events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND version > $3
                AND ($4::int IS NULL OR version <= $4) AND event_type = ANY($5)
              ORDER BY version",
            crate::store::EVENT_COLUMNS
        ))
        .bind(aggregate_type)
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(&types)
        .fetch_all(&mut *conn)
        .await?;
        let mut upcaster = self.registry.upcaster(self.projection.reader());
        let mut read = Vec::with_capacity(events.len());
        for e in events {
            read.push(upcaster.upcast(e).await?);
        }
        Ok(read)
    }

    /// Rebuilds one aggregate in the live schema, with live batches paused.
    async fn one_aggregate(&mut self, pool: &PgPool, id: Uuid) -> anyhow::Result<()> {
        let name = self.projection.name();
        let live = live_schema(name);
        self.report.schema = live.clone();
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT 1 FROM projections WHERE name = $1 FOR UPDATE")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("SET LOCAL search_path TO {live}, public"))
            .execute(&mut *tx)
            .await?;
        let truncated: Option<i32> = sqlx::query_scalar(
            "SELECT max(truncated_before) FROM public.streams WHERE aggregate_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        if truncated.is_some_and(|t| t > 1) {
            bail!(
                "aggregate {id}'s early events were purged from the store (retention); rebuild projection {name} whole, which reads them through the archive"
            );
        }
        if !self.projection.forget(&mut tx, id).await? {
            bail!(
                "projection {name} cannot rebuild one aggregate: its rows combine many aggregates; rebuild it whole"
            );
        }
        let types: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT aggregate_type FROM keel_applied WHERE aggregate_id = $1
             UNION SELECT DISTINCT aggregate_type FROM public.events WHERE aggregate_id = $1",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM keel_applied WHERE aggregate_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        for aggregate_type in types {
            let events = self
                .aggregate_events(&mut tx, &aggregate_type, id, 0, None)
                .await?;
            self.report.events_read += events.len() as u64;
            self.report.events_applied +=
                apply_once(&mut tx, self.projection, &events, REPLAYING).await? as u64;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// A shadow schema's stored cursor, if it has one.
async fn cursor(conn: &mut PgConnection, schema: &str) -> anyhow::Result<Option<LogCursor>> {
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'keel_rebuild')",
    )
    .bind(schema)
    .fetch_one(&mut *conn)
    .await?;
    if !exists {
        return Ok(None);
    }
    let row: Option<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT tx_id, position FROM {schema}.keel_rebuild"
    ))
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(tx_id, position)| LogCursor { tx_id, position }))
}

/// Whether `cancel` has resolved, without waiting.
async fn futures_cancelled<F: Future<Output = ()>>(cancel: &mut std::pin::Pin<&mut F>) -> bool {
    tokio::select! {
        biased;
        _ = cancel.as_mut() => true,
        _ = std::future::ready(()) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_takes_a_position_or_a_time_and_refuses_anything_else() {
        assert_eq!("42".parse(), Ok(Until::Position(42)));
        assert!(matches!(
            "2026-11-27T10:00:00Z".parse::<Until>(),
            Ok(Until::Time(_))
        ));
        assert_eq!(
            "0".parse::<Until>(),
            Err("position 0: positions start at 1".to_owned())
        );
        assert!("soon".parse::<Until>().is_err());
    }
}
