//! One typed configuration tree, layered: defaults in code, then a TOML file (`--config`), then
//! `KEEL_*` environment variables, then command-line flags. Validated once, at start-up.
//!
//! Top-level keys map to env vars directly (`listen` ← `KEEL_LISTEN`); nested keys use a double
//! underscore (`api.max_batch_events` ← `KEEL_API__MAX_BATCH_EVENTS`).
//!
//! One file over ~400 lines on purpose: the tree is read as one document (each field's doc
//! comment is its user documentation), and splitting it would scatter that.
//!
//! This module is leaf data: it checks values, not names of things other modules own (projection
//! names are checked where projections are wired, in [`crate::app`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::store::{redact_url, DatabaseConfig};

/// keel's settings. The doc comment on each field is its user documentation. `Debug` hides the
/// passwords in the database and Redis URLs.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL connection URL (`KEEL_DATABASE_URL`). keel creates the database if missing.
    /// TLS as libpq spells it, in the query: `sslmode=verify-full&sslrootcert=/path/ca.pem`
    /// checks the server's certificate against that CA (plus the system's roots) and its name
    /// against the URL's host; `require` encrypts without checking; `verify-*` and `require`
    /// never fall back to plaintext. The default, `prefer`, does (as libpq's does): set
    /// `verify-full` wherever the network is not trusted. `sslcert`/`sslkey` give a client
    /// certificate; `PGSSLMODE`/`PGSSLROOTCERT` work too.
    pub database_url: String,
    /// The HTTP API's address (`KEEL_LISTEN`).
    pub listen: SocketAddr,
    /// Redis URL for the relay's pub/sub and stream sinks (`KEEL_REDIS_URL`). `rediss://` for
    /// TLS, checked against the system's roots or `relay.redis.tls_ca_file`.
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
    pub relay: RelayConfig,
    pub projections: ProjectionsConfig,
    pub auth: AuthConfig,
    pub observability: ObservabilityConfig,
    pub ui: UiConfig,
    pub archive: ArchiveConfig,
    pub sagas: SagasConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Destructured, so that a new field cannot be left out of `Debug`.
        let Config {
            database_url,
            listen,
            redis_url,
            kafka_brokers,
            log,
            log_format,
            schemas_dir,
            pool,
            api,
            append,
            relay,
            projections,
            auth,
            observability,
            ui,
            archive,
            sagas,
        } = self;
        f.debug_struct("Config")
            .field("database_url", &redact_url(database_url))
            .field("listen", listen)
            .field("redis_url", &redact_url(redis_url))
            .field("kafka_brokers", kafka_brokers)
            .field("log", log)
            .field("log_format", log_format)
            .field("schemas_dir", schemas_dir)
            .field("pool", pool)
            .field("api", api)
            .field("append", append)
            .field("relay", relay)
            .field("projections", projections)
            .field("auth", auth)
            .field("observability", observability)
            .field("ui", ui)
            .field("archive", archive)
            .field("sagas", sagas)
            .finish()
    }
}

/// Projections (`keel project`, or in-process with `keel serve --projections`). `Debug` hides
/// secret `properties` (see [`redacted`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProjectionsConfig {
    /// `keel serve` runs the projection runners in-process too (`KEEL_PROJECTIONS__IN_PROCESS`).
    pub in_process: bool,
    /// Which projections run, by name; empty for all that the process knows: keel's own and any
    /// the embedding service added (`KEEL_PROJECTIONS__RUN`). Names are checked where the
    /// projections are wired ([`crate::app::Projections`]), not here.
    pub run: Vec<String>,
    /// Most records applied per transaction (`KEEL_PROJECTIONS__BATCH_SIZE`).
    pub batch_size: usize,
    /// Raw librdkafka consumer settings for the runners.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Where `keel project` serves its health endpoints (live, ready, pipeline) and metrics
    /// (`KEEL_PROJECTIONS__LISTEN`). `keel serve` answers for its in-process runners on its own
    /// listener.
    pub listen: SocketAddr,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        Self {
            in_process: false,
            run: Vec::new(),
            batch_size: 5000,
            properties: Default::default(),
            listen: ([127, 0, 0, 1], 9465).into(),
        }
    }
}

/// Sagas (`keel saga run`, `keel serve --sagas`; see `src/saga/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SagasConfig {
    /// `keel serve` runs the saga runners in-process too (`KEEL_SAGAS__IN_PROCESS`, or
    /// `keel serve --sagas`).
    pub in_process: bool,
    /// Which sagas run, by name; empty for all the process knows (`KEEL_SAGAS__RUN`).
    pub run: Vec<String>,
    /// Most input records per transaction (`KEEL_SAGAS__BATCH_SIZE`).
    pub batch_size: usize,
    /// Where a saga's history starts the first time it runs on a database: `now` (the default)
    /// ignores inputs created before that moment; `earliest` acts on every input still in Kafka,
    /// with effects. Later runs keep what the first one recorded.
    pub start_from: String,
    /// The longest a runner waits before looking for due timeouts again, in milliseconds
    /// (`KEEL_SAGAS__POLL_INTERVAL_MS`). A timeout fires at most this late while a runner is up.
    pub poll_interval_ms: u64,
    /// How long ended instances are kept before they are pruned, in seconds (7 days).
    pub retain_ended_secs: u64,
    /// The largest state an instance may keep, in bytes of JSON; a step over it parks.
    pub max_state_bytes: usize,
    /// Raw librdkafka consumer settings for the runners' input consumers.
    pub properties: std::collections::BTreeMap<String, String>,
    /// Where `keel saga run` serves its health endpoints and metrics (`KEEL_SAGAS__LISTEN`).
    pub listen: SocketAddr,
    /// The shipped `op_verify` saga.
    pub op_verify: OpVerifyConfig,
}

impl Default for SagasConfig {
    fn default() -> Self {
        Self {
            in_process: false,
            run: Vec::new(),
            batch_size: 500,
            start_from: "now".into(),
            poll_interval_ms: 1000,
            retain_ended_secs: 7 * 24 * 3600,
            max_state_bytes: 64 * 1024,
            properties: Default::default(),
            listen: ([127, 0, 0, 1], 9466).into(),
            op_verify: OpVerifyConfig::default(),
        }
    }
}

impl SagasConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.batch_size == 0 {
            bail!("sagas.batch_size must be positive");
        }
        if !matches!(self.start_from.as_str(), "now" | "earliest") {
            bail!(
                "sagas.start_from {:?}: use now (the default) or earliest",
                self.start_from
            );
        }
        if !(10..=60_000).contains(&self.poll_interval_ms) {
            bail!("sagas.poll_interval_ms must be between 10 and 60000");
        }
        if self.max_state_bytes < 256 {
            bail!("sagas.max_state_bytes must be at least 256");
        }
        let v = &self.op_verify;
        if v.verify_deadline_ms == 0 || v.rollback_deadline_ms == 0 {
            bail!("sagas.op_verify.verify_deadline_ms and sagas.op_verify.rollback_deadline_ms must be positive");
        }
        Ok(())
    }

    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms)
    }
}

/// `op_verify`: a successful operation on an agent must be verified in time, else it is rolled
/// back, and the rollback has its own deadline.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpVerifyConfig {
    /// How long the agent has to pass its verification, in milliseconds (5 minutes).
    pub verify_deadline_ms: u64,
    /// How long a requested rollback may take before the saga ends `failed` (10 minutes).
    pub rollback_deadline_ms: u64,
}

