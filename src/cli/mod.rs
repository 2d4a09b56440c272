//! The command line (clap): one file per command group, each parsing its flags, wiring what it
//! needs from [`crate::app`] and printing the library's results. Library modules never print.
//!
//! Every command starts the same way: the config is loaded and validated, logging is set up, and
//! a command that touches the database connects through [`Services::connect`] (the one
//! bootstrap). Ctrl-C and SIGTERM become one [`crate::shutdown::Shutdown`] token
//! ([`crate::shutdown::on_signals`]) for every long-running command.

mod bench;
mod consume;
mod dlq;
mod outbox;
mod progress;
mod project;
mod relay;
mod replay;
mod schema;
mod serve;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::app::Services;
use crate::config::{self, Config, Overrides};

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
    Serve(serve::ServeArgs),
    /// Run the relay alone: ship the outbox to Kafka and Redis. Run several for availability.
    Relay,
    /// Read history back from the event store.
    #[command(subcommand)]
    Replay(replay::ReplayCommand),
    /// Tail topics as decoded JSON lines (keel's headers, Avro through the registry).
    Consume(consume::ConsumeArgs),
    /// Inspect the outbox and manage parked events.
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Run projections (read models in PostgreSQL) from Kafka, exactly once.
    Project,
    /// Inspect and redrive consumer groups' dead-letter rows.
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate,
    /// Manage the event catalog's schemas in the registry.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Measure keel against a raw baseline on this machine.
    #[command(subcommand)]
    Bench(bench::Command),
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Before any client or server builds a TLS configuration.
    crate::tls::install_provider();
    let mut overrides = Overrides {
        database_url: cli.database_url,
        log: cli.log,
        ..Default::default()
    };
    match &cli.command {
        Command::Serve(args) => args.override_config(&mut overrides),
        Command::Schema(command) => command.override_config(&mut overrides),
        _ => {}
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    crate::telemetry::init(&config.log, config.log_format)?;
    // The effective settings, for debugging a deployment; `Debug` hides every secret in them.
    tracing::debug!(?config, "configuration loaded");
    for name in config::ignored_env_vars() {
        tracing::warn!("ignoring {name}: not a keel setting");
    }
    progress::install();

    match cli.command {
        Command::Serve(_) => serve::run(&config).await,
        Command::Relay => relay::run(&config).await,
        Command::Project => project::run(&config).await,
        Command::Replay(command) => replay::run(&config, command).await,
        Command::Outbox(command) => outbox::run(&config, command).await,
        Command::Consume(args) => consume::run(&config, args).await,
        Command::Dlq(command) => dlq::run(&config, command).await,
        Command::Migrate => {
            Services::connect(&config).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Schema(command) => schema::run(&config, command).await,
        Command::Bench(command) => bench::run(&config, command).await,
    }
}
