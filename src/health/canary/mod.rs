//! Canary events: with `observability.canary_interval_ms` > 0, keel appends a heartbeat event
//! ([`crate::model::canary`]) every interval and watches it arrive on Kafka and on Redis, so the
//! pipeline's end-to-end latency is known even when no other traffic flows.
//!
//! * **One canary per interval, whatever the number of keel processes.** Every process with the
//!   canary on tries to write one twice per interval; the slot is claimed by one atomic statement
//!   on `pipeline_canary_sent`, in the same transaction as the event and its outbox row, so a slot
//!   holds exactly one canary: slots are the intervals of the database's clock, and a claim
//!   succeeds only when the newest canary was written in an earlier slot (`writer.rs`). Every
//!   process should have the same interval.
//! * **The canary goes through the real pipeline.** It is an ordinary event of the store (on
//!   aggregate [`crate::model::canary::AGGREGATE_ID`]), shipped by whichever relay holds its outbox
//!   partition, to `relay.kafka.topic_prefix` + `keel.canary` as the JSON envelope, and to the
//!   Redis channel and stream of the same name.
//! * **Each sink's progress is in PostgreSQL.** Every process with the canary on watches the
//!   sinks the relay has enabled (`kafka_observer.rs`, `redis_observer.rs`) and records the newest
//!   canary seen on each in `pipeline_canary_seen` (the first process to see it wins; an older one
//!   never overwrites a newer one), so any process can report every sink ([`read`]). A canary
//!   counts only if its event is in this database, so a second deployment on the same broker or
//!   Redis cannot stand in for this one.
//! * **Metrics:** [`metrics::CANARY_LATENCY`] (write to sight, per sink) in the process that saw
//!   it; [`metrics::CANARY_AGE`] (time since the newest canary seen on a sink was written), in
//!   every process with the canary on, refreshed each interval from the table.
//!
//! Redis pub/sub keeps nothing for a subscriber that is away, so a canary published while the
//! observer reconnects is missed: the next one repairs the picture. An observer that cannot reach
//! its sink (or the database) logs one warning per outage, then debug lines until it recovers.
//!
//! Cost: one event per interval stays in the store for good (at 1 s, 86,400 rows a day) while
//! its outbox row is deleted once delivered, like any other's. The canary aggregate's version is
//! a 32-bit integer, which lasts 68 years at one canary a second (6.8 at the 100 ms minimum).

mod kafka_observer;
mod redis_observer;
mod writer;

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::config::Config;
use crate::metrics;
use crate::model::canary::Heartbeat;
use crate::shutdown::Shutdown;

/// How an observer reconnects after losing its sink: from the canary interval (at most 1 s) up
/// to 5 s, so that a sink that returns is watched again within a few canaries.
fn reconnect_policy(interval: Duration) -> crate::retry::RetryPolicy {
    crate::retry::RetryPolicy::exponential(
        interval.min(Duration::from_secs(1)),
        Duration::from_secs(5),
    )
}

/// A sink the canary is watched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sink {
    Kafka,
    Redis,
}

impl Sink {
    /// The name in `pipeline_canary_seen.sink` and in the metrics' `sink` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Kafka => "kafka",
            Sink::Redis => "redis",
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "kafka" => Some(Sink::Kafka),
            "redis" => Some(Sink::Redis),
            _ => None,
        }
    }
}

/// The newest canary written, as `pipeline_canary_sent` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub seq: i64,
    pub sent_at: DateTime<Utc>,
}

/// The newest canary seen on one sink, by any keel process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub sink: Sink,
    pub seq: i64,
    /// When that canary was written.
    pub sent_at: DateTime<Utc>,
    /// When it was first seen on the sink.
    pub seen_at: DateTime<Utc>,
}

impl Seen {
    /// From writing the canary to seeing it on the sink.
    pub fn latency(&self) -> Duration {
        (self.seen_at - self.sent_at).to_std().unwrap_or_default()
    }
}