impl Default for OpVerifyConfig {
    fn default() -> Self {
        Self {
            verify_deadline_ms: 5 * 60 * 1000,
            rollback_deadline_ms: 10 * 60 * 1000,
        }
    }
}

/// The event archive and retention (`keel archive ...`, `keel retention ...`, see
/// `src/archive/` and `src/retention/`). Credentials for S3 come from the standard `AWS_*`
/// variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`), never from here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// Where archive segments are written: `file:///absolute/dir` or `s3://bucket/prefix`
    /// (`KEEL_ARCHIVE__URL`). Empty: no archive, so nothing whose policy requires one is purged.
    pub url: String,
    /// Avro codec of new segment files: `deflate` (every Avro reader opens it) or `null`
    /// (`KEEL_ARCHIVE__CODEC`).
    pub codec: String,
    /// Most events in one segment file (`KEEL_ARCHIVE__MAX_SEGMENT_RECORDS`).
    pub max_segment_records: usize,
    /// A segment is cut once its events' JSON reaches this many bytes
    /// (`KEEL_ARCHIVE__MAX_SEGMENT_BYTES`).
    pub max_segment_bytes: usize,
    /// How often `keel serve` runs the archiver and the guarded purge in-process, for example
    /// `1h`; `off` (the default) runs them only from `keel archive run` and `keel retention run`
    /// (`KEEL_ARCHIVE__SCHEDULE`).
    pub schedule: String,
    /// A purge deletes a segment's events only if an `--against-db` verification of it passed
    /// within this many seconds; the purge runs that verification itself when it is older
    /// (`KEEL_ARCHIVE__VERIFY_MAX_AGE_SECS`).
    pub verify_max_age_secs: u64,
    /// Most events deleted per purge transaction, so appends never wait long
    /// (`KEEL_ARCHIVE__PURGE_BATCH`).
    pub purge_batch: i64,
    pub s3: ArchiveS3Config,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            codec: "deflate".into(),
            max_segment_records: 10_000,
            max_segment_bytes: 16 << 20,
            schedule: "off".into(),
            verify_max_age_secs: 3600,
            purge_batch: 1000,
            s3: ArchiveS3Config::default(),
        }
    }
}

impl ArchiveConfig {
    fn validate(&self) -> anyhow::Result<()> {
        let url = self.url.as_str();
        if !url.is_empty() {
            if let Some(path) = url.strip_prefix("file://") {
                if !path.starts_with('/') {
                    bail!("archive.url {url:?}: a file URL needs an absolute path, as in file:///var/lib/keel/archive");
                }
            } else if let Some(rest) = url.strip_prefix("s3://") {
                if rest.split('/').next().unwrap_or("").is_empty() {
                    bail!("archive.url {url:?}: name the bucket, as in s3://bucket/prefix");
                }
            } else {
                bail!("archive.url {url:?}: use file:///absolute/dir or s3://bucket/prefix");
            }
        }
        if !matches!(self.codec.as_str(), "deflate" | "null") {
            bail!(
                "archive.codec {:?}: use deflate (the default) or null",
                self.codec
            );
        }
        if self.max_segment_records == 0 || self.max_segment_bytes == 0 || self.purge_batch <= 0 {
            bail!("archive.max_segment_records, archive.max_segment_bytes and archive.purge_batch must be positive");
        }
        if self.schedule != "off" {
            if self.url.is_empty() {
                bail!("archive.schedule {:?} needs archive.url: the scheduled purge deletes only archived events", self.schedule);
            }
            crate::model::Age::parse(&self.schedule)
                .map_err(|e| anyhow::anyhow!("archive.schedule: {e}, or off"))?;
        }
        Ok(())
    }
}

/// An S3-compatible archive store (`archive.url = "s3://bucket/prefix"`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveS3Config {
    /// The endpoint of an S3-compatible server, for example `http://127.0.0.1:9000`; empty for
    /// AWS itself (`KEEL_ARCHIVE__S3__ENDPOINT`). Requests use path-style addressing when set.
    pub endpoint: String,
    /// The region (`KEEL_ARCHIVE__S3__REGION`); empty reads `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Allow a plain `http://` endpoint (`KEEL_ARCHIVE__S3__ALLOW_HTTP`), for local servers.
    pub allow_http: bool,
}

/// Pipeline health, canaries and trace export (see `src/health/` and `src/telemetry/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// A stage that should move and has not for this long is unhealthy: a relay, projection or
    /// consumer group whose loop has not reported, or whose position has not moved while work
    /// waits upstream of it (`KEEL_OBSERVABILITY__STALL_AFTER_MS`).
    pub stall_after_ms: u64,
    /// Every this many milliseconds append a canary event and watch it reach Kafka and Redis;
    /// 0 is off (`KEEL_OBSERVABILITY__CANARY_INTERVAL_MS`). Any number of keel processes may
    /// have it on: one canary is written per interval between them.
    pub canary_interval_ms: u64,
    /// Where to export traces over OTLP/HTTP, the collector's base URL, for example
    /// `http://127.0.0.1:4318` (spans go to `/v1/traces` under it); unset (the default) exports
    /// nothing unless `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and this wins over it
    /// (`KEEL_OBSERVABILITY__OTLP_ENDPOINT`). Sampling and the rest: the standard `OTEL_*`
    /// variables (docs/ops/tracing.md).
    pub otlp_endpoint: Option<String>,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            stall_after_ms: 30_000,
            canary_interval_ms: 0,
            otlp_endpoint: None,
        }
    }
}

impl ObservabilityConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.stall_after_ms < 500 {
            bail!("observability.stall_after_ms must be at least 500");
        }
        if self.canary_interval_ms != 0 && self.canary_interval_ms < 100 {
            bail!("observability.canary_interval_ms must be 0 (off) or at least 100");
        }
        Ok(())
    }

    pub fn stall_after(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.stall_after_ms)
    }

    /// How often stages report and the monitor samples: a sixth of the stall threshold, between
    /// 100 ms and 5 s, so a stall is seen well within twice the threshold.
    pub fn sample_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.stall_after_ms / 6).clamp(100, 5_000))
    }
}

/// The web dashboard at `/ui` (see `src/ui/`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// `keel serve` serves the dashboard at `/ui` (`KEEL_UI__ENABLED`).
    pub enabled: bool,
    /// How the dashboard shows event payloads and dead-letter values: `full`, or `masked`
    /// (every value in a payload replaced by its type, so structure shows and data does not;
    /// the API is unchanged) (`KEEL_UI__PAYLOADS`).
    pub payloads: Payloads,
    /// A session ends this long after login (`KEEL_UI__SESSION_TTL_S`); a token's session ends
    /// at the token's expiry if that is sooner, a key's when the key is revoked.
    pub session_ttl_s: u64,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            payloads: Payloads::Full,
            session_ttl_s: 12 * 3600,
        }
    }
}

impl UiConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !(60..=30 * 86_400).contains(&self.session_ttl_s) {
            bail!("ui.session_ttl_s must be between 60 and 2592000 (30 days)");
        }
        Ok(())
    }
}

/// `ui.payloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Payloads {
    Full,
    Masked,
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

