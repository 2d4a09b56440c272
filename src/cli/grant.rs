//! `keel grant`: a principal's custom grants, beside its roles', through keel's API
//! (`/v1/principals/{principal}/grants`). Needs `principal.manage`.

use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::json;

use super::client::{rows, Client, Need};
use super::principal::{principals, Principal};
use crate::auth::{role_grants, Role};

const MANAGE: Need<'static> = Need {
    action: "principal.manage",
    resource: None,
};

#[derive(Debug, Subcommand)]
pub enum GrantCommand {
    /// Allow (or, with `--deny`, deny) a principal an action. Deny beats every allow.
    Add(GrantArgs),
    /// Remove a custom grant (the same words as `keel grant add`).
    Remove(GrantArgs),
    /// Each principal's grants: its roles' and its custom ones.
    List {
        /// Only this principal.
        principal: Option<String>,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct GrantArgs {
    pub principal: String,
    /// The action, for example `event.append`, `event.read`, `dlq.retry`, `registry.write`.
    pub action: String,
    /// The names it covers: an aggregate type, subject, projection, consumer group or topic,
    /// by the action; literal, or a prefix ending in `*`.
    #[arg(long, default_value = "*")]
    pub resource: String,
    /// For `event.append`: the event types it covers, literal or a prefix ending in `*`.
    #[arg(long, default_value = "*")]
    pub event_type: String,
    /// A deny grant instead of an allow.
    #[arg(long)]
    pub deny: bool,
}

impl GrantArgs {
    fn effect(&self) -> &'static str {
        if self.deny {
            "deny"
        } else {
            "allow"
        }
    }

    fn body(&self) -> serde_json::Value {
        json!({
            "effect": self.effect(),
            "action": self.action,
            "resource": self.resource,
            "event_type": self.event_type,
        })
    }

    fn words(&self) -> String {
        let mut text = format!("{} {} on {}", self.effect(), self.action, self.resource);
        if self.event_type != "*" {
            text.push_str(&format!(" for event types {}", self.event_type));
        }
        text
    }
}

/// One grant a principal holds, and where it comes from.
#[derive(Debug, Serialize)]
struct Held {
    principal: String,
    /// `role <name>` or `grant` (a custom one).
    from: String,
    effect: String,
    action: String,
    resource: String,
    event_type: String,
}

pub async fn run(client: &Client, command: GrantCommand) -> anyhow::Result<()> {
    match command {
        GrantCommand::Add(args) => {
            client
                .post(
                    &["v1", "principals", &args.principal, "grants"],
                    &args.body(),
                    MANAGE,
                )
                .await?;
            println!("granted {} to {}", args.words(), args.principal);
        }
        GrantCommand::Remove(args) => {
            let answer = client
                .post(
                    &["v1", "principals", &args.principal, "grants", "remove"],
                    &args.body(),
                    MANAGE,
                )
                .await?;
            if answer["removed"].as_bool() == Some(true) {
                println!("removed {} from {}", args.words(), args.principal);
            } else {
                anyhow::bail!(
                    "{} holds no custom grant {}; `keel grant list {}` shows what it holds",
                    args.principal,
                    args.words(),
                    args.principal
                );
            }
        }
        GrantCommand::List { principal, json } => {
            let all = rows::<Principal>(&principals(client).await?)?;
            if let Some(name) = &principal {
                if !all.iter().any(|p| &p.name == name) {
                    anyhow::bail!("no principal {name}");
                }
            }
            let held: Vec<Held> = all
                .into_iter()
                .filter(|p| principal.as_ref().is_none_or(|name| &p.name == name))
                .flat_map(held)
                .collect();
            if json {
                for h in &held {
                    println!("{}", serde_json::to_string(h)?);
                }
                return Ok(());
            }
            println!(
                "{:<24} {:<20} {:<6} {:<20} {:<24} event type",
                "principal", "from", "effect", "action", "resource"
            );
            for h in held {
                println!(
                    "{:<24} {:<20} {:<6} {:<20} {:<24} {}",
                    h.principal, h.from, h.effect, h.action, h.resource, h.event_type
                );
            }
        }
    }
    Ok(())
}

/// A principal's grants: its roles' (as this keel defines them) and its custom ones.
fn held(p: Principal) -> Vec<Held> {
    let mut out = Vec::new();
    for role in &p.roles {
        let Ok(parsed) = Role::parse(role) else {
            // A role this keel does not know (a newer server): named, not expanded.
            out.push(Held {
                principal: p.name.clone(),
                from: format!("role {role}"),
                effect: "?".into(),
                action: "?".into(),
                resource: "?".into(),
                event_type: "?".into(),
            });
            continue;
        };
        for g in role_grants(parsed) {
            out.push(Held {
                principal: p.name.clone(),
                from: format!("role {role}"),
                effect: g.effect.to_string(),
                action: g.action.to_string(),
                resource: g.resource.to_string(),
                event_type: g.event_type.to_string(),
            });
        }
    }
    for g in p.grants {
        out.push(Held {
            principal: p.name.clone(),
            from: "grant".into(),
            effect: g.effect,
            action: g.action,
            resource: g.resource,
            event_type: g.event_type,
        });
    }
    out
}
