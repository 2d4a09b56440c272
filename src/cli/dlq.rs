//! `keel dlq`: list, inspect and redrive a consumer group's dead-letter rows, through keel's API
//! (`/v1/dlq/{group}/...`).

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{list, rows, Client, Need};

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
    /// One row in full, as JSON, with its payload as `value_base64`.
    Show {
        /// The group the row belongs to.
        #[arg(long)]
        group: String,
        id: i64,
    },
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
    /// The request body: exactly one of `id`, `key`, `all`.
    fn body(&self) -> Value {
        match (&self.id, &self.key) {
            (Some(id), _) => json!({"id": id}),
            (None, Some(key)) => json!({"key": key}),
            (None, None) => json!({"all": true}),
        }
    }
}

/// A row of `GET /v1/dlq/{group}`, for the table.
#[derive(Debug, Deserialize)]
struct Row {
    id: i64,
    state: String,
    topic: String,
    partition: i32,
    kafka_offset: i64,
    record_key: String,
    reason_class: String,
    reason: String,
}

pub async fn run(client: &Client, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List {
            group,
            key,
            closed,
            json,
        } => {
            let mut query = Vec::new();
            if let Some(key) = key {
                query.push(("key", key));
            }
            if closed {
                query.push(("closed", "true".to_owned()));
            }
            let answer = client
                .get(&["v1", "dlq", &group], &query, Need::on("dlq.read", &group))
                .await?;
            let found = list(&answer, "rows")?;
            if json {
                for row in &found {
                    println!("{}", serde_json::to_string(row)?);
                }
            } else {
                print_table(&rows(&found)?);
            }
        }
        DlqCommand::Show { group, id } => {
            let row = client
                .get(
                    &["v1", "dlq", &group, "rows", &id.to_string()],
                    &[],
                    Need::on("dlq.read", &group),
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&row)?);
        }
        DlqCommand::Retry(target) => {
            let answer = client
                .post(
                    &["v1", "dlq", &target.group, "retry"],
                    &target.body(),
                    Need::on("dlq.retry", &target.group),
                )
                .await?;
            let n = answer["marked"].as_u64().unwrap_or_default();
            println!("{n} row(s) marked for redelivery; the group's running consumer redelivers them in order");
        }
        DlqCommand::Skip(target) => {
            let answer = client
                .post(
                    &["v1", "dlq", &target.group, "skip"],
                    &target.body(),
                    Need::on("dlq.skip", &target.group),
                )
                .await?;
            let n = answer["skipped"].as_u64().unwrap_or_default();
            println!("{n} row(s) skipped");
        }
    }
    Ok(())
}

fn print_table(rows: &[Row]) {
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