/// The relay: outbox to Kafka and Redis (see `src/relay`). Every relay process of one database
/// must use the same sink settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// `keel serve` runs the relay in-process too (`KEEL_RELAY__IN_PROCESS`).
    pub in_process: bool,
    /// After each append commit, `keel serve` sends one coalesced `NOTIFY` (outside the append
    /// transaction) so that separate `keel relay` processes wake at once (`KEEL_RELAY__NOTIFY`).
    pub notify: bool,
    /// This relay's name in leases and logs; the host name and process id by default.
    pub name: Option<String>,
    /// Where `keel relay` serves `GET /metrics` and `GET /v1/health/live`
    /// (`KEEL_RELAY__LISTEN`). `keel serve` exports the relay's metrics on its own listener.
    pub listen: SocketAddr,
    /// Most rows read per partition per round (`KEEL_RELAY__BATCH_SIZE`).
    pub batch_size: i64,
    /// Concurrent loops per sink, each over its own share of the held partitions, so that one
    /// loop's database read overlaps another's sends (`KEEL_RELAY__LANES`, 1 to 16).
    pub lanes: i16,
    /// Fallback poll when no wake-up arrives (`KEEL_RELAY__POLL_INTERVAL_MS`).
    pub poll_interval_ms: u64,
    /// A partition lease lasts this long unless renewed; a dead relay's partitions are taken
    /// over after it (`KEEL_RELAY__LEASE_TTL_MS`).
    pub lease_ttl_ms: u64,
    /// How often leases are renewed and rebalanced (`KEEL_RELAY__HEARTBEAT_MS`).
    pub heartbeat_ms: u64,
    /// Attempts at a row that fails permanently before it is parked (`KEEL_RELAY__MAX_ATTEMPTS`).
    pub max_attempts: i32,
    /// First and longest back-off after a failed round (`KEEL_RELAY__BACKOFF_INITIAL_MS`, `..._MAX_MS`).
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub kafka: KafkaSinkConfig,
    pub redis: RedisSinkConfig,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            in_process: false,
            notify: true,
            name: None,
            listen: ([127, 0, 0, 1], 9464).into(),
            batch_size: 500,
            lanes: 4,
            poll_interval_ms: 250,
            lease_ttl_ms: 4_000,
            heartbeat_ms: 1_000,
            max_attempts: 5,
            backoff_initial_ms: 100,
            backoff_max_ms: 10_000,
            kafka: KafkaSinkConfig::default(),
            redis: RedisSinkConfig::default(),
        }
    }
}

impl RelayConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if !(1..=16).contains(&self.lanes) {
            bail!("relay.lanes must be between 1 and 16");
        }
        if self.batch_size < 1 || self.max_attempts < 1 {
            bail!("relay.batch_size and relay.max_attempts must be positive");
        }
        if self.heartbeat_ms == 0 || self.lease_ttl_ms < 2 * self.heartbeat_ms {
            bail!("relay.lease_ttl_ms must be at least twice relay.heartbeat_ms");
        }
        if self.poll_interval_ms == 0 || self.backoff_initial_ms == 0 {
            bail!("relay.poll_interval_ms and relay.backoff_initial_ms must be positive");
        }
        if !self.kafka.enabled && !self.redis.enabled {
            bail!("the relay needs at least one sink: enable relay.kafka or relay.redis");
        }
        if self.kafka.partitions < 1 || self.kafka.replication < 1 {
            bail!("relay.kafka.partitions and relay.kafka.replication must be positive");
        }
        Ok(())
    }
}

/// The Kafka sink. `Debug` hides secret `properties` (see [`redacted`]).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// `KEEL_RELAY__KAFKA__ENABLED`.
    pub enabled: bool,
    /// Topic of an event type whose catalog entry names none: this prefix and the aggregate type
    /// (`KEEL_RELAY__KAFKA__TOPIC_PREFIX`).
    pub topic_prefix: String,
    /// Create missing topics through the admin API (`KEEL_RELAY__KAFKA__CREATE_TOPICS`).
    pub create_topics: bool,
    /// Partitions and replication factor of the topics keel creates.
    pub partitions: i32,
    pub replication: i32,
    /// Topics that get JSON values instead of Confluent-framed Avro.
    pub json_topics: Vec<String>,
    /// Raw librdkafka producer settings, applied last (TLS, SASL, `linger.ms`, ...). In TOML:
    /// `[relay.kafka.properties]` with quoted keys such as `"security.protocol" = "SASL_SSL"`,
    /// `"ssl.ca.location"`, `"sasl.mechanism" = "SCRAM-SHA-512"`, `"sasl.username"`,
    /// `"sasl.password"`. The `security.*`, `ssl.*` and `sasl.*` ones also reach keel's admin
    /// client and `keel consume` (projections take `projections.properties`). Values of keys holding `password`, `secret`, `ssl.key.pem` or
    /// `oauthbearer.config` are masked in `Debug` and logs.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            topic_prefix: "keel.".into(),
            create_topics: true,
            partitions: 6,
            replication: 1,
            json_topics: Vec::new(),
            properties: Default::default(),
        }
    }
}

impl std::fmt::Debug for KafkaSinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let KafkaSinkConfig {
            enabled,
            topic_prefix,
            create_topics,
            partitions,
            replication,
            json_topics,
            properties,
        } = self;
        f.debug_struct("KafkaSinkConfig")
            .field("enabled", enabled)
            .field("topic_prefix", topic_prefix)
            .field("create_topics", create_topics)
            .field("partitions", partitions)
            .field("replication", replication)
            .field("json_topics", json_topics)
            .field("properties", &redacted(properties))
            .finish()
    }
}

impl std::fmt::Debug for ProjectionsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ProjectionsConfig {
            in_process,
            run,
            batch_size,
            properties,
            listen,
        } = self;
        f.debug_struct("ProjectionsConfig")
            .field("in_process", in_process)
            .field("run", run)
            .field("batch_size", batch_size)
            .field("properties", &redacted(properties))
            .field("listen", listen)
            .finish()
    }
}

/// Raw librdkafka settings with the values of secret ones
/// ([`crate::kafka::is_secret_setting`]) replaced by `***`, for `Debug`.
fn redacted(
    properties: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<&str, &str> {
    properties
        .iter()
        .map(|(key, value)| {
            let secret = crate::kafka::is_secret_setting(key);
            (key.as_str(), if secret { "***" } else { value.as_str() })
        })
        .collect()
}

/// The Redis sink: `PUBLISH` for live fan-out and `XADD` for short-lived durable reads.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSinkConfig {
    /// `KEEL_RELAY__REDIS__ENABLED`.
    pub enabled: bool,
    /// Pub/sub channel of an aggregate type: this prefix and the type (`..._CHANNEL_PREFIX`).
    pub channel_prefix: String,
    /// Stream of an aggregate type: this prefix and the type (`..._STREAM_PREFIX`).
    pub stream_prefix: String,
    /// Approximate most entries a stream keeps (`XADD ... MAXLEN ~ n`) (`..._STREAM_MAXLEN`).
    pub stream_maxlen: u64,
    /// For a `rediss://` `redis_url`: PEM CA certificates the server's certificate must chain to,
    /// instead of the system's roots, for a private CA (`KEEL_RELAY__REDIS__TLS_CA_FILE`). Without
    /// it, `rediss://` trusts the system's roots. A certificate that does not verify fails the
    /// relay's start; keel never falls back to plaintext.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisSinkConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            channel_prefix: "keel.".into(),
            stream_prefix: "keel.stream.".into(),
            stream_maxlen: 100_000,
            tls_ca_file: None,
        }
    }
}

/// Whether the API asks for credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every route but `/v1/health/*` needs a valid API key or token.
    #[default]
    Required,
    /// Nobody is asked: every caller may do everything, recorded as `anonymous`. Only ever set
    /// explicitly; keel logs it loudly at start-up.
    None,
}

