//! `keel outbox`: each sink's backlog, and the parked events an operator retries or skips, by
//! event or by aggregate sequence, through keel's API (`/v1/outbox/...`). Retries and skips send
//! the API's own request (see [`super::bulk`]), so a command and the UI's button run the same
//! code.

use clap::{Args, Subcommand};
use serde::Deserialize;

use super::bulk::{self, FilterArgs, RunArgs, Wording, SELECTORS};
use super::client::{list, rows, Client, Need};
use crate::api::operator::bulk::Request;
use crate::api::operator::page::SequencesQuery;
use crate::relay::sink::SinkKind;

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Each sink's backlog, the age of its oldest row, and its parked and held rows (the sinks
    /// the server has enabled).
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
    /// The parked aggregate sequences, per sink: each aggregate's head (the oldest parked row:
    /// why it failed, how often, since when) and how many rows wait behind it.
    Sequences {
        /// Only this sink (`kafka` or `redis`).
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkKind>,
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
    /// Re-send parked sequences, in order, after fixing the cause: the sequence(s) a parked
    /// event heads, those a filter selects, or all.
    Retry {
        #[command(flatten)]
        target: Target,
        /// Why, for the audit log.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Give up on the heads of parked sequences: those events are never delivered to that sink,
    /// and the events held behind them flow again. `--whole` drops every row of each sequence.
    Skip {
        #[command(flatten)]
        target: Target,
        /// Why, for the audit log (required).
        #[arg(long)]
        reason: String,
        /// Drop every row of each sequence, not only its head.
        #[arg(long)]
        whole: bool,
    },
}

#[derive(Debug, Args)]
pub struct Target {
    /// A parked event's id (see `keel outbox sequences`): the sequence(s) it heads.
    #[arg(required_unless_present_any = SELECTORS, conflicts_with_all = SELECTORS)]
    pub id: Option<uuid::Uuid>,
    /// Only this sink (`kafka` or `redis`).
    #[arg(long, value_parser = parse_sink)]
    pub sink: Option<SinkKind>,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

impl Target {
    fn request(&self, reason: Option<&str>, whole: bool) -> Request {
        Request {
            event_id: self.id,
            sink: self.sink.map(|s| s.as_str().to_owned()),
            reason: reason.map(str::to_owned),
            whole,
            ..bulk::request(&self.filter, &self.run)
        }
    }
}

fn parse_sink(s: &str) -> Result<SinkKind, String> {
    SinkKind::parse(s).ok_or_else(|| format!("unknown sink {s:?}: use kafka or redis"))
}

/// A row of `GET /v1/outbox/status`, for the table.
#[derive(Debug, Deserialize)]
struct SinkStatus {
    sink: String,
    backlog: i64,
    oldest_age_seconds: f64,
    parked: i64,
    held: i64,
}

/// A sequence of `GET /v1/outbox/parked/sequences`, for the table.
#[derive(Debug, Deserialize)]
struct Sequence {
    sink: String,
    key: uuid::Uuid,
    aggregate_type: String,
    head: Head,
    held: i64,
    first_failed_at: String,
}

#[derive(Debug, Deserialize)]
struct Head {
    event_id: uuid::Uuid,
    state: String,
    reason_class: Option<String>,
    reason: Option<String>,
    attempts: i32,
}

/// A row of `GET /v1/outbox/parked`, for the table.
#[derive(Debug, Deserialize)]
struct Parked {
    event_id: uuid::Uuid,
    sink: String,
    state: String,
    aggregate_type: String,
    aggregate_id: uuid::Uuid,
    event_type: String,
    position: i64,
    attempts: i32,
    error: Option<String>,
}

pub async fn run(client: &Client, command: OutboxCommand) -> anyhow::Result<()> {
    match command {
        OutboxCommand::Status { json } => {
            let answer = client
                .get(
                    &["v1", "outbox", "status"],
                    &[],
                    Need::system("outbox.read"),
                )
                .await?;
            let sinks = list(&answer, "sinks")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&sinks)?);
                return Ok(());
            }
            println!(
                "{:<6} {:>10} {:>12} {:>8} {:>8}",
                "sink", "backlog", "oldest (s)", "parked", "held"
            );
            for s in rows::<SinkStatus>(&sinks)? {
                println!(
                    "{:<6} {:>10} {:>12.3} {:>8} {:>8}",
                    s.sink, s.backlog, s.oldest_age_seconds, s.parked, s.held
                );
            }
        }
        OutboxCommand::Parked { limit, json } => {
            let answer = client
                .get(
                    &["v1", "outbox", "parked"],
                    &[("limit", limit.to_string())],
                    Need::system("outbox.read"),
                )
                .await?;
            let parked = list(&answer, "parked")?;
            if json {
                for p in &parked {
                    println!("{}", serde_json::to_string(p)?);
                }
                return Ok(());
            }
            for p in rows::<Parked>(&parked)? {
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
        OutboxCommand::Sequences {
            sink,
            filter,
            limit,
            after,
            json,
        } => {
            let query = SequencesQuery {
                sink: sink.map(|s| s.as_str().to_owned()),
                ..bulk::query(&filter, limit, after)
            };
            let answer = client
                .get(
                    &["v1", "outbox", "parked", "sequences"],
                    &bulk::query_pairs(&query)?,
                    Need::system("outbox.read"),
                )
                .await?;
            let found = list(&answer, "sequences")?;
            if json {
                for s in &found {
                    println!("{}", serde_json::to_string(s)?);
                }
            } else {
                print_sequences(&rows(&found)?);
            }
            bulk::more(&answer);
        }
        OutboxCommand::Retry { target, reason } => {
            let wording = Wording {
                done: "released {n} parked row(s) for re-sending",
                released: "",
            };
            let request = target.request(reason.as_deref(), false);
            let need = Need::system("outbox.retry");
            let path = ["v1", "outbox", "retry"];
            bulk::send(client, &path, &request, need, target.run.json, &wording).await?;
        }
        OutboxCommand::Skip {
            target,
            reason,
            whole,
        } => {
            let wording = Wording {
                done: "skipped {n} parked row(s): they will not be delivered to that sink",
                released: "{n} held row(s) behind them flow again",
            };
            let request = target.request(Some(&reason), whole);
            let need = Need::system("outbox.skip");
            let path = ["v1", "outbox", "skip"];
            bulk::send(client, &path, &request, need, target.run.json, &wording).await?;
        }
    }
    Ok(())
}

fn print_sequences(sequences: &[Sequence]) {
    println!(
        "{:<6}  {:<50}  {:<36}  {:<7}  {:<20}  {:>8}  {:>6}  {:<25}  reason",
        "sink", "aggregate", "head event", "state", "class", "attempts", "held", "first failed"
    );
    for s in sequences {
        let aggregate = format!("{}/{}", s.aggregate_type, s.key);
        println!(
            "{:<6}  {aggregate:<50}  {:<36}  {:<7}  {:<20}  {:>8}  {:>6}  {:<25}  {}",
            s.sink,
            s.head.event_id,
            s.head.state,
            s.head.reason_class.as_deref().unwrap_or_default(),
            s.head.attempts,
            s.held,
            s.first_failed_at,
            s.head.reason.as_deref().unwrap_or_default()
        );
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::api::operator::bulk::Verb;
    use crate::api::operator::outbox::command_line;
    use crate::cli::{Cli, Command};

    fn parsed(line: &str) -> (Verb, Request) {
        let cli =
            Cli::try_parse_from(bulk::shell_words(line)).unwrap_or_else(|e| panic!("{line}: {e}"));
        match cli.command {
            Command::Outbox(OutboxCommand::Retry { target, reason }) => {
                (Verb::Retry, target.request(reason.as_deref(), false))
            }
            Command::Outbox(OutboxCommand::Skip {
                target,
                reason,
                whole,
            }) => (Verb::Skip, target.request(Some(&reason), whole)),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_the_api_gives_parses_back_into_the_same_request() {
        let requests = [
            (
                Verb::Retry,
                Request {
                    event_id: Some(uuid::Uuid::new_v4()),
                    sink: Some("kafka".into()),
                    ..Request::default()
                },
            ),
            (
                Verb::Skip,
                Request {
                    key: Some(uuid::Uuid::new_v4().to_string()),
                    reason_class: Some("message_too_large".into()),
                    reason: Some("too big for good".into()),
                    dry_run: true,
                    ..Request::default()
                },
            ),
            (
                Verb::Retry,
                Request {
                    all: true,
                    sink: Some("redis".into()),
                    confirm: Some(101),
                    ..Request::default()
                },
            ),
        ];
        for (verb, request) in requests {
            let line = command_line(verb, &request);
            assert_eq!(parsed(&line), (verb, request), "{line}");
        }
    }
}
