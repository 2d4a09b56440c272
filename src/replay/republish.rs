//! `keel replay republish`: re-send stored events to a Kafka topic, for example to seed a new
//! consumer group or to recover a lost topic.
//!
//! Events are read in the log's gap-safe order (which is version order for every aggregate) and
//! sent a page at a time through the relay's Kafka sink: same key, value and headers as the
//! relay's, so consumers deduplicate on `keel-event-id` as usual. A page is sent only after the
//! previous one was acknowledged, so each aggregate's events arrive in order. The rate is capped;
//! Ctrl-C stops after the page in flight and prints the cursor to resume from with `--after`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::Args;

use super::progress::Progress;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::model::EventType;
use crate::registry::Registry;
use crate::relay::kafka::KafkaSink;
use crate::relay::sink::Outcome;
use crate::store::log::{count_committed_after, read_committed_after, LogCursor, LogFilter};
use crate::store::Store;

#[derive(Debug, Clone, Args)]
pub struct RepublishArgs {
    /// The topic to send to.
    #[arg(long)]
    pub topic: String,
    /// Only events of this type; repeat for several.
    #[arg(long)]
    pub event_type: Vec<String>,
    /// Only events created at or after this RFC 3339 time.
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// Only events created before this RFC 3339 time.
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
    /// Resume after this log cursor (printed by an interrupted run).
    #[arg(long)]
    pub after: Option<String>,
    /// Most events per second.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u64,
}

const PAGE: i64 = 500;

pub async fn run(config: &Config, args: RepublishArgs) -> anyhow::Result<()> {
    if args.rate == 0 {
        bail!("--rate must be positive");
    }
    let mut cursor = match &args.after {
        Some(token) => LogCursor::decode(token).context("--after is not a cursor keel printed")?,
        None => LogCursor::START,
    };
    let types = args
        .event_type
        .iter()
        .map(|t| EventType::parse(t.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--event-type: {e}"))?;
    let store = Store::connect(&config.database()).await?;
    let registry = Arc::new(Registry::new(store.pool().clone()));
    let catalog = Arc::new(Catalog::load(&config.schemas_dir)?);
    let sink = KafkaSink::new(
        &config.kafka_brokers,
        config.relay.kafka.clone(),
        catalog,
        registry,
    )
    .context("cannot configure the kafka producer")?
    .to_topic(&args.topic);
    let filter = LogFilter {
        event_types: types,
        from: args.from,
        to: args.to,
        ..Default::default()
    };
    let total = count_committed_after(store.pool(), cursor, &filter).await?;
    let progress = Progress::new(
        &format!("republishing to {}", args.topic),
        Some(total as u64),
    );
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let page = read_committed_after(store.pool(), cursor, &filter, PAGE, 0).await?;
        let Some(last) = page.last().map(|e| e.cursor()) else {
            break;
        };
        let events: Vec<_> = page.iter().map(|e| &e.event).collect();
        let outcomes = sink.publish(&events).await;
        if let Some((event, outcome)) = events
            .iter()
            .zip(&outcomes)
            .find(|(_, o)| **o != Outcome::Delivered)
        {
            bail!(
                "event {} was not delivered ({outcome:?}); resume with --after {}",
                event.id,
                cursor.encode()
            );
        }
        sent += events.len() as u64;
        progress.advance(events.len() as u64);
        cursor = last;
        let due = Duration::from_secs_f64(sent as f64 / args.rate as f64);
        let elapsed = started.elapsed();
        tokio::select! {
            _ = tokio::time::sleep(due.saturating_sub(elapsed)) => {}
            _ = &mut interrupted => {
                progress.finish(&format!("interrupted; resume with --after {}", cursor.encode()));
                println!("interrupted after {sent} events; resume with --after {}", cursor.encode());
                return Ok(());
            }
        }
    }
    sink.flush(Duration::from_secs(5)).await;
    progress.finish("done");
    println!("republished {sent} events to {}", args.topic);
    Ok(())
}