/// Authentication and authorisation (see `src/auth` and `src/api/auth.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `required` (the default) or `none` (`KEEL_AUTH__MODE`).
    pub mode: AuthMode,
    /// A file holding one API key `keel_<key id>_<secret>` (`KEEL_AUTH__BOOTSTRAP_KEY_FILE`).
    /// On start, when no enabled principal has the `admin` role, keel creates the principal
    /// `admin` (role `admin`) with this key; otherwise the file is ignored and may be deleted.
    pub bootstrap_key_file: Option<PathBuf>,
    /// Let `/metrics` answer without a credential (`KEEL_AUTH__ANONYMOUS_METRICS`); otherwise it
    /// needs the `metrics` grant (roles operator and admin).
    pub anonymous_metrics: bool,
    /// A request with no `Authorization` header but a TLS client certificate verified against
    /// `api.tls.client_ca_file` acts as the enabled principal named by the certificate's subject
    /// common name (`KEEL_AUTH__CERTIFICATE_PRINCIPALS`). Off by default: turn it on only when
    /// that CA issues certificates for keel's principals alone.
    pub certificate_principals: bool,
    /// A file holding the server secret that API keys are stored under (as HMAC-SHA256), at least
    /// 32 bytes; surrounding whitespace is ignored (`KEEL_AUTH__KEY_SECRET_FILE`). Every keel
    /// process of one database needs the same secret; changing it invalidates every stored key.
    pub key_secret_file: Option<PathBuf>,
    /// The same secret given inline (`KEEL_AUTH__KEY_SECRET`), instead of the file.
    pub key_secret: Option<Secret>,
    /// How long a verified key is trusted without asking the database, in milliseconds, at most
    /// 60000; 0 asks every time (`KEEL_AUTH__KEY_CACHE_TTL_MS`). A key revoked, or a principal
    /// disabled, through another keel process stops working within this time.
    pub key_cache_ttl_ms: u64,
    /// JWT bearer tokens from an OpenID Connect issuer, beside API keys (`[auth.oidc]`).
    pub oidc: OidcConfig,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Required,
            bootstrap_key_file: None,
            anonymous_metrics: false,
            certificate_principals: false,
            key_secret_file: None,
            key_secret: None,
            key_cache_ttl_ms: 5_000,
            oidc: OidcConfig::default(),
        }
    }
}

/// JWT bearer tokens signed by an OpenID Connect issuer, verified against the issuer's published
/// keys (its JWKS). Off unless `issuer`, `audience` and `jwks_url` are all set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OidcConfig {
    /// The issuer, exactly as the tokens' `iss` claim spells it, trailing slash and all
    /// (`KEEL_AUTH__OIDC__ISSUER`), for example `https://login.example.com/realms/keel`.
    pub issuer: Option<String>,
    /// The audience keel accepts: a token's `aud` claim (a string or an array) must contain it
    /// (`KEEL_AUTH__OIDC__AUDIENCE`). Use a value meant for keel alone, so that a token issued
    /// for another service is refused.
    pub audience: Option<String>,
    /// Where the issuer publishes its signing keys, a JSON Web Key Set
    /// (`KEEL_AUTH__OIDC__JWKS_URL`). It must be `https://`; plain `http://` is accepted only to
    /// a loopback host (`localhost`, `127.0.0.0/8`, `[::1]`), for a local identity provider.
    /// keel fetches keys from this URL only: a token's `jku`, `x5u` and embedded `jwk` headers
    /// are ignored.
    pub jwks_url: Option<String>,
    /// The signature algorithms keel accepts (`KEEL_AUTH__OIDC__ALGORITHMS`, as `[RS256,ES256]`),
    /// from RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 and EdDSA. `none` and the
    /// HMAC algorithms (HS256, HS384, HS512) are refused: keel verifies with the issuer's public
    /// keys, never with a shared secret. A token's key must also be of its algorithm's type.
    pub algorithms: Vec<String>,
    /// Clock skew allowed when checking `exp` and `nbf`, in seconds, at most 60
    /// (`KEEL_AUTH__OIDC__LEEWAY_S`).
    pub leeway_s: u64,
    /// The claim that holds a token's roles (`KEEL_AUTH__OIDC__ROLES_CLAIM`): an array of
    /// strings, or one space-separated string as in `scope`. Each value that is a built-in role
    /// name (`producer`, `reader`, `registry-admin`, `operator`, `admin`) grants that role;
    /// other values grant nothing. A name that is not a top-level claim is read as a dotted
    /// path into nested objects, so `realm_access.roles` finds Keycloak's realm roles; a
    /// top-level claim whose name has dots (`https://example.com/roles`) is found as it is.
    pub roles_claim: String,
    /// How long fetched keys are trusted before keel fetches the JWKS again, in seconds, 1 to
    /// 86400 (`KEEL_AUTH__OIDC__JWKS_CACHE_S`). A key the issuer withdrew stops verifying within
    /// about this time. When the JWKS cannot be fetched, the keys fetched last keep verifying.
    pub jwks_cache_s: u64,
    /// Fewest seconds between two fetches of the JWKS, whatever the cause, at least 1 and at
    /// most `jwks_cache_s` (`KEEL_AUTH__OIDC__JWKS_REFETCH_MIN_S`). A token whose `kid` is not
    /// among the cached keys makes keel fetch again (so a rotated key works without a restart),
    /// but no more often than this, so a flood of tokens with made-up `kid`s cannot make keel
    /// flood the issuer.
    pub jwks_refetch_min_s: u64,
}

impl Default for OidcConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: None,
            jwks_url: None,
            algorithms: ["RS256", "ES256", "EdDSA"].map(String::from).to_vec(),
            leeway_s: 30,
            roles_claim: "roles".into(),
            jwks_cache_s: 300,
            jwks_refetch_min_s: 30,
        }
    }
}

/// The JWT signature algorithms `auth.oidc.algorithms` may name: the asymmetric ones.
pub const OIDC_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

impl OidcConfig {
    /// Whether tokens are verified at all: `issuer` is set (and, once validated, so are
    /// `audience` and `jwks_url`).
    pub fn enabled(&self) -> bool {
        self.issuer.is_some()
    }

