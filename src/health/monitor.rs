//! The long-lived pipeline monitor: samples every `observability.sample_every()`, judges each
//! component with [`super::rules`], exports the readings as metrics, and keeps the verdict for
//! `/v1/health/pipeline`.
//!
//! Kafka and Redis are asked only once someone wants the verdict (the first request to
//! `/v1/health/pipeline`) or a projection or consumer group needs Kafka's partition ends, so a
//! keel process nobody monitors never opens connections it has no use for.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{watch, Notify};

use super::canary::{self, CanaryReading};
use super::kafka::{KafkaView, Partitions};
use super::reading::{FollowerReading, History, Reading, SinkReading};
use super::rules::{self, Behind, Facts, Sample, Tracker};
use super::{Component, Status, Verdict};
use crate::config::Config;
use crate::metrics;
use crate::shutdown::Shutdown;

/// A handle on the monitor; clones share it.
#[derive(Clone)]
pub struct Monitor {
    shared: Arc<Shared>,
}

struct Shared {
    verdict: RwLock<Option<Verdict>>,
    wanted: AtomicBool,
    kick: Notify,
    samples: watch::Sender<u64>,
    history: History,
    /// Open [`Watching`] guards: while there is one, the monitor samples every [`WATCHED_EVERY`].
    watchers: AtomicUsize,
}

/// How often the monitor samples while someone watches it live (a dashboard is open).
pub const WATCHED_EVERY: Duration = Duration::from_secs(1);

