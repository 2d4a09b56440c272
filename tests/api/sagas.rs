//! Sagas on a real broker: `keel saga run op_verify` as real processes fed by the relay, timeouts
//! by PostgreSQL's clock, kills, restarts and duplicates; and user-written sagas run through the
//! library for parking, held inputs, redrives and refused outputs. Every check reads what the
//! saga wrote to the event store and, where it says so, what reached Kafka.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use keel::saga::{self, Correlate, End, Input, Route, Saga, Start, Step, StepError};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, TestApp};
use crate::relay_support::{spawn_kafka_relayed_app, Broker, KafkaReader, Server};

const NAME: &str = "op_verify";

/// A `keel saga run op_verify` process, killed on drop.
struct Runner {
    child: Option<Child>,
    config: std::path::PathBuf,
    env: Vec<(String, String)>,
}

impl Runner {
    fn start(app: &TestApp, broker: &Server, verify_ms: u64, rollback_ms: u64) -> Self {
        Self::start_with(app, broker, verify_ms, rollback_ms, &[])
    }

    fn start_with(
        app: &TestApp,
        broker: &Server,
        verify_ms: u64,
        rollback_ms: u64,
        extra: &[(&str, &str)],
    ) -> Self {
        let config = std::env::temp_dir().join(format!("keel-saga-{}.toml", Uuid::new_v4()));
        std::fs::write(
            &config,
            format!(
                "[sagas]\npoll_interval_ms = 100\n[sagas.op_verify]\nverify_deadline_ms = {verify_ms}\n\
                 rollback_deadline_ms = {rollback_ms}\n[sagas.properties]\n\"session.timeout.ms\" = \"6000\"\n\
                 \"fetch.wait.max.ms\" = \"20\"\n\"topic.metadata.refresh.interval.ms\" = \"500\"\n"
            ),
        )
        .unwrap();
        let mut env: Vec<(String, String)> = vec![
            ("KEEL_DATABASE_URL".into(), app.config.database_url.clone()),
            ("KEEL_KAFKA_BROKERS".into(), broker.brokers()),
            (
                "KEEL_SCHEMAS_DIR".into(),
                app.config.schemas_dir.display().to_string(),
            ),
            (
                "KEEL_SAGAS__LISTEN".into(),
                format!("127.0.0.1:{}", crate::cli::free_port()),
            ),
            ("KEEL_LOG".into(), "warn".into()),
            // The tests append before a runner has registered the saga: all of it is its input.
            ("KEEL_SAGAS__START_FROM".into(), "earliest".into()),
        ];
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut r = Self {
            child: None,
            config,
            env,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        self.kill();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
        command
            .args([
                "--config",
                self.config.to_str().unwrap(),
                "saga",
                "run",
                NAME,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in &self.env {
            command.env(k, v);
        }
        self.child = Some(command.spawn().expect("start keel saga run"));
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running (a fault point aborts it).
    fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.config);
    }
}

fn agent_of(op: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, op.as_bytes())
}

/// `control.operation.completed` v2 for operation `op` on its agent; for a rollback, `undoes`.
async fn operation(
    app: &TestApp,
    op: &str,
    kind: &str,
    succeeded: bool,
    undoes: Option<&str>,
) -> Uuid {
    let agent = agent_of(undoes.unwrap_or(op));
    let reply = app
        .append(
            "operation",
            Uuid::new_v4(),
            &json!({"expected_version": "any", "events": [{"type": "control.operation.completed",
                "payload": {"operation_id": op, "operation": kind, "target": format!("agent:{agent}"),
                            "succeeded": succeeded, "duration_ms": 12, "agent_id": agent, "undoes": undoes}}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["events"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn verified(app: &TestApp, op: &str, passed: bool) {
    let reply = app
        .append(
            "agent",
            agent_of(op),
            &json!({"expected_version": "any", "events": [{"type": "agent.verification.completed",
                "payload": {"agent_id": agent_of(op), "operation_id": op, "passed": passed}}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

async fn agent_state(app: &TestApp, agent: Uuid, to: &str) {
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": "any", "events": [crate::helpers::agent_state_changed(agent, to)]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

/// An instance's outputs in stream order: the event type, with `to_state` for `state_change`.
async fn outputs(app: &TestApp, key: &str) -> Vec<String> {
    let rows: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT event_type, payload->>'to_state' FROM events
          WHERE aggregate_type = 'saga.op_verify' AND aggregate_id = $1 AND event_type <> 'saga.step'
          ORDER BY version",
    )
    .bind(saga::instance_id(NAME, key))
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    rows.into_iter()
        .map(|(t, s)| match s {
            Some(s) => format!("{t}:{s}"),
            None => t,
        })
        .collect()
}

async fn status(app: &TestApp, key: &str) -> Option<String> {
    sqlx::query_scalar("SELECT status FROM saga_instances WHERE saga = $1 AND correlation = $2")
        .bind(NAME)
        .bind(key)
        .fetch_optional(app.store.pool())
        .await
        .unwrap()
}

async fn wait_status(app: &TestApp, key: &str, want: &str, within: Duration) {
    eventually(within, &format!("{key} to be {want}"), || async {
        (status(app, key).await.as_deref() == Some(want)).then_some(())
    })
    .await;
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

const REQUESTED: &str = "control.verification.requested";
const ROLLBACK: &str = "control.rollback.requested";

#[tokio::test]
async fn the_happy_deadline_association_and_failed_rollback_paths_end_as_the_table_says_on_kafka() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let _runner = Runner::start(&app, &broker, 3_000, 3_000);
    let ops = ["happy", "deadline", "crash", "rollback-late"];
    let mut starts = HashMap::new();
    for op in ops {
        starts.insert(op, operation(&app, op, "deploy", true, None).await);
    }
    // Not verified operations never start one: a failure, a rollback, an unknown kind.
    operation(&app, "failed-op", "deploy", false, None).await;
    operation(&app, "migrate-op", "migrate", true, None).await;
    for op in ops {
        wait_status(&app, op, "active", Duration::from_secs(30)).await;
        assert_eq!(outputs(&app, op).await, [REQUESTED]);
    }
    let pending = count(
        &app,
        "SELECT count(*) FROM saga_timeouts WHERE name = 'verify_deadline'",
    )
    .await;
    assert_eq!(pending, 4);

    // Happy: the verification passes; nothing is left behind.
    verified(&app, "happy", true).await;
    wait_status(&app, "happy", "completed", Duration::from_secs(20)).await;
    assert_eq!(
        outputs(&app, "happy").await,
        [REQUESTED, "state_change:verified"]
    );
    let happy = saga::instance_id(NAME, "happy");
    for table in ["saga_timeouts", "saga_associations", "saga_inbox"] {
        let left: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} WHERE instance_id = $1"
        ))
        .bind(happy)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
        assert_eq!(left, 0, "{table} keeps rows of an ended instance");
    }

    // Association: the agent crashes (no correlation id on its event): compensated before the
    // deadline, then the rollback fails.
    agent_state(&app, agent_of("crash"), "crashed").await;
    wait_status(&app, "crash", "compensating", Duration::from_secs(20)).await;
    operation(&app, "rb-crash", "rollback", false, Some("crash")).await;
    wait_status(&app, "crash", "failed", Duration::from_secs(20)).await;
    assert_eq!(
        outputs(&app, "crash").await,
        [
            REQUESTED,
            "state_change:rollback_requested",
            ROLLBACK,
            "state_change:rollback_failed"
        ]
    );

    // Deadline: no verification: the rollback is requested no earlier than the due time, and
    // a successful rollback compensates.
    wait_status(&app, "deadline", "compensating", Duration::from_secs(20)).await;
    let (requested_at, rolled_at): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT min(created_at) FILTER (WHERE event_type = 'control.verification.requested'),
                min(created_at) FILTER (WHERE event_type = 'control.rollback.requested')
           FROM events WHERE aggregate_type = 'saga.op_verify' AND aggregate_id = $1",
        )
        .bind(saga::instance_id(NAME, "deadline"))
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    let waited = (rolled_at - requested_at).num_milliseconds();
    assert!(
        (3_000..8_000).contains(&waited),
        "the deadline fired after {waited} ms, not 3 s"
    );
    operation(&app, "rb-deadline", "rollback", true, Some("deadline")).await;
    wait_status(&app, "deadline", "compensated", Duration::from_secs(20)).await;
    assert_eq!(
        outputs(&app, "deadline").await,
        [
            REQUESTED,
            "state_change:rollback_requested",
            ROLLBACK,
            "state_change:rolled_back"
        ]
    );

    // Both deadlines pass: failed, once, and nothing loops afterwards.
    wait_status(&app, "rollback-late", "failed", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        outputs(&app, "rollback-late").await,
        [
            REQUESTED,
            "state_change:rollback_requested",
            ROLLBACK,
            "state_change:rollback_failed"
        ]
    );
    assert_eq!(count(&app, "SELECT count(*) FROM saga_timeouts").await, 0);
    assert_eq!(
        count(&app, "SELECT count(*) FROM saga_instances").await,
        4,
        "only the four verified operations started an instance"
    );
    let listed = app.get("/v1/sagas/op_verify/instances?status=failed").await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.body);
    let mut failed: Vec<&str> = listed.body["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["correlation"].as_str().unwrap())
        .collect();
    failed.sort();
    assert_eq!(failed, ["crash", "rollback-late"]);

    // Every output reached Kafka, keyed by its instance, with the correlation key and the input
    // that caused it in its headers.
    let expected: Vec<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, metadata->>'correlation_id', metadata->>'causation_id' FROM events
          WHERE aggregate_type = 'saga.op_verify' AND event_type <> 'saga.step'",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let mut reader = KafkaReader::new(&broker.brokers(), &["keel.control", "keel.state_change"]);
    let ids: Vec<Uuid> = expected.iter().map(|e| e.0).collect();
    reader.read_ids(&ids, Duration::from_secs(60)).await;
    for (id, key, cause) in &expected {
        let got = reader
            .received
            .iter()
            .find(|r| r.event_id() == *id)
            .unwrap();
        assert_eq!(&got.headers["keel-correlation-id"], key);
        assert_eq!(&got.headers["keel-causation-id"], cause);
        assert_eq!(got.key, saga::instance_id(NAME, key).to_string());
    }
    let start_cause = expected
        .iter()
        .find(|e| e.1 == "happy")
        .map(|e| e.2.clone())
        .unwrap();
    assert_eq!(start_cause, starts["happy"].to_string());

    // The instance in full: its history is its stream's step records.
    let shown = app
        .get(&format!("/v1/sagas/op_verify/instances/{happy}"))
        .await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    let history = shown.body["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["input_type"], "control.operation.completed");
    assert_eq!(history[1]["status_after"], "completed");
    let bad = app
        .get("/v1/sagas/op_verify/instances?status=sleeping")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_status");
}

/// What the saga streams hold: (events, step records).
async fn saga_rows(app: &TestApp) -> (i64, i64) {
    (
        count(
            app,
            "SELECT count(*) FROM events WHERE aggregate_type = 'saga.op_verify'",
        )
        .await,
        count(
            app,
            "SELECT count(*) FROM events WHERE event_type = 'saga.step'",
        )
        .await,
    )
}

/// Makes the runner read every record again from the beginning, as a reset of its consumer
/// group would, and as `keel replay republish` would send them again.
async fn reread_everything(app: &TestApp, runner: &mut Runner) {
    runner.kill();
    sqlx::query("DELETE FROM projection_offsets WHERE projection = 'saga_op_verify'")
        .execute(app.store.pool())
        .await
        .unwrap();
    runner.restart();
}

#[tokio::test]
async fn racing_starts_and_re_read_inputs_make_one_instance_and_one_output_and_never_restart_an_ended_saga(
) {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let mut runner = Runner::start(&app, &broker, 60_000, 60_000);
    // Two start-capable completions of one operation, from two aggregates, appended together.
    let (a, b) = tokio::join!(
        operation(&app, "race", "deploy", true, None),
        operation(&app, "race", "restart", true, None)
    );
    assert_ne!(a, b);
    for i in 0..20 {
        operation(&app, &format!("done-{i}"), "scale", true, None).await;
    }
    wait_status(&app, "race", "active", Duration::from_secs(30)).await;
    for i in 0..20 {
        let op = format!("done-{i}");
        wait_status(&app, &op, "active", Duration::from_secs(30)).await;
        verified(&app, &op, true).await;
        wait_status(&app, &op, "completed", Duration::from_secs(30)).await;
    }
    eventually(
        Duration::from_secs(30),
        "both race inputs stepped",
        || async {
            (count(
                &app,
                "SELECT steps::bigint FROM saga_instances WHERE correlation = 'race'",
            )
            .await
                == 2)
                .then_some(())
        },
    )
    .await;
    assert_eq!(outputs(&app, "race").await, [REQUESTED]);
    let before = saga_rows(&app).await;
    let versions = count(
        &app,
        "SELECT version::bigint FROM saga_instances WHERE correlation = 'race'",
    )
    .await;
    // Three re-reads of everything (duplicates of both starts among them).
    for _ in 0..3 {
        reread_everything(&app, &mut runner).await;
        eventually(Duration::from_secs(30), "the runner to re-read the topics", || async {
            let stored = count(&app, "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets WHERE projection = 'saga_op_verify'").await;
            (stored >= 42).then_some(())
        })
        .await;
    }
    assert_eq!(
        saga_rows(&app).await,
        before,
        "a duplicate input wrote a step or an output"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM saga_instances").await, 21);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM saga_instances WHERE status = 'completed'"
        )
        .await,
        20
    );
    assert_eq!(
        count(
            &app,
            "SELECT version::bigint FROM saga_instances WHERE correlation = 'race'"
        )
        .await,
        versions
    );
    // Stream versions are contiguous for every instance.
    let gaps = count(
        &app,
        "SELECT count(*) FROM (SELECT aggregate_id, max(version) - count(*) AS gap FROM events
            WHERE aggregate_type = 'saga.op_verify' GROUP BY aggregate_id) g WHERE gap <> 0",
    )
    .await;
    assert_eq!(gaps, 0);
}

#[tokio::test]
async fn timeouts_due_while_every_runner_was_down_fire_once_on_the_next_start() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |c| c.observability.stall_after_ms = 5_000).await;
    let mut runner = Runner::start(&app, &broker, 20_000, 600_000);
    for i in 0..100 {
        operation(&app, &format!("op-{i}"), "deploy", true, None).await;
    }
    eventually(Duration::from_secs(60), "100 instances waiting", || async {
        (count(
            &app,
            "SELECT count(*) FROM saga_timeouts WHERE name = 'verify_deadline'",
        )
        .await
            == 100)
            .then_some(())
    })
    .await;
    runner.kill();
    let killed = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM saga_timeouts WHERE name = 'verify_deadline'"
        )
        .await,
        100,
        "a timeout fired with no runner up"
    );
    // The pipeline says so: overdue timeouts and no runner firing them.
    let health = app.get("/v1/health/pipeline").await;
    let saga = &health.body["components"]["saga.op_verify"];
    assert_eq!(saga["status"], "unhealthy", "{}", health.body);
    assert!(
        saga["reason"].as_str().unwrap().contains("overdue"),
        "{saga}"
    );
    runner.restart();
    eventually(
        Duration::from_secs(60),
        "every deadline to fire",
        || async {
            (count(
                &app,
                "SELECT count(*) FROM saga_instances WHERE status = 'compensating'",
            )
            .await
                == 100)
                .then_some(())
        },
    )
    .await;
    assert!(killed.elapsed() < Duration::from_secs(100));
    eventually(
        Duration::from_secs(30),
        "the pipeline to see the timeouts fired",
        || async {
            let health = app.get("/v1/health/pipeline").await;
            (health.body["components"]["saga.op_verify"]["status"] == "ok").then_some(())
        },
    )
    .await;
    // Once each: one timeout step, one rollback request per instance; each at least 20 s late.
    let per_instance: Vec<(i64, i64, f64)> = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE event_type = 'saga.step' AND payload->>'input_kind' = 'timeout'),
                count(*) FILTER (WHERE event_type = 'control.rollback.requested'),
                coalesce(extract(epoch FROM min(created_at) FILTER (WHERE payload->>'input_kind' = 'timeout')
                         - min((payload->>'timeout_due_at')::timestamptz)), 0)::float8
           FROM events WHERE aggregate_type = 'saga.op_verify' GROUP BY aggregate_id",
    )
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(per_instance.len(), 100);
    for (steps, rollbacks, late) in per_instance {
        assert_eq!((steps, rollbacks), (1, 1));
        assert!(
            late >= 15.0,
            "fired {late} s late; it was due while the runner was down"
        );
    }
}

#[tokio::test]
async fn three_runners_fire_2000_timeouts_due_in_the_same_second_exactly_once() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    // 2,000 waiting instances as a step would have left them, their deadlines due together.
    // Instance ids are the saga's own (UUIDv5 of the key), computed here.
    let keys: Vec<String> = (1..=2000).map(|i| format!("bulk-{i}")).collect();
    let ids: Vec<Uuid> = keys.iter().map(|k| saga::instance_id(NAME, k)).collect();
    sqlx::query(
        "INSERT INTO saga_instances (saga, instance_id, correlation, status, state, compensations)
         SELECT 'op_verify', id, key, 'active',
                jsonb_build_object('operation_id', key, 'operation', 'deploy', 'agent_id', gen_random_uuid()::text),
                jsonb_build_array(jsonb_build_object('event_type', 'control.rollback.requested',
                    'payload', jsonb_build_object('operation_id', key, 'agent_id', gen_random_uuid()::text, 'deadline_ms', 600000)))
           FROM unnest($1::uuid[], $2::text[]) AS u(id, key)",
    )
    .bind(&ids)
    .bind(&keys)
    .execute(app.store.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO saga_timeouts (saga, instance_id, name, due_at)
         SELECT 'op_verify', id, 'verify_deadline', date_trunc('second', now()) + interval '4 seconds'
           FROM unnest($1::uuid[]) AS u(id)",
    )
    .bind(&ids)
    .execute(app.store.pool())
    .await
    .unwrap();
    let _runners: Vec<Runner> = (0..3)
        .map(|_| Runner::start(&app, &broker, 1_000, 600_000))
        .collect();
    eventually(
        Duration::from_secs(120),
        "2,000 deadlines fired",
        || async {
            (count(
                &app,
                "SELECT count(*) FROM saga_instances WHERE status = 'compensating'",
            )
            .await
                == 2000)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fired = count(
        &app,
        "SELECT count(*) FROM events WHERE event_type = 'saga.step' AND payload->>'input_kind' = 'timeout'",
    )
    .await;
    assert_eq!(fired, 2000, "a timeout fired twice");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM events WHERE event_type = 'control.rollback.requested'"
        )
        .await,
        2000
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM saga_timeouts WHERE name = 'verify_deadline'"
        )
        .await,
        0
    );
}