    /// Checks the settings; every error names the setting at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        let set = [
            ("auth.oidc.issuer", &self.issuer),
            ("auth.oidc.audience", &self.audience),
            ("auth.oidc.jwks_url", &self.jwks_url),
        ];
        for (name, value) in &set {
            if value.as_deref().is_some_and(|v| v.trim().is_empty()) {
                bail!("{name} must not be empty: leave it unset to turn OIDC tokens off");
            }
        }
        let missing: Vec<&str> = set
            .iter()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| *name)
            .collect();
        if missing.len() == set.len() {
            return Ok(());
        }
        if !missing.is_empty() {
            bail!(
                "auth.oidc.issuer, auth.oidc.audience and auth.oidc.jwks_url go together: set all three or none (missing: {})",
                missing.join(", ")
            );
        }
        if let Some(url) = &self.jwks_url {
            let parsed = reqwest::Url::parse(url)
                .with_context(|| format!("auth.oidc.jwks_url {url:?} is not a URL"))?;
            if !is_secure_fetch_url(&parsed) {
                bail!("auth.oidc.jwks_url must use https (plain http only to a loopback host such as 127.0.0.1 or localhost): {url}");
            }
        }
        if self.algorithms.is_empty() {
            bail!("auth.oidc.algorithms must name at least one algorithm");
        }
        for alg in &self.algorithms {
            if alg.eq_ignore_ascii_case("none") {
                bail!("auth.oidc.algorithms must not contain '{alg}': unsigned tokens are never accepted");
            }
            if alg.to_ascii_uppercase().starts_with("HS") {
                bail!("auth.oidc.algorithms must not contain '{alg}': keel verifies tokens with the issuer's public keys, never with a shared secret (HMAC)");
            }
            if !OIDC_ALGORITHMS.contains(&alg.as_str()) {
                bail!(
                    "unknown algorithm '{alg}' in auth.oidc.algorithms: use some of {}",
                    OIDC_ALGORITHMS.join(", ")
                );
            }
        }
        if self.leeway_s > 60 {
            bail!("auth.oidc.leeway_s must be at most 60: an expired token must stop working soon");
        }
        if self.roles_claim.trim().is_empty() {
            bail!("auth.oidc.roles_claim must not be empty");
        }
        if !(1..=86_400).contains(&self.jwks_cache_s) {
            bail!("auth.oidc.jwks_cache_s must be between 1 and 86400");
        }
        if self.jwks_refetch_min_s < 1 || self.jwks_refetch_min_s > self.jwks_cache_s {
            bail!("auth.oidc.jwks_refetch_min_s must be at least 1 and at most auth.oidc.jwks_cache_s");
        }
        Ok(())
    }
}

/// Whether keel may fetch keys from `url`: `https`, or `http` to a loopback host.
pub fn is_secure_fetch_url(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => url.host().is_some(),
        "http" => url.host_str().is_some_and(|host| {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || bare
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }),
        _ => false,
    }
}

/// Fewest bytes the API key secret has: as many as its HMAC-SHA256's output.
pub const MIN_KEY_SECRET_BYTES: usize = 32;

impl AuthConfig {
    fn validate(&self) -> anyhow::Result<()> {
        if self.key_secret.is_some() && self.key_secret_file.is_some() {
            bail!("set auth.key_secret or auth.key_secret_file, not both");
        }
        if let Some(secret) = &self.key_secret {
            if secret.expose().len() < MIN_KEY_SECRET_BYTES {
                bail!("auth.key_secret must have at least {MIN_KEY_SECRET_BYTES} bytes");
            }
        }
        if self.key_cache_ttl_ms > 60_000 {
            bail!(
                "auth.key_cache_ttl_ms must be at most 60000: a revoked key must stop working soon"
            );
        }
        self.oidc.validate()
    }
}

/// A secret setting. `Debug` and serialisation show `***`, never the value; read it with
/// [`Secret::expose`].
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Serialize for Secret {
    // Only defaults are ever serialised (the lowest layer of `Config::load`), and they hold no
    // secret; anything else that serialises a config must not leak one.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("***")
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
    /// A connection that has not sent a whole request head this long after it opened (or after
    /// its previous response, when kept alive) is closed without a reply: the slowloris defence,
    /// which also closes idle keep-alive connections (`KEEL_API__HEADER_READ_TIMEOUT_MS`). Also
    /// applies to `keel relay`'s status listener.
    pub header_read_timeout_ms: u64,
    /// A request not answered this long after its head was read gets 408 `request_timeout`, and
    /// its handler is stopped; a slow body ends here (`KEEL_API__REQUEST_TIMEOUT_MS`). An append
    /// that had already reached the database may still commit: retry with the same event ids.
    pub request_timeout_ms: u64,
    /// Most connections open at once; at the limit new connections wait in the listen backlog
    /// until one closes, they are not refused (`KEEL_API__MAX_CONNECTIONS`). Also applies to
    /// `keel relay`'s status listener.
    pub max_connections: u32,
    /// Most headers in a request; more get 431 (`KEEL_API__MAX_HEADERS`).
    pub max_headers: usize,
    /// HTTPS on the API's listener (not on `keel relay`'s status listener).
    pub tls: ApiTlsConfig,
    pub rate_limit: RateLimitConfig,
}

/// TLS on the API's listener: off unless `cert_file` and `key_file` are set; then the listener
/// speaks only TLS 1.2 and 1.3 (rustls), HTTP/1.1. SIGHUP re-reads the three files: new
/// connections get the new certificate, open ones keep theirs, and files that do not load leave
/// the current certificate in place (the error is logged). The TLS handshake must finish within
/// `api.header_read_timeout_ms`, and the request head then gets that long again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiTlsConfig {
    /// The server's PEM certificate chain, its own certificate first
    /// (`KEEL_API__TLS__CERT_FILE`).
    pub cert_file: Option<PathBuf>,
    /// The PEM private key of that certificate: PKCS#8, PKCS#1 or SEC1
    /// (`KEEL_API__TLS__KEY_FILE`).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates are verified against; when set, clients are
    /// asked for a certificate (`KEEL_API__TLS__CLIENT_CA_FILE`). A verified certificate's
    /// subject common name and DNS and URI alternative names reach the request as
    /// `api::server::PeerCertificate`.
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: `optional` lets a client without a certificate in (one whose
    /// certificate does not verify is refused), `required` refuses it at the handshake
    /// (`KEEL_API__TLS__CLIENT_AUTH`).
    pub client_auth: ClientAuth,
}

impl ApiTlsConfig {
    /// Whether the API serves HTTPS.
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    fn validate(&self) -> anyhow::Result<()> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            bail!("set both api.tls.cert_file and api.tls.key_file, or neither");
        }
        if self.client_ca_file.is_some() && !self.enabled() {
            bail!("api.tls.client_ca_file needs api.tls.cert_file and api.tls.key_file");
        }
        if self.client_auth == ClientAuth::Required && self.client_ca_file.is_none() {
            bail!("api.tls.client_auth = \"required\" needs api.tls.client_ca_file");
        }
        Ok(())
    }
}

/// Whether a TLS client must present a certificate; see [`ApiTlsConfig::client_auth`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    #[default]
    Optional,
    Required,
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
            header_read_timeout_ms: 10_000,
            request_timeout_ms: 30_000,
            max_connections: 1_024,
            max_headers: 100,
            tls: ApiTlsConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// Rate limits (see `src/api/rate`); over one, a request gets 429 `rate_limited` with
/// `retry-after`. Each keel process counts on its own: N replicas behind a load balancer allow up
/// to N times these rates. 0 turns a limit off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per second one principal may send, sustained
    /// (`KEEL_API__RATE_LIMIT__REQUESTS_PER_SECOND`).
    pub requests_per_second: u32,
    /// Requests one principal may send at once, on top of nothing sent for a while
    /// (`KEEL_API__RATE_LIMIT__REQUEST_BURST`).
    pub request_burst: u32,
    /// Events per second one principal may append, sustained; an append costs as many as it holds
    /// (`KEEL_API__RATE_LIMIT__EVENTS_PER_SECOND`).
    pub events_per_second: u32,
    /// Events one principal may append at once (`KEEL_API__RATE_LIMIT__EVENT_BURST`). At least
    /// `api.max_batch_events`, so that every append the API accepts can pass.
    pub event_burst: u32,
    /// Failed authentications a peer address may make per minute, all at once or spread out; past
    /// them its requests get 429 before any credential is checked
    /// (`KEEL_API__RATE_LIMIT__FAILED_AUTH_PER_MINUTE`). Keyed by the TCP peer (an IPv6 peer by its
    /// /64), never by `X-Forwarded-For`: behind a proxy, every client shares the proxy's budget.
    pub failed_auth_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // Generous: a guard against one runaway client, not a quota. keel on two cores serves
        // about 5,000 appends and 25,000 events a second in all.
        Self {
            requests_per_second: 10_000,
            request_burst: 20_000,
            events_per_second: 100_000,
            event_burst: 100_000,
            failed_auth_per_minute: 30,
        }
    }
}