/// While held, the monitor samples every [`WATCHED_EVERY`] (or faster, if its own interval is
/// shorter) and includes Kafka and Redis; dropped, it goes back to its own pace.
pub struct Watching {
    shared: Arc<Shared>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.shared.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Monitor {
    /// Starts sampling until `stop`. Needs a tokio runtime.
    pub fn start(config: &Config, pool: PgPool, stop: Shutdown) -> Monitor {
        let shared = Arc::new(Shared {
            verdict: RwLock::new(None),
            wanted: AtomicBool::new(false),
            kick: Notify::new(),
            samples: watch::Sender::new(0),
            history: History::default(),
            watchers: AtomicUsize::new(0),
        });
        let sampler = Sampler::new(config, pool);
        tokio::spawn(run(
            sampler,
            shared.clone(),
            config.observability.sample_every(),
            stop,
        ));
        Monitor { shared }
    }

    /// The latest verdict. The first call also starts the Kafka and Redis checks and waits (up to
    /// a few seconds) for a sample that includes them.
    pub async fn verdict(&self) -> Verdict {
        let mut samples = self.shared.samples.subscribe();
        let first = !self.shared.wanted.swap(true, Ordering::SeqCst);
        if first || self.current().is_none() {
            samples.mark_unchanged();
            self.shared.kick.notify_one();
            let _ = tokio::time::timeout(Duration::from_secs(10), samples.changed()).await;
        }
        self.current().unwrap_or_else(|| {
            let mut c = BTreeMap::new();
            c.insert(
                "database".to_owned(),
                Component {
                    status: Status::Unhealthy,
                    reason: "the monitor has not sampled the pipeline yet".into(),
                    since: Utc::now(),
                },
            );
            Verdict::new(c)
        })
    }

    /// The readings of the last fifteen minutes, and each new one as it is taken.
    pub fn history(&self) -> &History {
        &self.shared.history
    }

    /// Samples fast until the guard is dropped: for a live view.
    pub fn watch(&self) -> Watching {
        self.shared.wanted.store(true, Ordering::SeqCst);
        if self.shared.watchers.fetch_add(1, Ordering::SeqCst) == 0 {
            self.shared.kick.notify_one();
        }
        Watching {
            shared: self.shared.clone(),
        }
    }

    /// The latest verdict without waiting, `None` before the first sample.
    pub fn current(&self) -> Option<Verdict> {
        self.shared.verdict.read().expect("verdict lock").clone()
    }
}

async fn run(mut sampler: Sampler, shared: Arc<Shared>, every: Duration, stop: Shutdown) {
    let mut first = true;
    loop {
        let pace = match shared.watchers.load(Ordering::SeqCst) {
            0 => every,
            _ => every.min(WATCHED_EVERY),
        };
        if !first {
            tokio::select! {
                _ = tokio::time::sleep(pace) => {}
                _ = shared.kick.notified() => {}
                _ = stop.wait() => return,
            }
        }
        first = false;
        let wanted = shared.wanted.load(Ordering::SeqCst);
        let (verdict, reading) = sampler.sample(wanted).await;
        if let Some(reading) = reading {
            shared.history.push(reading);
        }
        *shared.verdict.write().expect("verdict lock") = Some(verdict);
        shared.samples.send_modify(|n| *n += 1);
    }
}

/// One stage row of `pipeline_stages`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct StageRow {
    component: String,
    process: String,
    age: f64,
    detail: Value,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct RelayRow {
    sink: String,
    position: i64,
    furthest: i64,
    waiting: i64,
    /// Some partition had more rows than [`COUNT_CAP`]: `waiting` is a lower bound.
    capped: bool,
    oldest: Option<f64>,
    /// Rows its cursors have passed (`relay_progress.passed` added up).
    passed: i64,
}

/// What one sample read from PostgreSQL.
#[derive(Debug)]
struct Db {
    head: i64,
    horizon_age: f64,
    stages: Vec<StageRow>,
    relay: Vec<RelayRow>,
    parked: HashMap<String, i64>,
    projections: BTreeSet<String>,
    offsets: Vec<(String, String, i32, i64)>,
    rebuilding: BTreeSet<String>,
    canary: CanaryReading,
    registry_subjects: i64,
    /// Open consumer dead letters per group, at most [`DLQ_CAP`] each.
    dead_letters: Vec<(String, i64)>,
    /// Per saga: timeouts past due, how long the oldest is overdue (s), parked instances.
    sagas: Vec<(String, i64, f64, i64)>,
}

/// How many open dead letters per group the monitor counts.
pub const DLQ_CAP: i64 = 10_000;

/// How many outbox rows per partition the monitor counts (an index range scan each): enough to
/// say "work waits" and roughly how much, cheap however large a backlog grows. Beyond it the
/// reason says "at least".
pub(super) const COUNT_CAP: i64 = 100;

async fn read_db(pool: &PgPool) -> sqlx::Result<Db> {
    let mut c = pool.acquire().await?;
    let head: i64 = sqlx::query_scalar("SELECT coalesce(max(position), 0) FROM events")
        .fetch_one(&mut *c)
        .await?;
    // Not fatal: the age is only added to a stalled relay's reason.
    let horizon_age = crate::store::log::horizon_age(&mut *c).await.unwrap_or(0.0);
    // Rows silent for longer than FORGET_AFTER are not reported, whether or not a sample has
    // deleted them yet.
    let stages = sqlx::query_as(&format!(
        "SELECT component, process, extract(epoch FROM now() - beat_at)::float8 AS age, detail
           FROM pipeline_stages WHERE beat_at >= now() - interval '{FORGET_AFTER}'"
    ))
    .fetch_all(&mut *c)
    .await?;
    let relay = sqlx::query_as(
        "SELECT c.sink, sum(c.position)::bigint AS position, max(c.position) AS furthest,
                sum(b.n)::bigint AS waiting, bool_or(b.n >= $1) AS capped,
                extract(epoch FROM now() - min(b.oldest))::float8 AS oldest,
                sum(c.passed)::bigint AS passed
           FROM relay_progress c
          CROSS JOIN LATERAL (
                SELECT count(*) AS n, min(x.created_at) AS oldest FROM (
                    SELECT o.created_at FROM outbox o
                     WHERE o.partition = c.partition AND (o.tx_id, o.position) > (c.tx_id, c.position)
                     ORDER BY o.tx_id, o.position LIMIT $1) x) b
          GROUP BY c.sink",
    )
    .bind(COUNT_CAP)
    .fetch_all(&mut *c)
    .await?;
    let parked: Vec<(String, i64)> =
        sqlx::query_as("SELECT sink, count(*) FROM relay_parked GROUP BY sink")
            .fetch_all(&mut *c)
            .await?;
    let projections: Vec<String> = sqlx::query_scalar("SELECT name FROM projections")
        .fetch_all(&mut *c)
        .await?;
    let offsets =
        sqlx::query_as("SELECT projection, topic, partition, next_offset FROM projection_offsets")
            .fetch_all(&mut *c)
            .await?;
    // A rebuild holds a session advisory lock on hashtext('keel.rebuild.' || name) while it runs
    // (see api::operator::jobs); its one-bigint key shows in pg_locks as classid/objid.
    let rebuilding: Vec<String> = sqlx::query_scalar(
        "SELECT p.name FROM projections p
          WHERE EXISTS (SELECT 1 FROM pg_locks l
                         WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
                           AND ((l.classid::bigint << 32) | l.objid::bigint)
                               = hashtext('keel.rebuild.' || p.name)::bigint)",
    )
    .fetch_all(&mut *c)
    .await?;
    drop(c);
    let canary = super::canary::read(pool).await?;
    let mut c = pool.acquire().await?;
    let registry_subjects: i64 = sqlx::query_scalar("SELECT count(*) FROM registry_schemas")
        .fetch_one(&mut *c)
        .await?;
    // Each group with open rows, found by skipping through the open-rows index (one probe per
    // group, not a scan of the rows), then counted up to the cap.
    let dead_letters = sqlx::query_as(
        "WITH RECURSIVE g AS (
            (SELECT group_id FROM consumer_dlq WHERE state IN ('parked', 'held', 'retry')
              ORDER BY group_id LIMIT 1)
            UNION ALL
            SELECT (SELECT d.group_id FROM consumer_dlq d
                     WHERE d.state IN ('parked', 'held', 'retry') AND d.group_id > g.group_id
                     ORDER BY d.group_id LIMIT 1)
              FROM g WHERE g.group_id IS NOT NULL)
         SELECT group_id, (SELECT count(*) FROM (SELECT 1 FROM consumer_dlq d
                            WHERE d.group_id = g.group_id AND d.state IN ('parked', 'held', 'retry')
                            LIMIT $1) x)
           FROM g WHERE group_id IS NOT NULL",
    )
    .bind(DLQ_CAP)
    .fetch_all(&mut *c)
    .await?;
    let sagas = sqlx::query_as(
        "SELECT s.saga,
                (SELECT count(*) FROM saga_timeouts t WHERE t.saga = s.saga AND t.due_at < now()),
                coalesce(extract(epoch FROM now() - (SELECT min(due_at) FROM saga_timeouts t
                                                      WHERE t.saga = s.saga AND t.due_at < now())), 0)::float8,
                (SELECT count(*) FROM saga_instances i WHERE i.saga = s.saga AND i.status = 'parked')
           FROM (SELECT substr(name, 6) AS saga FROM projections WHERE name LIKE 'saga\\_%') s",
    )
    .fetch_all(&mut *c)
    .await?;
    Ok(Db {
        head,
        horizon_age,
        stages,
        relay,
        parked: parked.into_iter().collect(),
        projections: projections.into_iter().collect(),
        offsets,
        rebuilding: rebuilding.into_iter().collect(),
        canary,
        registry_subjects,
        dead_letters,
        sagas,
    })
}

