//! The command line (clap). Each subcommand is a thin call into library code.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::app::Application;
use crate::bench;
use crate::catalog::Catalog;
use crate::config::{Config, Overrides};
use crate::registry::{sync, Registry, VersionSpec};
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

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; overrides `KEEL_LISTEN`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The event catalog folder; overrides `KEEL_SCHEMAS_DIR`.
    #[arg(long)]
    pub schemas_dir: Option<PathBuf>,
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
