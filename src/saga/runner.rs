//! What runs one saga besides its inputs ([`super::inputs`]) and timers ([`super::timers`]): its
//! options, its metrics and its housekeeping (gauges, pruning ended instances). `src/app/sagas.rs`
//! wires the three side by side.

use std::collections::BTreeMap;
use std::time::Duration;

use sqlx::PgPool;

use super::step::Outcome;
use super::store;
use crate::heartbeat::Stages;
use crate::metrics as m;

#[derive(Debug, Clone)]
pub struct SagaOptions {
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub retain_ended: Duration,
    pub max_state_bytes: usize,
    pub properties: BTreeMap<String, String>,
    pub beat_every: Duration,
    pub stages: Option<Stages>,
    pub topic_prefix: String,
    /// `now` or `earliest` (`sagas.start_from`).
    pub start_from: String,
    /// `relay.notify`: wake the relays when steps commit.
    pub notify: bool,
}

impl SagaOptions {
    pub fn from_config(config: &crate::config::Config, stages: Option<Stages>) -> Self {
        let s = &config.sagas;
        Self {
            batch_size: s.batch_size,
            poll_interval: s.poll_interval(),
            retain_ended: Duration::from_secs(s.retain_ended_secs),
            max_state_bytes: s.max_state_bytes,
            properties: with_quick_fetch(&s.properties),
            beat_every: config.observability.sample_every(),
            stages,
            topic_prefix: config.relay.kafka.topic_prefix.clone(),
            start_from: s.start_from.clone(),
            notify: config.relay.notify,
        }
    }
}

/// The runners' consumer settings: a saga's step waits on its input, so the fetch returns after
/// 20 ms instead of librdkafka's 500 ms unless `sagas.properties` says otherwise.
fn with_quick_fetch(properties: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut p = properties.clone();
    p.entry("fetch.wait.max.ms".into())
        .or_insert_with(|| "20".into());
    p
}

/// The saga metrics a runner records.
#[derive(Debug, Default)]
pub struct Metrics;

impl Metrics {
    pub fn step(&self, saga: &str, input: &'static str, outcome: &Outcome, took: Duration) {
        metrics::counter!(m::SAGA_STEPS, "saga" => saga.to_owned(), "input" => input, "outcome" => outcome.label())
            .increment(1);
        if matches!(outcome, Outcome::Stepped(_)) {
            metrics::histogram!(m::SAGA_STEP_SECONDS, "saga" => saga.to_owned())
                .record(took.as_secs_f64());
        }
    }

    pub fn unmatched(&self, saga: &str, event_type: &str) {
        metrics::counter!(m::SAGA_UNMATCHED, "saga" => saga.to_owned(), "event_type" => event_type.to_owned())
            .increment(1);
    }

    /// An input created before the saga was first deployed (`sagas.start_from = "now"`).
    pub fn before_start(&self, saga: &str, _event_type: &str) {
        metrics::counter!(m::SAGA_STEPS, "saga" => saga.to_owned(), "input" => "event", "outcome" => "before_start")
            .increment(1);
    }

    pub fn lateness(&self, saga: &str, seconds: f64) {
        metrics::histogram!(m::SAGA_TIMEOUT_LATENESS, "saga" => saga.to_owned())
            .record(seconds.max(0.0));
    }
}

/// Registers `saga` on its first run and returns where its history starts (`None`: at the
/// earliest input).
pub async fn register(
    pool: &PgPool,
    saga: &str,
    start_from: &str,
) -> sqlx::Result<Option<chrono::DateTime<chrono::Utc>>> {
    sqlx::query(
        "INSERT INTO sagas (name, start_after) VALUES ($1, CASE WHEN $2 = 'now' THEN now() END)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(saga)
    .bind(start_from)
    .execute(pool)
    .await?;
    sqlx::query_scalar("SELECT start_after FROM sagas WHERE name = $1")
        .bind(saga)
        .fetch_one(pool)
        .await
}

/// Every few seconds: the instance gauges, and ended instances past their retention pruned.
pub async fn housekeeping(
    pool: PgPool,
    saga: &'static str,
    retain: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = every.tick() => {}
        }
        if let Err(e) = sample(&pool, saga).await {
            tracing::debug!(saga, error = %e, "cannot sample the saga's gauges");
        }
        match store::prune(&pool, saga, retain.as_secs()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(saga, pruned = n, "pruned ended saga instances"),
            Err(e) => tracing::debug!(saga, error = %e, "cannot prune ended saga instances"),
        }
    }
}

async fn sample(pool: &PgPool, saga: &'static str) -> sqlx::Result<()> {
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM saga_instances WHERE saga = $1 GROUP BY status",
    )
    .bind(saga)
    .fetch_all(pool)
    .await?;
    for status in store::STATUSES {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        metrics::gauge!(m::SAGA_INSTANCES, "saga" => saga, "status" => status).set(n as f64);
    }
    let (pending, overdue): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE due_at < now()) FROM saga_timeouts WHERE saga = $1",
    )
    .bind(saga)
    .fetch_one(pool)
    .await?;
    metrics::gauge!(m::SAGA_TIMEOUTS_PENDING, "saga" => saga).set(pending as f64);
    metrics::gauge!(m::SAGA_TIMEOUTS_OVERDUE, "saga" => saga).set(overdue as f64);
    Ok(())
}
