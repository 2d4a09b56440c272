//! The projection benchmark, with `service_invocations` (every event upcast from v1 to v2,
//! aggregated into per-method counters and a histogram):
//!
//! (a) **Catch-up.** `--events` events are written straight into PostgreSQL, encoded as the relay
//!     encodes them and produced to a fresh topic. A raw rdkafka consumer (new group, from the
//!     beginning) reads the topic to its end; then the projection runner, with its state reset,
//!     applies the same topic from the beginning until every event is applied. Runs alternate.
//! (b) **Rebuild.** `keel replay projection` rebuilds from the event store, next to a raw ordered
//!     scan of the same events (`SELECT ... ORDER BY tx_id, position`, streamed through sqlx).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::TryStreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::PgPool;
use uuid::Uuid;

use super::append::{fresh_database, print_machine};
use super::relay::{create_topics, encode_backlog, prefill_events, producer, raw_send, Generated};
use super::ProjectionArgs;
use crate::app::Application;
use crate::config::Config;
use crate::consumer::client::{self, StartAt};
use crate::kafka;
use crate::model::SchemaRef;
use crate::projection::rebuild::{rebuild, RebuildOptions};
use crate::projection::runner::{self, RunnerOptions};
use crate::projection::{self, Projection};
use crate::replay::progress::Reporter;
use crate::shutdown::Shutdown;

const EVENT_TYPE: &str = "l12.service_invoked";

pub async fn run(config: &Config, args: ProjectionArgs) -> anyhow::Result<()> {
    let url = fresh_database(
        config,
        args.database_url.as_deref(),
        "keel_bench_projection",
    )
    .await?;
    let mut config = config.clone();
    config.database_url = url;
    config.listen = ([127, 0, 0, 1], 0).into();
    // Nothing is asked over HTTP here: the benchmark appends in-process.
    config.auth.mode = crate::config::AuthMode::None;
    let app = Application::build(&config).await?;
    let pool = app.store().pool().clone();
    let registry = app.registry().clone();
    print_machine(&pool).await?;
    let v1 = registry
        .event_schema(EVENT_TYPE, Some(1))
        .await?
        .context("the catalog has no l12.service_invoked v1")?;
    prefill(&pool, args.events, args.aggregates, v1.id).await?;
    let topic = format!("bench.projection.{}", Uuid::new_v4().simple());
    create_topics(&config, &[&topic]).await?;
    let records = encode_backlog(&pool, &v1).await?;
    let producer = producer(&config)?;
    let mut pending = Vec::with_capacity(records.len());
    for r in &records {
        pending.push(raw_send(&producer, &topic, r).await?);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    drop(records);
    sqlx::query("TRUNCATE outbox").execute(&pool).await?;
    println!("broker: {}, topic {topic}\n", config.kafka_brokers);

    let projection = projection::find("service_invocations")?;
    println!(
        "(a) catch-up over {} records, {} run(s), batch size {}",
        args.events, args.runs, config.projections.batch_size
    );
    println!(
        "{:>4} {:>14} {:>12} {:>9} {:>14} {:>10}",
        "run", "projection/s", "raw/s", "proj/raw", "hand-written/s", "proj/hand"
    );
    let mut ratios = Vec::new();
    let mut hand_ratios = Vec::new();
    for run in 1..=args.runs {
        let raw = raw_consume(&config, &topic, args.events).await?;
        let hand = hand_written(&config, &pool, &registry, &topic, args.events).await?;
        let keel = catch_up(&config, &app, projection.clone(), &topic, args.events).await?;
        ratios.push(keel / raw);
        hand_ratios.push(keel / hand);
        println!(
            "{run:>4} {keel:>14.0} {raw:>12.0} {:>9.2} {hand:>14.0} {:>10.2}",
            keel / raw,
            keel / hand
        );
    }
    println!(
        "median projection/raw: {:.2}, projection/hand-written: {:.2}\n",
        median(&mut ratios),
        median(&mut hand_ratios)
    );

    println!("(b) rebuild from the event store, {} run(s)", args.runs);
    own_costs(
        &pool,
        &registry,
        projection.as_ref(),
        args.events,
        args.page,
    )
    .await?;
    println!(
        "{:>4} {:>14} {:>12} {:>9}",
        "run", "rebuild/s", "scan/s", "rebuild/scan"
    );
    let mut ratios = Vec::new();
    for run in 1..=args.runs {
        let scan = raw_scan(&pool, args.events).await?;
        let started = Instant::now();
        let options = RebuildOptions {
            restart: true,
            page: args.page,
            ..Default::default()
        };
        let report = rebuild(
            &pool,
            &registry,
            projection.as_ref(),
            &options,
            &Reporter::default(),
            std::future::pending(),
        )
        .await?;
        anyhow::ensure!(
            report.events_read == args.events,
            "the rebuild read {} events",
            report.events_read
        );
        let keel = args.events as f64 / started.elapsed().as_secs_f64();
        ratios.push(keel / scan);
        println!("{run:>4} {keel:>14.0} {scan:>12.0} {:>9.2}", keel / scan);
    }
    println!("median rebuild/scan: {:.2}", median(&mut ratios));
    Ok(())
}

pub(super) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `events` v1 `l12.service_invoked` events with their outbox rows, over `aggregates` services
/// with four methods each.
pub(super) async fn prefill(
    pool: &PgPool,
    events: u64,
    aggregates: u64,
    schema_id: i32,
) -> anyhow::Result<()> {
    let payload = "jsonb_build_object('service_name', 'svc' || (i % $3),
                       'method', (ARRAY['get','put','list','delete'])[1 + i % 4],
                       'execution_time', (i * 7919 % 100000) / 100.0,
                       'status', (ARRAY['OK','OK','OK','ERROR','TIMEOUT'])[1 + i % 5])";
    let generated = Generated {
        aggregate_type: "service",
        event_type: EVENT_TYPE,
        schema: SchemaRef {
            id: schema_id,
            version: 1,
        },
        payload,
    };
    prefill_events(pool, events, aggregates, &generated).await
}

