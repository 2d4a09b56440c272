//! `keel saga`: run sagas (`run`, a pipeline process on the database and Kafka, with health and
//! metrics on `sagas.listen`), and inspect and redrive their instances through keel's API
//! (`list`, `show`, `retry`, `skip`), so that each redrive is authorised and audited.

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::client::{list, rows, Client, Need};
use crate::app::{self, Sagas, Services};
use crate::config::Config;
use crate::{api, health, heartbeat, metrics, shutdown};

#[derive(Debug, Subcommand)]
pub enum SagaCommand {
    /// Run sagas from Kafka, with their timeouts, until Ctrl-C or SIGTERM: the named ones, or
    /// every configured one (`sagas.run`), or all keel knows.
    Run { names: Vec<String> },
    /// A saga's instances, most recently changed first.
    List {
        name: String,
        /// active, compensating, parked, completed, compensated or failed.
        #[arg(long)]
        status: Option<String>,
        /// Only the instance with this correlation key.
        #[arg(long)]
        correlation: Option<String>,
        /// Only instances stuck for at least AGE (`30s`, `5m`, `1h`): parked, or waiting with
        /// no pending timeout or an overdue one.
        #[arg(long, value_name = "AGE")]
        stuck: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One instance: state, pending timeouts, held inputs and its step history.
    Show {
        name: String,
        #[arg(
            required_unless_present = "correlation",
            conflicts_with = "correlation"
        )]
        id: Option<String>,
        #[arg(long)]
        correlation: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Redrive parked instances (after fixing the cause): their held inputs are stepped in the
    /// order they arrived, by the running saga runner.
    Retry {
        name: String,
        #[arg(required_unless_present_any = ["correlation", "all"], conflicts_with_all = ["correlation", "all"])]
        id: Option<String>,
        #[arg(long, conflicts_with = "all")]
        correlation: Option<String>,
        #[arg(long)]
        all: bool,
    },
    /// Drop the input a parked instance failed on (or `--input`, an inbox id from `show`) and
    /// redrive the rest.
    Skip {
        name: String,
        id: String,
        #[arg(long)]
        input: Option<i64>,
    },
}

/// `keel saga run`: before connecting, names are checked, so that a misspelt one fails at once.
pub async fn run_sagas(config: &Config, names: &[String]) -> anyhow::Result<()> {
    let sagas = Sagas::builtin(config);
    let selected = sagas.selected(config, names)?;
    let addr = config.sagas.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (sagas.listen)"))?;
    let services = Services::connect(config).await?;
    let catalog = app::catalog(config)?;
    let stop = shutdown::on_signals();
    tracing::info!(addr = %listener.local_addr()?, "sagas health on /v1/health/*, metrics on /metrics");
    let stages = heartbeat::Stages::expecting(selected.len());
    let status = api::StatusState {
        metrics: metrics::install(),
        pool: services.pool().clone(),
        monitor: health::Monitor::start(config, services.pool().clone(), stop.clone()),
        stages: stages.clone(),
        stall_after: config.observability.stall_after(),
        canary: false,
    };
    let status = tokio::spawn(api::server::serve(
        listener,
        api::status_router(status),
        api::server::Limits::from(&config.api),
        stop.clone(),
    ));
    let result = app::run_sagas(
        config,
        &services,
        catalog,
        selected,
        Some(stages),
        stop.clone(),
    )
    .await;
    stop.trigger();
    status.await.context("the sagas' status server panicked")?;
    result
}

#[derive(Debug, Deserialize)]
struct Row {
    instance_id: String,
    correlation: String,
    status: String,
    steps: i32,
    updated_at: String,
    next_timeout_at: Option<String>,
    held_inputs: i64,
    error: Option<String>,
}

