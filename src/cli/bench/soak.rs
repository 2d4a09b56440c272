//! `keel bench soak`: a real `keel serve --relay --projections` (a child process, default
//! settings, authentication off) under a steady open-loop load through its HTTP API for
//! `--minutes`, with one Kafka consumer group reading what the relay publishes. Every interval it
//! prints the append and the commit → consume latency percentiles, the outbox's size, keel's RSS,
//! and the checkpoints and autovacuums PostgreSQL ran meanwhile. At the end it waits for the
//! pipeline to drain and compares the counts: acknowledged appends, rows in the store, distinct
//! events the consumer group saw, calls the `service_invocations` projection counted. Anything
//! acknowledged and missing anywhere fails the command (exit 1), so a short run is a test.
//!
//! The load is a producer service's: `--connections` HTTP connections kept open and reused, an
//! append sent on each tick whether or not the ones before have replied (open loop). An append
//! that finds every connection busy waits for one, and its latency is timed from its tick, so a
//! slow server shows as latency and as appends in flight, not as a lower rate.
//!
//! Commit → consume is timed from the append's reply (just after its commit) to the consumer
//! receiving the record, through the relay and the broker. The consumer runs on a thread of its
//! own, with librdkafka's default fetch wait (so the column includes the broker's hold of a
//! fetch; `keel bench relay` measures the least latency with a 5 ms wait). Each line also gives
//! the consumer group's and the projection's lag (acknowledged appends not yet seen by each),
//! which tells the relay's, the broker's and the consumers' shares apart.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::ClientContext;
use serde::Serialize;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::append::fresh_database;
use super::relay::{create_topics, spawn_reader_with, Reader};
use super::stats::Sample;
use super::SoakArgs;
use crate::config::Config;
use crate::consumer::client::{self, StartAt};
use crate::kafka;
use tokio::sync::Semaphore;

const TOPIC: &str = "keel.service";
const EVENT_TYPE: &str = "l12.service_invoked";

pub async fn run(config: &Config, args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.minutes > 0.0 && args.rate > 0 && args.connections > 0,
        "--minutes, --rate and --connections must be positive"
    );
    let url = fresh_database(config, args.database_url.as_deref(), "keel_bench_soak").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut keel = Keel::start(config, &url, port)?;
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    keel.wait_ready(&http, &base).await?;
    let pool = PgPool::connect(&url).await?;
    create_topics(config, &[TOPIC]).await?;
    let arrivals = Arrivals::start(config)?;

    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let every = if total >= Duration::from_secs(180) {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(10)
    };
    if !args.json {
        println!(
            "soak: keel serve --relay --projections (pid {}), {} events/s over {} connections for {:.1} min, one consumer group on {TOPIC}",
            keel.pid(),
            args.rate,
            args.connections,
            args.minutes
        );
        println!(
            "{:>6} {:>8} {:>6} {:>6} {:>20} {:>20} {:>7} {:>7} {:>7} {:>7} {:>8} {:>9} {:>5} {:>5}",
            "t s",
            "acked",
            "failed",
            "flight",
            "append p50/p99 ms",
            "consume p50/p99 ms",
            "grp lag",
            "again",
            "prj lag",
            "outbox",
            "RSS MiB",
            "anon MiB",
            "ckpt",
            "avac"
        );
    }
    // A bar on a terminal; the interval lines go above it (or alone, elsewhere).
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(total.as_secs()), ProgressDrawTarget::stderr())
    };
    if let Ok(style) = ProgressStyle::with_template("soak [{bar:40}] {pos}/{len} s, ETA {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let load = Load::new(
        http.clone(),
        base.clone(),
        args.aggregates,
        args.connections,
    );
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / args.rate as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut next_report = started + every;
    let mut pg = PgCounters::read(&pool).await?;
    let mut intervals = Vec::new();
    let mut redelivered = 0;
    let mut i: u64 = 0;
    while started.elapsed() < total {
        tick.tick().await;
        // Timed from when it was due: a tick the loop reached late still counts from its slot.
        load.send(i, started + period.mul_f64(i as f64), &arrivals);
        i += 1;
        if Instant::now() >= next_report {
            next_report += every;
            let now = PgCounters::read(&pool).await?;
            let acked = load.acked();
            let line = Interval {
                at_s: started.elapsed().as_secs(),
                acked,
                failed: load.failed(),
                in_flight: load.in_flight(),
                append: Percentiles::take(&load.latency),
                consume: Percentiles::take(&arrivals.latency),
                group_lag: acked.saturating_sub(arrivals.seen_count()),
                redelivered: {
                    let before = redelivered;
                    redelivered = arrivals.redelivered();
                    redelivered - before
                },
                projection_lag: acked.saturating_sub(projected(&pool).await),
                outbox_rows: outbox_rows(&pool).await?,
                rss_mib: keel.rss_mib(),
                anon_mib: keel.anon_mib(),
                checkpoints: now.checkpoints - pg.checkpoints,
                autovacuums: now.autovacuums - pg.autovacuums,
            };
            pg = now;
            bar.set_position(started.elapsed().as_secs());
            if !args.json && bar.is_hidden() {
                println!("{}", line.show());
            } else if !args.json {
                bar.println(line.show());
            }
            intervals.push(line);
        }
    }
    bar.finish_and_clear();
    let sent = i;
    let report = drain(&pool, &load, &arrivals, &mut keel, sent, intervals, &args).await?;
    keel.stop().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        report.show();
    }
    anyhow::ensure!(
        report.lost == 0,
        "{} acknowledged events are missing from at least one count (see above for which)",
        report.lost
    );
    Ok(())
}