/// What the canary tables say, with the database's clock at the time of reading so that ages
/// are free of clock skew between keel processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryReading {
    /// The database's `now()` when read.
    pub now: DateTime<Utc>,
    /// The newest canary written; `None` if none ever was.
    pub sent: Option<Sent>,
    /// The newest canary seen per sink; a sink on which none was ever seen is missing.
    pub seen: Vec<Seen>,
}

impl CanaryReading {
    pub fn seen_on(&self, sink: Sink) -> Option<&Seen> {
        self.seen.iter().find(|s| s.sink == sink)
    }

    /// Time since the newest canary seen on `sink` was written: how stale that sink's view is.
    /// `None` if none was ever seen there.
    pub fn age(&self, sink: Sink) -> Option<Duration> {
        self.seen_on(sink)
            .map(|s| (self.now - s.sent_at).to_std().unwrap_or_default())
    }

    /// How many canaries were written after the newest one seen on `sink` (all of them if none
    /// was seen there): 0 or 1 while the sink keeps up.
    pub fn behind(&self, sink: Sink) -> i64 {
        let sent = self.sent.map_or(0, |s| s.seq);
        let seen = self.seen_on(sink).map_or(0, |s| s.seq);
        (sent - seen).max(0)
    }
}

/// Reads the canary tables: the newest canary written and, per sink, the newest seen. It
/// decides nothing: the pipeline monitor judges the ages against its thresholds. Works whether
/// or not this process has the canary on (another may).
pub async fn read(pool: &PgPool) -> sqlx::Result<CanaryReading> {
    let (now, seq, sent_at): (DateTime<Utc>, Option<i64>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT now(), s.seq, CASE WHEN s.sent_at = '-infinity' THEN NULL ELSE s.sent_at END
               FROM (SELECT 1) one LEFT JOIN pipeline_canary_sent s ON s.id = 1",
    )
    .fetch_one(pool)
    .await?;
    let sent = match (seq, sent_at) {
        (Some(seq), Some(sent_at)) if seq > 0 => Some(Sent { seq, sent_at }),
        _ => None,
    };
    let rows: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT sink, seq, sent_at, seen_at FROM pipeline_canary_seen ORDER BY sink",
    )
    .fetch_all(pool)
    .await?;
    let seen = rows
        .into_iter()
        .filter_map(|(sink, seq, sent_at, seen_at)| {
            Some(Seen {
                sink: Sink::parse(&sink)?,
                seq,
                sent_at,
                seen_at,
            })
        })
        .collect();
    Ok(CanaryReading { now, sent, seen })
}

/// Records that `event_id`, canary `beat`, was seen on `sink`, unless a newer canary was seen
/// there already or the event is not in this database. Returns the canary's latency when this
/// was the first sight of the newest canary.
async fn record_seen(
    pool: &PgPool,
    sink: Sink,
    event_id: Uuid,
    beat: Heartbeat,
) -> sqlx::Result<Option<Duration>> {
    let latency: Option<f64> = sqlx::query_scalar(
        "INSERT INTO pipeline_canary_seen AS seen (sink, seq, sent_at, seen_at)
         SELECT $1, $2, $3, now()
          WHERE EXISTS (SELECT 1 FROM events WHERE id = $4 AND aggregate_type = $5)
         ON CONFLICT (sink) DO UPDATE
            SET seq = excluded.seq, sent_at = excluded.sent_at, seen_at = excluded.seen_at
          WHERE excluded.seq > seen.seq
         RETURNING extract(epoch FROM seen.seen_at - seen.sent_at)::float8",
    )
    .bind(sink.as_str())
    .bind(beat.seq)
    .bind(beat.sent_at)
    .bind(event_id)
    .bind(crate::model::canary::AGGREGATE_TYPE)
    .fetch_optional(pool)
    .await?;
    let latency = latency.map(crate::store::seconds);
    if let Some(latency) = latency {
        ::metrics::gauge!(metrics::CANARY_LATENCY, "sink" => sink.as_str())
            .set(latency.as_secs_f64());
    }
    Ok(latency)
}

