//! `keel replay`: history back from the event store, through keel's API: an aggregate's events
//! as JSON lines (`aggregate`), re-sent onto a Kafka topic (`republish`), or rebuilt into a
//! projection (`projection`). The last two run as jobs on the server; the command follows them
//! with a spinner and prints their report.

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::client::{Client, Need};
use super::progress;
use crate::model::{AggregateType, EventType};
use crate::projection::rebuild::Until;
use crate::replay::AsOf;
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
    /// and resumable (`--after` the cursor of the report).
    ///
    /// The job runs on the server. Ctrl-C only stops following it: the job continues to its end,
    /// and `keel jobs show ID` shows how it stands (`keel jobs cancel ID` stops it).
    Republish(RepublishArgs),
    /// Rebuild a projection from the event store into a shadow schema and swap it in, while live
    /// traffic continues.
    ///
    /// The job runs on the server. Ctrl-C only stops following it: the job continues to its end,
    /// and `keel jobs show ID` shows how it stands (`keel jobs cancel ID` stops it). A rebuild
    /// cut short (cancelled, or the server stopped) resumes when run again.
    Projection(RebuildArgs),
    /// Re-run a saga's current definition over every instance's recorded inputs and compare
    /// what it decides with what was recorded; writes nothing. Exits 1 naming the first
    /// diverging step of each instance that differs: the check before deploying a change.
    Saga {
        name: String,
        /// Required: the check is the only mode (`--check` says what it does at the call site).
        #[arg(long, required = true)]
        check: bool,
        /// Only this instance.
        #[arg(long)]
        instance: Option<uuid::Uuid>,
        #[arg(long)]
        json: bool,
    },
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
    /// Print the job's report as JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
    /// Only say how many events it would send, and start nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The projection, for example `agent_status`.
    pub name: String,
    /// Build a point-in-time view of the events at or before this position or RFC 3339 time,
    /// into `keel_proj_<name>_until`, beside the live one.
    #[arg(long, conflicts_with = "aggregate", value_parser = parse_until)]
    pub until: Option<String>,
    /// Rebuild only this aggregate, in place.
    #[arg(long)]
    pub aggregate: Option<uuid::Uuid>,
    /// Start over instead of resuming an interrupted rebuild.
    #[arg(long)]
    pub restart: bool,
    /// Events per transaction.
    #[arg(long, default_value_t = 10_000)]
    pub page: i64,
    /// Only print what it would read (as JSON), and start nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(client: &Client, command: ReplayCommand) -> anyhow::Result<()> {
    match command {
        ReplayCommand::Aggregate {
            aggregate_type,
            aggregate_id,
            as_of,
        } => aggregate(client, aggregate_type, aggregate_id, as_of).await,
        ReplayCommand::Republish(args) => republish(client, args).await,
        ReplayCommand::Projection(args) => rebuild(client, args).await,
        ReplayCommand::Saga { .. } => unreachable!("checked in the database: see check_saga"),
    }
}

/// `keel replay saga NAME --check`: in this process, on the database, with this binary's
/// definition of the saga (the one about to be deployed).
pub async fn check_saga(
    config: &crate::config::Config,
    name: &str,
    instance: Option<uuid::Uuid>,
    json: bool,
) -> anyhow::Result<()> {
    let saga = crate::app::Sagas::builtin(config).find(name)?;
    let services = crate::app::Services::connect(config).await?;
    let report =
        crate::saga::check::check(services.pool(), &services.registry, saga.as_ref(), instance)
            .await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {} instances, {} steps re-decided, {} not checked (inputs purged), {} diverge",
            report.saga,
            report.instances,
            report.steps,
            report.unchecked,
            report.divergences.len()
        );
        for d in &report.divergences {
            println!(
                "  instance {} step v{} ({}): {}",
                d.instance_id, d.version, d.input, d.what
            );
        }
    }
    if !report.divergences.is_empty() {
        anyhow::bail!(
            "{} instances of {name} would decide differently under this definition",
            report.divergences.len()
        );
    }
    Ok(())
}

/// Pages through `GET /v1/aggregates/{type}/{id}/events` (each event resolved to the latest
/// schema of its type), up to `as_of`.
async fn aggregate(
    client: &Client,
    aggregate_type: String,
    aggregate_id: uuid::Uuid,
    as_of: Option<AsOf>,
) -> anyhow::Result<()> {
    let aggregate_type = AggregateType::parse(aggregate_type)?;
    let id = aggregate_id.to_string();
    let path = ["v1", "aggregates", aggregate_type.as_str(), &id, "events"];
    let need = Need::on("event.read", aggregate_type.as_str());
    let mut from_version = 1;
    let mut printed = 0;
    'pages: loop {
        let query = [
            ("from_version", from_version.to_string()),
            ("schema_version", "latest".to_owned()),
        ];
        let page = match client.get(&path, &query, need).await {
            Ok(page) => page,
            Err(e) if e.code() == Some("aggregate_not_found") => break,
            Err(e) => return Err(e.into()),
        };
        for event in super::client::list(&page, "events")? {
            if as_of.is_some_and(|a| !includes(a, &event)) {
                break 'pages;
            }
            println!("{}", serde_json::to_string(&event)?);
            printed += 1;
        }
        match page["next_version"].as_i64() {
            Some(next) if next > from_version => from_version = next,
            _ => break,
        }
    }
    if printed == 0 {
        bail!(
            "aggregate {aggregate_type}/{aggregate_id} has no events{}",
            if as_of.is_some() { " as of then" } else { "" }
        );
    }
    Ok(())
}

