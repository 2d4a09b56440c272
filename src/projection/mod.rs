//! Projections: read models in PostgreSQL that see each event's effect exactly once.
//!
//! * A [`Projection`] owns tables in its own PostgreSQL schema, `keel_proj_<name>`, and applies
//!   batches of events to them inside a transaction the runner opens with `search_path` set to
//!   that schema, so its SQL uses unqualified table names.
//! * The [`runner`] consumes the projection's topics in a consumer group and stores the next
//!   offset of each partition in `projection_offsets` **in the same transaction** as the read
//!   model. On assignment it seeks to those offsets, never to Kafka's committed ones, and each
//!   batch checks them under a row lock, so two runners can never both apply a record.
//! * The schema also holds `keel_applied`, each aggregate's last applied version. An event at or
//!   below it is skipped, so a duplicate the relay published (at-least-once) or a record the
//!   rebuild already applied is never applied twice.
//! * [`rebuild`] (`keel replay projection`) rebuilds from the event store into a shadow schema
//!   while live traffic continues, then swaps it in atomically.
//!
//! keel ships [`agent_status`] and [`service_invocations`]; [`builtin`] lists them.

pub mod agent_status;
pub mod rebuild;
pub mod runner;
pub mod service_invocations;
pub mod status;

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::model::{EventType, RecordedEvent, VersionSpec};

/// How a batch is being applied.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyContext {
    /// The batch comes from a rebuild (`keel replay projection`), not live traffic. Side effects
    /// (e-mails, calls to other services) must not run; keel's own projections have none.
    pub replaying: bool,
}

/// A read model. Implementations must be deterministic: the same events give the same rows.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Unique, `[a-z0-9_]+`; the tables live in schema `keel_proj_<name>`.
    fn name(&self) -> &'static str;
    /// The event types it applies; others are skipped.
    fn event_types(&self) -> &'static [&'static str];
    /// The schema version payloads are resolved to before `apply` (upcasting).
    fn reader(&self) -> VersionSpec {
        VersionSpec::Latest
    }
    /// `CREATE TABLE` statements, with unqualified names.
    fn ddl(&self) -> &'static str;
    /// Applies events, in log order per aggregate, each at most once, in `tx`.
    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
        ctx: ApplyContext,
    ) -> anyhow::Result<()>;
    /// Deletes what one aggregate contributed, for `keel replay projection --aggregate`. Returns
    /// `false` (the default) when rows mix aggregates, so one cannot be rebuilt alone.
    async fn forget(&self, _tx: &mut PgConnection, _aggregate_id: Uuid) -> anyhow::Result<bool> {
        Ok(false)
    }
    /// An empty [`Fold`] of this projection, if its effect can be summed in memory: a full
    /// rebuild then adds many pages to it and writes each row once, not once per page. `None`
    /// (the default): the rebuild applies page by page.
    fn fold(&self) -> Option<Box<dyn Fold>> {
        None
    }
}

/// A projection's effect over many events, held in memory and written at once. Adding events
/// and then writing must leave the same rows as [`Projection::apply`] of the same events.
#[async_trait]
pub trait Fold: Send {
    /// Adds events (each at most once, in log order per aggregate).
    fn add(&mut self, events: &[RecordedEvent]) -> anyhow::Result<()>;
    /// Rows held: the rebuild writes when they pass its bound.
    fn rows(&self) -> usize;
    /// Merges what is held into the tables on `tx`'s `search_path`, and empties the fold.
    async fn write(&mut self, tx: &mut PgConnection) -> anyhow::Result<()>;
}

/// The projections keel ships.
pub fn builtin() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(agent_status::AgentStatus),
        Arc::new(service_invocations::ServiceInvocations),
    ]
}

/// A built-in projection by name.
pub fn find(name: &str) -> anyhow::Result<Arc<dyn Projection>> {
    builtin()
        .into_iter()
        .find(|p| p.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = builtin().iter().map(|p| p.name()).collect();
            anyhow::anyhow!("no projection named {name:?}; known: {}", known.join(", "))
        })
}

/// The live schema of a projection.
pub fn live_schema(name: &str) -> String {
    format!("keel_proj_{name}")
}

