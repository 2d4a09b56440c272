//! One typed configuration tree, layered: defaults in code, then a TOML file (`--config`), then
//! `KEEL_*` environment variables, then command-line flags. Validated once, at start-up.
//!
//! Top-level keys map to env vars directly (`listen` ← `KEEL_LISTEN`); nested keys use a double
//! underscore (`api.max_batch_events` ← `KEEL_API__MAX_BATCH_EVENTS`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// keel's settings. The doc comment on each field is its user documentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL connection URL (`KEEL_DATABASE_URL`). keel creates the database if missing.
    pub database_url: String,
    /// The HTTP API's address (`KEEL_LISTEN`).
    pub listen: SocketAddr,
    /// Redis URL for the relay's pub/sub and stream sinks (`KEEL_REDIS_URL`).
    pub redis_url: String,
    /// Kafka bootstrap servers, comma-separated (`KEEL_KAFKA_BROKERS`).
    pub kafka_brokers: String,
    /// Log filter in `tracing` syntax, for example `info` or `keel=debug,info` (`KEEL_LOG`).
    pub log: String,
    /// Log format: `text` or `json` (`KEEL_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// The event catalog folder (`KEEL_SCHEMAS_DIR`).
    pub schemas_dir: PathBuf,
    pub pool: PoolConfig,
    pub api: ApiConfig,
    pub append: AppendConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The PostgreSQL connection pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Most connections keel opens (`KEEL_POOL__MAX_CONNECTIONS`).
    pub max_connections: u32,
    /// How long a request waits for a free connection before it gets 503 (`KEEL_POOL__ACQUIRE_TIMEOUT_MS`).
    pub acquire_timeout_ms: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 32,
            acquire_timeout_ms: 5_000,
        }
    }
}

/// How appends reach PostgreSQL.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppendConfig {
    /// Connections that commit concurrent appends together (group commit); 0 gives every append a
    /// transaction of its own (`KEEL_APPEND__GROUP_COMMIT_WORKERS`).
    pub group_commit_workers: usize,
    /// Most events one shared transaction takes (`KEEL_APPEND__GROUP_COMMIT_MAX_EVENTS`).
    pub group_commit_max_events: usize,
}

impl Default for AppendConfig {
    fn default() -> Self {
        Self {
            group_commit_workers: 4,
            group_commit_max_events: 1_000,
        }
    }
}

/// Limits on what the HTTP API accepts. Requests over a limit get a 4xx and write nothing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Largest request body, in bytes (`KEEL_API__MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// Most events in one append (`KEEL_API__MAX_BATCH_EVENTS`).
    pub max_batch_events: usize,
    /// Largest `limit` a read accepts (`KEEL_API__MAX_PAGE_SIZE`).
    pub max_page_size: i64,
    /// `limit` when a read names none (`KEEL_API__DEFAULT_PAGE_SIZE`).
    pub default_page_size: i64,
    /// Largest `offset` the log query accepts; deeper pages use the `after` cursor
    /// (`KEEL_API__MAX_OFFSET`).
    pub max_offset: i64,
    /// Check every appended payload against its event type's Avro schema
    /// (`KEEL_API__VALIDATE_PAYLOADS`). Off, events still need a registered type but record no schema.
    pub validate_payloads: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_batch_events: 1_000,
            max_page_size: 1_000,
            default_page_size: 100,
            max_offset: 10_000,
            validate_payloads: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/keel".into(),
            listen: ([127, 0, 0, 1], 8080).into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            kafka_brokers: "127.0.0.1:9092".into(),
            log: "info".into(),
            log_format: LogFormat::Text,
            schemas_dir: "schemas".into(),
            pool: PoolConfig::default(),
            api: ApiConfig::default(),
            append: AppendConfig::default(),
        }
    }
}

/// Whether a `KEEL_*` variable (prefix stripped, lowercased) is configuration. `KEEL_CONFIG`
/// (the file) and `KEEL_TEST_*` (the test suite's) are not; any other stranger is reported, since
/// it is most likely a misspelt setting.
fn is_config_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let top = key
        .split("__")
        .next()
        .and_then(|k| k.split('.').next())
        .unwrap_or(&key);
    if Config::KEYS.contains(&top) {
        return true;
    }
    if key != "config" && !key.starts_with("test_") {
        eprintln!(
            "warning: ignoring KEEL_{}: not a keel setting",
            key.to_uppercase()
        );
    }
    false
}

/// The settings a command line may override; `None` leaves the lower layers alone.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schemas_dir: Option<PathBuf>,
}

impl Config {
    /// Builds the configuration from every layer and validates it.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("config file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(
                Env::prefixed("KEEL_")
                    .split("__")
                    .filter(|key| is_config_key(key.as_str())),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        config.validate()?;
        Ok(config)
    }

    /// The top-level keys, which `KEEL_*` variables may set.
    const KEYS: [&'static str; 10] = [
        "database_url",
        "listen",
        "redis_url",
        "kafka_brokers",
        "log",
        "log_format",
        "schemas_dir",
        "pool",
        "api",
        "append",
    ];

    fn validate(&self) -> anyhow::Result<()> {
        let api = &self.api;
        if api.max_batch_events == 0 || api.max_body_bytes == 0 {
            bail!("api.max_batch_events and api.max_body_bytes must be positive");
        }
        if api.default_page_size < 1 || api.default_page_size > api.max_page_size {
            bail!("api.default_page_size must be between 1 and api.max_page_size");
        }
        if self.pool.max_connections == 0 {
            bail!("pool.max_connections must be positive");
        }
        if self.append.group_commit_workers >= self.pool.max_connections as usize {
            bail!("append.group_commit_workers must leave connections for reads: make it smaller than pool.max_connections");
        }
        if self.append.group_commit_max_events == 0 {
            bail!("append.group_commit_max_events must be positive");
        }
        Ok(())
    }

    pub fn database(&self) -> DatabaseConfig {
        DatabaseConfig {
            url: self.database_url.clone(),
            max_connections: self.pool.max_connections,
            acquire_timeout_ms: self.pool.acquire_timeout_ms,
        }
    }
}

/// What the store needs to connect.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own error type
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_defaults_file_env_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "keel.toml",
                "log = \"debug\"\nlisten = \"127.0.0.1:9000\"\n[api]\nmax_batch_events = 50\n",
            )?;
            jail.set_env("KEEL_LISTEN", "127.0.0.1:9001");
            jail.set_env("KEEL_API__MAX_PAGE_SIZE", "200");
            jail.set_env("KEEL_CONFIG", "keel.toml");
            jail.set_env("KEEL_TEST_PYTHON", "python3");
            let overrides = Overrides {
                log: Some("warn".into()),
                ..Default::default()
            };
            let config = Config::load(Some(Path::new("keel.toml")), &overrides).unwrap();
            assert_eq!(config.log, "warn", "flag beats file");
            assert_eq!(config.listen.port(), 9001, "env beats file");
            assert_eq!(config.api.max_batch_events, 50, "file beats default");
            assert_eq!(config.api.max_page_size, 200);
            assert_eq!(config.database_url, Config::default().database_url);
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_limits_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "lisen = \"127.0.0.1:1\"\n")?;
            assert!(Config::load(Some(Path::new("typo.toml")), &Overrides::default()).is_err());
            jail.create_file("bad.toml", "[api]\ndefault_page_size = 5000\n")?;
            let err = Config::load(Some(Path::new("bad.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("default_page_size"), "{err}");
            Ok(())
        });
    }
}