pub async fn run(client: &Client, command: SagaCommand) -> anyhow::Result<()> {
    match command {
        SagaCommand::Run { .. } => unreachable!("run is not an API command"),
        SagaCommand::List {
            name,
            status,
            correlation,
            stuck,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(status.map(|s| ("status", s)));
            query.extend(correlation.map(|c| ("correlation", c)));
            query.extend(stuck.map(|s| ("stuck_for", s)));
            let found = list(
                &client
                    .get(
                        &["v1", "sagas", &name, "instances"],
                        &query,
                        Need::on("saga.read", &name),
                    )
                    .await?,
                "instances",
            )?;
            if json {
                for i in &found {
                    println!("{}", serde_json::to_string(i)?);
                }
                return Ok(());
            }
            println!(
                "{:<36}  {:<24}  {:<12}  {:>5}  {:>4}  {:<27}  {:<27}  error",
                "instance", "correlation", "status", "steps", "held", "next timeout", "updated"
            );
            for r in rows::<Row>(&found)? {
                println!(
                    "{:<36}  {:<24}  {:<12}  {:>5}  {:>4}  {:<27}  {:<27}  {}",
                    r.instance_id,
                    r.correlation,
                    r.status,
                    r.steps,
                    r.held_inputs,
                    r.next_timeout_at.unwrap_or_default(),
                    r.updated_at,
                    r.error.unwrap_or_default()
                );
            }
        }
        SagaCommand::Show {
            name,
            id,
            correlation,
            json,
        } => {
            let need = Need::on("saga.read", &name);
            let id = match (id, correlation) {
                (Some(id), _) => id,
                (None, Some(key)) => {
                    let found = list(
                        &client
                            .get(
                                &["v1", "sagas", &name, "instances"],
                                &[("correlation", key.clone())],
                                need,
                            )
                            .await?,
                        "instances",
                    )?;
                    found
                        .first()
                        .and_then(|i| i["instance_id"].as_str())
                        .map(str::to_owned)
                        .with_context(|| {
                            format!("saga {name} has no instance with correlation key {key:?}")
                        })?
                }
                (None, None) => unreachable!("clap requires one"),
            };
            let detail = client
                .get(&["v1", "sagas", &name, "instances", &id], &[], need)
                .await?;
            if json {
                println!("{}", serde_json::to_string(&detail)?);
            } else {
                print_detail(&detail);
            }
        }
        SagaCommand::Retry {
            name,
            id,
            correlation,
            all,
        } => {
            let body = json!({"instance_id": id, "correlation": correlation, "all": all});
            let done = client
                .post(
                    &["v1", "sagas", &name, "retry"],
                    &body,
                    Need::on("saga.redrive", &name),
                )
                .await?;
            println!(
                "asked the {name} runners to redrive {} parked instance(s); follow with `keel saga list {name} --status parked`",
                done["count"]
            );
        }
        SagaCommand::Skip { name, id, input } => {
            let body = json!({"instance_id": id, "input": input});
            let done = client
                .post(
                    &["v1", "sagas", &name, "skip"],
                    &body,
                    Need::on("saga.redrive", &name),
                )
                .await?;
            println!(
                "skipped inbox row {} of instance {id}; the rest is redriven",
                done["skipped"]["id"]
            );
        }
    }
    Ok(())
}

fn print_detail(d: &Value) {
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    println!("saga:        {}", s("saga"));
    println!("instance:    {}", s("instance_id"));
    println!("correlation: {}", s("correlation"));
    println!("status:      {}", s("status"));
    if let Some(e) = d["error"].as_str() {
        println!("error:       {e}");
    }
    println!(
        "started:     {}   updated: {}",
        s("started_at"),
        s("updated_at")
    );
    println!("state:       {}", d["state"]);
    let list = |k: &str| d[k].as_array().cloned().unwrap_or_default();
    println!("timeouts:");
    for t in list("timeouts") {
        println!(
            "  {}  due {}  (in {} ms)",
            t["name"].as_str().unwrap_or(""),
            t["due_at"].as_str().unwrap_or(""),
            t["due_in_ms"]
        );
    }
    println!("associations:");
    for a in list("associations") {
        println!(
            "  {}={}",
            a["key"].as_str().unwrap_or(""),
            a["value"].as_str().unwrap_or("")
        );
    }
    println!("inbox:");
    for i in list("inbox") {
        println!(
            "  #{}  {}  {}  {}  {}",
            i["id"],
            i["state"].as_str().unwrap_or(""),
            i["kind"].as_str().unwrap_or(""),
            i["input"],
            i["reason"].as_str().unwrap_or("")
        );
    }
    println!("history:");
    for h in list("history") {
        let input = match h["input_kind"].as_str() {
            Some("timeout") => format!("timeout {}", h["input_type"].as_str().unwrap_or("")),
            _ => format!(
                "{} {}",
                h["input_type"].as_str().unwrap_or(""),
                h["input_aggregate"].as_str().unwrap_or("")
            ),
        };
        let outputs: Vec<&str> = h["output_types"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        println!(
            "  v{:<4} {}  {input}  → [{}]  timers {}  → {}",
            h["version"],
            h["created_at"].as_str().unwrap_or(""),
            outputs.join(", "),
            h["timers_set"],
            h["status_after"].as_str().unwrap_or("")
        );
    }
}
