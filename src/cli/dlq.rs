//! `keel dlq`: list, inspect and redrive a consumer group's dead-letter rows.

use clap::{Args, Subcommand};

use crate::app::Services;
use crate::config::Config;
use crate::consumer::dlq::{self, DlqRow, Selection};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// A group's open rows (parked, held, waiting for redelivery), oldest first per partition.
    List {
        #[arg(long)]
        group: String,
        /// Only this record key (keel's keys are aggregate ids).
        #[arg(long)]
        key: Option<String>,
        /// Include delivered and skipped rows.
        #[arg(long)]
        closed: bool,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One row in full, as JSON, with its payload decoded where possible.
    Show { id: i64 },
    /// Redeliver parked rows and the rows held behind them, in order, through the group's running
    /// consumer (after fixing the cause).
    Retry(Target),
    /// Give up on rows. Skipping one parked row lets the rows held behind it be redelivered;
    /// `--key` and `--all` drop the whole chain.
    Skip(Target),
}

#[derive(Debug, Args)]
pub struct Target {
    #[arg(long)]
    pub group: String,
    /// A parked row's id (see `keel dlq list`).
    #[arg(required_unless_present_any = ["key", "all"], conflicts_with_all = ["key", "all"])]
    pub id: Option<i64>,
    /// Every row of this key.
    #[arg(long, conflicts_with = "all")]
    pub key: Option<String>,
    /// Every row of the group.
    #[arg(long)]
    pub all: bool,
}

impl Target {
    fn selection(&self) -> Selection {
        match (&self.id, &self.key) {
            (Some(id), _) => Selection::Id(*id),
            (None, Some(key)) => Selection::Key(key.clone()),
            (None, None) => Selection::All,
        }
    }
}

pub async fn run(config: &Config, command: DlqCommand) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let pool = services.pool();
    match command {
        DlqCommand::List {
            group,
            key,
            closed,
            json,
        } => {
            let rows = dlq::list(pool, &group, key.as_deref(), closed).await?;
            if json {
                for row in &rows {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                print_table(&rows);
            }
        }
        DlqCommand::Show { id } => {
            let row = dlq::show(pool, id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no dead-letter row {id}"))?;
            let mut value = serde_json::to_value(&row)?;
            value["value_base64"] = row
                .value
                .as_deref()
                .map(|v| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, v))
                .into();
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        DlqCommand::Retry(target) => {
            let n = dlq::retry(
                &mut *pool.acquire().await?,
                &target.group,
                &target.selection(),
            )
            .await?;
            println!("{n} row(s) marked for redelivery; the group's running consumer redelivers them in order");
        }
        DlqCommand::Skip(target) => {
            let n = dlq::skip(
                &mut *pool.acquire().await?,
                &target.group,
                &target.selection(),
            )
            .await?;
            println!("{n} row(s) skipped");
        }
    }
    Ok(())
}

fn print_table(rows: &[DlqRow]) {
    println!(
        "{:>8}  {:<9}  {:<24}  {:>9}  {:>10}  {:<36}  {:<17}  reason",
        "id", "state", "topic", "partition", "offset", "key", "class"
    );
    for r in rows {
        println!(
            "{:>8}  {:<9}  {:<24}  {:>9}  {:>10}  {:<36}  {:<17}  {}",
            r.id,
            r.state,
            r.topic,
            r.partition,
            r.kafka_offset,
            r.record_key,
            r.reason_class,
            r.reason
        );
    }
}