/// A raw consumer in a new group reads `events` records from the beginning; records per second.
async fn raw_consume(config: &Config, topic: &str, events: u64) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = kafka::create(&client::config(
        &config.kafka_brokers,
        &format!("bench-raw-{}", Uuid::new_v4().simple()),
        "keel-bench-raw",
        StartAt::Beginning,
        &kafka::connection_settings(&config.relay.kafka.properties),
    ))?;
    consumer.subscribe(&[topic])?;
    let mut seen = 0u64;
    let mut started = None;
    while seen < events {
        let m = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .context("the raw consumer got nothing for 60 s")??;
        drop(m);
        started.get_or_insert_with(Instant::now);
        seen += 1;
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// The consumer a user would write instead of a keel projection, for the same read model: rdkafka
/// in a new group from the beginning, keel's Avro decode (through the registry's cached schema),
/// each batch (as many records as keel's runner takes, or what arrived within 5 ms) aggregated in
/// memory per method and per latency bucket, then one `UNNEST` upsert per table and the
/// partitions' next offsets, in one transaction without waiting for the flush (as keel's runner
/// commits). No fencing between instances, no per-aggregate dedup, no upcasting: it reads the
/// v1 fields it needs. Records per second from its first record to its last commit.
async fn hand_written(
    config: &Config,
    pool: &PgPool,
    registry: &crate::registry::Registry,
    topic: &str,
    events: u64,
) -> anyhow::Result<f64> {
    use crate::projection::service_invocations::bucket_of;
    use rdkafka::Message;
    use std::collections::HashMap;

    sqlx::raw_sql(
        "DROP TABLE IF EXISTS bench_hand_calls, bench_hand_latency, bench_hand_offsets;
         CREATE TABLE bench_hand_calls (service text, method text, calls bigint, errors bigint,
                                        total_ms float8, max_ms float8,
                                        PRIMARY KEY (service, method));
         CREATE TABLE bench_hand_latency (service text, method text, bucket int, calls bigint,
                                          PRIMARY KEY (service, method, bucket));
         CREATE TABLE bench_hand_offsets (partition int PRIMARY KEY, next bigint)",
    )
    .execute(pool)
    .await?;
    let consumer: StreamConsumer = kafka::create(&client::config(
        &config.kafka_brokers,
        &format!("bench-hand-{}", Uuid::new_v4().simple()),
        "keel-bench-hand",
        StartAt::Beginning,
        &kafka::connection_settings(&config.relay.kafka.properties),
    ))?;
    consumer.subscribe(&[topic])?;
    let batch_size = config.projections.batch_size;
    let mut schemas: HashMap<i32, Arc<crate::schema::ParsedSchema>> = HashMap::new();
    let (mut seen, mut started) = (0u64, None);
    while seen < events {
        let mut calls: HashMap<(String, String), (i64, i64, f64, f64)> = HashMap::new();
        let mut buckets: HashMap<(String, String, i32), i64> = HashMap::new();
        let mut next: HashMap<i32, i64> = HashMap::new();
        let mut n = 0;
        let linger = tokio::time::sleep(Duration::from_millis(5));
        tokio::pin!(linger);
        while n < batch_size && seen + (n as u64) < events {
            let m = if n == 0 {
                tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                    .await
                    .context("the hand-written consumer got nothing for 60 s")??
            } else {
                tokio::select! {
                    m = consumer.recv() => m?,
                    _ = &mut linger => break,
                }
            };
            started.get_or_insert_with(Instant::now);
            let (id, datum) = crate::wire::frame::split(m.payload().unwrap_or_default())?;
            let schema = match schemas.get(&id) {
                Some(s) => s.clone(),
                None => {
                    let s = registry.parsed_by_id(id).await?;
                    schemas.insert(id, s.clone());
                    s
                }
            };
            let p = crate::wire::frame::decode(id, &schema, datum)?;
            let text = |k: &str| p[k].as_str().unwrap_or_default().to_owned();
            let (service, method, ms) = (
                text("service_name"),
                text("method"),
                p["execution_time"].as_f64().unwrap_or(0.0),
            );
            let c = calls
                .entry((service.clone(), method.clone()))
                .or_insert((0, 0, 0.0, 0.0));
            c.0 += 1;
            c.1 += i64::from(p["status"] != "OK");
            c.2 += ms;
            c.3 = c.3.max(ms);
            *buckets.entry((service, method, bucket_of(ms))).or_default() += 1;
            next.insert(m.partition(), m.offset() + 1);
            n += 1;
        }
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        type Calls = (
            Vec<String>,
            Vec<String>,
            Vec<i64>,
            Vec<i64>,
            Vec<f64>,
            Vec<f64>,
        );
        let mut c: Calls = Default::default();
        for ((service, method), (n, errors, total, max)) in calls {
            c.0.push(service);
            c.1.push(method);
            c.2.push(n);
            c.3.push(errors);
            c.4.push(total);
            c.5.push(max);
        }
        sqlx::query(
            "INSERT INTO bench_hand_calls AS s
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[], $4::int8[], $5::float8[], $6::float8[])
             ON CONFLICT (service, method) DO UPDATE SET calls = s.calls + EXCLUDED.calls,
                 errors = s.errors + EXCLUDED.errors, total_ms = s.total_ms + EXCLUDED.total_ms,
                 max_ms = greatest(s.max_ms, EXCLUDED.max_ms)",
        )
        .bind(&c.0)
        .bind(&c.1)
        .bind(&c.2)
        .bind(&c.3)
        .bind(&c.4)
        .bind(&c.5)
        .execute(&mut *tx)
        .await?;
        let mut b: (Vec<String>, Vec<String>, Vec<i32>, Vec<i64>) = Default::default();
        for ((service, method, bucket), n) in buckets {
            b.0.push(service);
            b.1.push(method);
            b.2.push(bucket);
            b.3.push(n);
        }
        sqlx::query(
            "INSERT INTO bench_hand_latency AS l
             SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::int8[])
             ON CONFLICT (service, method, bucket) DO UPDATE SET calls = l.calls + EXCLUDED.calls",
        )
        .bind(&b.0)
        .bind(&b.1)
        .bind(&b.2)
        .bind(&b.3)
        .execute(&mut *tx)
        .await?;
        let (parts, offsets): (Vec<i32>, Vec<i64>) = next.into_iter().unzip();
        sqlx::query(
            "INSERT INTO bench_hand_offsets SELECT * FROM unnest($1::int[], $2::int8[])
             ON CONFLICT (partition) DO UPDATE SET next = EXCLUDED.next",
        )
        .bind(&parts)
        .bind(&offsets)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        seen += n as u64;
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    let counted: i64 = sqlx::query_scalar("SELECT sum(calls)::int8 FROM bench_hand_calls")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        counted as u64 == events,
        "the hand-written consumer counted {counted}"
    );
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// Resets the projection and runs it from the beginning of `topic` until `events` are applied;
/// events per second from the first applied batch to the last (the raw consumer's clock likewise
/// starts at its first record, after the group join).
async fn catch_up(
    config: &Config,
    app: &Application,
    projection: Arc<dyn Projection>,
    topic: &str,
    events: u64,
) -> anyhow::Result<f64> {
    let pool = app.store().pool().clone();
    let name = projection.name();
    let mut conn = pool.acquire().await?;
    crate::projection::run_script(
        &mut conn,
        format!(
            "DROP SCHEMA IF EXISTS {} CASCADE",
            projection::live_schema(name)
        ),
    )
    .await?;
    drop(conn);
    sqlx::query("DELETE FROM projections WHERE name = $1")
        .bind(name)
        .execute(&pool)
        .await?;
    let stop = Shutdown::new();
    let options = RunnerOptions {
        batch_size: config.projections.batch_size,
        properties: config.projections.properties.clone(),
        ..Default::default()
    };
    let (brokers, topics, registry) = (
        config.kafka_brokers.clone(),
        vec![topic.to_owned()],
        app.registry().clone(),
    );
    let runner = tokio::spawn({
        let (pool, stopped) = (pool.clone(), stop.wait());
        async move {
            runner::run(
                pool, registry, &brokers, &topics, projection, options, stopped,
            )
            .await
        }
    });
    let mut started = None;
    loop {
        let applied: i64 =
            sqlx::query_scalar("SELECT events_applied FROM projections WHERE name = $1")
                .bind(name)
                .fetch_optional(&pool)
                .await?
                .unwrap_or(0);
        if applied > 0 {
            started.get_or_insert_with(Instant::now);
        }
        if applied as u64 >= events {
            break;
        }
        if runner.is_finished() {
            runner.await??;
            anyhow::bail!("the projection runner stopped");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
    stop.trigger();
    runner.await??;
    Ok(events as f64 / elapsed.as_secs_f64())
}

/// What a rebuild spends per event besides reading, on one thread with nothing beside it: each
/// page of `page` events upcast (v1 to v2) with one upcaster, as a rebuild does, then added to
/// the projection's fold at once, while the page is still in the cache.
async fn own_costs(
    pool: &PgPool,
    registry: &crate::registry::Registry,
    projection: &dyn Projection,
    events: u64,
    page: i64,
) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT {} FROM events WHERE event_type = $1 ORDER BY tx_id, position LIMIT $2",
        crate::store::EVENT_COLUMNS
    );
    let read: Vec<crate::model::RecordedEvent> = sqlx::query_as(&sql)
        .bind(EVENT_TYPE)
        .bind(events.min(100_000) as i64)
        .fetch_all(pool)
        .await?;
    let n = read.len().max(1) as f64;
    let mut fold = projection
        .fold()
        .context("the projection has no fold to time")?;
    // The registry's lookups are warm before the clock starts, as they are in a rebuild.
    if let Some(first) = read.first() {
        registry
            .upcaster(projection.reader())
            .upcast(first.clone())
            .await?;
    }
    let (mut upcasting, mut folding) = (Duration::ZERO, Duration::ZERO);
    let mut events = read.into_iter().peekable();
    while events.peek().is_some() {
        let started = Instant::now();
        let mut upcaster = registry.upcaster(projection.reader());
        let mut upcast = Vec::with_capacity(page.max(1) as usize);
        for e in events.by_ref().take(page.max(1) as usize) {
            upcast.push(upcaster.upcast(e).await?);
        }
        let added = Instant::now();
        fold.add(&upcast)?;
        folding += added.elapsed();
        upcasting += added - started;
    }
    println!(
        "the rebuild's own costs, one thread, pages of {page}: upcast {:.2} us/event, fold {:.2} us/event",
        upcasting.as_secs_f64() * 1e6 / n,
        folding.as_secs_f64() * 1e6 / n
    );
    Ok(())
}

/// Streams the same events in log order, every column, into `RecordedEvent`s; rows per second.
async fn raw_scan(pool: &PgPool, events: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let sql = format!(
        "SELECT {} FROM events WHERE event_type = $1 ORDER BY tx_id, position",
        crate::store::EVENT_COLUMNS
    );
    let mut rows = sqlx::query_as::<_, crate::model::RecordedEvent>(&sql)
        .bind(EVENT_TYPE)
        .fetch(pool);
    let mut n = 0u64;
    while let Some(row) = rows.try_next().await? {
        std::hint::black_box(row);
        n += 1;
    }
    anyhow::ensure!(n == events, "the scan read {n} events");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