/// Rows of stages gone this long are forgotten (a decommissioned stage stops being reported).
const FORGET_AFTER: &str = "1 day";

struct Sampler {
    pool: PgPool,
    stall_after: Duration,
    sinks: Vec<&'static str>,
    kafka: Option<KafkaView>,
    redis: Option<redis::Client>,
    trackers: HashMap<String, Tracker>,
    /// How far behind in time each (group, topic, partition) is.
    behind: HashMap<(String, String, i32), Behind>,
    last: BTreeMap<String, Component>,
    samples: u64,
}

impl Sampler {
    fn new(config: &Config, pool: PgPool) -> Self {
        let relay = &config.relay;
        let mut sinks = Vec::new();
        if relay.kafka.enabled {
            sinks.push("kafka");
        }
        if relay.redis.enabled {
            sinks.push("redis");
        }
        // Each Kafka call may take this long; a busy broker (or machine) answers well within it.
        let timeout = (2 * config.observability.sample_every())
            .clamp(Duration::from_secs(2), Duration::from_secs(5));
        let kafka = relay
            .kafka
            .enabled
            .then(|| KafkaView::new(&config.kafka_brokers, &relay.kafka.properties, timeout));
        // The sink's own client, so that `relay.redis.tls_ca_file` holds here too.
        let redis = match relay.redis.enabled {
            true => crate::relay::redis::client(&config.redis_url, &relay.redis)
                .map_err(|e| tracing::warn!(error = %format!("{e:#}"), "the health monitor cannot use redis_url"))
                .ok(),
            false => None,
        };
        Self {
            pool,
            stall_after: config.observability.stall_after(),
            sinks,
            kafka,
            redis,
            trackers: HashMap::new(),
            behind: HashMap::new(),
            last: BTreeMap::new(),
            samples: 0,
        }
    }

