//! Secrets are never logged: the `keel` binary at `KEEL_LOG=trace`, with a distinct canary in
//! every secret slot keel has (the API key server secret, the database URL's password in both
//! its forms, the Redis URL's password, librdkafka's secret settings for the relay and the
//! projections, and credentials in request headers), through start-up, requests, failed
//! connections to PostgreSQL, Redis and Kafka, and shutdown. No canary may appear in stdout,
//! stderr or `/metrics`.
//!
//! The capture must hold trace-level lines and evidence that each failure happened (the test
//! waits for it), so the test cannot pass by capturing nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::cli::{free_port, keel};
use crate::helpers::{agent_state_changed, eventually, fresh_database_url, within};

/// One canary per slot: `SECRET-CANARY-<slot>-<uuid>`. A leak that keeps only part of a value is
/// still found: the uuid part is searched for on its own too.
struct Canaries {
    values: Vec<(String, String)>,
    /// The bootstrap admin's key, for the requests that must succeed.
    admin_key: Option<String>,
}

impl Canaries {
    fn new() -> Self {
        Self {
            values: Vec::new(),
            admin_key: None,
        }
    }

    /// A new canary for `slot`.
    fn slot(&mut self, slot: impl Into<String>) -> String {
        let slot = slot.into();
        let value = format!("SECRET-CANARY-{slot}-{}", Uuid::new_v4().simple());
        self.values.push((slot, value.clone()));
        value
    }

    /// `value` itself is a secret to look for (one that cannot have the canary's shape).
    fn raw(&mut self, slot: &str, value: String) {
        self.values.push((slot.to_owned(), value));
    }

    /// Panics with the slot and the line if any canary, or its random part, is in `text`.
    fn assert_absent(&self, what: &str, text: &str) {
        for (slot, value) in &self.values {
            let random = value.rsplit('-').next().unwrap_or(value);
            for needle in [value.as_str(), random] {
                if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                    panic!("the {slot} secret leaked into {what}:\n{line}");
                }
            }
        }
    }
}

/// A keel process whose stdout and stderr go to one file; killed on drop.
struct Captured {
    child: Option<Child>,
    log: PathBuf,
}

