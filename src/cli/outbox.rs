//! `keel outbox`: each sink's backlog, and the parked events an operator retries or skips.

use anyhow::bail;
use clap::Subcommand;

use crate::app::Services;
use crate::config::Config;
use crate::relay::{self, admin, sink::SinkKind};

#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Each sink's backlog, the age of its oldest row, and its parked and held rows.
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

pub async fn run(config: &Config, command: OutboxCommand) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let pool = services.pool();
    match command {
        OutboxCommand::Status { json } => {
            let enabled = |sink: &str| match SinkKind::parse(sink) {
                Some(SinkKind::Kafka) => config.relay.kafka.enabled,
                Some(SinkKind::Redis) => config.relay.redis.enabled,
                None => false,
            };
            let status: Vec<_> = admin::status(pool, &relay::all_partitions())
                .await?
                .into_iter()
                .filter(|s| enabled(&s.sink))
                .collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(());
            }
            println!(
                "{:<6} {:>10} {:>12} {:>8} {:>8}",
                "sink", "backlog", "oldest (s)", "parked", "held"
            );
            for s in status {
                println!(
                    "{:<6} {:>10} {:>12.3} {:>8} {:>8}",
                    s.sink, s.backlog, s.oldest_age_seconds, s.parked, s.held
                );
            }
        }
        OutboxCommand::Parked { limit, json } => {
            for p in admin::parked(pool, limit).await? {
                if json {
                    println!("{}", serde_json::to_string(&p)?);
                } else {
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
        }
        OutboxCommand::Retry { id, all, sink } => {
            let which = match (id, all) {
                (Some(id), false) => admin::Selection::Event(id, sink),
                (None, true) => admin::Selection::All(sink),
                _ => bail!("name an event id, or pass --all"),
            };
            let n = admin::retry(&mut *pool.acquire().await?, which).await?;
            if n == 0 && matches!(which, admin::Selection::Event(..)) {
                bail!("no parked event matches");
            }
            println!("released {n} parked row(s) for re-sending");
        }
        OutboxCommand::Skip { id, sink } => {
            let skipped = admin::skip(
                &mut *pool.acquire().await?,
                admin::Selection::Event(id, sink),
            )
            .await?;
            if skipped.is_empty() {
                bail!("no parked event matches");
            }
            for p in skipped {
                tracing::warn!(event_id = %p.event_id, sink = %p.sink, "skipped a parked event: it will not be delivered to this sink");
                println!("skipped {} on {}", p.event_id, p.sink);
            }
        }
    }
    Ok(())
}
