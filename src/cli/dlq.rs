//! `keel dlq`: list, inspect and redrive consumer groups' dead-letter rows, by row or by key
//! sequence, through keel's API (`/v1/dlq/...`). Retries and skips send the API's own request
//! (see [`super::bulk`]), so a command and the UI's button run the same code.

use clap::{Args, Subcommand};
use serde::Deserialize;
use serde_json::Value;

use super::bulk::{self, FilterArgs, RunArgs, Wording, SELECTORS};
use super::client::{list, rows, Client, Need};
use crate::api::operator::bulk::Request;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Every group with open dead letters: how many rows, and how old the oldest is.
    Groups {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
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
    /// A group's key sequences, in key order: each key's head (the oldest open row: why it
    /// failed, how often, since when) and how many rows wait behind it.
    Sequences {
        #[arg(long)]
        group: String,
        #[command(flatten)]
        filter: FilterArgs,
        /// The most sequences to list (the server's page size by default).
        #[arg(long)]
        limit: Option<i64>,
        /// Continue after an earlier page (its `more:` token).
        #[arg(long)]
        after: Option<String>,
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
    /// Redeliver key sequences, in order, through the group's running consumer (after fixing
    /// the cause): the sequence a parked row heads, those a filter selects, or all.
    Retry {
        #[command(flatten)]
        target: Target,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Give up on the heads of key sequences: the rows held behind each are then redelivered,
    /// in order. `--whole` drops every row of each sequence instead.
    Skip {
        #[command(flatten)]
        target: Target,
        /// Why, for the audit log (required).
        #[arg(long)]
        reason: String,
        /// Drop every open row of each sequence, not only its head.
        #[arg(long)]
        whole: bool,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    #[arg(long)]
    pub group: String,
    /// A parked row's id (see `keel dlq sequences`): the sequence it heads.
    #[arg(required_unless_present_any = SELECTORS, conflicts_with_all = SELECTORS)]
    pub id: Option<i64>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

impl Target {
    fn request(&self, reason: Option<&str>, whole: bool) -> Request {
        Request {
            id: self.id,
            reason: reason.map(str::to_owned),
            whole,
            ..bulk::request(&self.filter, &self.run)
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

/// A sequence of `GET /v1/dlq/{group}/sequences`, for the table.
#[derive(Debug, Deserialize)]
struct Sequence {
    key: String,
    topic: String,
    partition: i32,
    head: Head,
    held: i64,
    first_failed_at: String,
}

#[derive(Debug, Deserialize)]
struct Head {
    id: i64,
    state: String,
    reason_class: String,
    reason: String,
    attempts: i32,
}

/// A group of `GET /v1/dlq`, for the table.
#[derive(Debug, Deserialize)]
struct Group {
    group: String,
    depth: i64,
    depth_capped: bool,
    oldest_age_seconds: f64,
}

pub async fn run(client: &Client, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::Groups { json } => {
            let answer = client
                .get(&["v1", "dlq"], &[], Need::on("dlq.read", "*"))
                .await?;
            let found = list(&answer, "groups")?;
            if json {
                print_lines(&found)?;
            } else {
                println!("{:<32}  {:>8}  {:>12}", "group", "depth", "oldest (s)");
                for g in rows::<Group>(&found)? {
                    let plus = if g.depth_capped { "+" } else { "" };
                    let depth = format!("{}{plus}", g.depth);
                    println!(
                        "{:<32}  {depth:>8}  {:>12.1}",
                        g.group, g.oldest_age_seconds
                    );
                }
            }
            bulk::more(&answer);
        }
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
                print_lines(&found)?;
            } else {
                print_rows(&rows(&found)?);
            }
        }
        DlqCommand::Sequences {
            group,
            filter,
            limit,
            after,
            json,
        } => {
            let query = bulk::query_pairs(&bulk::query(&filter, limit, after))?;
            let answer = client
                .get(
                    &["v1", "dlq", &group, "sequences"],
                    &query,
                    Need::on("dlq.read", &group),
                )
                .await?;
            let found = list(&answer, "sequences")?;
            if json {
                print_lines(&found)?;
            } else {
                print_sequences(&rows(&found)?);
            }
            bulk::more(&answer);
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
        DlqCommand::Retry { target, reason } => {
            let wording = Wording {
                done: "{n} row(s) marked for redelivery; the group's running consumer \
                       redelivers them in order",
                released: "",
            };
            let request = target.request(reason.as_deref(), false);
            let need = Need::on("dlq.retry", &target.group);
            let path = ["v1", "dlq", &target.group, "retry"];
            bulk::send(client, &path, &request, need, target.run.json, &wording).await?;
        }
        DlqCommand::Skip {
            target,
            reason,
            whole,
        } => {
            let wording = Wording {
                done: "{n} row(s) skipped",
                released: "{n} held row(s) behind them are redelivered in order",
            };
            let request = target.request(Some(&reason), whole);
            let need = Need::on("dlq.skip", &target.group);
            let path = ["v1", "dlq", &target.group, "skip"];
            bulk::send(client, &path, &request, need, target.run.json, &wording).await?;
        }
    }
    Ok(())
}

fn print_lines(values: &[Value]) -> anyhow::Result<()> {
    for v in values {
        println!("{}", serde_json::to_string(v)?);
    }
    Ok(())
}

fn print_rows(rows: &[Row]) {
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

fn print_sequences(sequences: &[Sequence]) {
    println!(
        "{:<36}  {:<24}  {:>8}  {:<7}  {:<17}  {:>8}  {:>6}  {:<25}  reason",
        "key", "topic/partition", "head", "state", "class", "attempts", "held", "first failed"
    );
    for s in sequences {
        let at = format!("{}/{}", s.topic, s.partition);
        println!(
            "{:<36}  {at:<24}  {:>8}  {:<7}  {:<17}  {:>8}  {:>6}  {:<25}  {}",
            s.key,
            s.head.id,
            s.head.state,
            s.head.reason_class,
            s.head.attempts,
            s.held,
            s.first_failed_at,
            s.head.reason
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::api::operator::bulk::Verb;
    use crate::api::operator::dlq::command_line;
    use crate::cli::{Cli, Command};
    use crate::model::Age;

    /// The request the command line parses into.
    fn parsed(line: &str) -> (Verb, String, Request) {
        let cli =
            Cli::try_parse_from(bulk::shell_words(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        match cli.command {
            Command::Dlq(DlqCommand::Retry { target, reason }) => (
                Verb::Retry,
                target.group.clone(),
                target.request(reason.as_deref(), false),
            ),
            Command::Dlq(DlqCommand::Skip {
                target,
                reason,
                whole,
            }) => (
                Verb::Skip,
                target.group.clone(),
                target.request(Some(&reason), whole),
            ),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_the_api_gives_parses_back_into_the_same_request() {
        let requests = [
            (
                Verb::Retry,
                Request {
                    id: Some(42),
                    ..Request::default()
                },
            ),
            (
                Verb::Retry,
                Request {
                    key: Some("a key with 'quotes'".into()),
                    reason_class: Some("permanent".into()),
                    event_type: Some("agent.state.changed".into()),
                    older_than: Some(Age::parse("2h").unwrap()),
                    max_count: Some(500),
                    confirm: Some(150),
                    reason: Some("fixed the handler".into()),
                    ..Request::default()
                },
            ),
            (
                Verb::Skip,
                Request {
                    all: true,
                    dry_run: true,
                    whole: true,
                    reason: Some("bad data; see INC-42".into()),
                    ..Request::default()
                },
            ),
        ];
        for (verb, request) in requests {
            let line = command_line("billing team", verb, &request);
            assert_eq!(
                parsed(&line),
                (verb, "billing team".to_owned(), request),
                "{line}"
            );
        }
    }

    #[test]
    fn a_skip_needs_a_reason_and_a_retry_a_selection() {
        let refused = |line: &str| Cli::try_parse_from(line.split(' ')).is_err();
        assert!(refused("keel dlq skip --group g 5"));
        assert!(refused("keel dlq retry --group g"));
        assert!(refused("keel dlq retry --group g 5 --key k"));
        assert!(refused("keel dlq retry --group g --all --key k"));
        assert!(!refused(
            "keel dlq retry --group g --key k --reason-class permanent"
        ));
    }
}