/// A saga written by a user of the library: one instance per agent, a step per
/// `agent.state.changed`, a timer on the first; it fails permanently on the poisoned agent's
/// second input while `POISON` is set, and emits a `state_change` without `to_state` when an agent
/// moves to `invalid`.
struct Tracker;

static POISON: AtomicBool = AtomicBool::new(true);

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Seen {
    states: Vec<String>,
}

fn poisoned_agent() -> Uuid {
    Uuid::from_u128(0xbad)
}

impl Saga for Tracker {
    type State = Seen;

    fn name(&self) -> &'static str {
        "tracker"
    }

    fn routes(&self) -> Vec<Route> {
        vec![Route {
            event_type: "agent.state.changed",
            correlate: vec![Correlate::Field("agent_id")],
            start: Start::Always,
        }]
    }

    fn handle(&self, state: &Seen, input: &Input) -> Result<Step<Seen>, StepError> {
        let mut next = Seen {
            states: state.states.clone(),
        };
        match input {
            Input::Event(e) => {
                let to = e.payload["to_state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if e.payload["agent_id"] == json!(poisoned_agent().to_string())
                    && state.states.len() == 1
                    && POISON.load(Ordering::SeqCst)
                {
                    return Err(StepError::Permanent("poisoned".into()));
                }
                next.states.push(to.clone());
                let entity = format!("agent:{}", e.aggregate_id);
                let payload = if to == "invalid" {
                    json!({"entity": entity})
                } else {
                    json!({"entity": entity, "to_state": to})
                };
                let mut step = Step::new(next).emit("state_change", payload);
                if state.states.is_empty() {
                    step = step.schedule("tick", Duration::from_secs(2), Value::Null);
                }
                if to == "done" {
                    step = step.end(End::Completed);
                }
                Ok(step)
            }
            Input::Timeout { name, .. } => {
                next.states.push(format!("timeout:{name}"));
                Ok(Step::new(next))
            }
        }
    }
}

