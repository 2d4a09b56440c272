//! The relay benchmark, against the broker at `kafka_brokers`:
//!
//! (a) **Latency**, first, while the broker is fresh. Appends at a fixed rate (open loop: a slow
//!     reply never delays the next send) through the library, with the relay in-process; a Kafka
//!     consumer notes when each event arrives. Latency runs from the append's commit to the
//!     consumer receiving it. The baselines, run just before, are the raw producer's
//!     send-to-consume latency at the same rate on the idle machine, and again while the same
//!     appends commit (relay off), which is what the co-located broker does on a machine as busy.
//! (b) **Drain.** A backlog of `--events` outbox rows is written straight into PostgreSQL, then the
//!     relay (Kafka sink only) drains it. Next to it, a raw rdkafka producer with the same
//!     settings sends the same records (same keys, values and headers, encoded up front) to a
//!     topic of its own. Both time from the first send to the last acknowledgement.
//!
//! Over ~400 lines on purpose: the two measurements share the fixtures (prefill, encoding, the
//! raw producer) and each keel figure sits next to its baseline, so that a change to one side is
//! seen to be made to the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::append::{fresh_database, print_machine};
use super::stats::Sample;
use super::RelayArgs;
use crate::app::Application;
use crate::config::Config;
use crate::consumer::client::{self, StartAt};
use crate::kafka;
use crate::model::{AggregateType, EventType, ExpectedVersion, NewEvent, SchemaRef};
use crate::relay::{self, outbox};
use crate::wire;

const EVENT_TYPE: &str = "state_change";
const TOPIC: &str = "keel.state_change";

pub async fn run(config: &Config, args: RelayArgs) -> anyhow::Result<()> {
    let url = fresh_database(config, args.database_url.as_deref(), "keel_bench_relay").await?;
    let mut config = config.clone();
    config.database_url = url;
    config.listen = ([127, 0, 0, 1], 0).into();
    // Nothing is asked over HTTP here: the benchmark appends in-process.
    config.auth.mode = crate::config::AuthMode::None;
    config.relay.redis.enabled = false;
    config.relay.in_process = false;
    let app = Application::build(&config).await?;
    let pool = app.store().pool().clone();
    print_machine(&pool).await?;
    let schema = app
        .registry()
        .event_schema(EVENT_TYPE, None)
        .await?
        .context("the catalog has no state_change schema")?;
    let raw_topic = format!("bench.raw.{}", Uuid::new_v4().simple());
    create_topics(&config, &[TOPIC, &raw_topic]).await?;
    println!("broker: {}\n", config.kafka_brokers);

    println!(
        "(a) commit -> consume latency, open loop at {} events/s for {}s, first, on the broker as it came",
        args.rate, args.seconds
    );
    // The baselines first: a broker's latency drifts up as it fills, so keel gets the last slot.
    let raw = raw_latency(&config, &raw_topic, &args).await?;
    // The raw producer again while the same appends commit (the relay off): what the broker's
    // latency is on a machine as busy with PostgreSQL as the relay's run is.
    sqlx::query("TRUNCATE outbox").execute(&pool).await?;
    let (loaded, appended) = tokio::join!(
        raw_latency(&config, &raw_topic, &args),
        append_load(&app, &args)
    );
    let (loaded, _) = (loaded?, appended?);
    let keel = relay_latency(&config, &app, &args).await?;
    println!("{:<24} {:>10} {:>24}", "", "events", "p50/p99/p999 ms");
    println!(
        "{:<24} {:>10} {:>24}",
        "relay (commit->consume)",
        keel.events,
        keel.percentiles()
    );
    println!(
        "{:<24} {:>10} {:>24}",
        "raw, idle machine",
        raw.events,
        raw.percentiles()
    );
    println!(
        "{:<24} {:>10} {:>24}",
        "raw, beside the appends",
        loaded.events,
        loaded.percentiles()
    );
    println!();

    println!(
        "(b) drain a backlog of {} events, {} run(s)",
        args.events, args.runs
    );
    println!(
        "{:>4} {:>12} {:>12} {:>12} {:>9} {:>12}",
        "run", "relay ev/s", "raw ev/s", "poller ev/s", "relay/raw", "relay/poller"
    );
    let mut ratios = Vec::new();
    let mut poller_ratios = Vec::new();
    for run in 1..=args.runs {
        prefill(
            &pool,
            args.events,
            args.aggregates,
            SchemaRef {
                id: schema.id,
                version: schema.version,
            },
        )
        .await?;
        let records = encode_backlog(&pool, &schema).await?;
        let raw = raw_drain(&config, &raw_topic, &records).await?;
        drop(records);
        let keel = relay_drain(&config, &app).await?;
        let poller = poller_drain(&config, &pool, &raw_topic, &schema).await?;
        let ratio = keel / raw;
        ratios.push(ratio);
        poller_ratios.push(keel / poller);
        println!(
            "{run:>4} {keel:>12.0} {raw:>12.0} {poller:>12.0} {ratio:>9.2} {:>12.2}",
            keel / poller
        );
        sqlx::query("TRUNCATE outbox").execute(&pool).await?;
    }
    ratios.sort_by(f64::total_cmp);
    poller_ratios.sort_by(f64::total_cmp);
    println!(
        "median relay/raw: {:.2}, relay/poller: {:.2} (raw: records encoded before its clock starts; poller: reads, encodes with apache-avro, produces, deletes, batches of {POLLER_BATCH}, no order across pollers)\n",
        ratios[ratios.len() / 2],
        poller_ratios[poller_ratios.len() / 2]
    );

    Ok(())
}