/// The topics a projection's event types are published to: the catalog's topic, or the relay's
/// prefix plus the type's aggregate type.
pub fn topics(
    projection: &dyn Projection,
    catalog: &Catalog,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    let mut topics = Vec::new();
    let mut by_aggregate = std::collections::HashMap::new();
    for t in projection.event_types() {
        let entry = EventType::parse(*t)
            .ok()
            .and_then(|t| catalog.get(&t))
            .ok_or_else(|| anyhow::anyhow!("event type {t} is not in the catalog"))?;
        let aggregate = entry.spec.aggregate_type.as_ref().map(|a| a.as_str());
        if entry.spec.topic.is_none() && aggregate.is_none() {
            anyhow::bail!(
                "event type {t} names neither a topic nor an aggregate type, so its topic is unknown"
            );
        }
        let topic = catalog.topic(t, aggregate.unwrap_or_default(), prefix);
        // keel_applied keeps one version per aggregate, which is only sound if each
        // aggregate's events reach the projection through one topic, in order.
        if let Some(aggregate) = &entry.spec.aggregate_type {
            match by_aggregate.insert(aggregate.as_str().to_owned(), topic.clone()) {
                Some(other) if other != topic => anyhow::bail!(
                    "projection {}: aggregate type {} arrives on topics {other} and {topic}; a projection needs each aggregate's events on one topic",
                    projection.name(),
                    aggregate.as_str()
                ),
                _ => {}
            }
        }
        if !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    Ok(topics)
}

/// Creates `schema` with the projection's tables and keel's bookkeeping table, if missing.
pub async fn create_schema(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
) -> anyhow::Result<()> {
    run_script(
        conn,
        format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
         SET LOCAL search_path TO {schema}, public;
         CREATE TABLE IF NOT EXISTS keel_applied (
             aggregate_type text    NOT NULL,
             aggregate_id   uuid    NOT NULL,
             version        integer NOT NULL,
             PRIMARY KEY (aggregate_type, aggregate_id)
         );
         {ddl}",
            ddl = projection.ddl()
        ),
    )
    .await
}

/// Runs several `;`-separated statements (DDL built from trusted names).
pub(crate) async fn run_script(conn: &mut PgConnection, sql: String) -> anyhow::Result<()> {
    use sqlx::Executor;
    conn.execute(sql.as_str()).await?;
    Ok(())
}

/// Makes sure a projection's live schema and status row exist.
pub async fn ensure(pool: &sqlx::PgPool, projection: &dyn Projection) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    // One creator at a time (two runners starting together).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('keel_projection_' || $1))")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    create_schema(&mut tx, projection, &live_schema(projection.name())).await?;
    sqlx::query("INSERT INTO projections (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(projection.name())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Applies `events` through `projection` in `tx` (whose `search_path` is the target schema),
/// skipping each event at or below its aggregate's applied version; records the new versions.
/// Returns how many events were applied.
pub async fn apply_once(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    events: &[RecordedEvent],
    ctx: ApplyContext,
) -> anyhow::Result<usize> {
    use std::collections::HashMap;
    if events.is_empty() {
        return Ok(0);
    }
    let mut types: Vec<String> = Vec::new();
    let mut ids: Vec<Uuid> = Vec::new();
    let mut index: HashMap<(&str, Uuid), i32> = HashMap::new();
    for e in events {
        if index
            .insert((&e.aggregate_type, e.aggregate_id), 0)
            .is_none()
        {
            types.push(e.aggregate_type.clone());
            ids.push(e.aggregate_id);
        }
    }
    let applied: Vec<(String, Uuid, i32)> = sqlx::query_as(
        "SELECT a.aggregate_type, a.aggregate_id, a.version FROM keel_applied a
           JOIN unnest($1::text[], $2::uuid[]) AS k(t, id)
             ON a.aggregate_type = k.t AND a.aggregate_id = k.id",
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let applied: HashMap<(String, Uuid), i32> =
        applied.into_iter().map(|(t, id, v)| ((t, id), v)).collect();
    for (key, version) in index.iter_mut() {
        *version = applied
            .get(&(key.0.to_owned(), key.1))
            .copied()
            .unwrap_or(0);
    }
    let mut fresh = Vec::with_capacity(events.len());
    for e in events {
        let last = index
            .get_mut(&(e.aggregate_type.as_str(), e.aggregate_id))
            .expect("indexed above");
        if e.version > *last {
            *last = e.version;
            fresh.push(e.clone());
        }
    }
    if fresh.is_empty() {
        return Ok(0);
    }
    projection.apply(tx, &fresh, ctx).await?;
    let versions: Vec<i32> = types
        .iter()
        .zip(&ids)
        .map(|(t, id)| index[&(t.as_str(), *id)])
        .collect();
    record_applied(tx, &types, &ids, &versions).await?;
    Ok(fresh.len())
}

/// Raises each aggregate's applied version in `keel_applied` (on `tx`'s `search_path`) to the one
/// given, never lowering it.
pub(crate) async fn record_applied(
    tx: &mut PgConnection,
    types: &[String],
    ids: &[Uuid],
    versions: &[i32],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO keel_applied (aggregate_type, aggregate_id, version)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::int[])
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET version = EXCLUDED.version
           WHERE keel_applied.version < EXCLUDED.version",
    )
    .bind(types)
    .bind(ids)
    .bind(versions)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
