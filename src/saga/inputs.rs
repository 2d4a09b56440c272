//! A saga's Kafka inputs, applied through the projection runner as the projection
//! `saga_<name>`: the runner stores the partition offsets in each batch's transaction, fences
//! runners from each other's partitions, and skips every event at or below its source
//! aggregate's applied version (relay duplicates, republishes, offset resets). This module routes
//! the batch's events to their instances and delivers them ([`super::step`]).

use std::sync::Arc;

use async_trait::async_trait;
use sqlx::PgConnection;
use uuid::Uuid;

use super::step::{self, Ctx, Failure, Mode, Outcome};
use super::{instance_id, store, Correlate, Input, Route, Start};
use crate::model::{RecordedEvent, VersionSpec};
use crate::projection::{ApplyContext, Projection};

/// The projection name a saga's inputs run under.
pub fn projection_name(saga: &str) -> String {
    format!("saga_{saga}")
}

pub struct Inputs {
    ctx: Arc<Ctx>,
    /// For the crash-loop notes, written outside the batch's transaction.
    pool: sqlx::PgPool,
    routes: Vec<Route>,
    name: &'static str,
    types: &'static [&'static str],
    pub(crate) metrics: Arc<super::runner::Metrics>,
    /// Inputs created before this are not the saga's: it was first deployed after them.
    start_after: Option<chrono::DateTime<chrono::Utc>>,
}

impl Inputs {
    pub fn new(
        ctx: Arc<Ctx>,
        metrics: Arc<super::runner::Metrics>,
        pool: sqlx::PgPool,
        start_after: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Self {
        let routes = ctx.saga.routes();
        // A handful of sagas per process, each built once: their names live as long as it.
        let name = Box::leak(projection_name(ctx.name()).into_boxed_str());
        let types: Vec<&'static str> = routes.iter().map(|r| r.event_type).collect();
        Self {
            ctx,
            pool,
            routes,
            name,
            types: Box::leak(types.into_boxed_slice()),
            metrics,
            start_after,
        }
    }
}

/// Where one input goes.
struct Target {
    instance: Uuid,
    key: String,
    may_start: bool,
}

/// A top-level payload field or metadata value as a key: a string, or a number as text.
fn as_key(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Inputs {
    async fn route(
        &self,
        conn: &mut PgConnection,
        event: &RecordedEvent,
    ) -> sqlx::Result<Vec<Target>> {
        let saga = self.ctx.name();
        let Some(route) = self
            .routes
            .iter()
            .find(|r| r.event_type == event.event_type)
        else {
            return Ok(Vec::new());
        };
        let may_start = match route.start {
            Start::Never => false,
            Start::Always => true,
            Start::When(f) => f(event),
        };
        for rule in &route.correlate {
            match rule {
                Correlate::Metadata(k) => {
                    if let Some(key) = event.metadata.get(*k).and_then(as_key) {
                        return Ok(vec![Target {
                            instance: instance_id(saga, &key),
                            key,
                            may_start,
                        }]);
                    }
                }
                Correlate::Field(f) => {
                    if let Some(key) = event.payload.get(*f).and_then(as_key) {
                        return Ok(vec![Target {
                            instance: instance_id(saga, &key),
                            key,
                            may_start,
                        }]);
                    }
                }
                Correlate::Association { key, field } => {
                    if let Some(value) = event.payload.get(*field).and_then(as_key) {
                        let found = store::associated(conn, saga, key, &value).await?;
                        if !found.is_empty() {
                            return Ok(found
                                .into_iter()
                                .map(|(instance, key)| Target {
                                    instance,
                                    key,
                                    may_start: false,
                                })
                                .collect());
                        }
                    }
                }
                Correlate::Causation => {
                    let cause = event
                        .metadata
                        .get("causation_id")
                        .and_then(|v| v.as_str())
                        .and_then(|s| Uuid::parse_str(s).ok());
                    if let Some(cause) = cause {
                        if let Some((instance, key)) = store::emitter(conn, saga, cause).await? {
                            return Ok(vec![Target {
                                instance,
                                key,
                                may_start: false,
                            }]);
                        }
                    }
                }
            }
        }
        Ok(Vec::new())
    }
}

#[async_trait]
impl Projection for Inputs {
    fn name(&self) -> &'static str {
        self.name
    }

    fn event_types(&self) -> &'static [&'static str] {
        self.types
    }

