//! `keel bench`: measurements that print keel's figures next to a raw baseline taken in the same
//! run on the same machine, because these machines are too noisy for absolute numbers to travel.
//!
//! Part of the command line, not the library: a bench wires a whole keel (the API, the relay, the
//! projection runner) from a [`Config`] to measure it, and only `app` and `cli` wire components.

mod append;
mod archive;
mod limits;
mod pgbench;
mod projection;
mod relay;
mod saga;
mod soak;
mod stats;
mod traces;

use clap::{Args, Subcommand};

use crate::config::Config;

pub use traces::Export;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Durable appends through the HTTP API next to the same transaction in raw SQL (sqlx), and
    /// one-event appends next to pgbench running the append1 transaction.
    Append(AppendArgs),
    /// The relay draining a backlog next to a raw rdkafka producer, and commit-to-consume
    /// latency at a fixed rate, against the broker at `kafka_brokers`.
    Relay(RelayArgs),
    /// Projection catch-up next to a raw rdkafka consumer of the same topic, and a rebuild from
    /// the event store next to a raw ordered scan of the same events.
    Projection(ProjectionArgs),
    /// A paced producer's latency alone and beside a noisy principal over its rate limit.
    Limits(LimitsArgs),
    /// The archiver next to a raw ordered COPY of the same rows, and the guarded purge while
    /// appends go on at a fixed rate (their latency before and during).
    Archive(ArchiveArgs),
    /// The op_verify saga: steps per second over a backlog next to appends of what they write,
    /// input commit → output on Kafka at a fixed rate next to the relay alone, and how late its
    /// timeouts fire.
    Saga(SagaArgs),
    /// A child `keel serve --relay --projections` under a steady load through its API, with one
    /// consumer group: latency, outbox size and RSS per interval, and at the end whether every
    /// acknowledged event reached the store, the group and the projection (exit 1 if not).
    Soak(SoakArgs),
}

#[derive(Debug, Clone, Args)]
pub struct SoakArgs {
    /// How long the load runs, in minutes (fractions allowed: 0.5 is thirty seconds).
    #[arg(long, default_value_t = 30.0)]
    pub minutes: f64,
    /// Appends per second (one event each), open loop.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Distinct aggregates written, round robin.
    #[arg(long, default_value_t = 1_000)]
    pub aggregates: u64,
    /// HTTP connections the load keeps open and reuses, as a producer service's pool would; an
    /// append that finds them all busy waits for one, and its latency counts the wait.
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// The database to run in. It is dropped and recreated. Defaults to `keel_bench_soak` on
    /// the configured server.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SagaArgs {
    /// Sagas started from a backlog for the steps-per-second run.
    #[arg(long, default_value_t = 20_000)]
    pub sagas: u64,
    /// Sagas started per second for the latency run (open loop).
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The verification deadline of the latency run's sagas, whose firing is the lateness run.
    #[arg(long, default_value_t = 3_000)]
    pub deadline_ms: u64,
    /// The database to run in; dropped and recreated. Defaults to `keel_bench_saga`.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ArchiveArgs {
    /// Events of l12.service_invoked archived, then purged.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Services (aggregates) the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub aggregates: u64,
    /// Archive runs (each next to a COPY); the median ratio is printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Appends per second during the purge measurement (open loop).
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of appends measured before the purge.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The database to run in; dropped and recreated. Defaults to `keel_bench_archive`.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct LimitsArgs {
    /// Requests per second (and burst) each principal is allowed.
    #[arg(long, default_value_t = 200)]
    pub limit: u32,
    /// Appends per second of the well-behaved producer (under the limit).
    #[arg(long, default_value_t = 50)]
    pub calm_rate: u64,
    /// Closed-loop producers of the noisy principal.
    #[arg(long, default_value_t = 8)]
    pub noisy: usize,
    /// Seconds of each run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// The database to run in; dropped and recreated. Defaults to `keel_bench_limits`.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct ProjectionArgs {
    /// Events in the topic and the store.
    #[arg(long, default_value_t = 200_000)]
    pub events: u64,
    /// Services (aggregates) the events are spread over.
    #[arg(long, default_value_t = 1_000)]
    pub aggregates: u64,
    /// Runs of each measurement; the median ratio is printed.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Events per rebuild transaction.
    #[arg(long, default_value_t = 2000)]
    pub page: i64,
    /// The database to run in; dropped and recreated. Defaults to `keel_bench_projection`.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct RelayArgs {
    /// Events in the backlog to drain.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Aggregates the backlog is spread over.
    #[arg(long, default_value_t = 10_000)]
    pub aggregates: u64,
    /// Drain runs (relay and raw alternate); the median ratio is printed.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Appends per second in the latency run (open loop).
    #[arg(long, default_value_t = 1_000)]
    pub rate: u64,
    /// Seconds of the latency run.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// The database to run in; dropped and recreated. Defaults to `keel_bench_relay`.
    #[arg(long)]
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct AppendArgs {
    /// Concurrent producers; each value is one run.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub producers: Vec<usize>,
    /// Events per append; each value is one run.
    #[arg(long, value_delimiter = ',', default_value = "1,10")]
    pub batch: Vec<usize>,
    /// Seconds measured per run, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of warm-up per run, not measured.
    #[arg(long, default_value_t = 2)]
    pub warmup_seconds: u64,
    /// Distinct aggregates written, spread evenly over the producers.
    #[arg(long, default_value_t = 100_000)]
    pub aggregates: usize,
    /// Approximate payload size in bytes.
    #[arg(long, default_value_t = 500)]
    pub payload_bytes: usize,
    /// The database to run in. It is dropped and recreated. Defaults to `keel_bench` on the
    /// configured server.
    #[arg(long)]
    pub database_url: Option<String>,
    /// The "traced" run exports every trace (100 % sampling) to this OTLP/HTTP collector
    /// (`http://host:4318`) instead of to a receiver in the bench that discards them. The
    /// config's and the `OTEL_*` endpoint are not used by the bench.
    #[arg(long)]
    pub otlp_endpoint: Option<String>,
}

/// The trace export a bench command needs installed before it starts (only `append` has a
/// traced run).
pub async fn trace_export(command: &Command) -> anyhow::Result<Option<Export>> {
    match command {
        Command::Append(args) => Ok(Some(traces::export(args.otlp_endpoint.as_deref()).await?)),
        _ => Ok(None),
    }
}

pub async fn run(config: &Config, command: Command, export: Option<Export>) -> anyhow::Result<()> {
    match command {
        Command::Append(args) => append::run(config, args, export).await,
        Command::Relay(args) => relay::run(config, args).await,
        Command::Projection(args) => projection::run(config, args).await,
        Command::Limits(args) => limits::run(config, args).await,
        Command::Archive(args) => archive::run(config, args).await,
        Command::Saga(args) => saga::run(config, args).await,
        Command::Soak(args) => soak::run(config, args).await,
    }
}
