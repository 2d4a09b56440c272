//! Projections against the relay's topics on a real broker, with `keel project` as a real process:
//! exactly once under repeated `kill -9` and duplicate records, rebuilds during live appends, and
//! the read API. Every check compares the read model with a reference computed straight from the
//! event store.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keel::projection::service_invocations::bucket_of;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, within, ServeProcess, TestApp};
use crate::relay_support::{append_concurrently, spawn_kafka_relayed_app, Broker, Server};

/// A `keel project` process, killed on drop.
struct Projector {
    child: Option<Child>,
    config: std::path::PathBuf,
    app_db: String,
    brokers: String,
    /// Its status listener (health, metrics), the same port across restarts.
    listen: String,
}

impl Projector {
    fn start(app: &TestApp, broker: &Server, batch_size: usize) -> Self {
        let config = std::env::temp_dir().join(format!("keel-project-{}.toml", Uuid::new_v4()));
        std::fs::write(
            &config,
            format!(
                "[projections]\nbatch_size = {batch_size}\n[projections.properties]\n\
                 \"session.timeout.ms\" = \"6000\"\n\"fetch.wait.max.ms\" = \"50\"\n"
            ),
        )
        .unwrap();
        let mut p = Self {
            child: None,
            config,
            app_db: app.config.database_url.clone(),
            brokers: broker.brokers(),
            listen: format!("127.0.0.1:{}", crate::cli::free_port()),
        };
        p.restart();
        p
    }

