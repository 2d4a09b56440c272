//! `keel principal`: principals and their API keys, through keel's API (`/v1/principals`,
//! `/v1/keys`). Needs `principal.manage`.

use chrono::{DateTime, Utc};
use clap::Subcommand;
use serde::Deserialize;
use serde_json::{json, Value};

use super::client::{list, rows, Client, Need};
use crate::auth::{ApiKey, KeyId, Kind, Role};

const MANAGE: Need<'static> = Need {
    action: "principal.manage",
    resource: None,
};

#[derive(Debug, Subcommand)]
pub enum PrincipalCommand {
    /// Create a principal with built-in roles; give it a key with `keel principal key create`.
    Create {
        /// 1 to 64 lowercase letters, digits, `.`, `_`, `@` or `-`, for example `billing`.
        name: String,
        /// A built-in role: producer, reader, registry-admin, operator or admin. Repeat for
        /// several; custom grants come with `keel grant add`.
        #[arg(long = "role", value_parser = Role::parse)]
        roles: Vec<Role>,
        /// service, human or admin.
        #[arg(long, default_value = "service", value_parser = Kind::parse)]
        kind: Kind,
        /// Print the created principal as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every principal with its kind, roles and custom grants.
    List {
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable a principal: none of its keys works any more (within the key cache time on other
    /// keel processes).
    Disable { name: String },
    /// A principal's API keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key for a principal and print it. The key is shown only this once: keel keeps
    /// only a digest of it.
    Create {
        name: String,
        /// The key stops working at this RFC 3339 time.
        #[arg(long)]
        expires_at: Option<DateTime<Utc>>,
        /// Print `{"key", "key_id"}` as JSON.
        #[arg(long)]
        json: bool,
    },
    /// A principal's keys: ids and dates, never secrets.
    List {
        name: String,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by its id (the 16 hex characters after `keel_`).
    Revoke { key_id: String },
}

/// A principal of `GET /v1/principals`, for tables.
#[derive(Debug, Deserialize)]
pub(super) struct Principal {
    pub name: String,
    pub kind: String,
    pub roles: Vec<String>,
    pub grants: Vec<GrantRow>,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

/// A custom grant as the API shows it.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct GrantRow {
    pub effect: String,
    pub action: String,
    pub resource: String,
    pub event_type: String,
}

#[derive(Debug, Deserialize)]
struct KeyRow {
    key_id: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

/// Every principal, as the API lists them.
pub(super) async fn principals(client: &Client) -> anyhow::Result<Vec<Value>> {
    list(
        &client.get(&["v1", "principals"], &[], MANAGE).await?,
        "principals",
    )
}

pub async fn run(client: &Client, command: PrincipalCommand) -> anyhow::Result<()> {
    match command {
        PrincipalCommand::Create {
            name,
            roles,
            kind,
            json,
        } => {
            let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            let body = json!({"name": name, "kind": kind.as_str(), "roles": roles});
            let created = client.post(&["v1", "principals"], &body, MANAGE).await?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                println!(
                    "created {kind} principal {name} with role(s) {}; give it a key with `keel principal key create {name}`",
                    if roles.is_empty() { "none".into() } else { roles.join(", ") }
                );
            }
        }
        PrincipalCommand::List { json } => {
            let all = principals(client).await?;
            if json {
                for p in &all {
                    println!("{}", serde_json::to_string(p)?);
                }
                return Ok(());
            }
            println!(
                "{:<24} {:<8} {:<32} {:>6}  {:<20} disabled",
                "name", "kind", "roles", "grants", "created"
            );
            for p in rows::<Principal>(&all)? {
                println!(
                    "{:<24} {:<8} {:<32} {:>6}  {:<20} {}",
                    p.name,
                    p.kind,
                    p.roles.join(","),
                    p.grants.len(),
                    short(p.created_at),
                    p.disabled_at.map(short).unwrap_or_default()
                );
            }
        }
        PrincipalCommand::Disable { name } => {
            client
                .post(&["v1", "principals", &name, "disable"], &json!({}), MANAGE)
                .await?;
            println!("disabled {name}: its keys no longer work");
        }
        PrincipalCommand::Key(command) => key(client, command).await?,
    }
    Ok(())
}

async fn key(client: &Client, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create {
            name,
            expires_at,
            json,
        } => {
            let body = match expires_at {
                Some(t) => json!({"expires_at": t}),
                None => json!({}),
            };
            let created = client
                .post(&["v1", "principals", &name, "keys"], &body, MANAGE)
                .await?;
            let key = created["key"]
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("unexpected reply from keel: no key"))?;
            if json {
                println!("{}", serde_json::to_string(&created)?);
            } else {
                // The key alone on stdout, so that `KEY=$(keel principal key create x)` works.
                println!("{key}");
            }
            eprintln!(
                "a new key {} for {name}: this is the only time it is shown; store it now (keel keeps only a digest)",
                created["key_id"].as_str().unwrap_or("?")
            );
        }
        KeyCommand::List { name, json } => {
            let answer = client
                .get(&["v1", "principals", &name, "keys"], &[], MANAGE)
                .await?;
            let keys = list(&answer, "keys")?;
            if json {
                for k in &keys {
                    println!("{}", serde_json::to_string(k)?);
                }
                return Ok(());
            }
            println!(
                "{:<16}  {:<20}  {:<20}  revoked",
                "key id", "created", "expires"
            );
            for k in rows::<KeyRow>(&keys)? {
                println!(
                    "{:<16}  {:<20}  {:<20}  {}",
                    k.key_id,
                    short(k.created_at),
                    k.expires_at.map(short).unwrap_or_else(|| "never".into()),
                    k.revoked_at.map(short).unwrap_or_default()
                );
            }
        }
        KeyCommand::Revoke { key_id } => {
            let key_id = parse_key_id(&key_id)?;
            client
                .delete(&["v1", "keys", &key_id.to_string()], MANAGE)
                .await?;
            println!("revoked key {key_id}");
        }
    }
    Ok(())
}

/// A time to the second, for tables.
pub(super) fn short(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// A key id. A whole key (secret included) is refused, since a command line shows in `ps`, and
/// not echoed (as clap would echo an invalid value).
fn parse_key_id(text: &str) -> anyhow::Result<KeyId> {
    if ApiKey::parse(text).is_ok() {
        anyhow::bail!("that is a whole key, secret included: pass only its id (the 16 hex characters after keel_), and consider the key exposed");
    }
    KeyId::parse(text).map_err(|e| anyhow::anyhow!("{e}"))
}