/// Waits for everything acknowledged to reach the store, the consumer group and the projection,
/// and for the outbox to empty, for as long as any of them still moves (a lagging consumer is
/// slow, not lossy); gives up after a minute without progress, then counts.
async fn drain(
    pool: &PgPool,
    load: &Load,
    arrivals: &Arrivals,
    keel: &mut Keel,
    sent: u64,
    intervals: Vec<Interval>,
    args: &SoakArgs,
) -> anyhow::Result<Report> {
    let mut deadline = Instant::now() + Duration::from_secs(60);
    while load.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let acked = load.acked();
    let ids = load.acked_ids();
    let (mut stored, mut consumed, mut projected, mut outbox);
    let mut last = (0, 0, 0, -1);
    loop {
        stored = 0;
        for chunk in ids.chunks(50_000) {
            stored += sqlx::query_scalar::<_, i64>("SELECT count(*) FROM events WHERE id = ANY($1)")
                .bind(chunk)
                .fetch_one(pool)
                .await? as u64;
        }
        consumed = arrivals.seen(&ids);
        projected = self::projected(pool).await;
        outbox = outbox_rows(pool).await?;
        let done = stored == acked && consumed == acked && projected >= acked && outbox == 0;
        let now = (stored, consumed, projected, outbox);
        if now != last {
            last = now;
            deadline = Instant::now() + Duration::from_secs(60);
        }
        if done || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss: Vec<f64> = intervals.iter().map(|i| i.rss_mib).collect();
    // Warm-up: the first fifth of the run (at least the first interval).
    let warm = (rss.len() / 5).max(1).min(rss.len());
    let mut steady = rss[warm.min(rss.len().saturating_sub(1))..].to_vec();
    steady.sort_by(f64::total_cmp);
    let lost = lost(acked, stored, consumed, projected);
    let errors = arrivals.reader.errors();
    Ok(Report {
        minutes: args.minutes,
        rate: args.rate,
        connections: args.connections,
        sent,
        acked,
        failed: load.failed(),
        stored,
        consumed,
        projected,
        outbox_left: outbox,
        lost,
        group_assignments: arrivals.assignments.load(Ordering::Relaxed),
        group_redelivered: arrivals.redelivered(),
        group_read_errors: errors.count,
        group_last_read_error: errors.last,
        rss_peak_mib: keel.peak_rss_mib(),
        rss_steady_median_mib: steady.get(steady.len() / 2).copied().unwrap_or(0.0),
        anon_steady_median_mib: {
            let mut anon: Vec<f64> = intervals[warm.min(intervals.len().saturating_sub(1))..]
                .iter()
                .map(|i| i.anon_mib)
                .collect();
            anon.sort_by(f64::total_cmp);
            anon.get(anon.len() / 2).copied().unwrap_or(0.0)
        },
        rss_growth_after_warmup_mib: match (
            warm.checked_sub(1).and_then(|w| rss.get(w)),
            rss.last(),
        ) {
            (Some(a), Some(b)) => b - a,
            _ => 0.0,
        },
        intervals,
    })
}

/// Acknowledged events missing from the smallest of the store's, the group's and the
/// projection's counts.
fn lost(acked: u64, stored: u64, consumed: u64, projected: u64) -> u64 {
    acked.saturating_sub(stored.min(consumed).min(projected))
}

/// The calls `service_invocations` has counted (0 before its table exists).
async fn projected(pool: &PgPool) -> u64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT sum(calls)::bigint FROM keel_proj_service_invocations.service_invocations",
    )
    .fetch_one(pool)
    .await
    .unwrap_or(None)
    .unwrap_or(0) as u64
}