    fn restart(&mut self) {
        self.kill();
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_keel"))
                .args(["--config", self.config.to_str().unwrap(), "project"])
                .env("KEEL_DATABASE_URL", &self.app_db)
                .env("KEEL_KAFKA_BROKERS", &self.brokers)
                .env("KEEL_PROJECTIONS__LISTEN", &self.listen)
                .env("KEEL_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start keel project"),
        );
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Projector {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// `services` services with three methods each, `per_method` calls per method, appended
/// concurrently; statuses and times vary (v1 and v2 payloads).
async fn invoke_services(app: &TestApp, services: usize, per_method: usize) {
    let calls: Vec<(Uuid, String, &str, usize)> = (0..services)
        .flat_map(|s| {
            let id = Uuid::new_v4();
            ["get", "put", "list"]
                .into_iter()
                .flat_map(move |m| (0..per_method).map(move |i| (id, format!("svc{s}"), m, i)))
        })
        .collect();
    use futures::StreamExt;
    futures::stream::iter(calls)
        .for_each_concurrent(16, |(id, service, method, i)| async move {
            let status = ["OK", "OK", "OK", "ERROR", "TIMEOUT"][i % 5];
            let event = if i % 2 == 0 {
                json!({"type": "l12.service_invoked", "schema_version": 1, "payload": {
                    "service_name": service, "method": method,
                    "execution_time": 0.5 + (i * 37 % 400) as f64 * 1.7, "status": status}})
            } else {
                json!({"type": "l12.service_invoked", "payload": {
                    "service_name": service, "method": method,
                    "execution_time": 3.25 * (i % 13) as f64, "status": status,
                    "caller": "test", "attempt": 1 + i % 3}})
            };
            let reply = app
                .append(
                    "service",
                    id,
                    &json!({"expected_version": "any", "events": [event]}),
                )
                .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        })
        .await;
}

/// The agent_status read model: agent → (state, changed_at, version, transitions).
type Agents = BTreeMap<Uuid, (String, DateTime<Utc>, i32, i64)>;
/// The service_invocations read model: (service, method) → (calls, errors, bucket counts).
type Methods = BTreeMap<(String, String), (i64, i64, BTreeMap<i32, i64>)>;

async fn agents_from_store(app: &TestApp) -> Agents {
    let rows: Vec<(Uuid, String, DateTime<Utc>, i32, i64)> = sqlx::query_as(
        "SELECT DISTINCT ON (aggregate_id) aggregate_id, payload->>'to_state', created_at, version,
                count(*) OVER (PARTITION BY aggregate_id)
           FROM events WHERE event_type = 'agent.state.changed'
          ORDER BY aggregate_id, version DESC",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, s, at, v, n)| (id, (s, at, v, n)))
        .collect()
}

async fn agents_in(app: &TestApp, schema: &str) -> Agents {
    let rows: Vec<(Uuid, String, DateTime<Utc>, i32, i64)> = sqlx::query_as(&format!(
        "SELECT agent_id, state, changed_at, version, transitions FROM {schema}.agent_status"
    ))
    .fetch_all(app.store.pool())
    .await
    .unwrap_or_default();
    rows.into_iter()
        .map(|(id, s, at, v, n)| (id, (s, at, v, n)))
        .collect()
}

async fn methods_from_store(app: &TestApp) -> Methods {
    methods_of_log(app, None).await
}

/// The service methods of the first `limit` `l12.service_invoked` events in log order (all of
/// them with `None`).
async fn methods_of_log(app: &TestApp, limit: Option<i64>) -> Methods {
    let rows: Vec<(String, String, f64, String)> = sqlx::query_as(
        "SELECT payload->>'service_name', payload->>'method',
                (payload->>'execution_time')::float8, payload->>'status'
           FROM events WHERE event_type = 'l12.service_invoked'
          ORDER BY tx_id, position LIMIT $1",
    )
    .bind(limit)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let mut methods = Methods::new();
    for (service, method, ms, status) in rows {
        let m = methods.entry((service, method)).or_default();
        m.0 += 1;
        m.1 += i64::from(status != "OK");
        *m.2.entry(bucket_of(ms)).or_default() += 1;
    }
    methods
}

async fn methods_in(app: &TestApp, schema: &str) -> Methods {
    let totals: Vec<(String, String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT service, method, calls, errors FROM {schema}.service_invocations"
    ))
    .fetch_all(app.store.pool())
    .await
    .unwrap_or_default();
    let buckets: Vec<(String, String, i32, i64)> = sqlx::query_as(&format!(
        "SELECT service, method, bucket, calls FROM {schema}.service_invocation_latency"
    ))
    .fetch_all(app.store.pool())
    .await
    .unwrap_or_default();
    let mut methods: Methods = totals
        .into_iter()
        .map(|(s, m, c, e)| ((s, m), (c, e, BTreeMap::new())))
        .collect();
    for (s, m, b, n) in buckets {
        methods.entry((s, m)).or_default().2.insert(b, n);
    }
    methods
}

/// Waits until both live read models equal the store's reference, then checks that every event
/// was counted as applied exactly once.
async fn expect_equal_to_store(app: &TestApp, timeout: Duration) {
    let reference = (agents_from_store(app).await, methods_from_store(app).await);
    let live = || async {
        (
            agents_in(app, "keel_proj_agent_status").await,
            methods_in(app, "keel_proj_service_invocations").await,
        )
    };
    let equal = within(timeout, || async {
        (live().await == reference).then_some(())
    })
    .await;
    if equal.is_none() {
        let live = live().await;
        let diff: Vec<_> = reference
            .0
            .iter()
            .filter(|(id, r)| live.0.get(id) != Some(r))
            .take(3)
            .map(|(id, r)| (id, r, live.0.get(id)))
            .collect();
        panic!(
            "read models differ from the store: {} of {} agents, methods equal: {}; first: {diff:?}",
            reference.0.iter().filter(|(id, r)| live.0.get(id) != Some(r)).count(),
            reference.0.len(),
            live.1 == reference.1
        );
    }
}

async fn events_applied(app: &TestApp, name: &str) -> i64 {
    sqlx::query_scalar("SELECT events_applied FROM projections WHERE name = $1")
        .bind(name)
        .fetch_optional(app.store.pool())
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn count_events(app: &TestApp, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

/// Each partition's end offset.
fn high_watermarks(broker: &Server, topic: &str) -> HashMap<i32, i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .unwrap();
            (p.id(), high)
        })
        .collect()
}

/// `keel ARGS` against `app`'s API, as the admin.
async fn keel(app: &TestApp, args: &[&str]) -> std::process::Output {
    let mut command = app.keel();
    command.args(args);
    tokio::process::Command::from(command)
        .output()
        .await
        .expect("run keel")
}

fn succeeded(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// `keel project`'s own health endpoints on `projections.listen`: live at once, ready once each
/// configured runner beats (one check per runner), and `keel health --ready --url` (the image's
/// HEALTHCHECK) exits 0 then; against a stopped process it fails saying it cannot connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_project_is_ready_once_every_runner_beats_and_keel_health_ready_says_so() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let mut projector = Projector::start(&app, &broker, 100);
    let base = format!("http://{}", projector.listen);
    let ready: Value = eventually(
        Duration::from_secs(60),
        "keel project to be ready",
        || async {
            let answer = reqwest::get(format!("{base}/v1/health/ready")).await.ok()?;
            (answer.status() == StatusCode::OK).then_some(())?;
            answer.json().await.ok()
        },
    )
    .await;
    assert_eq!(ready["status"], "ready", "{ready}");
    for runner in ["projection.agent_status", "projection.service_invocations"] {
        assert_eq!(ready["checks"][runner], "ok", "{ready}");
    }
    let live = reqwest::get(format!("{base}/v1/health/live"))
        .await
        .unwrap();
    assert_eq!(live.status(), StatusCode::OK);
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);