pub(super) async fn create_topics(config: &Config, topics: &[&str]) -> anyhow::Result<()> {
    let kafka = &config.relay.kafka;
    kafka::Topics::new(
        &config.kafka_brokers,
        &kafka.properties,
        kafka.partitions,
        kafka.replication,
    )?
    .ensure(topics.iter().copied())
    .await
    .context("cannot create the bench topics")?;
    Ok(())
}

/// Writes `events` events with their outbox rows straight into the tables, spread over
/// `aggregates` aggregates, in chunks of 50,000 per transaction.
async fn prefill(
    pool: &PgPool,
    events: u64,
    aggregates: u64,
    schema: SchemaRef,
) -> anyhow::Result<()> {
    let payload = "jsonb_build_object('entity', 'bench', 'from_state', NULL, 'to_state', 'running',
                                      'attributes', jsonb_build_object('pad', repeat('x', 200)))";
    let generated = Generated {
        aggregate_type: "bench",
        event_type: EVENT_TYPE,
        schema,
        payload,
    };
    prefill_events(pool, events, aggregates, &generated).await?;
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    Ok(())
}

/// Events a benchmark writes straight into the tables.
pub(super) struct Generated<'a> {
    pub aggregate_type: &'a str,
    pub event_type: &'a str,
    pub schema: SchemaRef,
    /// A SQL expression for the payload, of the row number `i` and the aggregate count `$3`.
    pub payload: &'a str,
}

