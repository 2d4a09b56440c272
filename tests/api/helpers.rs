//! Test support: every test gets its own database on the real PostgreSQL and its own keel API on
//! port 0, in-process.
//!
//! PostgreSQL comes from `KEEL_TEST_DATABASE_URL` (any database on the server; it is only used to
//! create the per-test ones), or the local default `postgres://postgres@127.0.0.1:5432/postgres`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel::app::Application;
use keel::append::Appender;
use keel::config::{ApiConfig, Config, PoolConfig};
use keel::registry::Registry;
use keel::store::Store;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

#[derive(Clone)]
pub struct TestApp {
    pub config: Config,
    pub addr: SocketAddr,
    pub store: Store,
    /// The write path, as the library offers it: validator and store.
    pub appender: Appender,
    pub registry: Arc<Registry>,
    /// The bootstrap admin's key, which every request of [`TestApp`]'s own client carries.
    pub admin_key: String,
    /// Every route the API serves, with its guard.
    pub routes: Vec<keel::api::Route>,
    client: reqwest::Client,
}

/// The limits the tests run with: small, so that the limit checks are cheap to reach.
pub fn test_limits() -> ApiConfig {
    ApiConfig {
        max_body_bytes: 64 * 1024,
        max_batch_events: 20,
        max_page_size: 500,
        default_page_size: 100,
        max_offset: 10_000,
        validate_payloads: true,
        // The authorisation tests send many refused credentials from one address; the peer
        // limit has tests of its own (rate_limit.rs).
        rate_limit: keel::config::RateLimitConfig {
            failed_auth_per_minute: 0,
            ..Default::default()
        },
        ..ApiConfig::default()
    }
}

/// A fresh database URL on the test server, for a database that does not exist yet.
pub fn fresh_database_url() -> String {
    let base = std::env::var("KEEL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server, _) = base
        .rsplit_once('/')
        .expect("KEEL_TEST_DATABASE_URL must name a database");
    format!("{server}/keel_test_{}", Uuid::new_v4().simple())
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The server secret API keys are stored under in tests (at least 32 bytes).
pub const TEST_KEY_SECRET: &str = "keel-test-server-secret-0123456789abcdef";

/// A fresh bootstrap key file holding a new key, and the key.
pub fn bootstrap_key_file() -> (PathBuf, String) {
    let key = keel::auth::ApiKey::generate().unwrap().expose_secret();
    let path = std::env::temp_dir().join(format!("keel-test-{}.key", Uuid::new_v4().simple()));
    std::fs::write(&path, &key).unwrap();
    (path, key)
}

/// The configuration tests run keel with, on a fresh database: authentication on, with a fresh
/// bootstrap admin key.
pub fn test_config() -> Config {
    let (key_file, _) = bootstrap_key_file();
    Config {
        database_url: fresh_database_url(),
        listen: ([127, 0, 0, 1], 0).into(),
        schemas_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas"),
        pool: PoolConfig {
            max_connections: 12,
            acquire_timeout_ms: 30_000,
        },
        api: test_limits(),
        auth: keel::config::AuthConfig {
            key_secret: Some(keel::config::Secret::new(TEST_KEY_SECRET)),
            bootstrap_key_file: Some(key_file),
            ..Default::default()
        },
        ..Config::default()
    }
}

/// The key in the config's bootstrap key file.
pub fn admin_key(config: &Config) -> String {
    let path = config
        .auth
        .bootstrap_key_file
        .as_ref()
        .expect("a bootstrap key file");
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

/// A client that sends `key` with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        // Idle pooled connections are dropped before keel's header read timeout (10 s by
        // default) closes them on the server side, so no request races a closing connection.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("a reqwest client")
}

/// Like [`spawn_app`], with `adjust` applied to the test configuration first.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = test_config();
    adjust(&mut config);
    let app = Application::build(&config)
        .await
        .expect("keel builds against the test database");
    let addr = app.local_addr();
    let store = app.store().clone();
    let appender = app.appender().clone();
    let registry = app.registry().clone();
    let routes = app.routes();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    let admin_key = match config.auth.mode {
        keel::config::AuthMode::Required => admin_key(&config),
        keel::config::AuthMode::None => String::new(),
    };
    TestApp {
        client: client_with_key(&admin_key),
        config,
        addr,
        store,
        appender,
        registry,
        admin_key,
        routes,
    }
}

/// A reply: status and parsed JSON body (`Value::Null` when the body is not JSON).
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
}

