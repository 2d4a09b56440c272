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
    routes: Vec<Route>,
    name: &'static str,
    types: &'static [&'static str],
    pub(crate) metrics: Arc<super::runner::Metrics>,
}

impl Inputs {
    pub fn new(ctx: Arc<Ctx>, metrics: Arc<super::runner::Metrics>) -> Self {
        let routes = ctx.saga.routes();
        // A handful of sagas per process, each built once: their names live as long as it.
        let name = Box::leak(projection_name(ctx.name()).into_boxed_str());
        let types: Vec<&'static str> = routes.iter().map(|r| r.event_type).collect();
        Self {
            ctx,
            routes,
            name,
            types: Box::leak(types.into_boxed_slice()),
            metrics,
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
        let mut routed = Vec::with_capacity(events.len());
        let mut instances = Vec::new();
        for e in events {
            let targets = self.route(tx, e).await?;
            if targets.is_empty() {
                self.metrics.unmatched(self.ctx.name(), &e.event_type);
            }
            instances.extend(targets.iter().map(|t| t.instance));
            routed.push((e, targets));
        }
        instances.sort();
        instances.dedup();
        // The transaction is the runner's; `lock` needs one, so a savepoint stands in for it.
        let mut tx = sqlx::Acquire::begin(&mut *tx).await?;
        step::lock(&mut tx, &self.ctx, &instances).await?;
        for (event, targets) in routed {
            let input = Input::Event(Box::new(event.clone()));
            for t in targets {
                fault("before_step");
                let started = std::time::Instant::now();
                let outcome = step::deliver(
                    &mut tx,
                    &self.ctx,
                    t.instance,
                    &t.key,
                    t.may_start,
                    &input,
                    Mode::Live,
                )
                .await
                .map_err(|e| match e {
                    Failure::Retriable(s) | Failure::Permanent(s) => anyhow::anyhow!(s),
                    Failure::Database(e) => e.into(),
                })?;
                if matches!(outcome, Outcome::Unmatched) {
                    self.metrics.unmatched(self.ctx.name(), &event.event_type);
                }
                self.metrics
                    .step(self.ctx.name(), "event", &outcome, started.elapsed());
                fault("after_step");
            }
        }
        fault("before_commit");
        tx.commit().await?;
        Ok(())
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
