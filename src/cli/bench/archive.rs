//! `keel bench archive`: the archiver next to a raw ordered `COPY` of the same rows, and the
//! guarded purge while appends go on at a fixed rate, with the appends' latency before and
//! during it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use futures_util::TryStreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use super::append::{fresh_database, print_machine};
use super::projection::prefill;
use super::ArchiveArgs;
use crate::app::{self, Application};
use crate::archive::{self, Objects, RunOptions};
use crate::config::Config;
use crate::model::{AggregateType, EventType, ExpectedVersion, NewEvent};
use crate::retention::{self, PurgeOptions, Reader};

const EVENT_TYPE: &str = "l12.service_invoked";

pub async fn run(config: &Config, args: ArchiveArgs) -> anyhow::Result<()> {
    let url = fresh_database(config, args.database_url.as_deref(), "keel_bench_archive").await?;
    let mut config = config.clone();
    config.database_url = url;
    config.listen = ([127, 0, 0, 1], 0).into();
    config.auth.mode = crate::config::AuthMode::None;
    let app = Application::build(&config).await?;
    let pool = app.store().pool().clone();
    let registry = app.registry().clone();
    let catalog = app::catalog(&config)?;
    print_machine(&pool).await?;
    let v1 = registry
        .event_schema(EVENT_TYPE, Some(1))
        .await?
        .context("the catalog has no l12.service_invoked v1")?;
    anyhow::ensure!(
        catalog
            .get(&EventType::parse(EVENT_TYPE)?)
            .is_some_and(|e| e.retention.purges() && e.retention.needs_archive()),
        "the catalog's {EVENT_TYPE} has no retention policy with an archive: the benchmark needs one"
    );
    prefill(&pool, args.events, args.aggregates, v1.id).await?;
    sqlx::query("TRUNCATE outbox").execute(&pool).await?;
    // Every prefilled event is past its hot age at this time.
    let now = Utc::now() + chrono::Duration::days(3650);
    let payload_bytes: i64 = sqlx::query_scalar(
        "SELECT sum(octet_length(payload::text) + octet_length(metadata::text))::bigint FROM events",
    )
    .fetch_one(&pool)
    .await?;
    let mb = payload_bytes as f64 / 1e6;

    println!(
        "(a) archive {} events ({mb:.1} MB of JSON), {} run(s), codec {}, segments of {}",
        args.events, args.runs, config.archive.codec, config.archive.max_segment_records
    );
    println!(
        "{:>4} {:>12} {:>8} {:>12} {:>8} {:>10}",
        "run", "archive/s", "MB/s", "copy/s", "MB/s", "arch/copy"
    );
    let mut ratios = Vec::new();
    let mut dir = None;
    for run in 1..=args.runs {
        let copy = raw_copy(&pool, args.events).await?;
        sqlx::query("TRUNCATE archive_segments, archive_progress")
            .execute(&pool)
            .await?;
        let path =
            std::env::temp_dir().join(format!("keel-bench-archive-{}", Uuid::new_v4().simple()));
        let mut archive_config = config.archive.clone();
        archive_config.url = format!("file://{}", path.display());
        let objects = Objects::open(&archive_config)?.context("an archive directory")?;
        let started = Instant::now();
        let report = archive::run(
            &pool,
            &objects,
            &catalog,
            &archive_config,
            &RunOptions {
                now,
                types: vec![EVENT_TYPE.into()],
            },
            &(),
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let archived: u64 = report.types.iter().map(|t| t.events).sum();
        anyhow::ensure!(
            archived == args.events,
            "the archiver wrote {archived} events"
        );
        let rate = archived as f64 / seconds;
        ratios.push(rate / copy);
        println!(
            "{run:>4} {rate:>12.0} {:>8.1} {copy:>12.0} {:>8.1} {:>10.2}",
            mb / seconds,
            mb * copy / args.events as f64,
            rate / copy
        );
        if let Some(old) = dir.replace((path, objects)) {
            let _ = std::fs::remove_dir_all(old.0);
        }
    }
    println!("median archive/copy: {:.2} (the archive run includes reading every segment back and comparing it with the database)\n", super::projection::median(&mut ratios));

    let (path, objects) = dir.context("at least one run")?;
    println!(
        "(b) purge of {} events while appending {} events/s to other aggregates",
        args.events, args.rate
    );
    let appender = app.appender().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let before = tokio::spawn(paced_appends(appender.clone(), args.rate, stop.clone()));
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let before = before.await??;
    let stop = Arc::new(AtomicBool::new(false));
    let during = tokio::spawn(paced_appends(appender, args.rate, stop.clone()));
    let readers: Vec<Reader> = crate::projection::builtin()
        .iter()
        .map(Reader::of)
        .collect();
    let started = Instant::now();
    let report = retention::purge(
        &pool,
        Some(&objects),
        &catalog,
        &readers,
        &PurgeOptions {
            now,
            batch: config.archive.purge_batch,
            verify_max_age_secs: config.archive.verify_max_age_secs,
        },
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let during = during.await??;
    let purged: i64 = report.purged.iter().map(|(_, n)| n).sum();
    println!(
        "purged {purged} events in {seconds:.1} s ({:.0}/s, batches of {})",
        purged as f64 / seconds,
        config.archive.purge_batch
    );
    println!(
        "{:>8} {:>8} {:>9} {:>9} {:>9}",
        "appends", "n", "p50 ms", "p99 ms", "max ms"
    );
    for (name, h) in [("before", &before), ("during", &during)] {
        println!(
            "{name:>8} {:>8} {:>9.2} {:>9.2} {:>9.2}",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.99) as f64 / 1000.0,
            h.max() as f64 / 1000.0
        );
    }
    let _ = std::fs::remove_dir_all(path);
    Ok(())
}

/// One-event appends (`agent.state.changed`, a new agent each, so no retention policy touches
/// them) at `rate` per second, open loop, until `stop`; their latencies in microseconds.
async fn paced_appends(
    appender: crate::append::Appender,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = Histogram::<u64>::new(3)?;
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    let agent = AggregateType::parse("agent")?;
    let event_type = EventType::parse("agent.state.changed")?;
    let access = crate::auth::Access::everything();
    let mut sent = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let due = started + interval * sent;
        tokio::time::sleep_until(due.into()).await;
        let id = Uuid::new_v4();
        let event = NewEvent::new(
            event_type.clone(),
            json!({"agent_id": id, "from_state": null, "to_state": "busy", "reason": null}),
        );
        appender
            .append(&access, &agent, id, ExpectedVersion::NoStream, vec![event])
            .await?;
        // From when it was due, so a stall counts in full (no coordinated omission).
        latencies.record(Instant::now().saturating_duration_since(due).as_micros() as u64)?;
        sent += 1;
    }
    Ok(latencies)
}

/// `COPY` of the same rows and columns in the same order, to nowhere; rows per second.
async fn raw_copy(pool: &PgPool, events: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    let mut out = conn
        .copy_out_raw(&format!(
            "COPY (SELECT {} FROM events WHERE event_type = '{EVENT_TYPE}' ORDER BY tx_id, position) TO STDOUT",
            crate::archive::segment::ARCHIVED_COLUMNS
        ))
        .await?;
    let mut bytes = 0usize;
    while let Some(chunk) = out.try_next().await? {
        bytes += chunk.len();
    }
    std::hint::black_box(bytes);
    Ok(events as f64 / started.elapsed().as_secs_f64())
}