async fn run_tracker(app: &TestApp) -> keel::shutdown::Shutdown {
    let stop = keel::shutdown::Shutdown::new();
    let mut config = app.config.clone();
    config.sagas.poll_interval_ms = 100;
    config.sagas.start_from = "earliest".into();
    config
        .sagas
        .properties
        .insert("topic.metadata.refresh.interval.ms".into(), "500".into());
    config
        .sagas
        .properties
        .insert("fetch.wait.max.ms".into(), "20".into());
    let services = keel::app::Services::connect(&config).await.unwrap();
    let catalog = keel::app::catalog(&config).unwrap();
    let sagas = keel::app::Sagas::none().with(Tracker);
    let selected = sagas.selected(&config, &[]).unwrap();
    let s = stop.clone();
    tokio::spawn(async move {
        if let Err(e) = keel::app::run_sagas(&config, &services, catalog, selected, None, s).await {
            panic!("the tracker saga failed: {e:#}");
        }
    });
    stop
}

/// The `to_state`s a tracker instance emitted, in order.
async fn tracked(app: &TestApp, agent: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT coalesce(payload->>'to_state', '?') FROM events
          WHERE aggregate_type = 'saga.tracker' AND aggregate_id = $1 AND event_type = 'state_change'
          ORDER BY version",
    )
    .bind(saga::instance_id("tracker", &agent.to_string()))
    .fetch_all(app.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_poison_step_parks_its_instance_holds_its_later_inputs_in_order_and_a_retry_delivers_them(
) {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let stop = run_tracker(&app).await;
    let bad = poisoned_agent();
    let others: Vec<Uuid> = (0..198).map(|_| Uuid::new_v4()).collect();
    agent_state(&app, bad, "s1").await;
    let poisoned = saga::instance_id("tracker", &bad.to_string());
    eventually(
        Duration::from_secs(30),
        "the poisoned agent's first step",
        || async { (tracked(&app, bad).await.len() == 1).then_some(()) },
    )
    .await;
    for (i, s) in ["s2", "s3", "s4"].iter().enumerate() {
        agent_state(&app, bad, s).await;
        // Other instances flow meanwhile.
        for a in &others[i * 66..(i + 1) * 66] {
            agent_state(&app, *a, "up").await;
            agent_state(&app, *a, "done").await;
        }
    }
    eventually(Duration::from_secs(60), "the 198 others completed", || async {
        let n = count(&app, "SELECT count(*) FROM saga_instances WHERE saga = 'tracker' AND status = 'completed'").await;
        (n == 198).then_some(())
    })
    .await;
    // Its tick is due 2 s after its first step: held too, after the events that came first.
    eventually(Duration::from_secs(30), "the held inputs", || async {
        let kinds: Vec<(String, String)> = sqlx::query_as(
            "SELECT state, coalesce(input->'payload'->>'to_state', input->>'name') FROM saga_inbox
              WHERE saga = 'tracker' AND instance_id = $1 ORDER BY id",
        )
        .bind(poisoned)
        .fetch_all(app.store.pool())
        .await
        .unwrap();
        (kinds.len() == 4).then_some(kinds)
    })
    .await;
    let inbox: Vec<(String, String)> = sqlx::query_as(
        "SELECT state, coalesce(input->'payload'->>'to_state', input->>'name') FROM saga_inbox
          WHERE saga = 'tracker' AND instance_id = $1 ORDER BY id",
    )
    .bind(poisoned)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let names: Vec<&str> = inbox.iter().map(|(_, n)| n.as_str()).collect();
    let tick = names
        .iter()
        .position(|n| *n == "tick")
        .expect("the timeout is held");
    let events: Vec<&str> = names.iter().filter(|n| **n != "tick").copied().collect();
    assert_eq!(events, ["s2", "s3", "s4"]);
    assert!(tick >= 1);
    assert_eq!(inbox[0].0, "parked");
    assert!(inbox[1..].iter().all(|(s, _)| s == "held"));
    assert_eq!(tracked(&app, bad).await, ["s1"]);
    let listed = app.get("/v1/sagas/tracker/instances?status=parked").await;
    assert_eq!(
        listed.body["instances"].as_array().unwrap().len(),
        1,
        "{}",
        listed.body
    );

    // Fixed: a retry delivers the held inputs in the order they arrived.
    POISON.store(false, Ordering::SeqCst);
    let retried = app
        .post_json("/v1/sagas/tracker/retry", &json!({"instance_id": poisoned}))
        .await;
    assert_eq!(retried.status, StatusCode::OK, "{}", retried.body);
    eventually(Duration::from_secs(30), "the redrive", || async {
        (count(&app, "SELECT count(*) FROM saga_inbox").await == 0).then_some(())
    })
    .await;
    assert_eq!(tracked(&app, bad).await, ["s1", "s2", "s3", "s4"]);
    let state: Value =
        sqlx::query_scalar("SELECT state FROM saga_instances WHERE instance_id = $1")
            .bind(poisoned)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    let mut expected: Vec<String> = vec!["s1".into()];
    for (i, n) in names.iter().enumerate() {
        expected.push(if i == tick {
            "timeout:tick".into()
        } else {
            n.to_string()
        });
    }
    assert_eq!(state["states"], json!(expected));
    let again = app
        .post_json("/v1/sagas/tracker/retry", &json!({"instance_id": poisoned}))
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.error_code(), "not_parked");
    let audited = count(
        &app,
        "SELECT count(*) FROM audit_log WHERE action = 'saga.retry'",
    )
    .await;
    assert!(audited >= 1);

    // An emitted event the registry refuses: nothing of the step commits; parked with the path.
    let agent = Uuid::new_v4();
    agent_state(&app, agent, "up").await;
    agent_state(&app, agent, "invalid").await;
    let instance = saga::instance_id("tracker", &agent.to_string());
    let (status, error): (String, Option<String>) = eventually(
        Duration::from_secs(30),
        "the refused step to park",
        || async {
            let row: Option<(String, Option<String>)> =
                sqlx::query_as("SELECT status, error FROM saga_instances WHERE instance_id = $1")
                    .bind(instance)
                    .fetch_optional(app.store.pool())
                    .await
                    .unwrap();
            row.filter(|r| r.0 == "parked")
        },
    )
    .await;
    assert_eq!(status, "parked");
    let error = error.unwrap();
    assert!(
        error.contains("to_state") && error.contains("schema_validation_failed"),
        "{error}"
    );
    assert_eq!(
        tracked(&app, agent).await,
        ["up"],
        "part of the refused step was written"
    );
    stop.trigger();
}

