//! The command line (clap): one file per command group, each parsing its flags, wiring what it
//! needs from [`crate::app`] and printing the library's results. Library modules never print.
//!
//! Every command starts the same way: the config is loaded and validated, logging is set up, and
//! a command that touches the database connects through [`Services::connect`] (the one
//! bootstrap). Ctrl-C and SIGTERM become one [`crate::shutdown::Shutdown`] token
//! ([`crate::shutdown::on_signals`]) for every long-running command.
//!
//! The operator commands (`outbox`, `dlq`, `replay`, `jobs`, `events`, `principal`, `grant`, `audit`,
//! and `saga` but for `saga run`) never open
//! the database: they act through keel's HTTP API ([`client`]) with the key in `KEEL_API_KEY`,
//! so each of their actions is authorised and audited like any other client's.

mod archive;
mod audit;
mod bench;
mod bulk;
mod client;
mod consume;
mod dlq;
mod events;
mod grant;
mod health;
mod jobs;
mod outbox;
mod principal;
mod progress;
mod project;
mod relay;
mod replay;
mod saga;
mod schema;
mod serve;
mod settings;

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

    /// keel's API, for the operator commands; by default the config's `listen` address
    /// (`http://127.0.0.1:8080`). Their credential comes from `KEEL_API_KEY` only, never from a
    /// flag (a command line shows in `ps`).
    #[arg(long, global = true, env = "KEEL_URL")]
    pub url: Option<String>,

    /// PEM CA certificates to verify an https `--url` with, instead of the system's roots (a
    /// keel whose certificate comes from a private CA).
    #[arg(long, global = true, env = "KEEL_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API.
    Serve(serve::ServeArgs),
    /// Run the relay alone: ship the outbox to Kafka and Redis. Run several for availability.
    Relay,
    /// Read history back from the event store (through the API).
    #[command(subcommand)]
    Replay(replay::ReplayCommand),
    /// Tail topics as decoded JSON lines (keel's headers, Avro through the registry).
    Consume(consume::ConsumeArgs),
    /// The pipeline's health: each component ok, degraded or unhealthy, and why (through the
    /// API). Exits non-zero while it is unhealthy.
    Health(health::HealthArgs),
    /// Inspect the outbox and manage parked events (through the API).
    #[command(subcommand)]
    Outbox(outbox::OutboxCommand),
    /// Follow one event through the pipeline (through the API).
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Run projections (read models in PostgreSQL) from Kafka, exactly once.
    Project,
    /// Run sagas (process managers) from Kafka, and inspect and redrive their instances
    /// (through the API).
    #[command(subcommand)]
    Saga(saga::SagaCommand),
    /// Inspect and redrive consumer groups' dead-letter rows (through the API).
    #[command(subcommand)]
    Dlq(dlq::DlqCommand),
    /// Manage principals and their API keys (through the API).
    #[command(subcommand)]
    Principal(principal::PrincipalCommand),
    /// Manage principals' custom grants (through the API).
    #[command(subcommand)]
    Grant(grant::GrantCommand),
    /// Read and verify the audit log (through the API).
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// List, show, cancel and resume operator jobs: rebuilds and republishes (through the API).
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Create the database if missing and apply pending migrations, then exit.
    Migrate,
    /// List the settings keel reads (`keys`) and check a configuration (`check`).
    #[command(subcommand)]
    Config(settings::ConfigCommand),
    /// Manage the event catalog's schemas in the registry.
    #[command(subcommand)]
    Schema(schema::SchemaCommand),
    /// Archive event history to Avro segments in object storage, verify and restore them.
    #[command(subcommand)]
    Archive(archive::ArchiveCommand),
    /// Retention: plan and run the guarded purge of archived events, and its status.
    #[command(subcommand)]
    Retention(archive::RetentionCommand),
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
        // It needs no valid configuration: it lists what one may hold.
        Command::Config(settings::ConfigCommand::Keys(args)) => return settings::keys(args),
        _ => {}
    }
    let config = Config::load(cli.config.as_deref(), &overrides)?;
    // `keel bench append` exports its traced run's spans to a receiver of its own.
    let bench_export = match &cli.command {
        Command::Bench(command) => bench::trace_export(command).await?,
        _ => None,
    };
    // Traces are for the pipeline's processes; the operator commands are HTTP clients whose
    // exit should not wait for a collector.
    let traced = matches!(
        cli.command,
        Command::Serve(_)
            | Command::Relay
            | Command::Project
            | Command::Saga(saga::SagaCommand::Run { .. })
    );
    let telemetry = match &bench_export {
        Some(export) => crate::telemetry::init_with(
            &config.log,
            config.log_format,
            Some(export.settings.clone()),
        )?,
        None if traced => {
            crate::telemetry::init(&config.log, config.log_format, &config.observability)?
        }
        None => crate::telemetry::init_with(&config.log, config.log_format, None)?,
    };
    // The effective settings, for debugging a deployment; `Debug` hides every secret in them.
    tracing::debug!(?config, "configuration loaded");
    for name in config::ignored_env_vars() {
        tracing::warn!("ignoring {name}: not a keel setting");
    }
    progress::install();
    let api = || client::Client::from_env(cli.url.as_deref(), cli.ca_file.as_deref(), &config);

    let result = match cli.command {
        Command::Serve(_) => serve::run(&config).await,
        Command::Relay => relay::run(&config).await,
        Command::Project => project::run(&config).await,
        Command::Saga(saga::SagaCommand::Run { names }) => saga::run_sagas(&config, &names).await,
        Command::Saga(command) => saga::run(&api()?, command).await,
        Command::Replay(replay::ReplayCommand::Saga {
            name,
            instance,
            json,
            ..
        }) => replay::check_saga(&config, &name, instance, json).await,
        Command::Replay(command) => replay::run(&api()?, command).await,
        Command::Health(args) => health::run(&api()?, args).await,
        Command::Outbox(command) => outbox::run(&api()?, command).await,
        Command::Events(command) => events::run(&api()?, command).await,
        Command::Consume(args) => consume::run(&config, args).await,
        Command::Dlq(command) => dlq::run(&api()?, command).await,
        Command::Principal(command) => principal::run(&api()?, command).await,
        Command::Grant(command) => grant::run(&api()?, command).await,
        Command::Audit(command) => audit::run(&api()?, command).await,
        Command::Jobs(command) => jobs::run(&api()?, command).await,
        Command::Migrate => {
            Services::connect(&config).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Schema(command) => schema::run(&config, command).await,
        Command::Archive(command) => archive::run_archive(&config, command).await,
        Command::Retention(command) => archive::run_retention(&config, command).await,
        Command::Config(settings::ConfigCommand::Check) => settings::check(&config),
        Command::Config(settings::ConfigCommand::Keys(_)) => {
            unreachable!("answered before loading")
        }
        Command::Bench(command) => bench::run(&config, command, bench_export).await,
    };
    // After the command stopped (drained, on a signal): the spans of its last work go out.
    telemetry.shutdown().await;
    result
}