impl Captured {
    fn spawn(command: &mut Command) -> Self {
        let log = std::env::temp_dir().join(format!("keel-secrets-{}.log", Uuid::new_v4()));
        let file = std::fs::File::create(&log).unwrap();
        let child = command
            .env("KEEL_LOG", "trace")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            log,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap()).into_owned()
    }

    /// Waits until the capture holds a line that `matches`; on time-out, shows the warnings and
    /// errors captured.
    async fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool) {
        let seen = within(Duration::from_secs(30), || async {
            self.text().lines().any(&matches).then_some(())
        })
        .await;
        if seen.is_none() {
            let text = self.text();
            let problems: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("failed this round")
                })
                .collect();
            panic!(
                "timed out waiting for {what}; warnings and errors:\n{}",
                problems.join("\n")
            );
        }
    }

    /// Waits for the process to exit (after SIGTERM, or by itself) and returns whether it
    /// succeeded and everything it wrote.
    async fn finish(mut self, terminate: bool) -> (bool, String) {
        let mut child = self.child.take().unwrap();
        if terminate {
            let pid = child.id().to_string();
            assert!(Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success());
        }
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::task::spawn_blocking(move || child.wait()),
        )
        .await;
        let status = waited
            .expect("keel exits within a minute")
            .unwrap()
            .unwrap();
        (status.success(), self.text())
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A config file with a canary in each of `secrets` (librdkafka settings) for the relay's
/// producer and the projections' consumers, with SASL over plaintext so that librdkafka reads
/// them.
fn kafka_config(canaries: &mut Canaries, secrets: &[&str]) -> PathBuf {
    let mut text = String::new();
    for (section, prefix) in [
        ("relay.kafka.properties", "relay"),
        ("projections.properties", "projections"),
    ] {
        text += &format!(
            "[{section}]\n\"security.protocol\" = \"SASL_PLAINTEXT\"\n\
             \"sasl.mechanism\" = \"PLAIN\"\n\"sasl.username\" = \"keel\"\n"
        );
        for setting in secrets {
            let value = canaries.slot(format!("{prefix}.{setting}"));
            text += &format!("\"{setting}\" = \"{value}\"\n");
        }
    }
    let path = std::env::temp_dir().join(format!("keel-secrets-{}.toml", Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    path
}

/// `keel <args>` with a canary in every secret slot: the database URL's password
/// (`database_url` makes the URL from it), the Redis URL's (Redis at `redis`), the API key server
/// secret, and librdkafka's `kafka_secrets` (Kafka nowhere: a free port). Also returns the config
/// file, for the caller to remove.
fn keel_with_canaries(
    canaries: &mut Canaries,
    args: &[&str],
    database_url: impl Fn(&str) -> String,
    redis: &str,
    kafka_secrets: &[&str],
) -> (Command, PathBuf) {
    let config = kafka_config(canaries, kafka_secrets);
    let mut command = keel();
    command
        .args(args)
        .arg("--config")
        .arg(&config)
        .env(
            "KEEL_DATABASE_URL",
            database_url(&canaries.slot("database_url")),
        )
        .env(
            "KEEL_REDIS_URL",
            format!("redis://:{}@{redis}/", canaries.slot("redis_url")),
        )
        .env("KEEL_KAFKA_BROKERS", format!("127.0.0.1:{}", free_port()))
        .env("KEEL_AUTH__KEY_SECRET", canaries.slot("auth.key_secret"))
        .env("KEEL_LISTEN", format!("127.0.0.1:{}", free_port()));
    // The first admin's key: a real one, so requests can succeed; its secret is a canary too.
    let (key_file, key) = crate::helpers::bootstrap_key_file();
    canaries.raw(
        "bootstrap_key_secret",
        key.rsplit_once('_').unwrap().1.to_owned(),
    );
    canaries.admin_key = Some(key);
    command.env("KEEL_AUTH__BOOTSTRAP_KEY_FILE", &key_file);
    (command, config)
}

/// A fresh test database's URL with `password` in it (trust authentication ignores it).
fn database_with_password(password: &str) -> String {
    let url = fresh_database_url();
    let with = url.replacen(
        "postgres://postgres@",
        &format!("postgres://postgres:{password}@"),
        1,
    );
    assert_ne!(
        with, url,
        "KEEL_TEST_DATABASE_URL must be postgres://postgres@..."
    );
    with
}

/// librdkafka settings keel starts with here; the OAuth client secret is refused by this
/// librdkafka build (no libcurl), so it is left to [`a_refused_kafka_setting_is_reported_without_its_value`].
const KAFKA_SECRETS: &[&str] = &["sasl.password", "ssl.key.password", "ssl.keystore.password"];

/// `keel serve` with the relay and the projections in-process, every secret slot a canary, the
/// database reachable, Redis at `redis` and Kafka nowhere. Requests carry canary credentials;
/// `/metrics` is read; the relay is given an event so that it tries Redis and Kafka, and the test
/// waits until both failures are in the log (`redis_failure`, librdkafka's connection refusal).
async fn serve_with_canaries(redis: &str, redis_failure: &str) {
    let mut canaries = Canaries::new();
    let (mut command, config) = keel_with_canaries(
        &mut canaries,
        &["serve", "--relay", "--projections"],
        database_with_password,
        redis,
        KAFKA_SECRETS,
    );
    let port = free_port();
    let server = Captured::spawn(command.env("KEEL_LISTEN", format!("127.0.0.1:{port}")));
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually(
        Duration::from_secs(60),
        "keel serve to become ready",
        || {
            let (client, url) = (client.clone(), format!("{base}/v1/health/ready"));
            async move {
                let reply = client.get(url).send().await.ok()?;
                (reply.status() == StatusCode::OK).then_some(())
            }
        },
    )
    .await;

    // Credentials in requests: a bearer token, an API key of keel's shape, and the same key as
    // HTTP Basic on the registry, as Confluent clients send it.
    let bearer = canaries.slot("authorization_bearer");
    let key_id = Uuid::new_v4().simple().to_string()[..16].to_owned();
    let key_secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    canaries.raw("api_key_secret", key_secret.clone());
    let api_key = format!("keel_{key_id}_{key_secret}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{key_id}:{key_secret}"));
    canaries.raw("basic_credentials", basic.clone());
    let agent = Uuid::new_v4();
    let admin_key = canaries.admin_key.clone().expect("the bootstrap key");
    let refused = client
        .post(format!("{base}/v1/aggregates/agent/{agent}/events"))
        .bearer_auth(&bearer)
        .json(&json!({"events": [agent_state_changed(agent, "running")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let appended = client
        .post(format!("{base}/v1/aggregates/agent/{agent}/events"))
        .bearer_auth(&admin_key)
        .json(&json!({"events": [agent_state_changed(agent, "running")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(appended.status(), StatusCode::CREATED);
    for (path, authorization) in [
        ("/v1/events", format!("Bearer {api_key}")),
        ("/v1/events/not-an-id", format!("Bearer {bearer}")),
        ("/registry/subjects", format!("Basic {basic}")),
    ] {
        let reply = client
            .get(format!("{base}{path}"))
            .header("authorization", authorization)
            .header("proxy-authorization", format!("Bearer {api_key}"))
            .header("cookie", format!("session={bearer}"))
            .send()
            .await
            .unwrap();
        assert!(
            reply.status() != StatusCode::INTERNAL_SERVER_ERROR,
            "{path}"
        );
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("keel_append_requests_total"), "{metrics}");

    server
        .wait_for_line("the relay's redis failure", |l| {
            l.contains("publishes failed this round sink=redis") && l.contains(redis_failure)
        })
        .await;
    server
        .wait_for_line("librdkafka's connection failure", |l| {
            l.contains("librdkafka") && l.contains("Connection refused")
        })
        .await;
    let (ok, log) = server.finish(true).await;
    let _ = std::fs::remove_file(&config);

    assert!(ok, "keel serve stops cleanly on SIGTERM:\n{log}");
    assert_captured(&log, " TRACE ");
    assert!(log.contains("/v1/events"), "the requests are in the trace");
    canaries.assert_absent("the log", &log);
    canaries.assert_absent("/metrics", &metrics);
}

/// The capture is keel's own output at the level asked, not an empty file: it holds a line with
/// `level`, and the configuration (every slot, redacted) logged at start-up.
fn assert_captured(log: &str, level: &str) {
    assert!(
        log.lines().any(|l| l.contains(level)),
        "no {level} line captured:\n{log}"
    );
    assert!(
        log.contains("configuration loaded") && log.contains("key_secret: Some(***)"),
        "the configuration is not in the log:\n{log}"
    );
}

#[tokio::test]
async fn no_secret_reaches_the_log_or_metrics_when_redis_is_unreachable() {
    serve_with_canaries("127.0.0.1:1", "Connection refused").await;
}

#[tokio::test]
async fn no_secret_reaches_the_log_or_metrics_when_redis_refuses_the_password() {
    // The local Redis does not take this password: it answers AUTH with an error.
    serve_with_canaries("127.0.0.1:6379", "authentication failed").await;
}

/// `keel <args>` that fails to start, every slot a canary: the failure (`failure`) is logged
/// and printed, no secret is.
async fn fails_without_leaking(
    args: &[&str],
    database_url: impl Fn(&str) -> String,
    kafka_secrets: &[&str],
    failure: &str,
) {
    let mut canaries = Canaries::new();
    let (mut command, config) = keel_with_canaries(
        &mut canaries,
        args,
        database_url,
        "127.0.0.1:1",
        kafka_secrets,
    );
    let (ok, log) = Captured::spawn(&mut command).finish(false).await;
    let _ = std::fs::remove_file(&config);
    assert!(!ok, "keel {args:?} cannot start:\n{log}");
    assert!(log.contains(failure), "expected {failure:?} in:\n{log}");
    assert_captured(&log, " DEBUG ");
    canaries.assert_absent("the log", &log);
}

#[tokio::test]
async fn a_database_that_refuses_connections_is_reported_without_its_password() {
    for url in [
        |password: &str| format!("postgres://postgres:{password}@127.0.0.1:1/keel"),
        |password: &str| format!("postgres://postgres@127.0.0.1:1/keel?password={password}"),
    ] {
        fails_without_leaking(&["serve"], url, KAFKA_SECRETS, "cannot reach PostgreSQL").await;
    }
}

#[tokio::test]
async fn a_database_that_refuses_the_login_is_reported_without_its_password() {
    let database = fresh_database_url();
    let (_, name) = database.rsplit_once('/').unwrap();
    let url =
        |password: &str| format!("postgres://keel_no_such_role:{password}@127.0.0.1:5432/{name}");
    fails_without_leaking(&["serve"], url, KAFKA_SECRETS, "keel_no_such_role").await;
}

/// librdkafka refuses a setting it does not support; rdkafka's error quotes the value given.
#[tokio::test]
async fn a_refused_kafka_setting_is_reported_without_its_value() {
    let secrets = ["sasl.password", "sasl.oauthbearer.client.secret"];
    fails_without_leaking(
        &["serve", "--relay"],
        database_with_password,
        &secrets,
        "sasl.oauthbearer.client.secret",
    )
    .await;
}
