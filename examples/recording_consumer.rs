//! A consumer group built on keel's library: it records every event it handles in a table, and
//! fails on purpose where a `consumer_faults` row says so. keel's tests run it as a real process
//! (and kill it); it is also the smallest complete example of the consumer runtime.
//!
//! ```text
//! cargo run --example recording_consumer -- --database-url postgres://... --brokers 127.0.0.1:9092 \
//!     --group audit --topic keel.agent --name one
//! ```
//!
//! `consumer_faults.kind` per event id: `poison` fails permanently, `flaky` fails with a retriable
//! error, `crash` aborts the process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::anyhow;
use clap::Parser;
use keel::consumer::{Delivery, Handler, HandlerError, Subscription};
use keel::model::VersionSpec;
use keel::registry::Registry;
use sqlx::PgPool;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    database_url: String,
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    group: String,
    #[arg(long, required = true)]
    topic: Vec<String>,
    /// Written next to each handled event, to tell processes apart.
    #[arg(long)]
    name: String,
    /// Resolve payloads to this schema version (`latest` or a number).
    #[arg(long)]
    schema_version: Option<String>,
    /// Time each event takes to handle.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    #[arg(long, default_value_t = 5)]
    max_retries: u32,
    /// A librdkafka setting, `name=value`; repeat for several.
    #[arg(long)]
    kafka_property: Vec<String>,
    /// How often this member's heartbeat is written (keel's pipeline monitor reports the group
    /// as `group.<group>`); set it to a sixth of `observability.stall_after_ms`.
    #[arg(long, default_value_t = 5000)]
    beat_ms: u64,
}

struct Recorder {
    pool: PgPool,
    name: String,
    delay: Duration,
}

impl Handler for Recorder {
    async fn handle(&self, d: &Delivery) -> Result<(), HandlerError> {
        let retriable = |e: sqlx::Error| HandlerError::Retriable(e.into());
        let fault: Option<String> =
            sqlx::query_scalar("SELECT kind FROM consumer_faults WHERE event_id = $1")
                .bind(d.event.id)
                .fetch_optional(&self.pool)
                .await
                .map_err(retriable)?;
        match fault.as_deref() {
            Some("poison") => return Err(HandlerError::Permanent(anyhow!("poison event"))),
            Some("flaky") => return Err(HandlerError::Retriable(anyhow!("flaky event"))),
            Some("crash") => std::process::abort(),
            _ => {}
        }
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        sqlx::query(
            "INSERT INTO consumer_handled (consumer, event_id, aggregate_id, version, payload, redelivery)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&self.name)
        .bind(d.event.id)
        .bind(d.event.aggregate_id)
        .bind(d.event.version)
        .bind(&d.event.payload)
        .bind(d.redelivery)
        .execute(&self.pool)
        .await
        .map_err(retriable)?;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // keel's logging, and its trace export when the standard OTEL_EXPORTER_OTLP_ENDPOINT is set:
    // each record's handling is then a `process <topic>` span in its event's trace.
    keel::tls::install_provider();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let telemetry = keel::telemetry::init(
        &filter,
        keel::config::LogFormat::Text,
        &keel::config::ObservabilityConfig::default(),
    )?;
    let result = run().await;
    telemetry.shutdown().await;
    result
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = PgPool::connect(&args.database_url).await?;
    // Several processes start at once: one creates the tables, under a session lock.
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT pg_advisory_lock(4242)")
        .execute(&mut *conn)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS consumer_faults (event_id uuid PRIMARY KEY, kind text NOT NULL);
         CREATE TABLE IF NOT EXISTS consumer_handled (
             seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, consumer text NOT NULL,
             event_id uuid NOT NULL, aggregate_id uuid NOT NULL, version integer NOT NULL,
             payload jsonb NOT NULL, redelivery boolean NOT NULL);",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut *conn)
        .await?;
    drop(conn);
    let topics: Vec<&str> = args.topic.iter().map(String::as_str).collect();
    let mut subscription = Subscription::new(&args.group, &topics);
    subscription.max_retries = args.max_retries;
    subscription.beat_every = Duration::from_millis(args.beat_ms);
    subscription.backoff_initial = Duration::from_millis(20);
    subscription.reader = args
        .schema_version
        .as_deref()
        .map(VersionSpec::parse)
        .transpose()?;
    subscription.properties.extend(
        [
            ("session.timeout.ms", "6000"),
            ("max.poll.interval.ms", "10000"),
            ("fetch.wait.max.ms", "50"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    for p in &args.kafka_property {
        let (k, v) = p
            .split_once('=')
            .ok_or_else(|| anyhow!("--kafka-property takes name=value"))?;
        subscription.properties.insert(k.to_owned(), v.to_owned());
    }
    let handler = Recorder {
        pool: pool.clone(),
        name: args.name,
        delay: Duration::from_millis(args.delay_ms),
    };
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    let registry = Arc::new(Registry::new(pool.clone()));
    keel::consumer::run(
        pool,
        registry,
        &args.brokers,
        subscription,
        handler,
        shutdown,
    )
    .await
}
