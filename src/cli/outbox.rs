//! `keel outbox`: each sink's backlog, and the parked events an operator retries or skips,
//! through keel's API (`/v1/outbox/...`).

use clap::Subcommand;
use serde::Deserialize;
use serde_json::json;

use super::client::{list, rows, Client, Need};
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
    /// Re-send a parked event (by event id), or every parked event, after fixing the cause.
    Retry {
        /// The event id; see `keel outbox parked`.
        #[arg(required_unless_present = "all")]
        id: Option<uuid::Uuid>,
        #[arg(long, conflicts_with = "id")]
        all: bool,
        /// Only this sink (`kafka` or `redis`).
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkKind>,
    },
    /// Give up on a parked event: it is never delivered to that sink, and the events held behind
    /// it flow again.
    Skip {
        id: uuid::Uuid,
        /// Only this sink (`kafka` or `redis`).
        #[arg(long, value_parser = parse_sink)]
        sink: Option<SinkKind>,
    },
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
        OutboxCommand::Retry { id, all, sink } => {
            let mut body = match id {
                Some(id) => json!({"event_id": id}),
                None => json!({"all": all}),
            };
            if let Some(sink) = sink {
                body["sink"] = json!(sink.as_str());
            }
            let answer = client
                .post(
                    &["v1", "outbox", "retry"],
                    &body,
                    Need::system("outbox.retry"),
                )
                .await?;
            let n = answer["released"].as_u64().unwrap_or_default();
            println!("released {n} parked row(s) for re-sending");
        }
        OutboxCommand::Skip { id, sink } => {
            let mut body = json!({"event_id": id});
            if let Some(sink) = sink {
                body["sink"] = json!(sink.as_str());
            }
            let answer = client
                .post(
                    &["v1", "outbox", "skip"],
                    &body,
                    Need::system("outbox.skip"),
                )
                .await?;
            for p in list(&answer, "skipped")? {
                let (event, sink) = (&p["event_id"], &p["sink"]);
                let (event, sink) = (event.as_str().unwrap_or("?"), sink.as_str().unwrap_or("?"));
                tracing::warn!(
                    event_id = event,
                    sink,
                    "skipped a parked event: it will not be delivered to this sink"
                );
                println!("skipped {event} on {sink}");
            }
        }
    }
    Ok(())
}