/// Aborts the runner at fault points, one after another, `kills` times (each process dies at
/// its point after `KEEL_FAULT_AFTER` passes), then runs it clean.
async fn kill_repeatedly(runner: &mut Runner, points: &[&str]) -> usize {
    let mut kills = 0;
    for point in points {
        runner.env.retain(|(k, _)| k != "KEEL_FAULT");
        runner
            .env
            .push(("KEEL_FAULT".into(), format!("saga:{point}")));
        runner.restart();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while runner.running() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !runner.running() {
            kills += 1;
        }
    }
    runner.env.retain(|(k, _)| k != "KEEL_FAULT");
    runner.restart();
    kills
}

#[tokio::test]
async fn a_runner_killed_inside_steps_again_and_again_leaves_exactly_the_expected_outputs() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let total: i64 = 300;
    // Small batches, so that each process commits a few before it dies inside the next.
    let mut runner = Runner::start_with(
        &app,
        &broker,
        600_000,
        600_000,
        &[("KEEL_SAGAS__BATCH_SIZE", "10"), ("KEEL_FAULT_AFTER", "25")],
    );
    runner.kill();
    for i in 0..total {
        operation(&app, &format!("k-{i}"), "deploy", true, None).await;
    }
    let points = ["before_step", "after_step", "before_commit"];
    let mut kills = kill_repeatedly(&mut runner, &points).await;
    eventually(Duration::from_secs(120), "every saga started", || async {
        (count(
            &app,
            "SELECT count(*) FROM saga_instances WHERE status = 'active'",
        )
        .await
            == total)
            .then_some(())
    })
    .await;
    runner.kill();
    for i in (0..total).step_by(3) {
        verified(&app, &format!("k-{i}"), true).await;
    }
    kills += kill_repeatedly(&mut runner, &points).await;
    assert!(kills >= 5, "only {kills} kills happened");
    eventually(
        Duration::from_secs(120),
        "every verified saga completed",
        || async {
            (count(
                &app,
                "SELECT count(*) FROM saga_instances WHERE status = 'completed'",
            )
            .await
                == 100)
                .then_some(())
        },
    )
    .await;
    let mut by: BTreeMap<Vec<String>, usize> = BTreeMap::new();
    for i in 0..total {
        *by.entry(outputs(&app, &format!("k-{i}")).await)
            .or_default() += 1;
    }
    assert_eq!(
        by,
        BTreeMap::from([
            (vec![REQUESTED.to_owned()], 200),
            (
                vec![REQUESTED.to_owned(), "state_change:verified".to_owned()],
                100
            )
        ])
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM saga_timeouts").await,
        200,
        "one deadline per waiting instance"
    );
    // Two steps for a completed instance, one for a waiting one: no step twice.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM events WHERE event_type = 'saga.step'"
        )
        .await,
        400
    );
}

