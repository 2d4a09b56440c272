//! `keel bench`: measurements against a raw baseline taken in the same run.

use clap::Subcommand;

use crate::config::Config;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Durable appends through the HTTP API next to the same inserts in raw SQL.
    Append,
}

pub async fn run(_config: &Config, _command: Command) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
