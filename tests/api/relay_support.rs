//! Support for the relay tests: a real Kafka-protocol broker (nisshi) and a Redis server of the
//! test's own on loopback ports, `keel relay` processes, and a plain rdkafka consumer.
//!
//! The broker binary comes from `KEEL_TEST_NISSHI`, or the cache `scripts/broker` builds it into.
//! A missing broker fails the test: the relay is never tested against a fake.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::helpers::{agent_state_changed, eventually, TestApp};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use uuid::Uuid;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts connections on `port`, without blocking the runtime: the test's
/// own app and relay may be running on it (a broker restart happens mid-test).
async fn wait_listening(port: u16, what: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("{what} to listen on port {port}"),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
}

pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-test-{name}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

pub fn nisshi_bin() -> PathBuf {
    let bin = std::env::var_os("KEEL_TEST_NISSHI")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/keel-tools/nisshi/bin/nisshi"));
    assert!(
        bin.exists(),
        "the nisshi broker is missing at {}: run scripts/broker once to build it (or set KEEL_TEST_NISSHI)",
        bin.display()
    );
    bin
}

/// A server process of the test's own on a free loopback port, killed on drop; `restart` starts
/// it again with the same command.
pub struct Server {
    pub port: u16,
    command: Box<dyn Fn(u16) -> Command + Send + Sync>,
    what: &'static str,
    child: Option<Child>,
}

impl Server {
    /// Starts `command(port)` on a free loopback port and waits until it accepts connections.
    pub async fn start(
        what: &'static str,
        command: impl Fn(u16) -> Command + Send + Sync + 'static,
    ) -> Self {
        let mut server = Self {
            port: free_port(),
            command: Box::new(command),
            what,
            child: None,
        };
        server.up().await;
        server
    }

    async fn up(&mut self) {
        let child = (self.command)(self.port)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.what));
        self.child = Some(child);
        wait_listening(self.port, self.what).await;
    }

    /// Kills the server (SIGKILL), like a crash.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.up().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A nisshi broker.
pub struct Broker;

impl Broker {
    /// Memory storage: fast, gone when the broker stops.
    pub async fn start() -> Server {
        Self::start_with("memory://nisshi/").await
    }

    /// SQLite storage in a scratch folder, so that topics and offsets survive a restart.
    pub async fn start_persistent() -> Server {
        // nisshi reads a sqlite:// path relative to its working directory.
        Self::start_with("sqlite://nisshi.db").await
    }

    async fn start_with(storage: &'static str) -> Server {
        let dir = scratch_dir("broker");
        Server::start("nisshi", move |port| {
            let url = format!("tcp://127.0.0.1:{port}");
            let mut c = Command::new(nisshi_bin());
            c.args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", storage])
            .args(["--group-initial-rebalance-delay", "0s"])
            .env("RUST_LOG", "error")
            .current_dir(&dir);
            c
        })
        .await
    }
}

/// A redis-server (append-only file, so a restart keeps the streams).
pub struct RedisServer;

impl RedisServer {
    pub async fn start() -> Server {
        let dir = scratch_dir("redis");
        Server::start("redis-server", move |port| {
            let mut c = Command::new("redis-server");
            c.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args([
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ])
                .arg("--dir")
                .arg(&dir);
            c
        })
        .await
    }
}

impl Server {
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

/// Relay settings for tests: fast leases and polling, few attempts before parking.
pub fn fast_relay(config: &mut Config, brokers: &str, redis_url: &str) {
    config.kafka_brokers = brokers.to_owned();
    config.redis_url = redis_url.to_owned();
    let r = &mut config.relay;
    r.lease_ttl_ms = 2_000;
    r.heartbeat_ms = 500;
    r.poll_interval_ms = 50;
    r.max_attempts = 2;
    r.backoff_initial_ms = 50;
    r.backoff_max_ms = 500;
    let prefix = format!("keel.test.{}.", Uuid::new_v4().simple());
    r.redis.channel_prefix = prefix.clone();
    r.redis.stream_prefix = format!("{prefix}stream.");
}

/// A keel API on a fresh database with the relay in-process, Kafka only (to `broker`), with the
/// fast test settings; `adjust` goes last.
pub async fn spawn_kafka_relayed_app(
    broker: &Server,
    adjust: impl FnOnce(&mut Config),
) -> crate::helpers::TestApp {
    crate::helpers::spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379");
        c.relay.in_process = true;
        c.relay.redis.enabled = false;
        adjust(c);
    })
    .await
}