    fn reader(&self) -> VersionSpec {
        self.ctx.saga.reader()
    }

    fn ddl(&self) -> &'static str {
        ""
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
        ctx: ApplyContext,
    ) -> anyhow::Result<()> {
        if ctx.replaying {
            anyhow::bail!(
                "saga {} is not a read model: its inputs are never re-applied by a rebuild (use `keel replay saga {} --check`)",
                self.ctx.name(),
                self.ctx.name()
            );
        }
        // The runner turns synchronous commit off for read models; a step's outputs are events.
        sqlx::query("SET LOCAL synchronous_commit = on")
            .execute(&mut *tx)
            .await?;
        let saga = self.ctx.name();
        let mut routed = Vec::with_capacity(events.len());
        let mut instances = Vec::new();
        for e in events {
            if self.start_after.is_some_and(|t| e.created_at < t) {
                self.metrics.before_start(saga, &e.event_type);
                continue;
            }
            let targets = self.route(tx, e).await?;
            if targets.is_empty() {
                self.metrics.unmatched(self.ctx.name(), &e.event_type);
            }
            instances.extend(targets.iter().map(|t| t.instance));
            routed.push((e, targets));
        }
        instances.sort();
        instances.dedup();
        let suspects = self.seen(&routed).await?;
        let mut stepped = false;
        // The transaction is the runner's; `lock` needs one, so a savepoint stands in for it.
        let mut tx = sqlx::Acquire::begin(&mut *tx).await?;
        step::lock(&mut tx, &self.ctx, &instances).await?;
        for (event, targets) in routed {
            let input = Input::Event(Box::new(event.clone()));
            for t in targets {
                // Seen in a batch that died, then `CRASH_ATTEMPTS - 1` deaths inside this very
                // delivery since: park instead of dying again.
                let suspect = suspects.contains(&(event.id, t.instance));
                if suspect && self.starting(event.id, t.instance).await? >= CRASH_ATTEMPTS {
                    let reason = format!(
                        "crash_loop: the process died while stepping this input {CRASH_ATTEMPTS} times"
                    );
                    store::park(&mut tx, saga, t.instance, &t.key, &input, &reason).await?;
                    tracing::error!(saga, instance = %t.instance, input = %event.id, "saga instance parked after a crash loop");
                    self.metrics
                        .step(saga, "event", &Outcome::Parked(reason), Default::default());
                    continue;
                }
                fault("before_step");
                let started = std::time::Instant::now();
                let delivered = step::deliver(
                    &mut tx,
                    &self.ctx,
                    t.instance,
                    &t.key,
                    t.may_start,
                    &input,
                    Mode::Live,
                )
                .await;
                if suspect {
                    self.ended(event.id, t.instance).await?;
                }
                let outcome = delivered.map_err(|e| match e {
                    Failure::Retriable(s) | Failure::Permanent(s) => anyhow::anyhow!(s),
                    Failure::Database(e) => e.into(),
                })?;
                stepped |= matches!(outcome, Outcome::Stepped(_));
                if matches!(outcome, Outcome::Unmatched) {
                    self.metrics.unmatched(self.ctx.name(), &event.event_type);
                }
                self.metrics
                    .step(self.ctx.name(), "event", &outcome, started.elapsed());
                fault("after_step");
            }
        }
        if stepped {
            self.ctx.wake_relays(&mut tx).await?;
        }
        fault("before_commit");
        // The batch went through: its crash-loop notes go with it.
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        sqlx::query("DELETE FROM saga_deliveries WHERE saga = $1 AND event_id = ANY($2)")
            .bind(saga)
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

/// How many times the process may die stepping one input before that input's instance is
/// parked as `crash_loop`.
const CRASH_ATTEMPTS: i32 = 3;

impl Inputs {
    /// Counts each delivery of the batch as seen, outside its transaction; returns those seen
    /// before (their batch died, or failed, before it committed).
    async fn seen(
        &self,
        routed: &[(&RecordedEvent, Vec<Target>)],
    ) -> sqlx::Result<std::collections::HashSet<(Uuid, Uuid)>> {
        let (events, instances): (Vec<Uuid>, Vec<Uuid>) = routed
            .iter()
            .flat_map(|(e, targets)| targets.iter().map(|t| (e.id, t.instance)))
            .unzip();
        if events.is_empty() {
            return Ok(Default::default());
        }
        let again: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "INSERT INTO saga_deliveries (saga, event_id, instance_id, seen)
             SELECT $1, e, i, 1 FROM unnest($2::uuid[], $3::uuid[]) AS u(e, i)
             ON CONFLICT (saga, event_id, instance_id) DO UPDATE SET seen = saga_deliveries.seen + 1
             RETURNING event_id, instance_id, seen > 1",
        )
        .bind(self.ctx.name())
        .bind(&events)
        .bind(&instances)
        .fetch_all(&self.pool)
        .await
        .map(|rows: Vec<(Uuid, Uuid, bool)>| {
            rows.into_iter()
                .filter(|r| r.2)
                .map(|r| (r.0, r.1))
                .collect()
        })?;
        Ok(again.into_iter().collect())
    }

    /// Notes that a delivery starts; returns how many started and never ended, this one included.
    async fn starting(&self, event: Uuid, instance: Uuid) -> sqlx::Result<i32> {
        sqlx::query_scalar(
            "INSERT INTO saga_deliveries (saga, event_id, instance_id, starts) VALUES ($1, $2, $3, 1)
             ON CONFLICT (saga, event_id, instance_id) DO UPDATE SET starts = saga_deliveries.starts + 1
             RETURNING starts - ends",
        )
        .bind(self.ctx.name())
        .bind(event)
        .bind(instance)
        .fetch_one(&self.pool)
        .await
    }

    /// Notes that a delivery ended, well or not: the process survived it.
    async fn ended(&self, event: Uuid, instance: Uuid) -> sqlx::Result<()> {
        sqlx::query(
            "UPDATE saga_deliveries SET ends = ends + 1
              WHERE saga = $1 AND event_id = $2 AND instance_id = $3",
        )
        .bind(self.ctx.name())
        .bind(event)
        .bind(instance)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// A test-only fault point: with `KEEL_FAULT=saga:crash_on:<key>` the process aborts every
/// time it is about to step an input for that correlation key (a step that kills its process).
pub(crate) fn fault_on_key(key: &str) {
    static KEY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let wanted = KEY.get_or_init(|| {
        std::env::var("KEEL_FAULT")
            .ok()?
            .strip_prefix("saga:crash_on:")
            .map(str::to_owned)
    });
    if wanted.as_deref() == Some(key) {
        use std::io::Write as _;
        let _ = writeln!(
            std::io::stderr(),
            "keel: KEEL_FAULT=saga:crash_on:{key}: aborting"
        );
        std::process::abort();
    }
}

/// A test-only fault point: with `KEEL_FAULT=saga:<point>` (and `KEEL_FAULT_AFTER=N`, the
/// number of passes first), the process aborts there, as a `kill -9` would stop it.
pub(crate) fn fault(point: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static PASSES: AtomicU64 = AtomicU64::new(0);
    static WANTED: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    let wanted = WANTED.get_or_init(|| {
        let point = std::env::var("KEEL_FAULT").ok()?;
        let point = point.strip_prefix("saga:")?.to_owned();
        let after = std::env::var("KEEL_FAULT_AFTER")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Some((point, after))
    });
    if let Some((p, after)) = wanted {
        if p == point && PASSES.fetch_add(1, Ordering::Relaxed) >= *after {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "keel: KEEL_FAULT=saga:{point}: aborting");
            std::process::abort();
        }
    }
}