    let health = |url: String| {
        Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["health", "--ready", "--url", &url])
            .env_remove("KEEL_API_KEY")
            .env("KEEL_LOG", "warn")
            .output()
            .unwrap()
    };
    let ok = health(base.clone());
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        said.contains("ready") && said.contains("projection.agent_status  ok"),
        "{said}"
    );

    let live = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["health", "--live", "--json", "--url", &base])
        .env_remove("KEEL_API_KEY")
        .output()
        .unwrap();
    assert!(live.status.success());
    let said: Value = serde_json::from_slice(&live.stdout).unwrap();
    assert_eq!(said["status"], "live", "{said}");

    projector.kill();
    let down = health(base);
    assert!(!down.status.success());
    let said = String::from_utf8_lossy(&down.stderr);
    assert!(said.contains(&projector.listen), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_apply_each_event_exactly_once_through_repeated_kills_and_duplicate_records() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let mut projector = Projector::start(&app, &broker, 25);
    // Appends keep coming for about 20 s, in rounds.
    let load = tokio::spawn({
        let app = app.clone();
        async move {
            for _ in 0..6 {
                append_concurrently(&app, 30, 5, 16).await;
                invoke_services(&app, 4, 10).await;
                // Paces the load so that it outlasts several kills; nothing waits on this.
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    });
    // While they do, kill the projector whenever it is applying, and start it again.
    let applied = || async {
        events_applied(&app, "agent_status").await
            + events_applied(&app, "service_invocations").await
    };
    let mut kills = 0;
    while !load.is_finished() && kills < 4 {
        let before = applied().await;
        eventually(
            Duration::from_secs(60),
            "the projector to apply events",
            || async { (applied().await > before || load.is_finished()).then_some(()) },
        )
        .await;
        if load.is_finished() {
            break;
        }
        // It has just committed a batch and is fetching or applying the next: kill it now.
        projector.restart();
        kills += 1;
    }
    assert!(
        kills >= 2,
        "only {kills} kill(s) landed while events were appended"
    );
    load.await.unwrap();
    // Publish every agent event a second time: the projection must not apply them again.
    succeeded(
        &keel(
            &app,
            &[
                "replay",
                "republish",
                "--topic",
                "keel.agent",
                "--event-type",
                "agent.state.changed",
            ],
        )
        .await,
    );
    // Wait until the projection has read past every record, duplicates included.
    let ends = high_watermarks(&broker, "keel.agent");
    eventually(
        Duration::from_secs(90),
        "the projection to read the duplicates",
        || async {
            let stored: Vec<(i32, i64)> = sqlx::query_as(
                "SELECT partition, next_offset FROM projection_offsets
              WHERE projection = 'agent_status' AND topic = 'keel.agent'",
            )
            .fetch_all(app.store.pool())
            .await
            .unwrap();
            let stored: HashMap<i32, i64> = stored.into_iter().collect();
            ends.iter()
                .all(|(p, end)| *end == 0 || stored.get(p) == Some(end))
                .then_some(())
        },
    )
    .await;
    expect_equal_to_store(&app, Duration::from_secs(90)).await;
    assert_eq!(
        events_applied(&app, "agent_status").await,
        count_events(&app, "agent.state.changed").await
    );
    assert_eq!(
        events_applied(&app, "service_invocations").await,
        count_events(&app, "l12.service_invoked").await
    );

    // The read API serves the same rows, and each projection's status.
    let agents = agents_from_store(&app).await;
    let (id, (state, _, version, transitions)) = agents.iter().next().unwrap();
    let reply = app
        .get(&format!("/v1/projections/agent_status/agents/{id}"))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["state"], *state);
    assert_eq!(reply.body["version"], *version);
    assert_eq!(reply.body["transitions"], *transitions);
    let reply = app
        .get(&format!(
            "/v1/projections/agent_status/agents?state={state}&limit=500"
        ))
        .await;
    let listed = reply.body["agents"].as_array().unwrap();
    assert_eq!(
        listed.len(),
        agents.values().filter(|a| a.0 == *state).count()
    );
    let reply = app
        .get("/v1/projections/service_invocations/methods?service=svc0")
        .await;
    let methods = reply.body["methods"].as_array().unwrap();
    assert_eq!(methods.len(), 3);
    for m in methods {
        assert!(m["calls"].as_i64().unwrap() >= 40);
        let (p50, p99, max) = (
            m["p50_ms"].as_f64().unwrap(),
            m["p99_ms"].as_f64().unwrap(),
            m["max_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && p50 <= p99 && p99 <= max, "{m}");
    }
    let status = app.get("/v1/projections/agent_status").await;
    assert_eq!(status.body["state"], "running", "{}", status.body);
    assert!(!status.body["position"].as_array().unwrap().is_empty());
    let reply = app.get("/v1/projections/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "projection_not_found");
    let reply = app
        .get("/v1/projections/agent_status/agents/not-a-uuid")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "invalid_agent_id");

    // A record that cannot be decoded stops the projection, visibly, instead of being skipped.
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    let headers = OwnedHeaders::new().insert(Header {
        key: "keel-event-type",
        value: Some("agent.state.changed"),
    });
    producer
        .send(
            FutureRecord::to("keel.agent")
                .key("not-an-aggregate")
                .payload("not avro")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let status = eventually(
        Duration::from_secs(30),
        "the projection to report failing",
        || async {
            let s = app.get("/v1/projections/agent_status").await.body;
            (s["state"] == "failing").then_some(s)
        },
    )
    .await;
    assert!(
        status["error"]
            .as_str()
            .unwrap()
            .contains("does not decode"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_during_live_appends_swaps_in_a_read_model_equal_to_the_store() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let _projector = Projector::start(&app, &broker, 100);
    append_concurrently(&app, 40, 5, 16).await;
    invoke_services(&app, 3, 10).await;
    expect_equal_to_store(&app, Duration::from_secs(60)).await;
    // Damage the live read models, as a bug would: only a rebuild repairs them.
    sqlx::query("UPDATE keel_proj_agent_status.agent_status SET transitions = 0, state = 'wrong'")
        .execute(app.store.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM keel_proj_service_invocations.service_invocation_latency")
        .execute(app.store.pool())
        .await
        .unwrap();

    let load = tokio::spawn({
        let app = app.clone();
        async move {
            for _ in 0..3 {
                append_concurrently(&app, 30, 4, 16).await;
                invoke_services(&app, 2, 5).await;
            }
        }
    });
    for name in ["agent_status", "service_invocations"] {
        let report = succeeded(&keel(&app, &["replay", "projection", name, "--page", "50"]).await);
        assert_eq!(report["swapped"], true, "{report}");
        assert_eq!(report["schema"], format!("keel_proj_{name}"));
    }
    load.await.unwrap();
    expect_equal_to_store(&app, Duration::from_secs(60)).await;
    let status = app.get("/v1/projections/agent_status").await;
    assert!(status.body["rebuilt_at"].is_string(), "{}", status.body);

    // One aggregate, in place.
    let agents = agents_from_store(&app).await;
    let (agent, expected) = agents.iter().next().unwrap();
    sqlx::query(
        "UPDATE keel_proj_agent_status.agent_status SET transitions = 99 WHERE agent_id = $1",
    )
    .bind(agent)
    .execute(app.store.pool())
    .await
    .unwrap();
    let agent_text = agent.to_string();
    succeeded(
        &keel(
            &app,
            &[
                "replay",
                "projection",
                "agent_status",
                "--aggregate",
                &agent_text,
            ],
        )
        .await,
    );
    assert_eq!(
        agents_in(&app, "keel_proj_agent_status").await.get(agent),
        Some(expected)
    );
    // A projection whose rows mix aggregates refuses, and says why.
    let out = keel(
        &app,
        &[
            "replay",
            "projection",
            "service_invocations",
            "--aggregate",
            &agent_text,
        ],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot rebuild one aggregate"));

    // A point-in-time view beside the live one: the events up to a position.
    let cut: i64 = sqlx::query_scalar(
        "SELECT position FROM events WHERE event_type = 'agent.state.changed'
          ORDER BY position OFFSET 100 LIMIT 1",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let report = succeeded(
        &keel(
            &app,
            &[
                "replay",
                "projection",
                "agent_status",
                "--until",
                &cut.to_string(),
            ],
        )
        .await,
    );
    assert_eq!(report["swapped"], false);
    let until = agents_in(&app, "keel_proj_agent_status_until").await;
    let transitions: i64 = until.values().map(|a| a.3).sum();
    assert_eq!(transitions, 101);
}

/// A full rebuild of `service_invocations` sums it in memory and writes the sums together with
/// its cursor, whenever they pass the bound and when cut short: cancelled after a page, the shadow
/// holds exactly the events up to its stored cursor; resumed, with the bound crossed page after
/// page, it reads only the rest and swaps in the store's read model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folded_rebuild_writes_its_sums_with_its_cursor_and_resumes_to_the_stores_read_model() {
    use keel::projection::rebuild::{rebuild, RebuildOptions};
    use keel::replay::progress::Reporter;
    let app = crate::helpers::spawn_app().await;
    invoke_services(&app, 4, 10).await;
    let projection = keel::projection::find("service_invocations").unwrap();
    assert!(projection.fold().is_some());
    let options = |restart| RebuildOptions {
        restart,
        page: 9,
        fold_rows: Some(5),
        ..Default::default()
    };
    let pool = app.store.pool();
    let cut = rebuild(
        pool,
        &app.registry,
        projection.as_ref(),
        &options(true),
        &Reporter::default(),
        std::future::ready(()),
    )
    .await
    .unwrap();
    assert!(cut.cancelled && !cut.swapped, "{cut:?}");
    assert_eq!((cut.events_read, cut.events_applied), (9, 9));
    let shadow = "keel_proj_service_invocations_rebuild";
    assert_eq!(
        methods_in(&app, shadow).await,
        methods_of_log(&app, Some(9)).await
    );
    let stored: (i64, i64) = sqlx::query_as(&format!(
        "SELECT tx_id, position FROM {shadow}.keel_rebuild"
    ))
    .fetch_one(pool)
    .await
    .unwrap();
    let ninth: (i64, i64) = sqlx::query_as(
        "SELECT tx_id::text::bigint, position FROM events
          WHERE event_type = 'l12.service_invoked' ORDER BY tx_id, position OFFSET 8 LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(stored, ninth);

    let rest = rebuild(
        pool,
        &app.registry,
        projection.as_ref(),
        &options(false),
        &Reporter::default(),
        std::future::pending(),
    )
    .await
    .unwrap();
    assert!(rest.swapped && !rest.cancelled, "{rest:?}");
    assert_eq!((rest.events_read, rest.events_applied), (111, 111));
    assert_eq!(
        methods_in(&app, "keel_proj_service_invocations").await,
        methods_from_store(&app).await
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT sum(version) FROM keel_proj_service_invocations.keel_applied")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(applied, 120, "every service's last version, summed");
}

/// `keel replay projection agent_status ARGS` against `server`, started.
fn rebuild(server: &ServeProcess, app: &TestApp, args: &[&str]) -> tokio::process::Child {
    let mut command = app.keel();
    command
        .args(["replay", "projection", "agent_status"])
        .args(args)
        .env("KEEL_URL", &server.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tokio::process::Command::from(command).spawn().unwrap()
}

/// Events the interrupted rebuild of `agent_status` has committed so far.
async fn rebuilt_so_far(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM keel_proj_agent_status_rebuild.keel_applied")
        .fetch_one(app.store.pool())
        .await
        .unwrap_or(0)
}

async fn rebuilt_past(app: &TestApp, n: i64) {
    eventually(
        Duration::from_secs(30),
        "the rebuild to make progress",
        || async { (rebuilt_so_far(app).await > n).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_outlives_its_cli_and_resumes_after_the_server_dies() {
    let app = crate::helpers::spawn_app().await;
    append_concurrently(&app, 100, 8, 16).await;

    // Ctrl-C on the CLI stops following; the rebuild (one event per page, slow) goes on.
    let server = ServeProcess::start(&app, &[]).await;
    let cli = rebuild(&server, &app, &["--page", "1"]);
    rebuilt_past(&app, 5).await;
    Command::new("kill")
        .args(["-INT", &cli.id().unwrap().to_string()])
        .status()
        .unwrap();
    let out = cli.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("the job continues on the server"),
        "{stderr}"
    );
    let at_interrupt = rebuilt_so_far(&app).await;
    rebuilt_past(&app, at_interrupt).await;

    // The server dies mid-rebuild; its CLI says the job may not have ended.
    server.kill();
    let server = ServeProcess::start(&app, &[]).await;
    let done = rebuilt_so_far(&app).await;
    let cli = rebuild(&server, &app, &["--page", "1"]);
    rebuilt_past(&app, done + 5).await;
    server.kill();
    let out = cli.wait_with_output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("closed before the job's end"),
        "{stderr}"
    );
    let done = rebuilt_so_far(&app).await;
    assert!(done < 800, "the rebuild ended before the server died");

    // Run again: it resumes (reads only the rest) and swaps in the full model.
    let server = ServeProcess::start(&app, &[]).await;
    let out = rebuild(&server, &app, &[])
        .wait_with_output()
        .await
        .unwrap();
    let report = succeeded(&out);
    assert_eq!(report["swapped"], true);
    assert_eq!(
        report["events_read"].as_u64().unwrap() + done as u64,
        800,
        "{report}"
    );
    assert_eq!(
        agents_in(&app, "keel_proj_agent_status").await,
        agents_from_store(&app).await
    );
    let counts: HashMap<Uuid, i64> = agents_in(&app, "keel_proj_agent_status")
        .await
        .into_iter()
        .map(|(id, a)| (id, a.3))
        .collect();
    assert!(counts.values().all(|n| *n == 8));
    // Each run is in the audit log: three starts, one end (the other two died with the server).
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM audit_log WHERE action = 'projection.rebuild' ORDER BY id",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(outcomes, ["started", "started", "started", "ok"]);
}