#[tokio::test]
async fn replay_check_passes_over_1000_ended_sagas_writes_nothing_and_names_the_step_a_changed_deadline_alters(
) {
    use futures::StreamExt;
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let runner = Runner::start(&app, &broker, 1_000, 1_000);
    // Every path: a third verified, a third failed verifications then rolled back, a third
    // left to both deadlines.
    futures::stream::iter(0..1000)
        .for_each_concurrent(16, |i| {
            let app = &app;
            async move {
                operation(app, &format!("c-{i}"), "deploy", true, None).await;
            }
        })
        .await;
    eventually(Duration::from_secs(120), "1,000 instances", || async {
        (count(&app, "SELECT count(*) FROM saga_instances").await == 1000).then_some(())
    })
    .await;
    futures::stream::iter((0..1000).filter(|i| i % 3 != 2))
        .for_each_concurrent(16, |i| {
            let app = &app;
            async move {
                let op = format!("c-{i}");
                verified(app, &op, i % 3 == 0).await;
            }
        })
        .await;
    eventually(Duration::from_secs(180), "every saga ended", || async {
        let open = count(
            &app,
            "SELECT count(*) FROM saga_instances WHERE status IN ('active', 'compensating')",
        )
        .await;
        (open == 0).then_some(())
    })
    .await;
    drop(runner);
    let ended = count(&app, "SELECT count(*) FROM saga_instances WHERE status IN ('completed', 'compensated', 'failed')").await;
    assert_eq!(ended, 1000);
    let rows_before = saga_rows(&app).await;
    let check = |deadline: &str| {
        let mut c = app.keel();
        c.args(["replay", "saga", "op_verify", "--check", "--json"])
            .env("KEEL_DATABASE_URL", &app.config.database_url)
            .env(
                "KEEL_SCHEMAS_DIR",
                app.config.schemas_dir.display().to_string(),
            )
            .env("KEEL_SAGAS__OP_VERIFY__VERIFY_DEADLINE_MS", deadline)
            .env("KEEL_SAGAS__OP_VERIFY__ROLLBACK_DEADLINE_MS", "1000");
        c
    };
    let same = crate::helpers::run(check("1000")).await;
    assert!(same.ok, "{}{}", same.stdout, same.stderr);
    let report: Value = serde_json::from_str(&same.stdout).unwrap();
    assert_eq!(report["instances"], 1000);
    assert_eq!(report["divergences"], json!([]));
    assert!(report["steps"].as_u64().unwrap() >= 2000, "{report}");
    assert_eq!(
        saga_rows(&app).await,
        rows_before,
        "the check wrote something"
    );

    let changed = crate::helpers::run(check("2000")).await;
    assert!(!changed.ok, "a changed deadline passed the check");
    let report: Value = serde_json::from_str(&changed.stdout).unwrap();
    let divergences = report["divergences"].as_array().unwrap();
    assert_eq!(divergences.len(), 1000, "every instance set the deadline");
    for d in divergences {
        assert_eq!(d["version"], 1, "{d}");
        assert_eq!(d["input"], "control.operation.completed");
        // The request names its deadline: the first difference is its payload.
        let what = d["what"].as_str().unwrap();
        assert!(
            what.contains(REQUESTED) && what.contains("\"deadline_ms\":2000"),
            "{d}"
        );
    }
    assert!(
        changed.stderr.contains("would decide differently"),
        "{}",
        changed.stderr
    );
}

