//! Pipeline health against real processes and a real broker: a frozen `keel relay` or
//! `keel project` or consumer group member (SIGSTOP) turns `keel serve`'s `/v1/health/pipeline` to 503 naming it within
//! twice the stall threshold while the API stays live and ready, and SIGCONT brings it back
//! without a restart; Redis down is named as Redis (its sink and its canary) while the Kafka path
//! stays ok; a rebuild is degraded, never unhealthy; an idle pipeline with the canary on stays
//! healthy for fifty thresholds.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::consumer::ConsumerProcess;
use crate::helpers::{
    agent_state_changed, eventually, spawn_app_with, within, ServeProcess, TestApp,
};
use crate::relay_support::{
    append_concurrently, fast_relay, spawn_kafka_relayed_app, Broker, RedisServer, RelayProcess,
    Server,
};
use crate::tls_support::PgServer;

/// The stall threshold the tests run with. Stages beat and the monitor samples every sixth of it.
const STALL_MS: u64 = 3_000;
const STALL: Duration = Duration::from_millis(STALL_MS);
/// The stall threshold of the idle-pipeline test, which runs beside the whole suite.
const IDLE_STALL_MS: u64 = 10_000;

async fn pipeline(app: &TestApp) -> (StatusCode, Value) {
    let reply = app.get("/v1/health/pipeline").await;
    (reply.status, reply.body)
}

fn status_of<'v>(body: &'v Value, component: &str) -> &'v str {
    body["components"][component]["status"]
        .as_str()
        .unwrap_or("absent")
}

/// Waits until every one of `components` is ok and the pipeline answers 200.
async fn all_ok(app: &TestApp, components: &[&str], timeout: Duration) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = within(timeout, || async {
        let (code, body) = pipeline(app).await;
        let ok = code == StatusCode::OK && components.iter().all(|c| status_of(&body, c) == "ok");
        *last.lock().unwrap() = body.clone();
        ok.then_some(body)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {components:?} to be ok; the pipeline said {}",
            last.lock().unwrap()
        )
    })
}

/// Appends to a few agents every 20 ms until dropped.
struct Load {
    on: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    fn start(app: &TestApp) -> Self {
        let on = Arc::new(AtomicBool::new(true));
        let (app, running) = (app.clone(), on.clone());
        let task = tokio::spawn(async move {
            let agents: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                let agent = agents[n as usize % agents.len()];
                let body = json!({"expected_version": "any", "events": [agent_state_changed(agent, "busy")]});
                let reply = app.append("agent", agent, &body).await;
                assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        });
        Self { on, task }
    }

    async fn stop(self) -> u64 {
        self.on.store(false, Ordering::Relaxed);
        self.task.await.expect("the load task")
    }
}

/// Polls until `component` is unhealthy and the pipeline answers 503; checks on the way that the
/// API's own liveness and readiness stay 200. Returns how long it took and the verdict.
async fn until_unhealthy(app: &TestApp, component: &str) -> (Duration, Value) {
    let t0 = Instant::now();
    let found = within(Duration::from_secs(30), || async {
        let (code, body) = pipeline(app).await;
        assert_eq!(app.get("/v1/health/live").await.status, StatusCode::OK);
        assert_eq!(app.get("/v1/health/ready").await.status, StatusCode::OK);
        (code == StatusCode::SERVICE_UNAVAILABLE && status_of(&body, component) == "unhealthy")
            .then_some(body)
    })
    .await;
    let body = found.unwrap_or_else(|| panic!("{component} never turned unhealthy"));
    eprintln!(
        "{component} unhealthy after {:?}: {}",
        t0.elapsed(),
        body["components"][component]
    );
    (t0.elapsed(), body)
}

fn health_config(c: &mut keel::config::Config) {
    c.observability.stall_after_ms = STALL_MS;
}

/// A PostgreSQL server of the test's own, for tests that freeze a keel process: one frozen inside
/// a write transaction holds back the log horizon of every database on its server (that is how
/// the gap-safe log works), which would stall the other tests' relays on the shared server.
fn private_postgres() -> PgServer {
    if let Some(why) = crate::tls_support::postgres_unavailable() {
        panic!("this test needs a PostgreSQL server of its own and cannot start one: {why}");
    }
    PgServer::start_plain()
}

