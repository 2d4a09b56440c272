//! `keel config` (here `settings`, beside the library's `config`): what keel can be configured with, and whether a configuration holds.
//!
//! * `keel config keys [--json]`: every setting with its `KEEL_*` variable and default, plus the
//!   variables the operator commands read. Deployment checks (`deploy/ci/semantic.py`) compare
//!   the names in compose files and manifests against it.
//! * `keel config check`: loads the configuration from every layer (file, environment, flags)
//!   and validates it, as a server would at start-up, without connecting anywhere.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::config::{self, Config};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting: its `KEEL_*` variable, its key in a config file and its default.
    Keys(KeysArgs),
    /// Load and validate the configuration (file, `KEEL_*` variables, flags) without connecting;
    /// exits non-zero, saying what is wrong, when it does not hold.
    Check,
}

#[derive(Debug, Args)]
pub struct KeysArgs {
    /// Print a JSON array of `{key, env, default}` instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `keel config keys`; needs no valid configuration, so it runs before one is loaded.
pub fn keys(args: &KeysArgs) -> anyhow::Result<()> {
    let settings = config::settings();
    if args.json {
        let mut rows: Vec<serde_json::Value> = settings
            .iter()
            .map(|s| json!({"key": s.key, "env": s.env, "default": s.default}))
            .collect();
        rows.extend(
            config::COMMAND_ENV_VARS
                .iter()
                .map(|env| json!({"key": null, "env": env, "default": null})),
        );
        return print(format!("{}\n", serde_json::to_string_pretty(&rows)?));
    }
    let mut out = String::new();
    let width = settings.iter().map(|s| s.env.len()).max().unwrap_or(0);
    let key_width = settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
    for s in &settings {
        let default = match &s.default {
            serde_json::Value::String(text) => text.clone(),
            serde_json::Value::Null => "(unset)".into(),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "{:<width$}  {:<key_width$}  {default}\n",
            s.env, s.key
        ));
    }
    out.push_str(&format!(
        "\nRead by the commands, not settings: {} (the config file; the operator commands' API, key and CA).\n",
        config::COMMAND_ENV_VARS.join(", ")
    ));
    print(out)
}

/// Writes `text` to stdout; a reader that stopped early (`| head`) is not an error.
fn print(text: String) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `keel config check`, given the configuration that loaded.
pub fn check(config: &Config) -> anyhow::Result<()> {
    let ignored = config::ignored_env_vars();
    if !ignored.is_empty() {
        anyhow::bail!(
            "{} name no setting (misspelt?): `keel config keys` lists every variable keel reads",
            ignored.join(", ")
        );
    }
    println!(
        "configuration ok: listen {}, database {}, brokers {}",
        config.listen,
        redact(&config.database_url),
        config.kafka_brokers
    );
    Ok(())
}

/// A URL without its password.
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
