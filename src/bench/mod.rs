//! `keel bench`: measurements that print keel's figures next to a raw baseline taken in the same
//! run on the same machine, because these machines are too noisy for absolute numbers to travel.

mod append;
mod stats;

use clap::{Args, Subcommand};

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Durable appends through the HTTP API next to the same transaction in raw SQL (sqlx).
    Append(AppendArgs),
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
}

pub async fn run(config: &Config, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Append(args) => append::run(config, args).await,
    }
}
