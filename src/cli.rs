//! The command line (clap). Each subcommand is a thin call into library code.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::app::Application;
use crate::bench;
use crate::config::{Config, Overrides};
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
    /// Measure keel against a raw baseline on this machine.
    #[command(subcommand)]
    Bench(bench::Command),
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
    if let Command::Serve(args) = &cli.command {
        overrides.listen = args.listen;
        overrides.schemas_dir = args.schemas_dir.clone();
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
        Command::Bench(command) => bench::run(&config, command).await,
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