/// One interval's line.
#[derive(Debug, Serialize)]
struct Interval {
    at_s: u64,
    acked: u64,
    failed: u64,
    /// Appends sent or waiting for a connection, not yet answered.
    in_flight: u64,
    append: Percentiles,
    consume: Percentiles,
    /// Acknowledged appends the consumer group has not seen yet.
    group_lag: u64,
    /// Records the consumer group received again in this interval.
    redelivered: u64,
    /// Acknowledged appends the `service_invocations` projection has not counted yet.
    projection_lag: u64,
    outbox_rows: i64,
    /// keel's resident set: its own memory (`anon_mib`) and the pages of the binary it ran.
    rss_mib: f64,
    anon_mib: f64,
    checkpoints: i64,
    autovacuums: i64,
}

impl Interval {
    fn show(&self) -> String {
        format!(
            "{:>6} {:>8} {:>6} {:>6} {:>20} {:>20} {:>7} {:>7} {:>7} {:>7} {:>8.1} {:>9.1} {:>5} {:>5}",
            self.at_s,
            self.acked,
            self.failed,
            self.in_flight,
            self.append.show(),
            self.consume.show(),
            self.group_lag,
            self.redelivered,
            self.projection_lag,
            self.outbox_rows,
            self.rss_mib,
            self.anon_mib,
            self.checkpoints,
            self.autovacuums
        )
    }
}

#[derive(Debug, Serialize)]
struct Report {
    minutes: f64,
    rate: u64,
    connections: usize,
    sent: u64,
    acked: u64,
    failed: u64,
    stored: u64,
    consumed: u64,
    projected: u64,
    outbox_left: i64,
    /// Acknowledged events missing from the smallest of the three counts.
    lost: u64,
    /// Times the consumer group was assigned its partitions (1 without rebalances).
    group_assignments: u64,
    group_redelivered: u64,
    group_read_errors: u64,
    group_last_read_error: Option<String>,
    rss_peak_mib: f64,
    rss_steady_median_mib: f64,
    rss_growth_after_warmup_mib: f64,
    anon_steady_median_mib: f64,
    intervals: Vec<Interval>,
}

impl Report {
    fn show(&self) {
        println!(
            "\nsent {} · acknowledged {} · refused or failed {}",
            self.sent, self.acked, self.failed
        );
        println!(
            "of the acknowledged: in the store {} · seen by the consumer group {} · counted by service_invocations {} · outbox left {}",
            self.stored, self.consumed, self.projected, self.outbox_left
        );
        println!(
            "keel RSS: peak {:.1} MiB, steady median {:.1} MiB (of which its own memory {:.1} MiB, the rest the binary's pages), growth after warm-up {:+.1} MiB",
            self.rss_peak_mib,
            self.rss_steady_median_mib,
            self.anon_steady_median_mib,
            self.rss_growth_after_warmup_mib
        );
        println!(
            "consumer group: assigned {} time(s), {} records received again, {} read errors{}",
            self.group_assignments,
            self.group_redelivered,
            self.group_read_errors,
            self.group_last_read_error
                .as_deref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default()
        );
        for line in self.verdict() {
            println!("{line}");
        }
    }