/// A `keel relay` process with `config`'s settings, killed on drop.
pub struct RelayProcess {
    child: Option<Child>,
    /// Where it serves `/metrics`.
    pub metrics_port: u16,
}

impl RelayProcess {
    pub fn start(config: &Config, name: &str) -> Self {
        let r = &config.relay;
        let metrics_port = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("relay")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEEL_DATABASE_URL", &config.database_url)
            .env("KEEL_KAFKA_BROKERS", &config.kafka_brokers)
            .env("KEEL_REDIS_URL", &config.redis_url)
            .env("KEEL_SCHEMAS_DIR", &config.schemas_dir)
            .env("KEEL_LOG", "warn")
            .env("KEEL_RELAY__NAME", name)
            .env("KEEL_RELAY__LISTEN", format!("127.0.0.1:{metrics_port}"))
            .env("KEEL_RELAY__LEASE_TTL_MS", r.lease_ttl_ms.to_string())
            .env("KEEL_RELAY__HEARTBEAT_MS", r.heartbeat_ms.to_string())
            .env(
                "KEEL_RELAY__POLL_INTERVAL_MS",
                r.poll_interval_ms.to_string(),
            )
            .env("KEEL_RELAY__REDIS__ENABLED", r.redis.enabled.to_string())
            .env("KEEL_RELAY__REDIS__CHANNEL_PREFIX", &r.redis.channel_prefix)
            .env("KEEL_RELAY__REDIS__STREAM_PREFIX", &r.redis.stream_prefix)
            .env(
                "KEEL_OBSERVABILITY__STALL_AFTER_MS",
                config.observability.stall_after_ms.to_string(),
            )
            .env(
                "KEEL_OBSERVABILITY__CANARY_INTERVAL_MS",
                config.observability.canary_interval_ms.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start keel relay");
        Self {
            child: Some(child),
            metrics_port,
        }
    }

    /// SIGTERM, as an orchestrator stops it; returns whether it then exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        sent && child.wait().is_ok_and(|s| s.success())
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("a running relay");
        crate::helpers::signal(child, signal, "keel relay");
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One Kafka record as a plain consumer saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub key: String,
    pub value: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Received {
    pub fn event_id(&self) -> Uuid {
        self.headers["keel-event-id"]
            .parse()
            .expect("event id header")
    }
    pub fn aggregate_id(&self) -> Uuid {
        self.headers["keel-aggregate-id"]
            .parse()
            .expect("aggregate id header")
    }
    pub fn version(&self) -> i32 {
        self.headers["keel-aggregate-version"]
            .parse()
            .expect("version header")
    }
}

/// A plain rdkafka consumer in a group of its own, reading `topics` from the beginning.
pub struct KafkaReader {
    consumer: StreamConsumer,
    pub received: Vec<Received>,
}

impl KafkaReader {
    pub fn new(brokers: &str, topics: &[&str]) -> Self {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("keel-test-{}", Uuid::new_v4().simple()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("topic.metadata.refresh.interval.ms", "500")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("kafka consumer");
        consumer.subscribe(topics).expect("subscribe");
        Self {
            consumer,
            received: Vec::new(),
        }
    }

    /// Reads until `done(received so far)` holds, or panics after `timeout`.
    pub async fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        while !done(&self.received) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {what}; received {} records",
                self.received.len()
            );
            let next =
                tokio::time::timeout(left.min(Duration::from_millis(500)), self.consumer.recv())
                    .await;
            let Ok(next) = next else { continue };
            match next {
                Ok(m) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    let v =
                                        h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                                    (h.key.to_owned(), v.unwrap_or_default())
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    self.received.push(Received {
                        topic: m.topic().to_owned(),
                        key: m
                            .key()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .unwrap_or_default(),
                        value: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Err(e) => tracing::debug!(error = %e, "test consumer error"),
            }
        }
    }

    /// Reads until every id in `ids` has been seen.
    pub async fn read_ids(&mut self, ids: &[Uuid], timeout: Duration) {
        let want: std::collections::HashSet<Uuid> = ids.iter().copied().collect();
        self.read_until(timeout, &format!("{} events", want.len()), |got| {
            let seen: std::collections::HashSet<Uuid> =
                got.iter().map(Received::event_id).collect();
            want.is_subset(&seen)
        })
        .await;
    }
}

/// Checks what a consumer saw against what was appended (`expected`: each aggregate's event ids in
/// version order). Every event must arrive; for each aggregate, the first sight of each event must
/// be in version order; a repeat must be an event already seen (same id, same version).
pub fn assert_in_order(received: &[Received], expected: &HashMap<Uuid, Vec<Uuid>>) {
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut duplicates = 0;
    for r in received {
        let aggregate = r.aggregate_id();
        let Some(ids) = expected.get(&aggregate) else {
            continue;
        };
        let index = (r.version() - 1) as usize;
        assert_eq!(
            ids.get(index),
            Some(&r.event_id()),
            "aggregate {aggregate} version {} carries the wrong event id",
            r.version()
        );
        let next = seen.entry(aggregate).or_default();
        if index < *next {
            duplicates += 1;
            continue;
        }
        assert_eq!(
            index,
            *next,
            "aggregate {aggregate}: version {} arrived before version {}",
            index + 1,
            *next + 1
        );
        *next += 1;
    }
    for (aggregate, ids) in expected {
        assert_eq!(
            seen.get(aggregate).copied().unwrap_or(0),
            ids.len(),
            "aggregate {aggregate} is missing events"
        );
    }
    if duplicates > 0 {
        eprintln!("{duplicates} duplicate deliveries (allowed: same event id, already seen)");
    }
}

/// Appends one event to `agent`; records its id at its version.
pub async fn append_one(
    app: &TestApp,
    agent: Uuid,
    log: &Mutex<HashMap<Uuid, Vec<Uuid>>>,
    body: Value,
) {
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": "any", "events": [body]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id: Uuid = reply.body["events"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let version = reply.body["events"][0]["version"].as_u64().unwrap() as usize;
    let mut log = log.lock().await;
    let ids = log.entry(agent).or_default();
    if ids.len() < version {
        ids.resize(version, Uuid::nil());
    }
    ids[version - 1] = id;
}

/// `producers` concurrent writers append `per_aggregate` events to each of `aggregates` agents,
/// interleaved, several at once on the same agent too. Returns each agent's event ids in version
/// order.
pub async fn append_concurrently(
    app: &TestApp,
    aggregates: usize,
    per_aggregate: usize,
    producers: usize,
) -> HashMap<Uuid, Vec<Uuid>> {
    let agents: Vec<Uuid> = (0..aggregates).map(|_| Uuid::new_v4()).collect();
    let log = Mutex::new(HashMap::new());
    let jobs: Vec<(Uuid, usize)> = (0..per_aggregate)
        .flat_map(|round| agents.iter().map(move |a| (*a, round)))
        .collect();
    futures::stream::iter(jobs)
        .for_each_concurrent(producers, |(agent, round)| {
            let log = &log;
            async move {
                append_one(
                    app,
                    agent,
                    log,
                    agent_state_changed(agent, &format!("s{round}")),
                )
                .await;
            }
        })
        .await;
    let log = log.into_inner();
    assert!(log.values().flatten().all(|id| !id.is_nil()));
    log
}

/// Each aggregate's events of `before`, then of `after`.
pub fn merge(
    mut before: HashMap<Uuid, Vec<Uuid>>,
    after: HashMap<Uuid, Vec<Uuid>>,
) -> HashMap<Uuid, Vec<Uuid>> {
    for (agent, ids) in after {
        before.entry(agent).or_default().extend(ids);
    }
    before
}

pub fn all_ids(expected: &HashMap<Uuid, Vec<Uuid>>) -> Vec<Uuid> {
    expected.values().flatten().copied().collect()
}