    /// One sample: the verdict, and what was read (none when the database could not be read).
    async fn sample(&mut self, wanted: bool) -> (Verdict, Option<Reading>) {
        let now = Instant::now();
        let mut found: BTreeMap<String, (Status, String)> = BTreeMap::new();
        self.samples += 1;
        let db = match read_db(&self.pool).await {
            Ok(db) => {
                found.insert("database".into(), (Status::Ok, "ok".into()));
                db
            }
            Err(e) => {
                // Without the database nothing else can be judged: keep the other verdicts as
                // they were and say why.
                let mut components = self.last.clone();
                components.retain(|k, _| k != "database");
                let reason = format!("cannot query the database: {e}");
                self.settle(&mut components, "database", Status::Unhealthy, reason);
                self.publish(&components);
                return (Verdict::new(components), None);
            }
        };
        let mut sinks = Vec::new();
        let mut followers = Vec::new();
        if self.samples % 600 == 1 {
            let forgotten = sqlx::query(&format!(
                "DELETE FROM pipeline_stages WHERE beat_at < now() - interval '{FORGET_AFTER}'"
            ))
            .execute(&self.pool)
            .await;
            if let Err(e) = forgotten {
                tracing::debug!(error = %e, "cannot forget old stage rows");
            }
        }
        found.insert(
            "registry".into(),
            (
                Status::Ok,
                format!("{} subjects readable", db.registry_subjects),
            ),
        );
        ::metrics::gauge!(metrics::STORE_HEAD).set(db.head as f64);

        let stages = group_stages(&db.stages);
        let groups: Vec<String> = stages
            .keys()
            .filter_map(|k| k.strip_prefix("group.").map(str::to_owned))
            .collect();
        let mut projections = db.projections.clone();
        projections.extend(
            stages
                .keys()
                .filter_map(|k| k.strip_prefix("projection.").map(str::to_owned)),
        );

        // Kafka: only when asked for, or when a follower needs its partition ends.
        let needed = wanted || !groups.is_empty() || !projections.is_empty();
        let kafka = match (&self.kafka, needed) {
            (Some(kafka), true) => Some(read_kafka(kafka, &stages, &db.offsets, &groups).await),
            _ => None,
        };
        if let Some(k) = &kafka {
            found.insert("kafka".into(), k.verdict.clone());
        }
        let (ends, committed) = match kafka {
            Some(k) => (k.ends, k.committed),
            None => (None, HashMap::new()),
        };
        if let (Some(client), true) = (&self.redis, wanted) {
            found.insert("redis".into(), redis_probe(client).await);
        }

        // Relay sinks.
        for sink in self.sinks.clone() {
            let name = format!("relay.{sink}");
            let row = db.relay.iter().find(|r| r.sink == sink);
            let (position, waiting, oldest) = row
                .map(|r| (r.position, r.waiting, r.oldest.map(crate::store::seconds)))
                .unwrap_or((0, 0, None));
            let capped = row.is_some_and(|r| r.capped);
            if let Some(r) = row {
                ::metrics::gauge!(metrics::RELAY_POSITION, "sink" => sink).set(r.furthest as f64);
            }
            ::metrics::gauge!(metrics::UNDELIVERED_AGE, "sink" => sink)
                .set(oldest.map_or(0.0, |d| d.as_secs_f64()));
            let sample = Sample {
                now,
                position,
                waiting,
                oldest_waiting: Some(oldest.unwrap_or_default()),
                waiting_capped: capped,
            };
            let parked = db.parked.get(sink).copied().unwrap_or(0);
            sinks.push(SinkReading {
                sink: sink.to_owned(),
                waiting,
                capped,
                oldest_s: oldest.map_or(0.0, |d| d.as_secs_f64()),
                parked,
                passed: row.map_or(0, |r| r.passed),
            });
            let (status, mut reason) =
                self.follow(&name, "relay", stages.get(&name), sample, false, parked);
            if status == Status::Unhealthy && db.horizon_age >= self.stall_after.as_secs_f64() {
                reason.push_str(&format!(
                    "; a write transaction open for {:.0} s holds the log back",
                    db.horizon_age
                ));
            }
            found.insert(name, (status, reason));
        }

        // Projections: their stored checkpoints against the ends of their partitions.
        for p in &projections {
            let name = format!("projection.{p}");
            let mine: Vec<_> = db.offsets.iter().filter(|o| &o.0 == p).collect();
            let mut position = 0;
            let mut waiting = 0;
            let mut lag_s: f64 = 0.0;
            for (_, topic, partition, next) in &mine {
                position += next;
                ::metrics::gauge!(metrics::PROJECTION_CHECKPOINT, "projection" => p.clone(), "topic" => topic.clone(), "partition" => partition.to_string())
                    .set(*next as f64);
                if let Some(e) = ends
                    .as_ref()
                    .and_then(|e| e.get(&(topic.clone(), *partition)))
                {
                    let lag = (e.high - next).max(0);
                    waiting += lag;
                    lag_s = lag_s.max(self.lag_metrics(
                        &format!("keel-projection-{p}"),
                        topic,
                        *partition,
                        *next,
                        e.high,
                        now,
                    ));
                }
            }
            // Partitions of its topics it has no checkpoint on yet wait from their start.
            if let (Some(ends), Some(rows)) = (ends.as_ref(), stages.get(&name)) {
                for ((topic, partition), e) in ends {
                    let reads = rows.iter().any(|r| topics_of(&r.detail).contains(topic));
                    let stored = mine.iter().any(|o| &o.1 == topic && o.2 == *partition);
                    if reads && !stored {
                        waiting += (e.high - e.low).max(0);
                    }
                }
            }
            let sample = Sample {
                now,
                position,
                waiting,
                oldest_waiting: None,
                waiting_capped: false,
            };
            followers.push(FollowerReading {
                component: name.clone(),
                lag: waiting,
                lag_s,
                position,
            });
            let rebuilding = db.rebuilding.contains(p);
            let verdict = self.follow(&name, "runner", stages.get(&name), sample, rebuilding, 0);
            found.insert(name, verdict);
        }

        // Consumer groups run by keel's consumer runtime: committed offsets against the ends.
        for g in &groups {
            let name = format!("group.{g}");
            let rows = &stages[&name];
            let mut position = 0;
            let mut waiting = 0;
            let mut lag_s: f64 = 0.0;
            if let (Some(ends), Some(done)) = (ends.as_ref(), committed.get(g)) {
                for (topic, partition) in partitions_of(rows, Some(ends)) {
                    let Some(e) = ends.get(&(topic.clone(), partition)) else {
                        continue;
                    };
                    let at = done
                        .get(&(topic.clone(), partition))
                        .copied()
                        .flatten()
                        .unwrap_or(e.low);
                    position += at;
                    let lag = (e.high - at).max(0);
                    waiting += lag;
                    lag_s = lag_s.max(self.lag_metrics(g, &topic, partition, at, e.high, now));
                }
            }
            let sample = Sample {
                now,
                position,
                waiting,
                oldest_waiting: None,
                waiting_capped: false,
            };
            followers.push(FollowerReading {
                component: name.clone(),
                lag: waiting,
                lag_s,
                position,
            });
            let verdict = self.follow(&name, "member", Some(rows), sample, false, 0);
            found.insert(name, verdict);
        }

        // Sagas: a timeout overdue past the stall threshold means no runner is firing them.
        for (saga, overdue, oldest_s, parked) in &db.sagas {
            let verdict = if *oldest_s >= self.stall_after.as_secs_f64() {
                (
                    Status::Unhealthy,
                    format!("{overdue} timeouts overdue, the oldest by {oldest_s:.0} s: no saga runner is firing them (`keel saga run {saga}`)"),
                )
            } else if *parked > 0 {
                (
                    Status::Degraded,
                    format!("{parked} parked instances (`keel saga list {saga} --status parked`)"),
                )
            } else {
                (Status::Ok, "ok".into())
            };
            found.insert(format!("saga.{saga}"), verdict);
        }

        self.judge_canaries(&db.canary, now, &mut found);

        let mut components = BTreeMap::new();
        for (name, (status, reason)) in found {
            self.settle(&mut components, &name, status, reason);
        }
        self.trackers.retain(|k, _| components.contains_key(k));
        self.publish(&components);
        self.last = components.clone();
        let verdict = Verdict::new(components);
        let reading = Reading {
            at: Utc::now(),
            head: db.head,
            sinks,
            followers,
            dead_letters: db.dead_letters.into_iter().collect(),
            verdict: verdict.clone(),
        };
        (verdict, Some(reading))
    }