    /// "nothing lost", or a line for each count that fell short, saying what its shortfall means.
    fn verdict(&self) -> Vec<String> {
        if self.lost == 0 {
            return vec!["nothing lost".into()];
        }
        let mut lines = Vec::new();
        if self.stored < self.acked {
            lines.push(format!(
                "LOST: {} acknowledged appends are not in the store",
                self.acked - self.stored
            ));
        }
        if self.projected < self.acked {
            lines.push(format!(
                "MISSING: {} acknowledged appends not counted by service_invocations when the drain gave up{}",
                self.acked - self.projected,
                if self.outbox_left > 0 {
                    format!(" ({} still in the outbox)", self.outbox_left)
                } else {
                    String::new()
                }
            ));
        }
        if self.consumed < self.acked {
            let published = self.stored == self.acked && self.outbox_left == 0;
            let read_elsewhere = published && self.projected >= self.acked;
            lines.push(format!(
                "MISSING: {} acknowledged appends never reached the bench's consumer group{}",
                self.acked - self.consumed,
                if read_elsewhere {
                    "; the relay published every one (outbox empty) and the projection, reading \
                     the same topic, counted them all, so the group stopped receiving, not keel \
                     losing (see the group's line above)"
                } else {
                    ""
                }
            ));
        }
        lines
    }
}

/// Latency percentiles of an interval, in milliseconds.
#[derive(Debug, Serialize)]
struct Percentiles {
    n: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Percentiles {
    /// The interval's percentiles; the histogram starts again empty.
    fn take(h: &Mutex<Histogram<u64>>) -> Self {
        let mut h = h.lock().expect("latency histogram");
        let ms = |us: u64| us as f64 / 1000.0;
        let p = Percentiles {
            n: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        };
        h.reset();
        p
    }

    fn show(&self) -> String {
        format!("{:.1}/{:.1}", self.p50_ms, self.p99_ms)
    }
}

/// The open-loop load: one HTTP append of one event per tick, never waiting for the reply, over
/// at most `connections` connections at once (a permit each).
struct Load {
    http: reqwest::Client,
    base: String,
    aggregates: u64,
    connections: Arc<Semaphore>,
    latency: Arc<Mutex<Histogram<u64>>>,
    state: Arc<Mutex<LoadState>>,
}

#[derive(Default)]
struct LoadState {
    acked: Vec<Uuid>,
    failed: u64,
    in_flight: u64,
}

impl Load {
    fn new(http: reqwest::Client, base: String, aggregates: u64, connections: usize) -> Self {
        Self {
            http,
            base,
            aggregates: aggregates.max(1),
            connections: Arc::new(Semaphore::new(connections)),
            latency: Arc::new(Mutex::new(Sample::new_histogram())),
            state: Default::default(),
        }
    }

    fn send(&self, i: u64, due: Instant, arrivals: &Arrivals) {
        let id = Uuid::now_v7();
        let aggregate = Uuid::from_u128(
            0x5041_0000_0000_4000_8000_0000_0000_0000 | u128::from(i % self.aggregates),
        );
        let body = json!({"events": [{
            "id": id,
            "type": EVENT_TYPE,
            "payload": {
                "service_name": format!("svc{}", i % 20),
                "method": format!("m{}", i % 7),
                "execution_time": (i % 1000) as f64 / 10.0,
                "status": if i.is_multiple_of(50) { "ERROR" } else { "OK" },
                "caller": null,
                "attempt": 1,
            },
        }]});
        let request = self
            .http
            .post(format!(
                "{}/v1/aggregates/service/{aggregate}/events",
                self.base
            ))
            .json(&body);
        let (latency, state, arrivals, connections) = (
            self.latency.clone(),
            self.state.clone(),
            arrivals.sent.clone(),
            self.connections.clone(),
        );
        state.lock().expect("load").in_flight += 1;
        tokio::spawn(async move {
            let _connection = connections
                .acquire_owned()
                .await
                .expect("the load's semaphore is never closed");
            let ok = match request.send().await {
                // The body read to its end, so that the connection goes back to the pool.
                Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                Err(_) => false,
            };
            let replied = Instant::now();
            let mut s = state.lock().expect("load");
            s.in_flight -= 1;
            if ok {
                s.acked.push(id);
                drop(s);
                let us = replied.saturating_duration_since(due).as_micros().max(1) as u64;
                let _ = latency.lock().expect("latency").record(us);
                arrivals.lock().expect("arrivals").acked(id, replied);
            } else {
                s.failed += 1;
            }
        });
    }

    fn acked(&self) -> u64 {
        self.state.lock().expect("load").acked.len() as u64
    }