/// Empties the store, then writes `events` events of `generated` with their outbox rows over
/// `aggregates` aggregates (event `i` goes to aggregate `i % aggregates`), in chunks of 50,000
/// per transaction.
pub(super) async fn prefill_events(
    pool: &PgPool,
    events: u64,
    aggregates: u64,
    generated: &Generated<'_>,
) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE events, outbox, streams")
        .execute(pool)
        .await?;
    let started = Instant::now();
    let chunk = 50_000u64;
    let mut from = 0u64;
    let sql = format!(
        "WITH rows AS (
             SELECT i, gen_random_uuid() AS id,
                    ('00000000-0000-4000-8000-' || lpad(to_hex(i % $3), 12, '0'))::uuid AS aggregate_id,
                    (i / $3 + 1)::int AS version
               FROM generate_series($1::bigint, $2::bigint - 1) AS i),
         e AS (
             INSERT INTO events (id, aggregate_type, aggregate_id, version, event_type,
                                 schema_id, schema_version, payload)
             SELECT id, $7, aggregate_id, version, $4, $5, $6, {}
               FROM rows ORDER BY i
             RETURNING id, position, aggregate_id)
         INSERT INTO outbox (position, event_id, aggregate_type, aggregate_id, event_type)
         SELECT position, id, $7, aggregate_id, $4 FROM e",
        generated.payload
    );
    while from < events {
        let to = (from + chunk).min(events);
        sqlx::query(&sql)
            .bind(from as i64)
            .bind(to as i64)
            .bind(aggregates as i64)
            .bind(generated.event_type)
            .bind(generated.schema.id)
            .bind(generated.schema.version)
            .bind(generated.aggregate_type)
            .execute(pool)
            .await?;
        from = to;
    }
    sqlx::query("VACUUM ANALYZE events").execute(pool).await?;
    eprintln!(
        "  prefilled {events} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// One record as the relay would send it.
pub(super) struct Record {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Encodes the backlog the same way the relay does, before the clock starts.
pub(super) async fn encode_backlog(
    pool: &PgPool,
    schema: &crate::registry::EventSchema,
) -> anyhow::Result<Vec<Record>> {
    let started = Instant::now();
    let rows = outbox::read_batch(
        pool,
        relay::sink::SinkKind::Kafka,
        &relay::all_partitions(),
        i64::MAX,
    )
    .await?;
    let read = started.elapsed();
    let records = rows
        .iter()
        .map(|r| {
            let value = wire::frame::encode(schema.id, &schema.schema, &r.event.payload)?;
            Ok(Record {
                key: r.event.aggregate_id.to_string(),
                value,
                headers: wire::header::encode(
                    &r.event,
                    wire::CONTENT_AVRO,
                    Some((schema.id, schema.version)),
                ),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let n = rows.len().max(1) as f64;
    eprintln!(
        "  the relay's own costs, one thread: read {:.1} us/row, encode {:.1} us/row",
        read.as_secs_f64() * 1e6 / n,
        (started.elapsed() - read).as_secs_f64() * 1e6 / n
    );
    Ok(records)
}

pub(super) fn producer(config: &Config) -> anyhow::Result<FutureProducer> {
    let producer = kafka::producer_config(&config.kafka_brokers, &config.relay.kafka.properties);
    Ok(kafka::create(&producer)?)
}

/// Sends every record with a raw producer; returns records per second, first send to last ack.
async fn raw_drain(config: &Config, topic: &str, records: &[Record]) -> anyhow::Result<f64> {
    let producer = producer(config)?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(records.len());
    for r in records {
        pending.push(raw_send(&producer, topic, r).await?);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(records.len() as f64 / started.elapsed().as_secs_f64())
}

pub(super) async fn raw_send(
    producer: &FutureProducer,
    topic: &str,
    r: &Record,
) -> anyhow::Result<rdkafka::producer::DeliveryFuture> {
    Ok(kafka::enqueue(producer, topic, &r.key, &r.value, &r.headers).await?)
}

/// Starts a relay and times it until every partition's Kafka cursor reaches the backlog's end.
async fn relay_drain(config: &Config, app: &Application) -> anyhow::Result<f64> {
    let pool = app.store().pool();
    let (count, ends): (i64, Vec<(i16, i64, i64)>) = {
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await?;
        let ends = sqlx::query_as(
            "SELECT DISTINCT ON (partition) partition, tx_id::text::bigint, position FROM outbox
              ORDER BY partition, tx_id DESC, position DESC",
        )
        .fetch_all(pool)
        .await?;
        (count, ends)
    };
    sqlx::query("UPDATE relay_progress SET tx_id = '0', position = 0")
        .execute(pool)
        .await?;
    let catalog = Arc::new(crate::catalog::Catalog::load(&config.schemas_dir)?);
    let started = Instant::now();
    let handle = relay::start(config, pool.clone(), catalog, app.registry().clone(), None).await?;
    loop {
        let behind: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM unnest($1::int2[], $2::int8[], $3::int8[]) AS e(partition, tx, pos)
               JOIN relay_progress p ON p.sink = 'kafka' AND p.partition = e.partition
              WHERE (p.tx_id, p.position) < (e.tx::text::xid8, e.pos)",
        )
        .bind(ends.iter().map(|e| e.0).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.1).collect::<Vec<_>>())
        .bind(ends.iter().map(|e| e.2).collect::<Vec<_>>())
        .fetch_one(pool)
        .await?;
        if behind == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    handle.shutdown().await;
    Ok(count as f64 / elapsed.as_secs_f64())
}

/// Rows a hand-written poller reads per round.
const POLLER_BATCH: i64 = 5_000;

/// The relay a user would write instead: read a batch of outbox rows with their events in
/// position order, encode each payload with apache-avro (its value tree), produce them all with
/// the same producer settings, wait for the acknowledgements, delete the rows; until the outbox
/// is empty. One poller: there is no lease, no cursor and no order across several of them. Its
/// outbox is rebuilt from the events first, outside its clock.
async fn poller_drain(
    config: &Config,
    pool: &PgPool,
    topic: &str,
    schema: &crate::registry::EventSchema,
) -> anyhow::Result<f64> {
    sqlx::query("TRUNCATE outbox").execute(pool).await?;
    let rebuilt = sqlx::query(
        "INSERT INTO outbox (position, event_id, aggregate_type, aggregate_id, event_type)
         SELECT position, id, aggregate_type, aggregate_id, event_type FROM events",
    )
    .execute(pool)
    .await?
    .rows_affected();
    sqlx::query("VACUUM ANALYZE outbox").execute(pool).await?;
    let producer = producer(config)?;
    type Row = (i64, Uuid, Uuid, String, String, i32, serde_json::Value);
    let started = Instant::now();
    loop {
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT o.position, e.id, e.aggregate_id, e.event_type, e.aggregate_type,
                    e.version, e.payload
               FROM outbox o JOIN events e ON e.position = o.position
              ORDER BY o.position LIMIT $1",
        )
        .bind(POLLER_BATCH)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            break;
        }
        let mut pending = Vec::with_capacity(rows.len());
        for (_, id, aggregate_id, event_type, aggregate_type, version, payload) in &rows {
            let value =
                apache_avro::types::Value::from(payload.clone()).resolve(schema.schema.schema())?;
            let mut framed = vec![0];
            framed.extend_from_slice(&schema.id.to_be_bytes());
            framed.extend(apache_avro::to_avro_datum(schema.schema.schema(), value)?);
            let headers = [
                ("keel-event-id", id.to_string()),
                ("keel-event-type", event_type.clone()),
                ("keel-aggregate-type", aggregate_type.clone()),
                ("keel-aggregate-version", version.to_string()),
            ];
            let key = aggregate_id.to_string();
            pending.push(kafka::enqueue(&producer, topic, &key, &framed, &headers).await?);
        }
        for p in pending {
            p.await?.map_err(|(e, _)| e)?;
        }
        let done: Vec<i64> = rows.iter().map(|r| r.0).collect();
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(&done)
            .execute(pool)
            .await?;
    }
    Ok(rebuilt as f64 / started.elapsed().as_secs_f64())
}

/// A consumer that notes when each event id arrives on `topic`, from the end of the topic.
pub(super) async fn arrivals(
    config: &Config,
    topic: &str,
) -> anyhow::Result<(StreamConsumer, Arc<Mutex<HashMap<Uuid, Instant>>>)> {
    let group = format!("keel-bench-{}", Uuid::new_v4().simple());
    let mut consumer = client::config(
        &config.kafka_brokers,
        &group,
        "keel-bench",
        StartAt::End,
        &kafka::connection_settings(&config.relay.kafka.properties),
    );
    // Measuring latency: fetch as soon as anything arrives.
    consumer
        .set("fetch.wait.max.ms", "5")
        .set("fetch.error.backoff.ms", "5")
        .set("fetch.queue.backoff.ms", "5")
        .set("session.timeout.ms", "6000");
    let consumer: StreamConsumer = kafka::create(&consumer)?;
    // Start every partition at its current end, explicitly: `latest` is only resolved at the
    // first fetch, which may come after the first bench events. The lookups block, so they run
    // where blocking is allowed.
    let start = tokio::task::block_in_place(|| -> anyhow::Result<TopicPartitionList> {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .unwrap_or(0);
        anyhow::ensure!(partitions > 0, "topic {topic} has no partitions");
        let mut start = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
            start.add_partition_offset(topic, p, Offset::Offset(high))?;
        }
        Ok(start)
    })?;
    consumer.assign(&start)?;
    Ok((consumer, Arc::new(Mutex::new(HashMap::new()))))
}

/// A consumer noting arrivals on a thread of its own, as a consumer in another process would:
/// the bench's appends and the relay share the runtime, and a busy runtime would otherwise
/// delay the timestamps, not the records. Stops when dropped.
pub(super) struct Reader {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    errors: Arc<Mutex<ReadErrors>>,
}

/// The errors a reader's consumer returned instead of records.
#[derive(Debug, Default, Clone)]
pub(super) struct ReadErrors {
    pub count: u64,
    pub last: Option<String>,
}

impl Reader {
    pub(super) fn abort(mut self) {
        self.halt();
    }

    /// The errors so far.
    pub(super) fn errors(&self) -> ReadErrors {
        self.errors.lock().expect("read errors").clone()
    }

    fn halt(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.halt();
    }
}

pub(super) fn spawn_reader(
    consumer: StreamConsumer,
    seen: Arc<Mutex<HashMap<Uuid, Instant>>>,
) -> Reader {
    spawn_reader_with(consumer, move |id, now| {
        seen.lock().expect("arrivals").insert(id, now);
    })
}

/// A consumer on a thread of its own (a busy runtime would delay the arrival times, not the
/// records), calling `arrived` with each record's event id and the instant it was received.
pub(super) fn spawn_reader_with<C: ConsumerContext + 'static>(
    consumer: StreamConsumer<C>,
    mut arrived: impl FnMut(Uuid, Instant) + Send + 'static,
) -> Reader {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let halted = stop.clone();
    let errors = Arc::new(Mutex::new(ReadErrors::default()));
    let noted = errors.clone();
    let thread = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        else {
            return;
        };
        runtime.block_on(async move {
            while !halted.load(std::sync::atomic::Ordering::Relaxed) {
                let next = tokio::time::timeout(Duration::from_millis(100), consumer.recv());
                let m = match next.await {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        let mut noted = noted.lock().expect("read errors");
                        noted.count += 1;
                        noted.last = Some(e.to_string());
                        continue;
                    }
                    Err(_) => continue,
                };
                let now = Instant::now();
                if let Some(id) = event_id(&m) {
                    arrived(id, now);
                }
            }
        });
    });
    Reader {
        stop,
        thread: Some(thread),
        errors,
    }
}