    /// Canaries: the newest written against the newest seen on each sink, while some process
    /// writes them (recently enough to tell from a canary that was switched off).
    fn judge_canaries(
        &mut self,
        canary: &CanaryReading,
        now: Instant,
        found: &mut BTreeMap<String, (Status, String)>,
    ) {
        let writing = canary.sent.is_some_and(|s| {
            (canary.now - s.sent_at).to_std().unwrap_or_default() < 10 * self.stall_after
        });
        let sinks: Vec<(&'static str, canary::Sink)> = self
            .sinks
            .iter()
            .filter_map(|s| match *s {
                "kafka" => Some((*s, canary::Sink::Kafka)),
                "redis" => Some((*s, canary::Sink::Redis)),
                _ => None,
            })
            .collect();
        for (sink, which) in sinks.into_iter().filter(|_| writing) {
            let name = format!("canary.{sink}");
            let behind = canary.behind(which);
            let seen_seq = canary.seen_on(which).map_or(0, |s| s.seq);
            let progress = self
                .trackers
                .entry(name.clone())
                .or_insert_with(|| Tracker::new(now))
                .observe(Sample {
                    now,
                    position: seen_seq,
                    waiting: behind,
                    oldest_waiting: None,
                    waiting_capped: false,
                });
            let last = match canary.age(which) {
                Some(age) => format!("the newest seen was written {:.1} s ago", age.as_secs_f64()),
                None => "none has been seen yet".into(),
            };
            let verdict = if behind > 0 && progress.still_for >= self.stall_after {
                (
                    Status::Unhealthy,
                    format!(
                        "{behind} canaries written and not seen on {sink} for {:.0} s; {last}",
                        progress.still_for.as_secs_f64()
                    ),
                )
            } else {
                (Status::Ok, last)
            };
            found.insert(name, verdict);
        }
    }

    /// Judges one following stage with its tracker.
    fn follow(
        &mut self,
        name: &str,
        runner: &'static str,
        rows: Option<&Vec<StageRow>>,
        sample: Sample,
        rebuilding: bool,
        parked: i64,
    ) -> (Status, String) {
        let stall = self.stall_after.as_secs_f64();
        let freshest = rows.and_then(|rows| {
            rows.iter()
                .min_by(|a, b| a.age.total_cmp(&b.age))
                .map(|r| (crate::store::seconds(r.age), r.process.as_str()))
        });
        let stale_instances = match freshest {
            Some((age, _)) if age.as_secs_f64() < stall => rows
                .map(|rows| rows.iter().filter(|r| r.age >= stall).count())
                .unwrap_or(0),
            _ => 0,
        };
        if let Some((age, _)) = freshest {
            ::metrics::gauge!(metrics::HEARTBEAT_AGE, "component" => name.to_owned())
                .set(age.as_secs_f64());
        }
        let progress = self
            .trackers
            .entry(name.to_owned())
            .or_insert_with(|| Tracker::new(sample.now))
            .observe(sample);
        rules::judge(
            self.stall_after,
            &Facts {
                runner,
                heartbeat: freshest,
                stale_instances,
                sample,
                progress,
                rebuilding,
                parked,
            },
        )
    }

    /// Exports one partition's lag; returns it in seconds.
    fn lag_metrics(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        at: i64,
        end: i64,
        now: Instant,
    ) -> f64 {
        let key = (group.to_owned(), topic.to_owned(), partition);
        let behind = self.behind.entry(key).or_default().observe(now, at, end);
        let labels = [
            ("group", group.to_owned()),
            ("topic", topic.to_owned()),
            ("partition", partition.to_string()),
        ];
        ::metrics::gauge!(metrics::CONSUMER_LAG, &labels).set((end - at).max(0) as f64);
        ::metrics::gauge!(metrics::CONSUMER_LAG_SECONDS, &labels).set(behind.as_secs_f64());
        behind.as_secs_f64()
    }

    /// Puts a component's verdict in, keeping `since` while its status stays the same.
    fn settle(
        &self,
        components: &mut BTreeMap<String, Component>,
        name: &str,
        status: Status,
        reason: String,
    ) {
        let since = match self.last.get(name) {
            Some(c) if c.status == status => c.since,
            _ => Utc::now(),
        };
        components.insert(
            name.to_owned(),
            Component {
                status,
                reason,
                since,
            },
        );
    }

    fn publish(&self, components: &BTreeMap<String, Component>) {
        for (name, c) in components {
            ::metrics::gauge!(metrics::PIPELINE_STATUS, "component" => name.clone())
                .set(c.status.gauge());
        }
        for gone in self.last.keys().filter(|k| !components.contains_key(*k)) {
            ::metrics::gauge!(metrics::PIPELINE_STATUS, "component" => gone.clone()).set(0.0);
        }
    }
}

/// What one sample read from Kafka.
struct KafkaReading {
    /// The `kafka` component: does a broker answer.
    verdict: (Status, String),
    /// The ends of the partitions the followers read; `None` when they could not be read.
    ends: Option<Partitions>,
    /// Each group's committed offsets, for the groups whose could be read.
    committed: HashMap<String, BTreeMap<(String, i32), Option<i64>>>,
}

/// Asks Kafka whether a broker answers, then (if one does) where the followers' partitions end
/// and where each group has committed. A failed read leaves that part out: the followers are
/// then judged on their heartbeats alone.
async fn read_kafka(
    kafka: &KafkaView,
    stages: &BTreeMap<String, Vec<StageRow>>,
    offsets: &[(String, String, i32, i64)],
    groups: &[String],
) -> KafkaReading {
    let brokers = match kafka.probe().await {
        Ok(n) => n,
        Err(e) => {
            return KafkaReading {
                verdict: (Status::Unhealthy, format!("no broker answers: {e}")),
                ends: None,
                committed: HashMap::new(),
            }
        }
    };
    let topics = follower_topics(stages, offsets);
    let ends = kafka
        .ends(topics.into_iter().collect())
        .await
        .map_err(|e| tracing::debug!(error = %e, "cannot read partition ends"))
        .ok();
    let mut committed = HashMap::new();
    for g in groups {
        let parts = partitions_of(&stages[&format!("group.{g}")], ends.as_ref());
        match kafka.committed(g, parts).await {
            Ok(c) => {
                committed.insert(g.clone(), c);
            }
            Err(e) => tracing::debug!(group = %g, error = %e, "cannot read committed offsets"),
        }
    }
    KafkaReading {
        verdict: (Status::Ok, format!("{brokers} brokers answer")),
        ends,
        committed,
    }
}

async fn redis_probe(client: &redis::Client) -> (Status, String) {
    let ping = async {
        let mut c = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    match tokio::time::timeout(Duration::from_secs(3), ping).await {
        Ok(Ok(_)) => (Status::Ok, "answers PING".into()),
        Ok(Err(e)) => (Status::Unhealthy, format!("does not answer: {e}")),
        Err(_) => (Status::Unhealthy, "does not answer PING within 3 s".into()),
    }
}

fn group_stages(rows: &[StageRow]) -> BTreeMap<String, Vec<StageRow>> {
    let mut out: BTreeMap<String, Vec<StageRow>> = BTreeMap::new();
    for r in rows {
        out.entry(r.component.clone()).or_default().push(r.clone());
    }
    out
}

/// The topics a stage says it reads (`detail.topics`).
fn topics_of(detail: &Value) -> Vec<String> {
    detail
        .get("topics")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn follower_topics(
    stages: &BTreeMap<String, Vec<StageRow>>,
    offsets: &[(String, String, i32, i64)],
) -> BTreeSet<String> {
    let mut topics: BTreeSet<String> = offsets.iter().map(|o| o.1.clone()).collect();
    for (name, rows) in stages {
        if name.starts_with("group.") || name.starts_with("projection.") {
            for r in rows {
                topics.extend(topics_of(&r.detail));
            }
        }
    }
    topics
}

/// Every partition of the topics `rows` read, as far as Kafka's ends show them.
fn partitions_of(rows: &[StageRow], ends: Option<&Partitions>) -> Vec<(String, i32)> {
    let topics: BTreeSet<String> = rows.iter().flat_map(|r| topics_of(&r.detail)).collect();
    ends.map(|e| {
        e.keys()
            .filter(|(t, _)| topics.contains(t))
            .cloned()
            .collect()
    })
    .unwrap_or_default()
}
