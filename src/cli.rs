//! The command line (clap). Each subcommand is a thin call into library code.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::app::Application;
use crate::bench;
use crate::catalog::Catalog;
use crate::config::{Config, Overrides};
use crate::model::VersionSpec;
use crate::registry::{sync, Registry};
use crate::relay::{self, outbox, sink::SinkKind};
use crate::store::Store;

/// keel: a Kafka-compatible, log-centric event backbone.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
pub struct Cli {
    /// A TOML config file. Its settings sit between the defaults and `KEEL_*` env vars.
    #[arg(long, global = true, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,

    /// PostgreSQL URL; overrides `KEEL_DATABASE_URL`.
    #[arg(long, global = true)]
    pub database_url: Option<String>,

    /// Log filter, for example `info` or `keel=debug`; overrides `KEEL_LOG`.
    #[arg(long, global = true)]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API.
    Serve(ServeArgs),
    /// Run the relay alone: ship the outbox to Kafka and Redis. Run several for availability.
    Relay,
    /// Read history back from the event store.
    #[command(subcommand)]
    Replay(ReplayCommand),
    /// Tail topics as decoded JSON lines (keel's headers, Avro through the registry).
    Consume(crate::consumer::tail::ConsumeArgs),
    /// Inspect the outbox and manage parked events.
    #[command(subcommand)]
    Outbox(OutboxCommand),
    /// Run projections (read models in PostgreSQL) from Kafka, exactly once.
    Project,
    /// Inspect and redrive consumer groups' dead-letter rows.
    #[command(subcommand)]
    Dlq(crate::consumer::admin::DlqCommand),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate,
    /// Manage the event catalog's schemas in the registry.
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// Measure keel against a raw baseline on this machine.
    #[command(subcommand)]
    Bench(bench::Command),
}

#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Register every schema of the catalog, oldest version first; fail on an incompatible change.
    Sync {
        /// The catalog folder; overrides `KEEL_SCHEMAS_DIR`.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Check one schema file against its subject's registered versions, without registering it.
    Check {
        /// A schema file, for example `schemas/agent.state.changed/v3.avsc`.
        file: PathBuf,
        /// The subject; by default the name of the file's folder (the event type).
        #[arg(long)]
        subject: Option<String>,
    },
    /// List the registered subjects with their versions, schema ids and compatibility modes.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Print an aggregate's events as JSON lines, in version order, resolved to the latest schema
    /// of their types.
    Aggregate {
        aggregate_type: String,
        aggregate_id: uuid::Uuid,
        /// Stop at this version, or at this RFC 3339 time (events created at or before it).
        #[arg(long)]
        as_of: Option<crate::replay::AsOf>,
    },
    /// Re-send stored events to a Kafka topic in log order (per-aggregate order kept), rate-limited
    /// and resumable.
    Republish(crate::replay::republish::RepublishArgs),
    /// Rebuild a projection from the event store into a shadow schema and swap it in, while live
    /// traffic continues. Ctrl-C stops safely; running it again resumes.
    Projection(RebuildArgs),
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection, for example `agent_status`.
    pub name: String,
    /// Build a point-in-time view of the events at or before this position or RFC 3339 time,
    /// into `keel_proj_<name>_until`, beside the live one.
    #[arg(long, conflicts_with = "aggregate")]
    pub until: Option<crate::projection::rebuild::Until>,
    /// Rebuild only this aggregate, in place.
    #[arg(long)]
    pub aggregate: Option<uuid::Uuid>,
    /// Start over instead of resuming an interrupted rebuild.
    #[arg(long)]
    pub restart: bool,
    /// Events per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub page: i64,
}