fn on(pg: &PgServer) -> String {
    pg.url("127.0.0.1", "keel", "sslmode=disable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_relay_turns_the_pipeline_unhealthy_within_twice_the_threshold_and_recovers_on_cont(
) {
    let broker = Broker::start().await;
    let redis = RedisServer::start().await;
    let pg = private_postgres();
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), &redis.url());
        health_config(c);
        c.database_url = on(&pg);
    })
    .await;
    let relay = RelayProcess::start(&app.config, "relay-under-test");
    let observer = observer(&app).await;
    let load = Load::start(&app);
    let sinks = ["relay.kafka", "relay.redis", "kafka", "redis", "database"];
    all_ok(&app, &sinks, Duration::from_secs(60)).await;
    // The relay process answers the same three levels on its own listener; it is ready while
    // its sink loops turn.
    let own = format!("http://127.0.0.1:{}", relay.metrics_port);
    let ready: Value = reqwest::get(format!("{own}/v1/health/ready"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready", "{ready}");
    assert_eq!(ready["checks"]["relay.kafka"], "ok", "{ready}");
    assert_eq!(ready["checks"]["relay.redis"], "ok", "{ready}");
    let theirs = reqwest::get(format!("{own}/v1/health/pipeline"))
        .await
        .unwrap();
    assert_eq!(theirs.status(), StatusCode::OK);
    let theirs: Value = theirs.json().await.unwrap();
    assert_eq!(status_of(&theirs, "relay.kafka"), "ok", "{theirs}");

    relay.signal("STOP");
    let (took, body) = until_unhealthy(&app, "relay.kafka").await;
    // A second process sees it too: the verdict comes from PostgreSQL, not from memory.
    let (code, theirs) = pipeline_of(&observer).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{theirs}");
    assert_eq!(status_of(&theirs, "relay.kafka"), "unhealthy", "{theirs}");
    assert!(
        took <= 2 * STALL,
        "the frozen relay was reported after {took:?}, more than twice the {STALL:?} threshold: {body}"
    );
    let reason = body["components"]["relay.kafka"]["reason"]
        .as_str()
        .unwrap();
    assert!(!reason.is_empty(), "{body}");
    assert_eq!(status_of(&body, "database"), "ok", "{body}");
    assert_eq!(status_of(&body, "kafka"), "ok", "{body}");
    assert!(body["components"]["relay.kafka"]["since"].is_string());
    // The readings behind the verdict are metrics too. Read off a `keel serve` process of its
    // own: in this test process every app's monitor writes the one global recorder.
    let metrics = metrics_of(&observer, &app).await;
    let reading = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    assert_eq!(
        reading("keel_pipeline_status{component=\"relay.kafka\"}"),
        2.0
    );
    assert!(reading("keel_stage_heartbeat_age_seconds{component=\"relay.kafka\"}") >= 2.0);
    assert!(reading("keel_outbox_undelivered_age_seconds{sink=\"kafka\"}") > 0.0);
    assert!(reading("keel_store_head_position") > 0.0);

    // `keel health` says the same, worst first, and fails while the pipeline is unhealthy.
    let out = app.keel().arg("health").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.starts_with("✖ pipeline unhealthy"), "{text}");
    assert!(
        text.lines().nth(1).unwrap_or("").contains("relay."),
        "{text}"
    );

    relay.signal("CONT");
    all_ok(&app, &sinks, Duration::from_secs(30)).await;
    let out = app.keel().args(["health", "--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status_of(&said, "relay.kafka"), "ok", "{said}");
    assert!(load.stop().await > 0);
}

/// A `keel serve` of its own watching the app's database and services: what a second process
/// sees, and metrics that no other app in this test process writes into.
async fn observer(app: &TestApp) -> ServeProcess {
    let c = &app.config;
    let env = [
        ("KEEL_KAFKA_BROKERS", c.kafka_brokers.clone()),
        ("KEEL_REDIS_URL", c.redis_url.clone()),
        ("KEEL_OBSERVABILITY__STALL_AFTER_MS", STALL_MS.to_string()),
    ];
    ServeProcess::start(app, &env).await
}

async fn pipeline_of(server: &ServeProcess) -> (StatusCode, Value) {
    let reply = reqwest::get(format!("{}/v1/health/pipeline", server.url))
        .await
        .unwrap();
    (reply.status(), reply.json().await.unwrap())
}

async fn metrics_of(server: &ServeProcess, app: &TestApp) -> String {
    let reply = crate::helpers::client_with_key(&app.admin_key)
        .get(format!("{}/metrics", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    reply.text().await.unwrap()
}

/// Waits until a line of `server`'s `/metrics` starts with `series` (the monitor exports what it
/// has sampled, a sample after the stage appeared).
async fn metric_shows(server: &ServeProcess, app: &TestApp, series: &str) {
    let found = within(Duration::from_secs(30), || async {
        let text = metrics_of(server, app).await;
        text.lines().any(|l| l.starts_with(series)).then_some(())
    })
    .await;
    assert!(found.is_some(), "no {series} on the observer's /metrics");
}

/// A `keel project` process with the app's settings, killed on drop.
struct Projector {
    child: Child,
    config: std::path::PathBuf,
}

impl Projector {
    fn start(app: &TestApp) -> Self {
        let config = std::env::temp_dir().join(format!("keel-health-{}.toml", Uuid::new_v4()));
        std::fs::write(
            &config,
            format!(
                "[observability]\nstall_after_ms = {STALL_MS}\n[projections.properties]\n\
                 \"session.timeout.ms\" = \"6000\"\n\"fetch.wait.max.ms\" = \"50\"\n"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["--config", config.to_str().unwrap(), "project"])
            .env_remove("KEEL_CONFIG")
            .env("KEEL_PROJECTIONS__LISTEN", "127.0.0.1:0")
            .env("KEEL_DATABASE_URL", &app.config.database_url)
            .env("KEEL_KAFKA_BROKERS", &app.config.kafka_brokers)
            .env("KEEL_SCHEMAS_DIR", &app.config.schemas_dir)
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start keel project");
        Self { child, config }
    }

    fn signal(&self, signal: &str) {
        crate::helpers::signal(&self.child, signal, "keel project");
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_projection_runner_turns_the_pipeline_unhealthy_and_recovers_on_cont() {
    let broker = Broker::start().await;
    let pg = private_postgres();
    let app = spawn_kafka_relayed_app(&broker, |c| {
        health_config(c);
        c.database_url = on(&pg);
    })
    .await;
    let projector = Projector::start(&app);
    let observer = observer(&app).await;
    let load = Load::start(&app);
    let name = "projection.agent_status";
    all_ok(&app, &[name, "relay.kafka"], Duration::from_secs(90)).await;

    projector.signal("STOP");
    let (took, body) = until_unhealthy(&app, name).await;
    assert!(
        took <= 2 * STALL,
        "the frozen runner was reported after {took:?}: {body}"
    );
    assert_eq!(status_of(&body, "relay.kafka"), "ok", "{body}");

    projector.signal("CONT");
    all_ok(&app, &[name, "relay.kafka"], Duration::from_secs(60)).await;
    load.stop().await;
    // The pipeline's lag figures are exported for the group the runners share (read off a
    // process of its own: every app in this test process shares one recorder).
    metric_shows(
        &observer,
        &app,
        "keel_consumer_lag_messages{group=\"keel-projection-agent_status\"",
    )
    .await;
    metric_shows(
        &observer,
        &app,
        "keel_projection_checkpoint{projection=\"agent_status\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_redis_down_the_pipeline_names_redis_while_the_kafka_path_stays_ok() {
    let broker = Broker::start().await;
    let mut redis: Server = RedisServer::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), &redis.url());
        c.relay.in_process = true;
        c.observability.canary_interval_ms = 500;
        health_config(c);
    })
    .await;
    let load = Load::start(&app);
    let path = [
        "relay.kafka",
        "relay.redis",
        "kafka",
        "redis",
        "canary.kafka",
        "canary.redis",
    ];
    all_ok(&app, &path, Duration::from_secs(60)).await;

    redis.stop();
    let mut body = until_unhealthy(&app, "redis").await.1;
    for c in ["relay.redis", "canary.redis"] {
        if status_of(&body, c) != "unhealthy" {
            body = until_unhealthy(&app, c).await.1;
        }
    }
    for c in ["kafka", "relay.kafka", "canary.kafka"] {
        assert_eq!(status_of(&body, c), "ok", "{c}: {body}");
    }

    redis.restart().await;
    all_ok(&app, &path, Duration::from_secs(60)).await;
    load.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_projection_rebuild_is_degraded_never_unhealthy() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |c| {
        // A threshold above this suite's 3 s: what is judged here is the rebuild (degraded, never
        // unhealthy), and on a loaded 2-core machine running the whole suite a runner's beat has
        // been seen 3 s late while a one-event-per-transaction rebuild shares its pool.
        c.observability.stall_after_ms = 8_000;
        c.projections.in_process = true;
    })
    .await;
    append_concurrently(&app, 40, 40, 8).await;
    let name = "projection.agent_status";
    all_ok(&app, &[name], Duration::from_secs(90)).await;

    // One event per transaction, so that the rebuild lasts several samples.
    let rebuild = app
        .client()
        .post(app.url("/v1/projections/agent_status/rebuild"))
        .json(&json!({"page": 1}))
        .send();
    let rebuild = tokio::spawn(async move {
        let reply = rebuild.await.expect("POST rebuild");
        let status = reply.status();
        (status, reply.text().await.unwrap_or_default())
    });
    let mut seen = Vec::new();
    // Under a loaded machine a rebuild runs slower than the threshold's worth of samples: keep
    // watching while it runs.
    while !rebuild.is_finished() {
        let (_, body) = pipeline(&app).await;
        let c = body["components"][name].clone();
        assert_ne!(
            c["status"], "unhealthy",
            "a rebuild made {name} unhealthy: {body}"
        );
        seen.push(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, report) = rebuild.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{report}");
    assert!(
        seen.iter()
            .any(|c| c["status"] == "degraded" && c["reason"] == "rebuilding"),
        "the rebuild was never shown as degraded: {seen:?}"
    );
    all_ok(&app, &[name], Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_consumer_group_member_turns_the_pipeline_unhealthy_and_recovers_on_cont() {
    let broker = Broker::start().await;
    let pg = private_postgres();
    let app = spawn_kafka_relayed_app(&broker, |c| {
        health_config(c);
        c.database_url = on(&pg);
    })
    .await;
    let beat = (STALL_MS / 6).to_string();
    let member = ConsumerProcess::start(&app, &broker, "billing", "one", &["--beat-ms", &beat]);
    let observer = observer(&app).await;
    let load = Load::start(&app);
    let name = "group.billing";
    all_ok(&app, &[name, "relay.kafka"], Duration::from_secs(90)).await;

    member.signal("STOP");
    let (took, body) = until_unhealthy(&app, name).await;
    assert!(
        took <= 2 * STALL,
        "the frozen member was reported after {took:?}: {body}"
    );
    assert_eq!(status_of(&body, "relay.kafka"), "ok", "{body}");

    member.signal("CONT");
    all_ok(&app, &[name, "relay.kafka"], Duration::from_secs(60)).await;
    load.stop().await;
    metric_shows(
        &observer,
        &app,
        "keel_consumer_lag_messages{group=\"billing\",topic=\"keel.agent\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_pipeline_with_the_canary_on_stays_healthy_for_minutes() {
    let broker = Broker::start().await;
    let redis = RedisServer::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), &redis.url());
        c.relay.in_process = true;
        c.observability.canary_interval_ms = 500;
        // Other tests on the shared PostgreSQL server hold write transactions open for seconds
        // on purpose (the archive's sealing test, the log's), and the gap-safe log waits for
        // them: a 3 s threshold would call that a stall here. 10 s does not, and a real stall
        // would still show within the run.
        c.observability.stall_after_ms = IDLE_STALL_MS;
    })
    .await;
    let path = [
        "relay.kafka",
        "relay.redis",
        "canary.kafka",
        "canary.redis",
        "kafka",
        "redis",
    ];
    all_ok(&app, &path, Duration::from_secs(60)).await;
    // 150 s, fifteen times the stall threshold, with nothing but canaries going through: never
    // a stall.
    let until = Instant::now() + 15 * Duration::from_millis(IDLE_STALL_MS);
    let mut samples = 0;
    while Instant::now() < until {
        let (code, body) = pipeline(&app).await;
        assert_eq!(code, StatusCode::OK, "{body}");
        for c in path {
            assert_eq!(status_of(&body, c), "ok", "{c} while idle: {body}");
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(samples > 100);
    let (_, body) = pipeline(&app).await;
    let reason = body["components"]["canary.kafka"]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("written"), "{reason}");
}

/// The stage's row age, as the monitor reads it.
async fn beat_age(app: &TestApp, component: &str) -> Option<f64> {
    sqlx::query_scalar(
        "SELECT extract(epoch FROM now() - beat_at)::float8 FROM pipeline_stages WHERE component = $1",
    )
    .bind(component)
    .fetch_optional(app.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_beat_shows_its_oldest_lane_counts_busy_as_alive_and_is_gone_when_dropped() {
    use keel::heartbeat::Beat;
    let app = spawn_app_with(|_| {}).await;
    let every = Duration::from_millis(100);
    let beat = Beat::start(
        app.store.pool().clone(),
        "group.beat-test",
        "here:1",
        json!({"topics": ["t"]}),
        every,
    );
    let (fast, slow) = (beat.lane(), beat.lane());
    let process: String = eventually(Duration::from_secs(10), "the stage row", || async {
        sqlx::query_scalar("SELECT process FROM pipeline_stages WHERE component = 'group.beat-test' AND detail = '{\"topics\": [\"t\"]}'")
            .fetch_optional(app.store.pool())
            .await
            .unwrap()
    })
    .await;
    assert_eq!(process, "here:1");

    // One lane keeps turning, the other is stuck: the row shows the stuck one.
    for _ in 0..15 {
        fast.tick();
        tokio::time::sleep(every).await;
    }
    let age = beat_age(&app, "group.beat-test").await.unwrap();
    assert!(age >= 1.0, "a stuck lane was hidden by a live one: {age} s");
    assert!(beat.age() >= Duration::from_secs(1));

    // Busy (waiting on one long piece of work) counts as alive.
    let busy = slow.busy();
    tokio::time::sleep(4 * every).await;
    fast.tick();
    tokio::time::sleep(3 * every).await;
    let age = beat_age(&app, "group.beat-test").await.unwrap();
    assert!(age < 0.6, "a busy lane read as stuck: {age} s");
    drop(busy);
    assert!(beat.age() < Duration::from_millis(500));

    // A clean stop leaves nothing behind, even with lanes still held.
    drop(beat);
    let gone = within(Duration::from_secs(10), || async {
        beat_age(&app, "group.beat-test")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(gone.is_some(), "the row outlived its beat");
    drop((fast, slow));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_writing_canaries_is_ready_only_while_they_arrive() {
    let broker = Broker::start().await;
    let mut redis: Server = RedisServer::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), &redis.url());
        c.observability.canary_interval_ms = 300;
        health_config(c);
    })
    .await;
    let relay = RelayProcess::start(&app.config, "canary-relay");
    let ready = format!("http://127.0.0.1:{}/v1/health/ready", relay.metrics_port);
    let readiness = || async {
        let reply = reqwest::get(&ready).await.ok()?;
        let code = reply.status();
        Some((code, reply.json::<Value>().await.ok()?))
    };
    eventually(
        Duration::from_secs(60),
        "the relay to be ready with both canaries",
        || async {
            let (code, body) = readiness().await?;
            (code == StatusCode::OK
                && body["checks"]["canary.kafka"] == "ok"
                && body["checks"]["canary.redis"] == "ok")
                .then_some(())
        },
    )
    .await;

    redis.stop();
    let body = eventually(
        Duration::from_secs(30),
        "the relay to be unready",
        || async {
            let (code, body) = readiness().await?;
            (code == StatusCode::SERVICE_UNAVAILABLE).then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "unready", "{body}");
    assert_ne!(body["checks"]["canary.redis"], "ok", "{body}");
    assert_eq!(body["checks"]["canary.kafka"], "ok", "{body}");
    assert_eq!(body["checks"]["database"], "ok", "{body}");

    redis.restart().await;
    eventually(
        Duration::from_secs(60),
        "the relay to be ready again",
        || async {
            let (code, _) = readiness().await?;
            (code == StatusCode::OK).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn stage_rows_silent_for_a_day_are_forgotten_and_not_reported() {
    let app = spawn_app_with(|_| {}).await;
    sqlx::query(
        "INSERT INTO pipeline_stages (component, instance, process, beat_at)
         VALUES ('group.decommissioned', gen_random_uuid(), 'gone:1', now() - interval '25 hours'),
                ('group.recent', gen_random_uuid(), 'gone:2', now() - interval '23 hours')",
    )
    .execute(app.store.pool())
    .await
    .unwrap();
    // A keel process that starts now on the same database forgets the old row at its first sample.
    let url = app.config.database_url.clone();
    let other = spawn_app_with(move |c| c.database_url = url).await;
    eventually(
        Duration::from_secs(20),
        "the old row to be forgotten",
        || async {
            let left: Vec<String> = sqlx::query_scalar("SELECT component FROM pipeline_stages")
                .fetch_all(app.store.pool())
                .await
                .unwrap();
            (left == ["group.recent"]).then_some(())
        },
    )
    .await;
    // Health needs no credential (the second app's own bootstrap key is not valid here: the
    // first app's admin came first).
    let verdict: Value = reqwest::get(other.url("/v1/health/pipeline"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        verdict["components"]["group.decommissioned"].is_null(),
        "{verdict}"
    );
    // Still remembered while under a day: reported, and unhealthy (nobody beats for it).
    assert_eq!(
        status_of(&verdict, "group.recent"),
        "unhealthy",
        "{verdict}"
    );
}