#[tokio::test]
async fn saga_list_and_show_on_the_command_line_agree_with_the_store() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let _runner = Runner::start(&app, &broker, 60_000, 60_000);
    operation(&app, "cli-1", "deploy", true, None).await;
    wait_status(&app, "cli-1", "active", Duration::from_secs(30)).await;
    let listed = crate::helpers::run({
        let mut c = app.keel();
        c.args(["saga", "list", "op_verify", "--status", "active", "--json"]);
        c
    })
    .await
    .json_lines("keel saga list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["correlation"], "cli-1");
    let shown = crate::helpers::run({
        let mut c = app.keel();
        c.args([
            "saga",
            "show",
            "op_verify",
            "--correlation",
            "cli-1",
            "--json",
        ]);
        c
    })
    .await
    .json_lines("keel saga show");
    assert_eq!(shown[0]["status"], "active");
    assert_eq!(shown[0]["timeouts"][0]["name"], "verify_deadline");
    assert_eq!(shown[0]["associations"][0]["key"], "agent_id");
    assert_eq!(shown[0]["history"].as_array().unwrap().len(), 1);
    let table = crate::helpers::run({
        let mut c = app.keel();
        c.args(["saga", "show", "op_verify", "--correlation", "cli-1"]);
        c
    })
    .await
    .expect_ok("keel saga show");
    assert!(
        table.contains("verify_deadline") && table.contains("control.verification.requested"),
        "{table}"
    );
    // Nothing is stuck yet; with a 0 s threshold and no step since, nothing is listed either:
    // the instance has a pending timeout.
    let stuck = crate::helpers::run({
        let mut c = app.keel();
        c.args(["saga", "list", "op_verify", "--stuck", "1s", "--json"]);
        c
    })
    .await
    .json_lines("keel saga list --stuck");
    assert!(stuck.is_empty(), "{stuck:?}");
    let bad = crate::helpers::run({
        let mut c = app.keel();
        c.args(["saga", "list", "op_verify", "--stuck", "soon"]);
        c
    })
    .await;
    assert!(
        !bad.ok && bad.stderr.contains("invalid_age"),
        "{}",
        bad.stderr
    );
    let retry = crate::helpers::run({
        let mut c = app.keel();
        c.args(["saga", "retry", "op_verify", "--correlation", "cli-1"]);
        c
    })
    .await;
    assert!(
        !retry.ok && retry.stderr.contains("not_parked"),
        "{}",
        retry.stderr
    );
}