/// The record's `keel-event-id` header, if it has a valid one.
pub(super) fn event_id(m: &rdkafka::message::BorrowedMessage<'_>) -> Option<Uuid> {
    m.headers()?
        .iter()
        .find(|h| h.key == wire::header::EVENT_ID)?
        .value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
}

pub(super) fn latency_sample(
    sent: &HashMap<Uuid, Instant>,
    seen: &HashMap<Uuid, Instant>,
    elapsed: Duration,
) -> anyhow::Result<Sample> {
    let mut h: Histogram<u64> = Sample::new_histogram();
    let mut missing = 0;
    for (id, at) in sent {
        match seen.get(id) {
            Some(got) => h.record(got.saturating_duration_since(*at).as_micros().max(1) as u64)?,
            None => missing += 1,
        }
    }
    anyhow::ensure!(missing == 0, "{missing} events never arrived");
    Ok(Sample {
        events: sent.len() as u64,
        elapsed,
        latency_us: h,
    })
}

async fn relay_latency(
    config: &Config,
    app: &Application,
    args: &RelayArgs,
) -> anyhow::Result<Sample> {
    sqlx::query("TRUNCATE outbox")
        .execute(app.store().pool())
        .await?;
    let catalog = Arc::new(crate::catalog::Catalog::load(&config.schemas_dir)?);
    let store = app.store().clone();
    let handle = relay::start(
        config,
        store.pool().clone(),
        catalog,
        app.registry().clone(),
        Some(store.commits()),
    )
    .await?;
    let (consumer, seen) = arrivals(config, TOPIC).await?;
    let reader = spawn_reader(consumer, seen.clone());
    let started = Instant::now();
    let sent = append_load(app, args).await?;
    let elapsed = started.elapsed();
    wait_for_all(&sent, &seen).await;
    reader.abort();
    handle.shutdown().await;
    let seen = seen.lock().expect("arrivals").clone();
    latency_sample(&sent, &seen, elapsed)
}

