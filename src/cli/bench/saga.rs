//! `keel bench saga`: the shipped `op_verify` saga against the broker at `kafka_brokers`.
//!
//! (a) Steps per second: a backlog of start events already on Kafka, stepped by one runner
//!     (each step: its input's offset, the instance row, a timeout, an association, the
//!     `saga.step` record and one output with their outbox rows, one transaction per batch),
//!     next to keel's own append of the same two events per transaction, eight writers, in the
//!     same run: the raw write cost of what a step leaves behind.
//! (b) Input commit → output on Kafka at a fixed rate (open loop), next to the input's own
//!     commit → Kafka latency in the same run (the relay alone): the difference is what the
//!     saga adds (one consume, one step, one more relay hop).
//! (c) Timeout lateness: the (b) sagas' verification deadlines fire (nobody verifies them); how
//!     late each fired after its due time, by PostgreSQL's clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::append::{fresh_database, print_machine};
use super::relay::{arrivals, latency_sample, spawn_reader};
use super::stats::Sample;
use super::SagaArgs;
use crate::app::{self, Application, Sagas, Services};
use crate::auth::Access;
use crate::config::Config;
use crate::model::{AggregateType, EventType, ExpectedVersion, NewEvent};
use crate::relay;
use crate::saga::{self, op_verify};
use crate::shutdown::Shutdown;