/// A canary as an observer received it: the envelope's event id and its heartbeat, or `None`
/// for anything else on the channel or topic.
fn decode(value: &[u8]) -> Option<(Uuid, Heartbeat)> {
    let event = crate::wire::json::decode(value).ok()?;
    if !crate::model::canary::is_canary(&event.aggregate_type, &event.event_type) {
        return None;
    }
    let beat = serde_json::from_value(event.payload).ok()?;
    Some((event.id, beat))
}

/// A task's failures, logged once per outage: the first at warn, the rest at debug until it
/// works again, which is logged at info.
struct Outage {
    task: &'static str,
    down: bool,
}

impl Outage {
    fn new(task: &'static str) -> Self {
        Self { task, down: false }
    }

    fn failed(&mut self, error: &anyhow::Error) {
        if self.down {
            tracing::debug!(task = self.task, error = %format!("{error:#}"), "canary task still failing");
        } else {
            tracing::warn!(task = self.task, error = %format!("{error:#}"), "canary task failing; it retries, and logs again when it recovers");
        }
        self.down = true;
    }

    fn recovered(&mut self) {
        if self.down {
            tracing::info!(task = self.task, "canary task recovered");
        }
        self.down = false;
    }
}

/// Waits `delay`, or less if `stop` is triggered; returns whether to go on.
async fn pause(delay: Duration, stop: &Shutdown) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.wait() => false,
    }
}

/// The running canary: the writer, an observer per enabled sink and the age metric.
pub struct Canary {
    tasks: JoinSet<()>,
}

impl Canary {
    /// Waits until every task has stopped (after the `stop` given to [`spawn`]).
    pub async fn stopped(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the canary's tasks when `observability.canary_interval_ms` > 0 (`None` otherwise):
/// the writer, an observer for each sink `relay.kafka.enabled` / `relay.redis.enabled` turn on,
/// and the refresh of [`metrics::CANARY_AGE`]. They run until `stop`. Must be called inside a
/// tokio runtime.
pub fn spawn(config: &Config, pool: PgPool, stop: Shutdown) -> anyhow::Result<Option<Canary>> {
    let interval_ms = config.observability.canary_interval_ms;
    if interval_ms == 0 {
        return Ok(None);
    }
    let interval = Duration::from_millis(interval_ms);
    let mut sinks = Vec::new();
    let mut tasks = JoinSet::new();
    if config.relay.kafka.enabled {
        let observer = kafka_observer::KafkaObserver::new(config, pool.clone(), interval);
        tasks.spawn(observer.run(stop.clone()));
        sinks.push(Sink::Kafka);
    }
    if config.relay.redis.enabled {
        let observer = redis_observer::RedisObserver::new(config, pool.clone(), interval)?;
        tasks.spawn(observer.run(stop.clone()));
        sinks.push(Sink::Redis);
    }
    tasks.spawn(refresh_ages(
        pool.clone(),
        sinks.clone(),
        interval,
        stop.clone(),
    ));
    let writer = writer::Writer {
        pool,
        interval,
        notify: config.relay.notify,
    };
    tasks.spawn(writer.run(stop));
    tracing::info!(interval_ms, sinks = ?sinks.iter().map(|s| s.as_str()).collect::<Vec<_>>(), "canary started");
    Ok(Some(Canary { tasks }))
}

/// Every interval: [`metrics::CANARY_AGE`] of each watched sink from the table, which every
/// process's observers feed.
async fn refresh_ages(pool: PgPool, sinks: Vec<Sink>, interval: Duration, stop: Shutdown) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut outage = Outage::new("age");
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => return,
        }
        match read(&pool).await {
            Ok(reading) => {
                outage.recovered();
                for sink in &sinks {
                    if let Some(age) = reading.age(*sink) {
                        ::metrics::gauge!(metrics::CANARY_AGE, "sink" => sink.as_str())
                            .set(age.as_secs_f64());
                    }
                }
            }
            Err(e) => outage.failed(&e.into()),
        }
    }
}