#[tokio::test]
async fn two_runners_under_concurrent_inputs_on_two_topics_one_killed_mid_load_reach_the_same_result(
) {
    use futures::StreamExt;
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let mut a = Runner::start(&app, &broker, 600_000, 600_000);
    let _b = Runner::start(&app, &broker, 600_000, 600_000);
    let n = 300;
    futures::stream::iter(0..n)
        .for_each_concurrent(16, |i| {
            let app = &app;
            async move {
                operation(app, &format!("two-{i}"), "deploy", true, None).await;
            }
        })
        .await;
    eventually(Duration::from_secs(60), "every saga started", || async {
        (count(
            &app,
            "SELECT count(*) FROM saga_instances WHERE status = 'active'",
        )
        .await
            == n)
            .then_some(())
    })
    .await;
    // Each instance gets an input on each topic at once: on keel.agent a passed verification
    // (even) or a harmless state change (odd), on keel.operation a second start of its
    // operation; whichever runner holds each topic, and in whichever order they meet, the result
    // is the same.
    let load = futures::stream::iter(0..n).for_each_concurrent(16, |i| {
        let app = &app;
        async move {
            let op = format!("two-{i}");
            let agent_side = async {
                if i % 2 == 0 {
                    verified(app, &op, true).await
                } else {
                    agent_state(app, agent_of(&op), "busy").await
                }
            };
            tokio::join!(agent_side, operation(app, &op, "restart", true, None));
        }
    });
    let kill = async {
        tokio::time::sleep(Duration::from_millis(700)).await;
        a.kill();
    };
    tokio::join!(load, kill);
    eventually(
        Duration::from_secs(90),
        "the even sagas completed",
        || async {
            (count(
                &app,
                "SELECT count(*) FROM saga_instances WHERE status = 'completed'",
            )
            .await
                == n / 2)
                .then_some(())
        },
    )
    .await;
    // Let the odd ones' inputs land too, then compare.
    eventually(Duration::from_secs(60), "every input applied", || async {
        let offsets = count(&app, "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets WHERE projection = 'saga_op_verify'").await;
        (offsets >= 3 * n).then_some(())
    })
    .await;
    assert_eq!(count(&app, "SELECT count(*) FROM saga_instances").await, n);
    for i in 0..n {
        let op = format!("two-{i}");
        let want: Vec<String> = if i % 2 == 0 {
            vec![REQUESTED.into(), "state_change:verified".into()]
        } else {
            vec![REQUESTED.into()]
        };
        assert_eq!(outputs(&app, &op).await, want, "{op}");
    }
    let gaps = count(
        &app,
        "SELECT count(*) FROM (SELECT aggregate_id, max(version) - count(*) AS gap FROM events
            WHERE aggregate_type = 'saga.op_verify' GROUP BY aggregate_id) g WHERE gap <> 0",
    )
    .await;
    assert_eq!(gaps, 0, "an instance stream has a gap");
}