/// Appends one event each to fresh aggregates at `args.rate` for `args.seconds`, open loop,
/// through the library; returns when each event's append committed.
async fn append_load(
    app: &Application,
    args: &RelayArgs,
) -> anyhow::Result<HashMap<Uuid, Instant>> {
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let bench = AggregateType::parse("bench")?;
    let event_type = EventType::parse(EVENT_TYPE)?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let (appender, sent, bench, event_type) = (
            app.appender().clone(),
            sent.clone(),
            bench.clone(),
            event_type.clone(),
        );
        tasks.spawn(async move {
            let event = NewEvent::new(event_type, json!({"entity": "bench", "from_state": null, "to_state": "running", "attributes": {"i": i.to_string()}}));
            let id = event.id;
            let result = appender.append(&crate::auth::Access::everything(), &bench, Uuid::new_v4(), ExpectedVersion::NoStream, vec![event]).await;
            let committed = Instant::now();
            result.map(|_| sent.lock().expect("sent").insert(id, committed))
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let sent = sent.lock().expect("sent").clone();
    Ok(sent)
}

async fn raw_latency(config: &Config, topic: &str, args: &RelayArgs) -> anyhow::Result<Sample> {
    let producer = producer(config)?;
    let (consumer, seen) = arrivals(config, topic).await?;
    let reader = spawn_reader(consumer, seen.clone());
    let mut sent = HashMap::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut pending = Vec::new();
    for i in 0..args.rate * args.seconds {
        tick.tick().await;
        let id = Uuid::now_v7();
        let record = Record {
            key: Uuid::new_v4().to_string(),
            value: format!("{{\"i\":{i}}}").into_bytes(),
            headers: vec![("keel-event-id", id.to_string())],
        };
        sent.insert(id, Instant::now());
        pending.push(raw_send(&producer, topic, &record).await?);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    let elapsed = started.elapsed();
    wait_for_all(&sent, &seen).await;
    reader.abort();
    let seen = seen.lock().expect("arrivals").clone();
    latency_sample(&sent, &seen, elapsed)
}

async fn wait_for_all(sent: &HashMap<Uuid, Instant>, seen: &Mutex<HashMap<Uuid, Instant>>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if sent
            .keys()
            .all(|id| seen.lock().expect("arrivals").contains_key(id))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
