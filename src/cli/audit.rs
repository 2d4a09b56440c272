//! `keel audit`: the audit log of operator actions and principal changes, through keel's API
//! (`/v1/audit`). Needs `audit.read`.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Deserialize;
use serde_json::Value;

use super::client::{list, rows, Client, Need};
use super::principal::short;

const READ: Need<'static> = Need {
    action: "audit.read",
    resource: None,
};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Audit rows, newest first: who did what to what, and how it ended.
    List {
        /// At most this many rows.
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// Only rows before this id (to page back).
        #[arg(long)]
        before: Option<i64>,
        /// Only this principal's rows.
        #[arg(long)]
        principal: Option<String>,
        /// Only this action, for example `dlq.retry` or `principal.create`.
        #[arg(long)]
        action: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain from the first row: an edited or deleted row breaks it. Exits 1 and
    /// names the first broken row.
    Verify {
        /// Print `{"rows", "broken_at"}` as JSON (and still exit 1 on a broken chain).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Deserialize)]
struct Row {
    id: i64,
    at: DateTime<Utc>,
    principal: String,
    action: String,
    target: Value,
    outcome: String,
    reason: Option<String>,
}

pub async fn run(client: &Client, command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            limit,
            before,
            principal,
            action,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            if let Some(before) = before {
                query.push(("before", before.to_string()));
            }
            if let Some(principal) = principal {
                query.push(("principal", principal));
            }
            if let Some(action) = action {
                query.push(("action", action));
            }
            let found = list(&client.get(&["v1", "audit"], &query, READ).await?, "rows")?;
            if json {
                for row in &found {
                    println!("{}", serde_json::to_string(row)?);
                }
                return Ok(());
            }
            println!(
                "{:>8}  {:<19}  {:<24}  {:<20}  {:<8}  target",
                "id", "at", "principal", "action", "outcome"
            );
            for r in rows::<Row>(&found)? {
                let reason = r.reason.map(|r| format!("  ({r})")).unwrap_or_default();
                println!(
                    "{:>8}  {:<19}  {:<24}  {:<20}  {:<8}  {}{reason}",
                    r.id,
                    short(r.at),
                    r.principal,
                    r.action,
                    r.outcome,
                    r.target
                );
            }
        }
        AuditCommand::Verify { json } => {
            let found = client.get(&["v1", "audit", "verify"], &[], READ).await?;
            let checked = found["rows"].as_u64().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string(&found)?);
            }
            match found["broken_at"].as_i64() {
                Some(id) => anyhow::bail!(
                    "the audit chain is broken at row {id}: that row was edited, or a row before it was deleted ({checked} row(s) before it check out)"
                ),
                None if !found["broken_at"].is_null() => {
                    anyhow::bail!("unexpected reply from keel: {found}")
                }
                None => {
                    if !json {
                        println!("the audit chain holds: {checked} row(s) verified");
                    }
                }
            }
        }
    }
    Ok(())
}