/// `Tracker` at state version 1 next to an instance written at version 2 by a newer build.
#[tokio::test]
async fn a_runner_never_overwrites_state_written_by_a_newer_definition() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let agent = Uuid::new_v4();
    let newer = Uuid::new_v4();
    let stop = run_tracker(&app).await;
    agent_state(&app, agent, "up").await;
    agent_state(&app, newer, "up").await;
    eventually(Duration::from_secs(30), "both instances", || async {
        (count(
            &app,
            "SELECT count(*) FROM saga_instances WHERE saga = 'tracker'",
        )
        .await
            == 2)
            .then_some(())
    })
    .await;
    let newer_instance = saga::instance_id("tracker", &newer.to_string());
    sqlx::query("UPDATE saga_instances SET state_version = 2, state = '{\"v2\": true}' WHERE instance_id = $1")
        .bind(newer_instance)
        .execute(app.store.pool())
        .await
        .unwrap();
    agent_state(&app, newer, "again").await;
    // The runner retries the batch and says why; the row stays as the newer build wrote it.
    eventually(
        Duration::from_secs(30),
        "the runner to show failing",
        || async {
            let error: Option<String> = sqlx::query_scalar(
                "SELECT error FROM projections WHERE name = 'saga_tracker' AND state = 'failing'",
            )
            .fetch_optional(app.store.pool())
            .await
            .unwrap()
            .flatten();
            error.filter(|e| e.contains("newer definition"))
        },
    )
    .await;
    let (version, state): (i32, Value) =
        sqlx::query_as("SELECT state_version, state FROM saga_instances WHERE instance_id = $1")
            .bind(newer_instance)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!((version, state), (2, json!({"v2": true})));
    assert_eq!(tracked(&app, newer).await, ["up"]);
    stop.trigger();
}

#[tokio::test]
async fn a_step_that_kills_its_process_parks_its_instance_as_a_crash_loop_and_the_rest_flow() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let mut runner = Runner::start_with(
        &app,
        &broker,
        600_000,
        600_000,
        &[("KEEL_FAULT", "saga:crash_on:crashy")],
    );
    for i in 0..10 {
        operation(&app, &format!("fine-{i}"), "deploy", true, None).await;
    }
    operation(&app, "crashy", "deploy", true, None).await;
    for i in 10..20 {
        operation(&app, &format!("fine-{i}"), "deploy", true, None).await;
    }
    // Each death is restarted, as a supervisor would.
    let mut deaths = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let parked = status(&app, "crashy").await.as_deref() == Some("parked");
        let active = count(
            &app,
            "SELECT count(*) FROM saga_instances WHERE status = 'active'",
        )
        .await;
        if parked && active == 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no crash-loop parking after {deaths} deaths"
        );
        if !runner.running() {
            deaths += 1;
            runner.restart();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(deaths, 3, "parked after three deaths");
    let error: String =
        sqlx::query_scalar("SELECT error FROM saga_instances WHERE correlation = 'crashy'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert!(error.starts_with("crash_loop"), "{error}");
    assert_eq!(outputs(&app, "crashy").await, Vec::<String>::new());
    assert!(runner.running());
    // Its next input is held behind it.
    verified(&app, "crashy", true).await;
    eventually(Duration::from_secs(30), "the held input", || async {
        (count(&app, "SELECT count(*) FROM saga_inbox WHERE state = 'held'").await == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM saga_deliveries").await,
        0,
        "crash-loop notes outlived their batches"
    );
}

#[tokio::test]
async fn a_saga_first_deployed_now_ignores_the_history_still_in_kafka() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    for i in 0..5 {
        operation(&app, &format!("old-{i}"), "deploy", true, None).await;
    }
    // The default, as a production deployment has it (the other tests start from the earliest).
    let mut runner = Runner::start_with(
        &app,
        &broker,
        600_000,
        600_000,
        &[("KEEL_SAGAS__START_FROM", "now")],
    );
    eventually(Duration::from_secs(30), "the saga registered", || async {
        (count(
            &app,
            "SELECT count(*) FROM sagas WHERE start_after IS NOT NULL",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    operation(&app, "new-1", "deploy", true, None).await;
    wait_status(&app, "new-1", "active", Duration::from_secs(30)).await;
    // The old inputs were read (the offsets passed them) and not acted on.
    eventually(Duration::from_secs(30), "every input read", || async {
        let read = count(&app, "SELECT coalesce(sum(next_offset), 0)::bigint FROM projection_offsets WHERE projection = 'saga_op_verify'").await;
        (read >= 6).then_some(())
    })
    .await;
    assert_eq!(count(&app, "SELECT count(*) FROM saga_instances").await, 1);
    // A restart keeps the first run's start.
    runner.restart();
    operation(&app, "new-2", "deploy", true, None).await;
    wait_status(&app, "new-2", "active", Duration::from_secs(30)).await;
    assert_eq!(count(&app, "SELECT count(*) FROM saga_instances").await, 2);
}