async fn rebuild_command(config: &Config, args: RebuildArgs) -> anyhow::Result<()> {
    use crate::projection::rebuild::{rebuild, RebuildOptions};
    let projection = crate::projection::find(&args.name)?;
    let store = Store::connect(&config.database()).await?;
    let registry = Arc::new(Registry::new(store.pool().clone()));
    let options = RebuildOptions {
        until: args.until,
        aggregate: args.aggregate,
        restart: args.restart,
        page: args.page,
    };
    let report = rebuild(
        store.pool(),
        &registry,
        projection.as_ref(),
        &options,
        shutdown_signal(),
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Each sink's backlog, the age of its oldest row, and its parked and held rows.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List parked rows (and the rows held behind them), oldest first.
    Parked {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Re-send a parked event (by event id), or every parked event, after fixing the cause.
    Retry {
        /// The event id; see `keel outbox parked`.
        id: Option<uuid::Uuid>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Only this sink (`kafka` or `redis`).
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkKind>,
    },
    /// Give up on a parked event: it is never delivered to that sink, and the events held behind
    /// it flow again.
    Skip {
        id: uuid::Uuid,
        /// Only this sink (`kafka` or `redis`).
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkKind>,
    },
}

fn parse_sink(s: &str) -> Result<SinkKind, String> {
    SinkKind::parse(s).ok_or_else(|| format!("unknown sink {s:?}: use kafka or redis"))
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; overrides `KEEL_LISTEN`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The event catalog folder; overrides `KEEL_SCHEMAS_DIR`.
    #[arg(long)]
    pub schemas_dir: Option<PathBuf>,
    /// Run the relay in this process too (sets `relay.in_process`).
    #[arg(long)]
    pub relay: bool,
    /// Run the projection runners in this process too (sets `projections.in_process`).
    #[arg(long)]
    pub projections: bool,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides = Overrides {
        database_url: cli.database_url,
        log: cli.log,
        ..Default::default()
    };
    match &cli.command {
        Command::Serve(args) => {
            overrides.listen = args.listen;
            overrides.schemas_dir = args.schemas_dir.clone();
            overrides.relay_in_process = args.relay.then_some(true);
            overrides.projections_in_process = args.projections.then_some(true);
        }
        Command::Schema(SchemaCommand::Sync { dir }) => overrides.schemas_dir = dir.clone(),
        _ => {}
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    crate::telemetry::init(&config.log, config.log_format)?;

    match cli.command {
        Command::Serve(_) => {
            let app = Application::build(&config).await?;
            app.run_until_stopped(shutdown_signal()).await
        }
        Command::Relay => {
            let store = Store::connect(&config.database()).await?;
            let catalog = Arc::new(Catalog::load(&config.schemas_dir)?);
            let registry = Arc::new(Registry::new(store.pool().clone()));
            let metrics = relay::serve_metrics(config.relay.listen).await?;
            tracing::info!(addr = %metrics, "relay metrics on /metrics");
            let relay =
                relay::start(&config, store.pool().clone(), catalog, registry, None).await?;
            shutdown_signal().await;
            relay.shutdown().await;
            Ok(())
        }
        Command::Project => {
            let store = Store::connect(&config.database()).await?;
            let catalog = Catalog::load(&config.schemas_dir)?;
            let registry = Arc::new(Registry::new(store.pool().clone()));
            crate::projection::runner::run_configured(
                &config,
                store.pool().clone(),
                registry,
                &catalog,
                shutdown_signal(),
            )
            .await
        }
        Command::Replay(ReplayCommand::Projection(args)) => rebuild_command(&config, args).await,
        Command::Outbox(command) => outbox_command(&config, command).await,
        Command::Consume(args) => crate::consumer::tail::run(&config, args).await,
        Command::Dlq(command) => crate::consumer::admin::run(&config, command).await,
        Command::Replay(ReplayCommand::Republish(args)) => {
            crate::replay::republish::run(&config, args).await
        }
        Command::Replay(ReplayCommand::Aggregate {
            aggregate_type,
            aggregate_id,
            as_of,
        }) => {
            let aggregate_type = crate::model::AggregateType::parse(aggregate_type)?;
            let store = Store::connect(&config.database()).await?;
            let registry = Registry::new(store.pool().clone());
            let events =
                crate::replay::history(&store, &registry, &aggregate_type, aggregate_id, as_of)
                    .await?;
            if events.is_empty() {
                bail!(
                    "aggregate {aggregate_type}/{aggregate_id} has no events{}",
                    if as_of.is_some() { " as of then" } else { "" }
                );
            }
            for event in events {
                println!("{}", serde_json::to_string(&event)?);
            }
            Ok(())
        }
        Command::Migrate => {
            Store::connect(&config.database()).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Schema(command) => schema_command(&config, command).await,
        Command::Bench(command) => bench::run(&config, command).await,
    }
}

async fn schema_command(config: &Config, command: SchemaCommand) -> anyhow::Result<()> {
    let store = Store::connect(&config.database()).await?;
    let registry = Registry::new(store.pool().clone());
    match command {
        SchemaCommand::Sync { .. } => {
            let catalog = Catalog::load(&config.schemas_dir)?;
            for synced in sync::sync(&registry, &catalog).await? {
                let r = synced.registered;
                let what = if r.created { "registered" } else { "unchanged" };
                println!(
                    "{what:<10} {} -> subject {} version {} (id {})",
                    synced.file, synced.subject, r.version, r.id
                );
            }
            Ok(())
        }
        SchemaCommand::Check { file, subject } => {
            let subject = match subject {
                Some(s) => s,
                None => file
                    .parent()
                    .and_then(|p| p.file_name())
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .context("cannot tell the subject from the path; pass --subject")?,
            };
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let found = registry.check(&subject, None, &text).await?;
            if found.is_empty() {
                let mode = registry.effective_config(&subject).await?;
                println!(
                    "{} is compatible with subject {subject} ({mode})",
                    file.display()
                );
                return Ok(());
            }
            for i in &found {
                println!("{} [{:?}]: {}", i.path, i.kind, i.message);
            }
            bail!("{} is incompatible with subject {subject}", file.display())
        }
        SchemaCommand::List => {
            for subject in registry.subjects(false).await? {
                let mode = registry.effective_config(&subject).await?;
                let mut versions = Vec::new();
                for v in registry.versions(&subject, false).await? {
                    let found = registry
                        .version(&subject, VersionSpec::Number(v), false)
                        .await?;
                    versions.push(format!("v{}=id {}", found.version, found.id));
                }
                println!("{subject:<32} {mode:<20} {}", versions.join(", "));
            }
            Ok(())
        }
    }
}

async fn outbox_command(config: &Config, command: OutboxCommand) -> anyhow::Result<()> {
    let store = Store::connect(&config.database()).await?;
    let pool = store.pool();
    match command {
        OutboxCommand::Status { json } => {
            let enabled = |sink: &str| match SinkKind::parse(sink) {
                Some(SinkKind::Kafka) => config.relay.kafka.enabled,
                Some(SinkKind::Redis) => config.relay.redis.enabled,
                None => false,
            };
            let status: Vec<_> = outbox::status(pool, &relay::all_partitions())
                .await?
                .into_iter()
                .filter(|s| enabled(&s.sink))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!(
                "{:<6} {:>10} {:>12} {:>8} {:>8}",
                "sink", "backlog", "oldest (s)", "parked", "held"
            );
            for s in status {
                println!(
                    "{:<6} {:>10} {:>12.3} {:>8} {:>8}",
                    s.sink, s.backlog, s.oldest_age_seconds, s.parked, s.held
                );
            }
        }
        OutboxCommand::Parked { limit, json } => {
            for p in outbox::parked(pool, limit).await? {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
                    println!(
                        "{} {:<6} {:<7} {}/{} {} pos {} attempts {} {}",
                        p.event_id,
                        p.sink,
                        p.state,
                        p.aggregate_type,
                        p.aggregate_id,
                        p.event_type,
                        p.position,
                        p.attempts,
                        p.error.unwrap_or_default()
                    );
                }
            }
        }
        OutboxCommand::Retry { id, all, sink } => {
            let which = match (id, all) {
                (Some(id), false) => outbox::Selection::Event(id, sink),
                (None, true) => outbox::Selection::All(sink),
                _ => bail!("name an event id, or pass --all"),
            };
            let n = outbox::retry(pool, which).await?;
            if n == 0 && matches!(which, outbox::Selection::Event(..)) {
                bail!("no parked event matches");
            }
            println!("released {n} parked row(s) for re-sending");
        }
        OutboxCommand::Skip { id, sink } => {
            let skipped = outbox::skip(pool, outbox::Selection::Event(id, sink)).await?;
            if skipped.is_empty() {
                bail!("no parked event matches");
            }
            for p in skipped {
                tracing::warn!(event_id = %p.event_id, sink = %p.sink, "skipped a parked event: it will not be delivered to this sink");
                println!("skipped {} on {}", p.event_id, p.sink);
            }
        }
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}