impl Reply {
    /// The stable error code, asserting the error shape on the way.
    pub fn error_code(&self) -> &str {
        let error = &self.body["error"];
        assert!(
            error["message"].is_string(),
            "error without message: {}",
            self.body
        );
        assert!(
            error["details"].is_object(),
            "error without details: {}",
            self.body
        );
        error["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }
}

impl TestApp {
    /// The client the test app's own requests use: it sends the admin key.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    async fn reply(response: reqwest::Response) -> Reply {
        let status = response.status();
        let bytes = response.bytes().await.expect("response body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        Self::reply(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    /// A GET's body as text (`/metrics`, say), asserting 200.
    pub async fn get_text(&self, path: &str) -> String {
        let reply = self.client.get(self.url(path)).send().await.expect("GET");
        assert_eq!(reply.status(), StatusCode::OK, "GET {path}");
        reply.text().await.expect("body")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        Self::reply(
            self.client
                .post(self.url(path))
                .json(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    /// POSTs raw bytes with the given content type.
    pub async fn post_raw(&self, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut request = self.client.post(self.url(path)).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        Self::reply(request.send().await.expect("POST")).await
    }

    pub async fn append(&self, aggregate_type: &str, aggregate_id: Uuid, body: &Value) -> Reply {
        self.post_json(
            &format!("/v1/aggregates/{aggregate_type}/{aggregate_id}/events"),
            body,
        )
        .await
    }

    /// The registry id of version `version` of `event_type`'s schema.
    pub async fn schema_id(&self, event_type: &str, version: i32) -> i32 {
        self.registry
            .event_schema(event_type, Some(version))
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{event_type} has no schema version {version}"))
            .id
    }

    /// Creates the principal `name` with `roles` and custom `grants` (effect, action, resource,
    /// event type), and returns a key of it.
    pub async fn principal(
        &self,
        name: &str,
        roles: &[keel::auth::Role],
        grants: &[(&str, &str, &str, &str)],
    ) -> String {
        let keys = keel::auth::Keys::from_config(self.store.pool().clone(), &self.config.auth)
            .expect("the test key store");
        let name = keel::auth::PrincipalName::parse(name).unwrap();
        let mut tx = self.store.pool().begin().await.unwrap();
        keys.create_principal(&mut tx, &name, keel::auth::Kind::Service, roles)
            .await
            .unwrap();
        for (effect, action, resource, event_type) in grants {
            let grant = keel::auth::Grant::parse(effect, action, resource, event_type).unwrap();
            keys.add_grant(&mut tx, &name, &grant).await.unwrap();
        }
        let key = keys.create_key(&mut tx, &name, None).await.unwrap();
        tx.commit().await.unwrap();
        key.expose_secret()
    }

    /// The `keel` binary pointed at this app's API (`KEEL_URL`) with the admin key.
    pub fn keel(&self) -> std::process::Command {
        self.keel_with(Some(&self.admin_key))
    }

    /// The `keel` binary pointed at this app's API with `key` in `KEEL_API_KEY` (none: unset).
    pub fn keel_with(&self, key: Option<&str>) -> std::process::Command {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("KEEL_CONFIG")
            .env_remove("KEEL_API_KEY")
            .env("KEEL_URL", self.url(""))
            .env("KEEL_LOG", "warn");
        if let Some(key) = key {
            command.env("KEEL_API_KEY", key);
        }
        command
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.store.pool())
            .await
            .expect("count")
    }
}

/// What a run of the `keel` binary gave.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout, asserting that the command succeeded.
    pub fn expect_ok(self, what: &str) -> String {
        assert!(self.ok, "{what} failed: {}{}", self.stdout, self.stderr);
        self.stdout
    }

    /// Stdout's lines as JSON.
    pub fn json_lines(self, what: &str) -> Vec<Value> {
        self.expect_ok(what)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{what}: {e}: {l}")))
            .collect()
    }
}

/// Runs `command` to its end without blocking the runtime (an in-process app may be the server
/// it talks to).
pub async fn run(command: std::process::Command) -> Run {
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .expect("run keel");
    Run {
        ok: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// A valid `agent.state.changed` event.
pub fn agent_state_changed(agent: Uuid, to: &str) -> Value {
    json!({
        "type": "agent.state.changed",
        "payload": {"agent_id": agent, "from_state": null, "to_state": to, "reason": null}
    })
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    within(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Polls `check` until it returns `Some`, or gives `None` after `timeout`, for callers that explain
/// a timeout themselves.
pub async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `signal` (`STOP`, `CONT`, `TERM`, ...) to `child`, a `what` the test started.
pub fn signal(child: &std::process::Child, signal: &str, what: &str) {
    let sent = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(sent, "cannot send SIG{signal} to {what}");
}

/// A `keel serve` process of its own on `app`'s database (same server secret, so `app`'s keys
/// work), with `env` on top, ready when this returns; killed on drop.
pub struct ServeProcess {
    child: std::process::Child,
    pub url: String,
}

impl ServeProcess {
    pub async fn start(app: &TestApp, env: &[(&str, String)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("KEEL_CONFIG")
            .env("KEEL_DATABASE_URL", &app.config.database_url)
            .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
            .env("KEEL_AUTH__KEY_SECRET", TEST_KEY_SECRET)
            .env("KEEL_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start keel serve");
        let url = format!("http://127.0.0.1:{port}");
        let ready = format!("{url}/v1/health/ready");
        eventually(Duration::from_secs(30), "keel serve to be ready", || {
            let ready = ready.clone();
            async move {
                let reply = reqwest::get(ready).await.ok()?;
                (reply.status() == StatusCode::OK).then_some(())
            }
        })
        .await;
        Self { child, url }
    }

    /// A clean stop: SIGTERM, and wait for the process to exit.
    pub fn terminate(mut self) {
        signal(&self.child, "TERM", "keel serve");
        let status = self.child.wait().expect("wait for keel serve");
        assert!(
            status.success(),
            "keel serve exited with {status} on SIGTERM"
        );
    }

    /// A crash: SIGKILL, and wait for the process to be gone.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
