//! `keel jobs`: the operator jobs (rebuilds and republishes) of every keel process of the
//! database, through keel's API (`/v1/jobs`): list them, show one, cancel one, resume one.
//! Reading needs `job.read`; cancelling and resuming also the grant that starts the job on its
//! target (`projection.rebuild`, `replay.run`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::client::{list, rows, Client, Need};
use super::principal::short;

const READ: Need<'static> = Need {
    action: "job.read",
    resource: None,
};

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first: what, on what, how far, who started it.
    List {
        /// Only jobs in this state: running, done, failed, cancelled or interrupted.
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this kind: rebuild or republish.
        #[arg(long)]
        kind: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job's row: its parameters, progress, report or error.
    Show {
        id: Uuid,
        /// Print JSON instead of lines of text.
        #[arg(long)]
        json: bool,
    },
    /// Ask a running job to stop at its next page boundary, wherever it runs. A rebuild keeps
    /// its cursor; `keel jobs resume ID` continues either kind.
    Cancel {
        id: Uuid,
        /// Wait until the job has stopped, and print how it ended.
        #[arg(long)]
        wait: bool,
    },
    /// Start an interrupted, cancelled or failed job again as a new job, with its parameters: a
    /// rebuild continues from its cursor, a republish after the last cursor its row recorded.
    Resume { id: Uuid },
}

#[derive(Debug, Deserialize)]
struct Row {
    id: Uuid,
    kind: String,
    target: String,
    state: String,
    started_by: String,
    done: i64,
    total: Option<i64>,
    rate: Option<f64>,
    eta_s: Option<f64>,
    created_at: DateTime<Utc>,
}

pub async fn run(client: &Client, command: JobsCommand) -> anyhow::Result<()> {
    match command {
        JobsCommand::List {
            state,
            kind,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(state.map(|s| ("state", s)));
            query.extend(kind.map(|k| ("kind", k)));
            let found = list(&client.get(&["v1", "jobs"], &query, READ).await?, "jobs")?;
            if json {
                for job in &found {
                    println!("{}", serde_json::to_string(job)?);
                }
                return Ok(());
            }
            print_table(&rows::<Row>(&found)?);
        }
        JobsCommand::Show { id, json } => {
            let job = client
                .get(&["v1", "jobs", &id.to_string()], &[], READ)
                .await?;
            if json {
                println!("{}", serde_json::to_string(&job)?);
            } else {
                print_job(&job);
            }
        }
        JobsCommand::Cancel { id, wait } => {
            let id = id.to_string();
            let job = client
                .post(&["v1", "jobs", &id, "cancel"], &Value::Null, READ)
                .await?;
            println!(
                "asked job {id} ({} of {}) to stop at its next page boundary",
                job["kind"].as_str().unwrap_or("job"),
                job["target"].as_str().unwrap_or("?")
            );
            if wait {
                let ended = until_ended(client, &id).await?;
                println!("job {id} is {}", ended["state"].as_str().unwrap_or("?"));
            }
        }
        JobsCommand::Resume { id } => {
            let job = client
                .post(
                    &["v1", "jobs", &id.to_string(), "resume"],
                    &Value::Null,
                    READ,
                )
                .await?;
            let new = job["id"].as_str().unwrap_or("?");
            println!("{new}");
            eprintln!("job {new} resumes job {id}; follow it with `keel jobs show {new}`");
        }
    }
    Ok(())
}

/// Job `id` once it is no longer running, polled every second.
async fn until_ended(client: &Client, id: &str) -> anyhow::Result<Value> {
    loop {
        let job = client.get(&["v1", "jobs", id], &[], READ).await?;
        if job["state"] != "running" {
            return Ok(job);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn print_table(jobs: &[Row]) {
    println!(
        "{:<36}  {:<9}  {:<24}  {:<11}  {:>21}  {:>8}  {:>7}  {:<16}  created",
        "id", "kind", "target", "state", "done/total", "rate/s", "eta", "started by"
    );
    for j in jobs {
        let progress = match j.total {
            Some(total) => format!("{}/{total}", j.done),
            None => j.done.to_string(),
        };
        let rate = j.rate.map(|r| format!("{r:.0}")).unwrap_or_default();
        let eta = j.eta_s.map(|s| format!("{s:.0} s")).unwrap_or_default();
        println!(
            "{:<36}  {:<9}  {:<24}  {:<11}  {progress:>21}  {rate:>8}  {eta:>7}  {:<16}  {}",
            j.id,
            j.kind,
            j.target,
            j.state,
            j.started_by,
            short(j.created_at)
        );
    }
}

/// A job's row as `field: value` lines, the empty fields left out.
fn print_job(job: &Value) {
    let Some(fields) = job.as_object() else {
        println!("{job}");
        return;
    };
    for (name, value) in fields {
        match value {
            Value::Null => {}
            Value::String(s) => println!("{name}: {s}"),
            other => println!("{name}: {other}"),
        }
    }
}