    fn acked_ids(&self) -> Vec<Uuid> {
        self.state.lock().expect("load").acked.clone()
    }

    fn failed(&self) -> u64 {
        self.state.lock().expect("load").failed
    }

    fn in_flight(&self) -> u64 {
        self.state.lock().expect("load").in_flight
    }
}

/// The consumer group's side: which events it saw (each counted once, however often it was
/// delivered), and the latency of each from its append's reply. A record can arrive before its
/// reply does, so either side may come first.
struct Arrivals {
    sent: Arc<Mutex<Matcher>>,
    latency: Arc<Mutex<Histogram<u64>>>,
    assignments: Arc<AtomicU64>,
    reader: Reader,
}

struct Matcher {
    waiting: HashMap<Uuid, Instant>,
    early: HashMap<Uuid, Instant>,
    seen: std::collections::HashSet<Uuid>,
    /// Records of events seen before: a group that lost its assignment and read again from
    /// the start (it commits no offsets) shows here.
    redelivered: u64,
    latency: Arc<Mutex<Histogram<u64>>>,
}

/// Counts the consumer group's assignments: one at the start, one more after every rebalance.
struct GroupWatch(Arc<AtomicU64>);

impl ClientContext for GroupWatch {}

impl ConsumerContext for GroupWatch {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(_) = rebalance {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Matcher {
    fn acked(&mut self, id: Uuid, at: Instant) {
        match self.early.remove(&id) {
            Some(arrived) => self.record(arrived.saturating_duration_since(at)),
            None => {
                self.waiting.insert(id, at);
            }
        }
    }

    fn arrived(&mut self, id: Uuid, at: Instant) {
        if !self.seen.insert(id) {
            self.redelivered += 1; // counted once
            return;
        }
        match self.waiting.remove(&id) {
            Some(acked) => self.record(at.saturating_duration_since(acked)),
            None => {
                self.early.insert(id, at);
            }
        }
    }

    fn record(&self, d: Duration) {
        let us = d.as_micros().max(1) as u64;
        let _ = self.latency.lock().expect("latency").record(us);
    }
}

impl Arrivals {
    fn start(config: &Config) -> anyhow::Result<Self> {
        let group = format!("keel-soak-{}", Uuid::new_v4().simple());
        let mut settings = client::config(
            &config.kafka_brokers,
            &group,
            "keel-soak",
            StartAt::Beginning,
            &kafka::connection_settings(&config.relay.kafka.properties),
        );
        // librdkafka's own fetch wait and session timeout, as keel's projections use them: with
        // `fetch.wait.max.ms=5` the group's many small fetches were served ever more slowly while
        // the broker took 2,000 produces/s, and it fell 30k-100k records behind by minute 5
        // (docs/benchmarks.md, 2026-12-04).
        settings.set("enable.auto.commit", "true");
        let assignments = Arc::new(AtomicU64::new(0));
        let consumer: StreamConsumer<GroupWatch> =
            kafka::create_with_context(&settings, GroupWatch(assignments.clone()))?;
        consumer.subscribe(&[TOPIC])?;
        let latency = Arc::new(Mutex::new(Sample::new_histogram()));
        let sent = Arc::new(Mutex::new(Matcher {
            waiting: HashMap::new(),
            early: HashMap::new(),
            seen: Default::default(),
            redelivered: 0,
            latency: latency.clone(),
        }));
        let matcher = sent.clone();
        let reader = spawn_reader_with(consumer, move |id, now| {
            matcher.lock().expect("arrivals").arrived(id, now);
        });
        Ok(Self {
            sent,
            latency,
            assignments,
            reader,
        })
    }

    /// How many distinct events the group has seen.
    fn seen_count(&self) -> u64 {
        self.sent.lock().expect("arrivals").seen.len() as u64
    }

    /// Records of events the group had seen already.
    fn redelivered(&self) -> u64 {
        self.sent.lock().expect("arrivals").redelivered
    }

