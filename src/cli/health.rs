//! `keel health`: the pipeline's verdict (`/v1/health/pipeline`) as a table, one component per
//! line, worst first; `--json` prints the answer as it came. Exits non-zero while the pipeline
//! is unhealthy, so scripts can wait on it.
//!
//! `--ready` and `--live` ask one process instead (`/v1/health/ready`, `/v1/health/live`; any
//! keel role serves them): that is the container image's `HEALTHCHECK`, with `--url` naming the
//! role's port, since the image has no curl.

use clap::Args;
use serde_json::Value;

use super::client::Client;

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Print the JSON answer instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Ask whether the process at `--url` is ready to do its job (its database, its own loops)
    /// instead of asking for the pipeline's verdict.
    #[arg(long, conflicts_with = "live")]
    pub ready: bool,
    /// Ask only whether the process at `--url` answers.
    #[arg(long)]
    pub live: bool,
}

pub async fn run(client: &Client, args: HealthArgs) -> anyhow::Result<()> {
    if args.ready || args.live {
        let level = if args.ready { "ready" } else { "live" };
        let (ok, body) = client.get_health(&["v1", "health", level]).await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&body)?);
        } else {
            print!("{}", checks(&body));
        }
        if !ok {
            anyhow::bail!("{}: not {level}; see the checks above", client.url(&[]));
        }
        return Ok(());
    }
    let (healthy, body) = client.get_health(&["v1", "health", "pipeline"]).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&body)?);
    } else {
        print!("{}", table(&body));
    }
    if !healthy {
        anyhow::bail!(
            "the pipeline is unhealthy: see the reasons above, and the operations section of the README for what each component means"
        );
    }
    Ok(())
}

fn rank(status: &str) -> u8 {
    match status {
        "unhealthy" => 0,
        "degraded" => 1,
        _ => 2,
    }
}

fn mark(status: &str) -> &'static str {
    match status {
        "ok" => "✔",
        "degraded" => "▲",
        _ => "✖",
    }
}

/// One process's answer as text: its status, then each check that it reports.
fn checks(body: &Value) -> String {
    let status = body["status"].as_str().unwrap_or("unknown");
    let mut out = format!(
        "{} {status}\n",
        mark(if matches!(status, "ready" | "live") {
            "ok"
        } else {
            "unhealthy"
        })
    );
    for (name, said) in body["checks"].as_object().into_iter().flatten() {
        let said = said.as_str().unwrap_or("?");
        out.push_str(&format!(
            "  {} {name}  {said}\n",
            mark(if said == "ok" { "ok" } else { "unhealthy" })
        ));
    }
    out
}

/// The verdict as text: the overall status, then each component, worst first.
fn table(body: &Value) -> String {
    let overall = body["status"].as_str().unwrap_or("unknown");
    let mut out = format!("{} pipeline {overall}\n", mark(overall));
    let mut components: Vec<(&String, &Value)> = body["components"]
        .as_object()
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    components.sort_by_key(|(name, c)| (rank(c["status"].as_str().unwrap_or("")), *name));
    let width = components.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
    for (name, c) in components {
        let status = c["status"].as_str().unwrap_or("unknown");
        let since = c["since"].as_str().unwrap_or("");
        let since = since.get(..19).unwrap_or(since).replace('T', " ");
        out.push_str(&format!(
            "  {} {name:<width$}  {status:<9}  since {since}  {}\n",
            mark(status),
            c["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_table_puts_the_worst_components_first_with_their_reasons() {
        let body = json!({"status": "unhealthy", "components": {
            "database": {"status": "ok", "reason": "ok", "since": "2026-12-01T10:00:00.123Z"},
            "relay.kafka": {"status": "unhealthy", "reason": "no relay has reported for 40 s", "since": "2026-12-01T10:01:00Z"},
            "projection.a": {"status": "degraded", "reason": "rebuilding", "since": "2026-12-01T10:02:00Z"},
        }});
        let text = table(&body);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "✖ pipeline unhealthy");
        assert!(lines[1].contains("relay.kafka") && lines[1].contains("no relay has reported"));
        assert!(lines[2].contains("projection.a") && lines[2].contains("rebuilding"));
        assert!(lines[3].contains("database") && lines[3].contains("since 2026-12-01 10:00:00"));
    }
}