pub async fn run(config: &Config, args: SagaArgs) -> anyhow::Result<()> {
    let url = fresh_database(config, args.database_url.as_deref(), "keel_bench_saga").await?;
    let mut config = config.clone();
    config.database_url = url;
    config.listen = ([127, 0, 0, 1], 0).into();
    config.auth.mode = crate::config::AuthMode::None;
    config.sagas.op_verify.verify_deadline_ms = args.deadline_ms;
    // The backlog is appended before the saga first runs.
    config.sagas.start_from = "earliest".into();
    let app = Application::build(&config).await?;
    let pool = app.store().pool().clone();
    print_machine(&pool).await?;
    let store = app.store().clone();
    let relay = relay::start(
        &config,
        pool.clone(),
        app::catalog(&config)?,
        app.registry().clone(),
        Some(store.commits()),
    )
    .await?;
    let services = Services {
        store: store.clone(),
        registry: app.registry().clone(),
    };
    let sagas = Sagas::builtin(&config).selected(&config, &[op_verify::NAME.into()])?;

    // (a) Steps per second over a backlog, next to appends of what the steps write.
    let baseline = raw_appends(&app, args.sagas).await?;
    let ops: Vec<String> = (0..args.sagas).map(|i| format!("backlog-{i}")).collect();
    append_starts(&app, &ops, 16).await?;
    wait_until(
        &pool,
        "SELECT count(*) = 0 FROM outbox",
        Duration::from_secs(600),
    )
    .await?;
    let stop = Shutdown::new();
    let started = Instant::now();
    let runner = tokio::spawn({
        let (config, services, catalog, sagas, stop) = (
            config.clone(),
            services.clone(),
            app::catalog(&config)?,
            sagas.clone(),
            stop.clone(),
        );
        async move { app::run_sagas(&config, &services, catalog, sagas, None, stop).await }
    });
    wait_until(
        &pool,
        &format!(
            "SELECT count(*) >= {} FROM saga_instances WHERE saga = 'op_verify'",
            args.sagas
        ),
        Duration::from_secs(900),
    )
    .await?;
    let steps = args.sagas as f64 / started.elapsed().as_secs_f64();
    // The backlog's deadlines would fire during (b) and (c): they are not part of them.
    sqlx::query("DELETE FROM saga_timeouts WHERE saga = 'op_verify'")
        .execute(&pool)
        .await?;
    println!(
        "(a) {} sagas started from a backlog on Kafka, one runner, batches of {}",
        args.sagas, config.sagas.batch_size
    );
    println!(
        "{:>14} {:>22} {:>8}",
        "steps/s", "raw appends/s (2 ev)", "ratio"
    );
    println!("{steps:>14.0} {baseline:>22.0} {:>8.2}\n", steps / baseline);

    // (b) Input commit → output on Kafka, open loop, next to the input's own latency.
    let (inputs, seen_inputs) = arrivals(&config, "keel.operation").await?;
    let (outputs, seen_outputs) = arrivals(&config, "keel.control").await?;
    let readers = [
        spawn_reader(inputs, seen_inputs.clone()),
        spawn_reader(outputs, seen_outputs.clone()),
    ];
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let sent_inputs = Arc::new(Mutex::new(HashMap::new()));
    let sent_outputs = Arc::new(Mutex::new(HashMap::new()));
    let mut tasks = tokio::task::JoinSet::new();
    let begun = Instant::now();
    for i in 0..total {
        tick.tick().await;
        let (app_appender, sent_inputs, sent_outputs) = (
            app.appender().clone(),
            sent_inputs.clone(),
            sent_outputs.clone(),
        );
        tasks.spawn(async move {
            let op = format!("paced-{i}");
            let event = start_event(&op)?;
            let id = event.id;
            app_appender
                .append(
                    &Access::everything(),
                    &AggregateType::parse("operation")?,
                    Uuid::new_v4(),
                    ExpectedVersion::NoStream,
                    vec![event],
                )
                .await?;
            let committed = Instant::now();
            // The output's id is the instance stream's version 2 (the step record is 1).
            let output = saga::event_id(saga::instance_id(op_verify::NAME, &op), 2);
            sent_inputs.lock().expect("sent").insert(id, committed);
            sent_outputs.lock().expect("sent").insert(output, committed);
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let elapsed = begun.elapsed();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want = sent_outputs.lock().expect("sent").len();
        let got = {
            let seen = seen_outputs.lock().expect("seen");
            let sent = sent_outputs.lock().expect("sent");
            sent.keys().filter(|k| seen.contains_key(*k)).count()
        };
        if got == want || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in readers {
        r.abort();
    }
    // The saga consumed every input (its outputs arrived), so an input this reader missed was
    // on Kafka; the baseline is taken over those it saw, and the rest is said.
    let seen = seen_inputs.lock().expect("seen").clone();
    let mut sent = sent_inputs.lock().expect("sent").clone();
    let before = sent.len();
    sent.retain(|id, _| seen.contains_key(id));
    if sent.len() < before {
        println!(
            "  (the bench's reader of keel.operation missed {} of {before} inputs; the baseline is over the rest)",
            before - sent.len()
        );
    }
    let input = latency_sample(&sent, &seen, elapsed)?;
    let output = latency_sample(
        &sent_outputs.lock().expect("sent").clone(),
        &seen_outputs.lock().expect("seen").clone(),
        elapsed,
    )?;
    println!(
        "(b) {} sagas started at {}/s for {} s: commit → on Kafka, p50/p99/p999 ms",
        total, args.rate, args.seconds
    );
    println!(
        "  the input itself (relay alone):     {}",
        input.percentiles()
    );
    println!(
        "  the saga's output (consume, step, relay): {}",
        output.percentiles()
    );
    println!(
        "  the saga adds p50 {:.1} ms, p99 {:.1} ms\n",
        ms(&output.latency_us, 0.5) - ms(&input.latency_us, 0.5),
        ms(&output.latency_us, 0.99) - ms(&input.latency_us, 0.99)
    );

    // (c) The (b) sagas' deadlines fire: how late.
    wait_until(
        &pool,
        &format!(
            "SELECT count(*) >= {total} FROM saga_instances WHERE saga = 'op_verify' AND correlation LIKE 'paced-%' AND status = 'compensating'"
        ),
        Duration::from_secs(120 + args.deadline_ms / 1000),
    )
    .await?;
    let lateness = lateness(&pool).await?;
    println!(
        "(c) {} timeouts (deadline {} ms), poll interval {} ms: lateness p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lateness.len(),
        args.deadline_ms,
        config.sagas.poll_interval_ms,
        ms(&lateness, 0.5),
        ms(&lateness, 0.99),
        lateness.max() as f64 / 1000.0
    );
    println!("peak RSS of this process: {} MiB", peak_rss_mib());
    stop.trigger();
    runner.await??;
    relay.shutdown().await;
    Ok(())
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn start_event(op: &str) -> anyhow::Result<NewEvent> {
    let agent = Uuid::new_v4();
    Ok(NewEvent::new(
        EventType::parse("control.operation.completed")?,
        json!({"operation_id": op, "operation": "deploy", "target": format!("agent:{agent}"),
               "succeeded": true, "duration_ms": 10, "agent_id": agent.to_string()}),
    ))
}

/// Appends one start event per operation, `concurrency` at a time.
async fn append_starts(
    app: &Application,
    ops: &[String],
    concurrency: usize,
) -> anyhow::Result<()> {
    use futures_util::StreamExt;
    let operation = AggregateType::parse("operation")?;
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(ops)
        .map(|op| {
            let (appender, operation) = (app.appender().clone(), operation.clone());
            async move {
                appender
                    .append(
                        &Access::everything(),
                        &operation,
                        Uuid::new_v4(),
                        ExpectedVersion::NoStream,
                        vec![start_event(op)?],
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results.into_iter().collect()
}

/// keel's append of two events (a `saga.step`-sized record and a request) per transaction, to
/// fresh streams, eight writers: appends per second.
async fn raw_appends(app: &Application, n: u64) -> anyhow::Result<f64> {
    use futures_util::StreamExt;
    let stream = AggregateType::parse("saga.bench")?;
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let (appender, stream) = (app.appender().clone(), stream.clone());
            async move {
                let op = format!("raw-{i}");
                let agent = Uuid::new_v4().to_string();
                let record = NewEvent::new(
                    EventType::parse("state_change")?,
                    json!({"entity": format!("operation:{op}"), "to_state": "stepped",
                           "attributes": {"input": Uuid::new_v4().to_string(), "state": format!("{{\"operation_id\":\"{op}\",\"agent_id\":\"{agent}\"}}")}}),
                );
                let request = NewEvent::new(
                    EventType::parse("control.verification.requested")?,
                    json!({"operation_id": op, "agent_id": agent, "operation": "deploy", "check": "smoke", "deadline_ms": 1000}),
                );
                appender
                    .append(
                        &Access::everything(),
                        &stream,
                        Uuid::new_v4(),
                        ExpectedVersion::NoStream,
                        vec![record, request],
                    )
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<()>>()?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

async fn wait_until(pool: &PgPool, sql: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let done: bool = sqlx::query_scalar(sql).fetch_one(pool).await?;
        if done {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for: {sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How late each timeout step fired after its due time, in microseconds.
async fn lateness(pool: &PgPool) -> anyhow::Result<Histogram<u64>> {
    let late: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM e.created_at - (e.payload->>'timeout_due_at')::timestamptz)::float8
           FROM events e JOIN saga_instances i ON i.saga = 'op_verify' AND i.instance_id = e.aggregate_id
          WHERE e.event_type = 'saga.step' AND e.payload->>'input_kind' = 'timeout'
            AND i.correlation LIKE 'paced-%'",
    )
    .fetch_all(pool)
    .await?;
    let mut h = Sample::new_histogram();
    for s in late {
        h.record((s.max(0.0) * 1e6).max(1.0) as u64)?;
    }
    Ok(h)
}

fn peak_rss_mib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|k| k.parse::<u64>().ok())
            })
        })
        .map_or(0, |kib| kib / 1024)
}