    /// How many of `ids` the group has seen.
    fn seen(&self, ids: &[Uuid]) -> u64 {
        let m = self.sent.lock().expect("arrivals");
        ids.iter().filter(|id| m.seen.contains(id)).count() as u64
    }
}

/// PostgreSQL's own housekeeping during the run.
struct PgCounters {
    checkpoints: i64,
    autovacuums: i64,
}

impl PgCounters {
    async fn read(pool: &PgPool) -> anyhow::Result<Self> {
        let (checkpoints, autovacuums): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter),
                    (SELECT coalesce(sum(autovacuum_count + autoanalyze_count), 0)::bigint
                       FROM pg_stat_user_tables)",
        )
        .fetch_one(pool)
        .await?;
        Ok(Self {
            checkpoints,
            autovacuums,
        })
    }
}

/// A `kB` field of `/proc/<pid>/status`, such as `VmRSS:`.
fn status_kib(status: &str, field: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn outbox_rows(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(pool)
        .await?)
}

/// The `keel serve --relay --projections` under test, as a child process.
struct Keel {
    child: tokio::process::Child,
    pid: u32,
}

impl Keel {
    fn start(config: &Config, url: &str, port: u16) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find the keel binary")?;
        let child = tokio::process::Command::new(exe)
            .args(["serve", "--relay", "--projections"])
            .env("KEEL_DATABASE_URL", url)
            .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEEL_KAFKA_BROKERS", &config.kafka_brokers)
            .env("KEEL_REDIS_URL", &config.redis_url)
            .env("KEEL_AUTH__MODE", "none")
            .env(
                "KEEL_LOG",
                std::env::var("KEEL_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start keel serve")?;
        let pid = child.id().context("keel serve has no process id")?;
        Ok(Self { child, pid })
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    async fn wait_ready(&mut self, http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("keel serve exited before it was ready: {status}");
            }
            let ready = http
                .get(format!("{base}/v1/health/ready"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "keel serve was not ready within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn status_kib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status_kib(&status, field)
    }

    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:").unwrap_or(0.0) / 1024.0
    }

    fn anon_mib(&self) -> f64 {
        self.status_kib("RssAnon:").unwrap_or(0.0) / 1024.0
    }

    fn peak_rss_mib(&self) -> f64 {
        self.status_kib("VmHWM:").unwrap_or(0.0) / 1024.0
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resident_set_is_read_from_the_status_file() {
        let status = "Name:\tkeel\nVmHWM:\t  102816 kB\nVmRSS:\t   98304 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(98304.0));
        assert_eq!(status_kib(status, "VmHWM:"), Some(102816.0));
        assert_eq!(status_kib(status, "VmSwap:"), None);
    }

    fn report(stored: u64, consumed: u64, projected: u64, outbox_left: i64) -> Report {
        let acked = 1_000;
        Report {
            minutes: 1.0,
            rate: 10,
            connections: 1,
            sent: acked,
            acked,
            failed: 0,
            stored,
            consumed,
            projected,
            outbox_left,
            lost: lost(acked, stored, consumed, projected),
            group_assignments: 1,
            group_redelivered: 0,
            group_read_errors: 0,
            group_last_read_error: None,
            rss_peak_mib: 0.0,
            rss_steady_median_mib: 0.0,
            rss_growth_after_warmup_mib: 0.0,
            anon_steady_median_mib: 0.0,
            intervals: Vec::new(),
        }
    }

    #[test]
    fn the_verdict_names_the_count_that_fell_short() {
        assert_eq!(report(1_000, 1_000, 1_000, 0).verdict(), ["nothing lost"]);

        let stalled = report(1_000, 400, 1_000, 0).verdict();
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert!(stalled[0].starts_with("MISSING: 600 acknowledged appends never reached the bench's consumer group; the relay published every one"), "{stalled:?}");

        let unrelayed = report(1_000, 400, 400, 600).verdict();
        assert_eq!(unrelayed.len(), 2, "{unrelayed:?}");
        assert!(
            unrelayed[0].contains("600 acknowledged appends not counted by service_invocations")
                && unrelayed[0].ends_with("(600 still in the outbox)"),
            "{unrelayed:?}"
        );
        assert_eq!(
            unrelayed[1],
            "MISSING: 600 acknowledged appends never reached the bench's consumer group"
        );

        let lost = report(999, 999, 999, 0).verdict();
        assert_eq!(lost[0], "LOST: 1 acknowledged appends are not in the store");
        assert_eq!(lost.len(), 3, "{lost:?}");
    }
}