/// Whether `event` (as the API shows it) is at or before `as_of`.
fn includes(as_of: AsOf, event: &Value) -> bool {
    match as_of {
        AsOf::Version(v) => event["version"].as_i64().is_some_and(|e| e <= i64::from(v)),
        AsOf::Time(t) => event["created_at"]
            .as_str()
            .and_then(|c| DateTime::parse_from_rfc3339(c).ok())
            .is_some_and(|c| c <= t),
    }
}

async fn republish(client: &Client, args: RepublishArgs) -> anyhow::Result<()> {
    // Checked here too, so that a typo fails before any request.
    if args.rate == 0 {
        bail!("--rate must be positive");
    }
    if let Some(token) = &args.after {
        LogCursor::decode(token).context("--after is not a cursor keel printed")?;
    }
    for t in &args.event_type {
        EventType::parse(t.as_str()).map_err(|e| anyhow::anyhow!("--event-type: {e}"))?;
    }
    let mut body = json!({"topic": args.topic, "rate": args.rate});
    if !args.event_type.is_empty() {
        body["event_types"] = json!(args.event_type);
    }
    if let Some(from) = args.from {
        body["from"] = json!(from);
    }
    if let Some(to) = args.to {
        body["to"] = json!(to);
    }
    if let Some(after) = &args.after {
        body["after"] = json!(after);
    }
    let need = Need::on("replay.run", &args.topic);
    if args.dry_run {
        body["dry_run"] = json!(true);
        let preview = client
            .post(&["v1", "replay", "republish"], &body, need)
            .await?;
        if args.json {
            println!("{}", serde_json::to_string(&preview)?);
        } else {
            println!("{}", preview_sentence(&preview));
        }
        return Ok(());
    }
    let job = client
        .job(&["v1", "replay", "republish"], &body, need)
        .await?;
    let report = progress::follow(
        job,
        &format!("republishing to {}", args.topic),
        "replay.run",
    )
    .await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        let sent = report["sent"].as_u64().unwrap_or_default();
        let cursor = report["cursor"].as_str().unwrap_or_default();
        if report["interrupted"] == true {
            println!("interrupted after {sent} events; resume with --after {cursor}");
        } else {
            println!("republished {sent} events to {}", args.topic);
            println!("to send only later events, run again with --after {cursor}");
        }
    }
    Ok(())
}

async fn rebuild(client: &Client, args: RebuildArgs) -> anyhow::Result<()> {
    let mut body = json!({"restart": args.restart, "page": args.page});
    if let Some(until) = &args.until {
        body["until"] = json!(until);
    }
    if let Some(aggregate) = args.aggregate {
        body["aggregate"] = json!(aggregate);
    }
    let path = ["v1", "projections", &args.name, "rebuild"];
    let need = Need::on("projection.rebuild", &args.name);
    if args.dry_run {
        body["dry_run"] = json!(true);
        let preview = client.post(&path, &body, need).await?;
        println!("{}", serde_json::to_string(&preview)?);
        return Ok(());
    }
    let job = client.job(&path, &body, need).await?;
    let report = progress::follow(
        job,
        &format!("rebuilding {}", args.name),
        "projection.rebuild",
    )
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// A republish preview in words: "N events of types X, Y between T1 and T2 to topic T".
fn preview_sentence(preview: &Value) -> String {
    let types: Vec<&str> = preview["event_types"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let types = match types.as_slice() {
        [] => "every type".to_owned(),
        types => format!("types {}", types.join(", ")),
    };
    let mut when = String::new();
    if let Some(from) = preview["from"].as_str() {
        when.push_str(&format!(" from {from}"));
    }
    if let Some(to) = preview["to"].as_str() {
        when.push_str(&format!(" before {to}"));
    }
    if let Some(after) = preview["after"].as_str() {
        when.push_str(&format!(" after cursor {after}"));
    }
    format!(
        "would republish {} events of {types}{when} to topic {}",
        preview["events"],
        preview["target"].as_str().unwrap_or("?")
    )
}

/// `--until` as typed, once it parses: a position or an RFC 3339 time.
fn parse_until(text: &str) -> Result<String, String> {
    text.parse::<Until>().map(|_| text.to_owned())
}
