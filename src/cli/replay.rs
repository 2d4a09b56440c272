//! `keel replay`: history back from the event store, as JSON lines (`aggregate`), onto a Kafka
//! topic (`republish`), or into a rebuilt projection (`projection`).

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::app::{self, Projections, Services};
use crate::config::Config;
use crate::model::{AggregateType, EventType};
use crate::projection::rebuild::{rebuild, RebuildOptions, Until};
use crate::relay::kafka::KafkaSink;
use crate::replay::republish::{republish, RepublishOptions};
use crate::replay::{self, AsOf};
use crate::shutdown;
use crate::store::LogCursor;

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Print an aggregate's events as JSON lines, in version order, resolved to the latest schema
    /// of their types.
    Aggregate {
        aggregate_type: String,
        aggregate_id: uuid::Uuid,
        /// Stop at this version, or at this RFC 3339 time (events created at or before it).
        #[arg(long)]
        as_of: Option<AsOf>,
    },
    /// Re-send stored events to a Kafka topic in log order (per-aggregate order kept), rate-limited
    /// and resumable.
    Republish(RepublishArgs),
    /// Rebuild a projection from the event store into a shadow schema and swap it in, while live
    /// traffic continues. Ctrl-C stops safely; running it again resumes.
    Projection(RebuildArgs),
}

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

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection, for example `agent_status`.
    pub name: String,
    /// Build a point-in-time view of the events at or before this position or RFC 3339 time,
    /// into `keel_proj_<name>_until`, beside the live one.
    #[arg(long, conflicts_with = "aggregate")]
    pub until: Option<Until>,
    /// Rebuild only this aggregate, in place.
    #[arg(long)]
    pub aggregate: Option<uuid::Uuid>,
    /// Start over instead of resuming an interrupted rebuild.
    #[arg(long)]
    pub restart: bool,
    /// Events per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub page: i64,
}

pub async fn run(config: &Config, command: ReplayCommand) -> anyhow::Result<()> {
    match command {
        ReplayCommand::Aggregate {
            aggregate_type,
            aggregate_id,
            as_of,
        } => aggregate(config, aggregate_type, aggregate_id, as_of).await,
        ReplayCommand::Republish(args) => republish_command(config, args).await,
        ReplayCommand::Projection(args) => rebuild_command(config, args).await,
    }
}

async fn aggregate(
    config: &Config,
    aggregate_type: String,
    aggregate_id: uuid::Uuid,
    as_of: Option<AsOf>,
) -> anyhow::Result<()> {
    let aggregate_type = AggregateType::parse(aggregate_type)?;
    let services = Services::connect(config).await?;
    let events = replay::history(
        &services.store,
        &services.registry,
        &aggregate_type,
        aggregate_id,
        as_of,
    )
    .await?;
    if events.is_empty() {
        bail!(
            "aggregate {aggregate_type}/{aggregate_id} has no events{}",
            if as_of.is_some() { " as of then" } else { "" }
        );
    }
    for event in events {
        println!("{}", serde_json::to_string(&event)?);
    }
    Ok(())
}

async fn republish_command(config: &Config, args: RepublishArgs) -> anyhow::Result<()> {
    if args.rate == 0 {
        bail!("--rate must be positive");
    }
    let after = match &args.after {
        Some(token) => LogCursor::decode(token).context("--after is not a cursor keel printed")?,
        None => LogCursor::START,
    };
    let event_types = args
        .event_type
        .iter()
        .map(|t| EventType::parse(t.as_str()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("--event-type: {e}"))?;
    let options = RepublishOptions {
        event_types,
        from: args.from,
        to: args.to,
        after,
        rate: args.rate,
    };
    let services = Services::connect(config).await?;
    let catalog = app::catalog(config)?;
    let sink = KafkaSink::new(
        &config.kafka_brokers,
        config.relay.kafka.clone(),
        catalog,
        services.registry.clone(),
    )
    .context("cannot configure the kafka producer")?
    .to_topic(&args.topic);
    let done = republish(
        services.pool(),
        &sink,
        &options,
        &format!("republishing to {}", args.topic),
        &shutdown::on_signals(),
    )
    .await?;
    if done.interrupted {
        println!(
            "interrupted after {} events; resume with --after {}",
            done.sent,
            done.cursor.encode()
        );
    } else {
        println!("republished {} events to {}", done.sent, args.topic);
    }
    Ok(())
}

async fn rebuild_command(config: &Config, args: RebuildArgs) -> anyhow::Result<()> {
    let projection = Projections::builtin().find(&args.name)?;
    let services = Services::connect(config).await?;
    let options = RebuildOptions {
        until: args.until,
        aggregate: args.aggregate,
        restart: args.restart,
        page: args.page,
    };
    let report = rebuild(
        services.pool(),
        &services.registry,
        projection.as_ref(),
        &options,
        shutdown::on_signals().wait(),
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