impl RateLimitConfig {
    fn validate(&self, max_batch_events: usize) -> anyhow::Result<()> {
        if self.requests_per_second > 0 && self.request_burst == 0 {
            bail!("api.rate_limit.request_burst must be positive when api.rate_limit.requests_per_second is");
        }
        if self.events_per_second > 0 && (self.event_burst as usize) < max_batch_events {
            bail!("api.rate_limit.event_burst must be at least api.max_batch_events ({max_batch_events}), or no full append could pass");
        }
        Ok(())
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
            relay: RelayConfig::default(),
            projections: ProjectionsConfig::default(),
            auth: AuthConfig::default(),
            observability: ObservabilityConfig::default(),
            ui: UiConfig::default(),
            archive: ArchiveConfig::default(),
            sagas: SagasConfig::default(),
        }
    }
}

/// Whether a `KEEL_*` variable (prefix stripped) names a setting: its first key is one of
/// [`Config`]'s top-level fields.
fn is_config_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let top = key
        .split("__")
        .next()
        .and_then(|k| k.split('.').next())
        .unwrap_or(&key);
    top_level_keys().iter().any(|k| k == top)
}

/// [`Config`]'s top-level field names, read off its serialised defaults so that they cannot drift
/// from the struct.
fn top_level_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| match serde_json::to_value(Config::default()) {
        Ok(serde_json::Value::Object(fields)) => fields.keys().cloned().collect(),
        _ => unreachable!("Config serialises to a JSON object"),
    })
}

/// One configuration setting: its dotted key in a TOML file, its `KEEL_*` variable and its default.
#[derive(Debug, Clone, Serialize)]
pub struct Setting {
    pub key: String,
    pub env: String,
    pub default: serde_json::Value,
}

/// Every setting keel reads, sorted by key, read off the serialised defaults (the same tree
/// [`Config::load`] merges the layers into), so the list cannot drift from the structs. A table
/// is walked into; anything else (a number, a string, a list, an unset option) is one setting.
/// A map of free-form names (Kafka client properties) is one setting whose variable ends in
/// `__*`: `KEEL_RELAY__KAFKA__PROPERTIES__*` stands for `..._PROPERTIES__ACKS` and the like.
pub fn settings() -> Vec<Setting> {
    fn walk(prefix: &str, value: &serde_json::Value, out: &mut Vec<Setting>) {
        match value {
            serde_json::Value::Object(fields) if !fields.is_empty() => {
                for (name, field) in fields {
                    let key = match prefix {
                        "" => name.clone(),
                        _ => format!("{prefix}.{name}"),
                    };
                    walk(&key, field, out);
                }
            }
            _ => out.push(Setting {
                env: format!(
                    "KEEL_{}{}",
                    prefix.replace('.', "__").to_ascii_uppercase(),
                    if value.is_object() { "__*" } else { "" }
                ),
                key: prefix.to_owned(),
                default: value.clone(),
            }),
        }
    }
    let mut out = Vec::new();
    match serde_json::to_value(Config::default()) {
        Ok(tree) => walk("", &tree, &mut out),
        Err(_) => unreachable!("Config serialises to a JSON object"),
    }
    out
}

/// `KEEL_*` variables keel's commands read that are not settings: the config file, and the
/// operator commands' API, credential and CA (`cli::client`).
pub const COMMAND_ENV_VARS: &[&str] = &["KEEL_CONFIG", "KEEL_URL", "KEEL_API_KEY", "KEEL_CA_FILE"];

/// `KEEL_*` variables that keel's tooling reads and keel itself does not: the image variables
/// the compose file and keel-testkit share, the compose file's port, and the scripts' and the test
/// suite's own. Set in the same shell as a keel command, they are not misspelt settings.
pub const TOOLING_ENV_VARS: &[&str] = &[
    "KEEL_IMAGE",
    "KEEL_POSTGRES_IMAGE",
    "KEEL_REDIS_IMAGE",
    "KEEL_BROKER_IMAGE",
    "KEEL_BROKER_FLAVOR",
    "KEEL_SMOKE_IMAGE",
    "KEEL_CONSOLE_IMAGE",
    "KEEL_HTTP_PORT",
    "KEEL_DEV_DIR",
    "KEEL_PY_VENV",
    "KEEL_TOOLS_DIR",
    "KEEL_NISSHI_BIN",
    "KEEL_NISSHI_PREBUILT",
    "KEEL_BROKER_PORT",
    "KEEL_CHROMIUM",
    "KEEL_SKIP_BROWSER",
    "KEEL_UI_SHOTS",
];

