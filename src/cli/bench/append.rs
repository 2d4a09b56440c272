//! The append benchmark: closed-loop producers, each owning its aggregates and sending the version
//! it expects, against (a) keel's HTTP API with an API key, (b) the same with authentication
//! off, (c) also without payload validation, and (d) the same transaction in raw SQL through sqlx.
//! Both use durable commits (`synchronous_commit` as the server has it, normally `on`). And (a)
//! again with trace export on, every trace sampled, each request carrying a client
//! `traceparent` (see [`super::traces`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres};
use uuid::Uuid;

use super::pgbench::Pgbench;
use super::stats::{self, Sample};
use super::{AppendArgs, Export};
use crate::app::Application;
use crate::config::Config;

/// What the producers write to.
enum Target {
    Http {
        client: reqwest::Client,
        base: String,
        /// The API key sent as a bearer token, when the instance asks for one.
        key: Option<String>,
        /// Send a new trace's `traceparent` with each request, as a traced client does.
        traced: bool,
    },
    Sql {
        pool: PgPool,
    },
}

const AGGREGATE_TYPE: &str = "bench";
const EVENT_TYPE: &str = "state_change";

pub async fn run(config: &Config, args: AppendArgs, export: Option<Export>) -> anyhow::Result<()> {
    // Off until the traced run.
    crate::telemetry::pause(true);
    let url = fresh_database(config, args.database_url.as_deref(), "keel_bench").await?;
    let max_producers = args.producers.iter().copied().max().unwrap_or(1);
    let mut app_config = config.clone();
    app_config.database_url = url;
    app_config.listen = ([127, 0, 0, 1], 0).into();
    app_config.api.max_batch_events = app_config
        .api
        .max_batch_events
        .max(args.batch.iter().copied().max().unwrap_or(1));
    // Three keel instances and a connection per baseline producer must fit under PostgreSQL's
    // default max_connections of 100 at 64 producers: each keel gets at most 10 connections,
    // plenty for its 4 group-commit workers, key lookups and reads.
    app_config.pool.max_connections = app_config.pool.max_connections.min(10);
    room_for(
        &app_config.database_url,
        app_config.pool.max_connections,
        max_producers,
    )
    .await?;
    // keel as it runs by default: every request authenticated with an API key (of the bootstrap
    // admin), its caller's rate limits checked, its grants checked by the write path.
    let key = crate::auth::ApiKey::generate()?;
    let key_dir = std::env::temp_dir().join(format!("keel-bench-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&key_dir)?;
    let key_file = key_dir.join("admin.key");
    std::fs::write(&key_file, key.expose_secret())?;
    app_config.auth.mode = crate::config::AuthMode::Required;
    app_config.auth.key_secret_file = None;
    app_config.auth.key_secret = Some(crate::config::Secret::new(
        crate::auth::ApiKey::generate()?.expose_secret(),
    ));
    app_config.auth.bootstrap_key_file = Some(key_file);
    let app = Application::build(&app_config).await?;
    std::fs::remove_dir_all(&key_dir)?;
    let base = format!("http://{}", app.local_addr());
    // The baseline gets a connection per producer, as a hand-written service would.
    let pool = PgPoolOptions::new()
        .max_connections(max_producers as u32)
        .connect(&app_config.database_url)
        .await?;
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    // The same keel with authentication off, to price authentication.
    app_config.auth.mode = crate::config::AuthMode::None;
    let open = Application::build(&app_config).await?;
    let open_base = format!("http://{}", open.local_addr());
    tokio::spawn(open.run_until_stopped(std::future::pending()));
    // And with payload validation off too, to price validation.
    app_config.api.validate_payloads = false;
    let unvalidated = Application::build(&app_config).await?;
    let unvalidated_base = format!("http://{}", unvalidated.local_addr());
    tokio::spawn(unvalidated.run_until_stopped(std::future::pending()));

    print_machine(&pool).await?;
    println!(
        "closed loop, {}s measured after {}s warm-up per run, {} aggregates, ~{} B payloads\n",
        args.seconds, args.warmup_seconds, args.aggregates, args.payload_bytes
    );
    println!("{}", stats::header());
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(max_producers)
        .build()?;
    let http = Arc::new(Target::Http {
        client: client.clone(),
        base: base.clone(),
        key: Some(key.expose_secret()),
        traced: false,
    });
    let http_traced = Arc::new(Target::Http {
        client: client.clone(),
        base,
        key: Some(key.expose_secret()),
        traced: true,
    });
    let http_open = Arc::new(Target::Http {
        client: client.clone(),
        base: open_base,
        key: None,
        traced: false,
    });
    let http_unvalidated = Arc::new(Target::Http {
        client,
        base: unvalidated_base,
        key: None,
        traced: false,
    });
    let sql = Arc::new(Target::Sql { pool: pool.clone() });
    let payload = Arc::new(json!({
        "entity": "bench", "from_state": null, "to_state": "running",
        "attributes": {"pad": "x".repeat(args.payload_bytes.saturating_sub(80))}
    }));
    // keel's one-event rate per producer count, for the pgbench table.
    let mut singles: Vec<(usize, f64, String)> = Vec::new();
    for &batch in &args.batch {
        for &producers in &args.producers {
            let keel = measure(&http, producers, batch, &args, &payload).await?;
            if batch == 1 {
                singles.push((producers, keel.events_per_sec(), keel.percentiles()));
            }
            crate::telemetry::pause(false);
            let traced = measure(&http_traced, producers, batch, &args, &payload).await;
            crate::telemetry::pause(true);
            let traced = traced?;
            let open = measure(&http_open, producers, batch, &args, &payload).await?;
            let unvalidated = measure(&http_unvalidated, producers, batch, &args, &payload).await?;
            let raw = measure(&sql, producers, batch, &args, &payload).await?;
            let row = stats::Row {
                keel,
                traced,
                open,
                unvalidated,
                raw,
            };
            println!("{}", row.show(producers, batch));
        }
    }
    // pgbench opens a connection per client: free the baseline's first (max_connections).
    pool.close().await;
    pgbench_baseline(&app_config.database_url, &args, &singles).await?;
    match export.and_then(|e| e.received) {
        Some(received) => println!(
            "\ntraced runs: {} OTLP exports ({} bytes) reached the bench's receiver",
            received.requests.load(Ordering::Relaxed),
            received.bytes.load(Ordering::Relaxed)
        ),
        None => println!("\ntraced runs exported to --otlp-endpoint"),
    }
    Ok(())
}

/// pgbench's append1 transaction with as many clients as keel had producers, next to keel's
/// one-event appends (see [`super::pgbench`]). Said loudly, and left out, without `pgbench`.
async fn pgbench_baseline(
    keel_url: &str,
    args: &AppendArgs,
    singles: &[(usize, f64, String)],
) -> anyhow::Result<()> {
    if singles.is_empty() {
        return Ok(());
    }
    let url = sibling_database(keel_url, "keel_bench_pgbench")?;
    let Some(pgbench) = Pgbench::prepare(url, args.aggregates, args.payload_bytes).await? else {
        println!(
            "\nSKIPPED: no pgbench on PATH, so the pgbench append1 baseline was not measured \
             (Debian: apt-get install postgresql-client)"
        );
        return Ok(());
    };
    println!(
        "\npgbench append1 (UPDATE streams ... RETURNING; INSERT events; INSERT outbox; one event per \
         transaction, prepared statements, its own narrower schema), as many clients as producers"
    );
    println!(
        "{:<9} {:>10} {:>12} {:>12}   {:<22} {:<22}",
        "producers",
        "keel ev/s",
        "pgbench ev/s",
        "keel/pgbench",
        "keel p50/p99/p999 ms",
        "pgbench p50/p99/p999"
    );
    for (producers, keel, keel_latency) in singles {
        let run = pgbench
            .measure(
                *producers,
                Duration::from_secs(args.warmup_seconds),
                Duration::from_secs(args.seconds),
            )
            .await?;
        println!(
            "{:<9} {:>10.0} {:>12.0} {:>12.2}   {:<22} {:<22}",
            producers,
            keel,
            run.events_per_sec(),
            keel / run.events_per_sec(),
            keel_latency,
            run.percentiles()
        );
    }
    Ok(())
}

/// Says up front when PostgreSQL cannot take the connections the run needs (the three keels'
/// pools of `keel_pool` each and a connection per baseline producer), rather than letting the
/// baseline's pool time out minutes into the run.
async fn room_for(url: &str, keel_pool: u32, producers: usize) -> anyhow::Result<()> {
    use sqlx::Connection;
    // The bench's own database does not exist yet (the first keel creates it).
    let mut conn = sqlx::PgConnection::connect(&sibling_database(url, "postgres")?).await?;
    let (allowed, in_use): (i64, i64) = sqlx::query_as(
        "SELECT current_setting('max_connections')::bigint \
                - CASE WHEN r.rolsuper THEN 0 ELSE current_setting('superuser_reserved_connections')::bigint END, \
                (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await?;
    conn.close().await?;
    let free = allowed - in_use;
    let keels = 3 * i64::from(keel_pool);
    let needed = keels + producers as i64;
    anyhow::ensure!(
        needed <= free,
        "--producers {producers} needs {needed} PostgreSQL connections (three keel instances' pools and one per \
         baseline producer), but the server has {free} free ({allowed} allowed, {in_use} in use): lower --producers \
         to at most {}, or raise max_connections in postgresql.conf",
        (free - keels).max(0)
    );
    Ok(())
}

/// Runs `producers` closed-loop producers against `target` and merges what they measured.
async fn measure(
    target: &Arc<Target>,
    producers: usize,
    batch: usize,
    args: &AppendArgs,
    payload: &Arc<Value>,
) -> anyhow::Result<Sample> {
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(args.warmup_seconds);
    let until = measure_from + Duration::from_secs(args.seconds);
    let per_producer = (args.aggregates / producers).max(1);
    let tasks: Vec<_> = (0..producers)
        .map(|_| {
            let (target, payload) = (target.clone(), payload.clone());
            tokio::spawn(async move {
                let mut versions: Vec<(Uuid, i32)> =
                    (0..per_producer).map(|_| (Uuid::new_v4(), 0)).collect();
                let mut histogram = Sample::new_histogram();
                let mut events = 0u64;
                let mut i = 0usize;
                loop {
                    let sent = Instant::now();
                    if sent >= until {
                        break;
                    }
                    let slot = &mut versions[i % per_producer];
                    i = i.wrapping_add(7919); // a prime stride: spread over the aggregates
                    slot.1 = target.append(slot.0, slot.1, batch, &payload).await?;
                    if sent >= measure_from {
                        histogram.saturating_record(sent.elapsed().as_micros() as u64);
                        events += batch as u64;
                    }
                }
                anyhow::Ok((events, histogram))
            })
        })
        .collect();
    let mut sample = Sample {
        events: 0,
        elapsed: Duration::from_secs(args.seconds),
        latency_us: Sample::new_histogram(),
    };
    for task in tasks {
        let (events, histogram) = task.await??;
        sample.events += events;
        sample.latency_us.add(histogram)?;
    }
    Ok(sample)
}

impl Target {
    /// Appends `batch` events to `aggregate`, expecting it at `version`; returns the new version.
    async fn append(
        &self,
        aggregate: Uuid,
        version: i32,
        batch: usize,
        payload: &Value,
    ) -> anyhow::Result<i32> {
        match self {
            Target::Http {
                client,
                base,
                key,
                traced,
            } => {
                let expected = if version == 0 {
                    json!("no_stream")
                } else {
                    json!(version)
                };
                let events: Vec<Value> = (0..batch)
                    .map(|_| json!({"type": EVENT_TYPE, "payload": payload}))
                    .collect();
                let mut request = client
                    .post(format!(
                        "{base}/v1/aggregates/{AGGREGATE_TYPE}/{aggregate}/events"
                    ))
                    .json(&json!({"expected_version": expected, "events": events}));
                if let Some(key) = key {
                    request = request.bearer_auth(key);
                }
                if *traced {
                    request = request.header("traceparent", super::traces::client_traceparent());
                }
                let response = request.send().await?;
                let status = response.status();
                let body: Value = response.json().await?;
                anyhow::ensure!(status.is_success(), "append failed: {status} {body}");
                Ok(body["version"].as_i64().context("reply without version")? as i32)
            }
            Target::Sql { pool } => raw_append(pool, aggregate, version, batch, payload).await,
        }
    }
}

/// The baseline: the same rows as keel's append (stream bump with a version check, events,
/// outbox), as plain statements in one transaction, the way a hand-written service would.
async fn raw_append(
    pool: &PgPool,
    aggregate: Uuid,
    version: i32,
    batch: usize,
    payload: &Value,
) -> anyhow::Result<i32> {
    let k = batch as i32;
    let mut tx = pool.begin().await?;
    let new_version: i32 = sqlx::query_scalar(
        "INSERT INTO streams (aggregate_type, aggregate_id, version, last_tx_id)
         VALUES ($1, $2, $3, pg_current_xact_id())
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET version = streams.version + $3, last_tx_id = pg_current_xact_id()
            WHERE streams.version = $4
         RETURNING version",
    )
    .bind(AGGREGATE_TYPE)
    .bind(aggregate)
    .bind(k)
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::now_v7()).collect();
    let versions: Vec<i32> = (1..=k).map(|i| new_version - k + i).collect();
    let payloads: Vec<Value> = vec![payload.clone(); batch];
    let positions: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO events (id, aggregate_type, aggregate_id, version, event_type, payload)
         SELECT id, $2, $3, v, $4, p FROM UNNEST($1::uuid[], $5::int[], $6::jsonb[]) AS n(id, v, p)
         RETURNING position",
    )
    .bind(&ids)
    .bind(AGGREGATE_TYPE)
    .bind(aggregate)
    .bind(EVENT_TYPE)
    .bind(&versions)
    .bind(&payloads)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (position, event_id, aggregate_type, aggregate_id, event_type)
         SELECT p, id, $3, $4, $5 FROM UNNEST($1::bigint[], $2::uuid[]) AS n(p, id)",
    )
    .bind(&positions)
    .bind(&ids)
    .bind(AGGREGATE_TYPE)
    .bind(aggregate)
    .bind(EVENT_TYPE)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(new_version)
}

pub(super) async fn print_machine(pool: &PgPool) -> anyhow::Result<()> {
    let (pg, sync): (String, String) =
        sqlx::query_as("SELECT version(), current_setting('synchronous_commit')")
            .fetch_one(pool)
            .await?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("machine: {cores} cores; {pg}; synchronous_commit={sync}");
    Ok(())
}

/// `url`, or the database `name` on the configured server; dropped if it exists, so that keel
/// creates it anew.
pub(super) async fn fresh_database(
    config: &Config,
    url: Option<&str>,
    name: &str,
) -> anyhow::Result<String> {
    let url = match url {
        Some(url) => url.to_owned(),
        None => sibling_database(&config.database_url, name)?,
    };
    if Postgres::database_exists(&url).await? {
        Postgres::drop_database(&url)
            .await
            .context("cannot drop the bench database")?;
    }
    Ok(url)
}

/// `url` with its database name replaced.
fn sibling_database(url: &str, name: &str) -> anyhow::Result<String> {
    let (server, rest) = url
        .rsplit_once('/')
        .context("the database url names no database")?;
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    Ok(format!("{server}/{name}{query}"))
}