/// The `KEEL_*` environment variables that [`Config::load`] ignores because they name no setting,
/// most likely misspelt ones, for the caller to report once logging is set up.
/// [`COMMAND_ENV_VARS`], [`TOOLING_ENV_VARS`] and `KEEL_TEST_*` (the test suite's) are not
/// settings but are not reported either.
pub fn ignored_env_vars() -> Vec<String> {
    std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| {
            name.strip_prefix("KEEL_").is_some_and(|key| {
                !is_config_key(key)
                    && !key.to_ascii_lowercase().starts_with("test_")
                    && !COMMAND_ENV_VARS.contains(&name.as_str())
                    && !TOOLING_ENV_VARS.contains(&name.as_str())
            })
        })
        .collect()
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
    #[serde(skip)]
    pub relay_in_process: Option<bool>,
    #[serde(skip)]
    pub projections_in_process: Option<bool>,
    #[serde(skip)]
    pub sagas_in_process: Option<bool>,
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
        let mut config: Config = figment
            .merge(
                Env::prefixed("KEEL_")
                    .split("__")
                    .filter(|key| is_config_key(key.as_str())),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .context("invalid configuration")?;
        if let Some(on) = overrides.relay_in_process {
            config.relay.in_process = on;
        }
        if let Some(on) = overrides.projections_in_process {
            config.projections.in_process = on;
        }
        if let Some(on) = overrides.sagas_in_process {
            config.sagas.in_process = on;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let api = &self.api;
        if api.max_batch_events == 0 || api.max_body_bytes == 0 {
            bail!("api.max_batch_events and api.max_body_bytes must be positive");
        }
        if api.default_page_size < 1 || api.default_page_size > api.max_page_size {
            bail!("api.default_page_size must be between 1 and api.max_page_size");
        }
        if api.header_read_timeout_ms == 0
            || api.request_timeout_ms == 0
            || api.max_connections == 0
            || api.max_headers == 0
        {
            bail!("api.header_read_timeout_ms, api.request_timeout_ms, api.max_connections and api.max_headers must be positive");
        }
        api.tls.validate()?;
        if self.relay.redis.tls_ca_file.is_some() && !self.redis_url.starts_with("rediss://") {
            bail!("relay.redis.tls_ca_file needs a rediss:// redis_url (TLS)");
        }
        api.rate_limit.validate(api.max_batch_events)?;
        if self.pool.max_connections == 0 {
            bail!("pool.max_connections must be positive");
        }
        if self.append.group_commit_workers >= self.pool.max_connections as usize {
            bail!("append.group_commit_workers must leave connections for reads: make it smaller than pool.max_connections");
        }
        if self.append.group_commit_max_events == 0 {
            bail!("append.group_commit_max_events must be positive");
        }
        self.relay.validate()?;
        if self.projections.batch_size == 0 {
            bail!("projections.batch_size must be positive");
        }
        self.auth.validate()?;
        self.observability.validate()?;
        self.ui.validate()?;
        self.archive.validate()?;
        self.sagas.validate()?;
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
    #[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own error type
    fn every_listed_variable_is_read_by_load_and_none_is_reported_as_ignored() {
        let settings = settings();
        assert!(settings.iter().any(|s| s.env == "KEEL_API__MAX_BODY_BYTES"));
        assert!(settings.iter().any(|s| s.env == "KEEL_PROJECTIONS__LISTEN"));
        // Whatever the test's own environment holds already is not this test's business.
        let outside = ignored_env_vars();
        let new = || -> Vec<String> {
            let mut ignored = ignored_env_vars();
            ignored.retain(|name| !outside.contains(name));
            ignored
        };
        figment::Jail::expect_with(|jail| {
            let mut set = 0;
            for s in &settings {
                let value = match &s.default {
                    serde_json::Value::String(text) => text.clone(),
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    _ => continue,
                };
                jail.set_env(&s.env, value);
                set += 1;
            }
            jail.set_env("KEEL_RELAY__KAFKA__PROPERTIES__ACKS", "all");
            jail.set_env("KEEL_AUTH__KEY_SECRET", "ab".repeat(32));
            assert!(set > 50, "only {set} scalar settings");
            let config = Config::load(None, &Overrides::default()).map_err(|e| format!("{e:#}"))?;
            assert_eq!(config.relay.kafka.properties["acks"], "all");
            assert_eq!(config.projections.listen.port(), 9465);
            // The scripts' and the images' variables are no misspelt settings either.
            for name in TOOLING_ENV_VARS {
                jail.set_env(name, "x");
            }
            assert!(new().is_empty(), "{:?}", new());
            // A misspelt nested name is refused outright; a misspelt top-level one is reported.
            jail.set_env("KEEL_PROJECTIONS__LISTN", "0.0.0.0:1");
            let refused = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(format!("{refused:#}").contains("listn"), "{refused:#}");
            jail.set_env("KEEL_PROJECTIONS__LISTN", "");
            jail.set_env("KEEL_LISTN", "0.0.0.0:1");
            assert_eq!(new(), ["KEEL_LISTN"]);
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

    #[test]
    fn server_limits_must_be_positive() {
        for key in [
            "header_read_timeout_ms",
            "request_timeout_ms",
            "max_connections",
            "max_headers",
        ] {
            figment::Jail::expect_with(|jail| {
                jail.create_file("zero.toml", &format!("[api]\n{key} = 0\n"))?;
                let err =
                    Config::load(Some(Path::new("zero.toml")), &Overrides::default()).unwrap_err();
                assert!(err.to_string().contains(key), "{key}: {err}");
                Ok(())
            });
        }
    }

    #[test]
    fn rate_limits_load_from_env_and_an_event_burst_below_a_full_append_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEEL_API__RATE_LIMIT__REQUESTS_PER_SECOND", "5");
            jail.set_env("KEEL_API__RATE_LIMIT__FAILED_AUTH_PER_MINUTE", "0");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(config.api.rate_limit.requests_per_second, 5);
            assert_eq!(config.api.rate_limit.failed_auth_per_minute, 0);
            assert_eq!(config.api.rate_limit.event_burst, 100_000);

            jail.set_env("KEEL_API__RATE_LIMIT__EVENT_BURST", "999");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("event_burst"), "{err}");
            jail.set_env("KEEL_API__RATE_LIMIT__EVENTS_PER_SECOND", "0");
            Config::load(None, &Overrides::default()).expect("no event limit, no burst needed");
            Ok(())
        });
    }

    #[test]
    fn misspelt_variables_are_ignored_and_listed_but_not_keel_config_or_test_ones() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("KEEL_LISTN", "127.0.0.1:1");
            jail.set_env("KEEL_API__MAX_PAGE_SIZE", "200");
            jail.set_env("KEEL_CONFIG", "keel.toml");
            jail.set_env("KEEL_TEST_PYTHON", "python3");
            jail.set_env("KEEL_URL", "http://127.0.0.1:1");
            jail.set_env("KEEL_API_KEY", "keel_x_y");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(config.api.max_page_size, 200);
            let ignored = ignored_env_vars();
            assert!(ignored.contains(&"KEEL_LISTN".to_owned()), "{ignored:?}");
            assert!(
                !ignored.iter().any(|v| v.starts_with("KEEL_API")
                    || COMMAND_ENV_VARS.contains(&v.as_str())
                    || v.starts_with("KEEL_TEST_")),
                "{ignored:?}"
            );
            Ok(())
        });
    }

    #[test]
    fn debug_hides_passwords_and_secret_kafka_settings() {
        let config = Config {
            database_url: "postgres://keel:s3cret@db/keel".into(),
            redis_url: "redis://:hunter2@cache:6379".into(),
            ..Config::default()
        };
        let shown = format!("{config:?} {:?}", config.database());
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("postgres://keel:***@db/keel"), "{shown}");
    }

    #[test]
    fn debug_masks_secret_librdkafka_settings_and_shows_the_others() {
        let secrets = [
            "sasl.password",
            "ssl.key.password",
            "ssl.keystore.password",
            "ssl.key.pem",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "SASL.PASSWORD",
        ];
        let shown = [
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "SCRAM-SHA-512"),
            ("sasl.username", "keel-relay"),
            ("ssl.ca.location", "/etc/keel/kafka-ca.pem"),
        ];
        let mut properties = std::collections::BTreeMap::new();
        for (i, key) in secrets.iter().enumerate() {
            properties.insert(key.to_string(), format!("SECRET-CANARY-{i}"));
        }
        for (key, value) in shown {
            properties.insert(key.to_owned(), value.to_owned());
        }
        let mut config = Config::default();
        config.relay.kafka.properties = properties.clone();
        config.projections.properties = properties;
        let debug = format!("{config:?}");
        assert!(!debug.contains("SECRET-CANARY"), "{debug}");
        for (key, value) in shown {
            assert!(
                debug.contains(&format!("{key:?}: {value:?}")),
                "{key}: {debug}"
            );
        }
        assert!(debug.contains("\"sasl.password\": \"***\""), "{debug}");
    }

    #[test]
    fn api_tls_needs_a_certificate_and_its_key_together_and_required_client_auth_needs_a_ca() {
        figment::Jail::expect_with(|jail| {
            for (toml, problem) in [
                ("[api.tls]\ncert_file = \"c.pem\"\n", "api.tls.key_file"),
                ("[api.tls]\nkey_file = \"k.pem\"\n", "api.tls.cert_file"),
                ("[api.tls]\nclient_ca_file = \"ca.pem\"\n", "api.tls.client_ca_file"),
                (
                    "[api.tls]\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\nclient_auth = \"required\"\n",
                    "api.tls.client_ca_file",
                ),
                ("[api.tls]\nclient_auth = \"sometimes\"\n", "client_auth"),
                ("[relay.redis]\ntls_ca_file = \"ca.pem\"\n", "rediss://"),
            ] {
                jail.create_file("tls.toml", toml)?;
                let err = Config::load(Some(Path::new("tls.toml")), &Overrides::default())
                    .unwrap_err();
                assert!(format!("{err:#}").contains(problem), "{toml}: {err:#}");
            }
            jail.set_env("KEEL_API__TLS__CERT_FILE", "c.pem");
            jail.set_env("KEEL_API__TLS__KEY_FILE", "k.pem");
            jail.set_env("KEEL_API__TLS__CLIENT_CA_FILE", "ca.pem");
            jail.set_env("KEEL_API__TLS__CLIENT_AUTH", "required");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert!(config.api.tls.enabled());
            assert_eq!(config.api.tls.client_auth, ClientAuth::Required);
            assert_eq!(config.api.tls.key_file, Some(PathBuf::from("k.pem")));
            Ok(())
        });
    }

    #[test]
    fn the_auth_section_loads_from_env_hides_its_secret_and_refuses_short_ones() {
        figment::Jail::expect_with(|jail| {
            let secret = "an api key secret of thirty-two bytes or more";
            jail.set_env("KEEL_AUTH__KEY_SECRET", secret);
            jail.set_env("KEEL_AUTH__KEY_CACHE_TTL_MS", "250");
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert_eq!(config.auth.key_secret.as_ref().unwrap().expose(), secret);
            assert_eq!(config.auth.key_cache_ttl_ms, 250);
            let shown = format!("{config:?} {}", toml::to_string(&config.auth).unwrap());
            assert!(!shown.contains("thirty-two"), "{shown}");

            jail.set_env("KEEL_AUTH__KEY_SECRET", "too short");
            let err = Config::load(None, &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("at least 32"), "{err}");

            jail.set_env("KEEL_AUTH__KEY_SECRET", secret);
            jail.create_file("auth.toml", "[auth]\nkey_secret_fil = \"x\"\n")?;
            assert!(Config::load(Some(Path::new("auth.toml")), &Overrides::default()).is_err());
            jail.create_file("both.toml", "[auth]\nkey_secret_file = \"x\"\n")?;
            let err =
                Config::load(Some(Path::new("both.toml")), &Overrides::default()).unwrap_err();
            assert!(err.to_string().contains("not both"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn the_oidc_section_loads_from_env_with_safe_defaults() {
        figment::Jail::expect_with(|jail| {
            let config = Config::load(None, &Overrides::default()).unwrap();
            assert!(!config.auth.oidc.enabled(), "off by default");
            assert_eq!(config.auth.oidc.algorithms, ["RS256", "ES256", "EdDSA"]);
            assert_eq!(config.auth.oidc.leeway_s, 30);
            assert_eq!(config.auth.oidc.roles_claim, "roles");
            assert_eq!(
                (
                    config.auth.oidc.jwks_cache_s,
                    config.auth.oidc.jwks_refetch_min_s
                ),
                (300, 30)
            );

            jail.set_env(
                "KEEL_AUTH__OIDC__ISSUER",
                "https://idp.example.com/realms/keel",
            );
            jail.set_env("KEEL_AUTH__OIDC__AUDIENCE", "keel");
            jail.set_env("KEEL_AUTH__OIDC__JWKS_URL", "https://idp.example.com/certs");
            jail.set_env("KEEL_AUTH__OIDC__ALGORITHMS", "[ES256, PS256]");
            jail.set_env("KEEL_AUTH__OIDC__LEEWAY_S", "5");
            jail.set_env("KEEL_AUTH__OIDC__ROLES_CLAIM", "realm_access.roles");
            jail.set_env("KEEL_AUTH__OIDC__JWKS_CACHE_S", "600");
            jail.set_env("KEEL_AUTH__OIDC__JWKS_REFETCH_MIN_S", "60");
            let oidc = Config::load(None, &Overrides::default()).unwrap().auth.oidc;
            assert!(oidc.enabled());
            assert_eq!(
                oidc.issuer.as_deref(),
                Some("https://idp.example.com/realms/keel")
            );
            assert_eq!(oidc.audience.as_deref(), Some("keel"));
            assert_eq!(
                oidc.jwks_url.as_deref(),
                Some("https://idp.example.com/certs")
            );
            assert_eq!(oidc.algorithms, ["ES256", "PS256"]);
            assert_eq!(oidc.leeway_s, 5);
            assert_eq!(oidc.roles_claim, "realm_access.roles");
            assert_eq!((oidc.jwks_cache_s, oidc.jwks_refetch_min_s), (600, 60));
            assert!(ignored_env_vars()
                .iter()
                .all(|v| !v.starts_with("KEEL_AUTH")));
            Ok(())
        });
    }

    #[test]
    fn bad_oidc_settings_are_refused_naming_the_setting() {
        let good = || OidcConfig {
            issuer: Some("https://idp.example.com".into()),
            audience: Some("keel".into()),
            jwks_url: Some("https://idp.example.com/jwks".into()),
            ..OidcConfig::default()
        };
        good().validate().unwrap();
        OidcConfig::default().validate().unwrap();
        let refused = |config: OidcConfig, needle: &str| {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
        };
        refused(
            OidcConfig {
                audience: None,
                ..good()
            },
            "missing: auth.oidc.audience",
        );
        refused(
            OidcConfig {
                issuer: None,
                jwks_url: None,
                ..good()
            },
            "missing: auth.oidc.issuer, auth.oidc.jwks_url",
        );
        refused(
            OidcConfig {
                issuer: Some(" ".into()),
                ..good()
            },
            "auth.oidc.issuer must not be empty",
        );
        for (url, needle) in [
            ("http://idp.example.com/jwks", "must use https"),
            ("http://10.0.0.1/jwks", "must use https"),
            ("file:///etc/jwks.json", "must use https"),
            ("not a url", "is not a URL"),
        ] {
            refused(
                OidcConfig {
                    jwks_url: Some(url.into()),
                    ..good()
                },
                needle,
            );
        }
        for loopback in [
            "http://127.0.0.1:8081/jwks",
            "http://127.3.2.1/jwks",
            "http://localhost:8081/jwks",
            "http://[::1]:8081/jwks",
        ] {
            OidcConfig {
                jwks_url: Some(loopback.into()),
                ..good()
            }
            .validate()
            .unwrap();
        }
        for (algorithms, needle) in [
            (vec!["none"], "must not contain 'none'"),
            (vec!["RS256", "NONE"], "must not contain 'NONE'"),
            (vec!["HS256"], "never with a shared secret"),
            (vec!["ES256", "HS512"], "'HS512'"),
            (
                vec!["RS257"],
                "unknown algorithm 'RS257' in auth.oidc.algorithms",
            ),
            (vec![], "auth.oidc.algorithms must name at least one"),
        ] {
            refused(
                OidcConfig {
                    algorithms: algorithms.into_iter().map(String::from).collect(),
                    ..good()
                },
                needle,
            );
        }
        refused(
            OidcConfig {
                leeway_s: 61,
                ..good()
            },
            "auth.oidc.leeway_s must be at most 60",
        );
        refused(
            OidcConfig {
                roles_claim: "".into(),
                ..good()
            },
            "auth.oidc.roles_claim",
        );
        refused(
            OidcConfig {
                jwks_cache_s: 0,
                ..good()
            },
            "auth.oidc.jwks_cache_s",
        );
        refused(
            OidcConfig {
                jwks_refetch_min_s: 0,
                ..good()
            },
            "auth.oidc.jwks_refetch_min_s",
        );
        refused(
            OidcConfig {
                jwks_cache_s: 10,
                jwks_refetch_min_s: 30,
                ..good()
            },
            "auth.oidc.jwks_refetch_min_s",
        );
    }
}
