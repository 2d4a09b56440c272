//! `keel replay aggregate` and the library's `Aggregate::load`: history from the event store, as
//! of a version or a time, resolved to the latest schemas.

use keel::model::{AggregateType, RecordedEvent};
use keel::replay::{self, Aggregate, AsOf};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_state_changed, run, spawn_app, spawn_app_with, Run, TestApp};

async fn append(app: &TestApp, aggregate_type: &str, id: Uuid, event: Value) -> Value {
    let reply = app
        .append(aggregate_type, id, &json!({"events": [event]}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["events"][0].clone()
}

async fn replay_cli(app: &TestApp, args: &[&str]) -> Run {
    let mut command = app.keel();
    command.args(["replay", "aggregate"]).args(args);
    run(command).await
}

fn lines(out: Run) -> Vec<Value> {
    out.json_lines("keel replay aggregate")
}

#[derive(Default)]
struct States(Vec<String>);

impl Aggregate for States {
    fn apply(&mut self, event: &RecordedEvent) {
        self.0
            .push(event.payload["to_state"].as_str().unwrap().to_owned());
    }
}

#[tokio::test]
async fn an_aggregates_history_replays_as_of_a_version_or_a_time() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    for state in ["a", "b", "c"] {
        append(&app, "agent", agent, agent_state_changed(agent, state)).await;
    }
    let all = lines(replay_cli(&app, &["agent", &agent.to_string()]).await);
    let versions: Vec<i64> = all.iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [1, 2, 3]);

    let upto2 = lines(replay_cli(&app, &["agent", &agent.to_string(), "--as-of", "2"]).await);
    assert_eq!(upto2, all[..2]);
    let second_at = all[1]["created_at"].as_str().unwrap();
    let by_time =
        lines(replay_cli(&app, &["agent", &agent.to_string(), "--as-of", second_at]).await);
    assert_eq!(by_time, all[..2]);

    // The library folds the same history into state.
    let agent_type = AggregateType::parse("agent").unwrap();
    let (states, version) = replay::load::<States>(
        &app.store,
        &app.registry,
        &agent_type,
        agent,
        Some(AsOf::Version(2)),
    )
    .await
    .unwrap();
    assert_eq!(
        (states.0, version),
        (vec!["a".to_owned(), "b".to_owned()], 2)
    );
    let (states, version) =
        replay::load::<States>(&app.store, &app.registry, &agent_type, Uuid::new_v4(), None)
            .await
            .unwrap();
    assert_eq!((states.0.len(), version), (0, 0));
}

#[tokio::test]
async fn replayed_events_are_resolved_to_the_latest_schema_and_bad_input_is_refused() {
    let app = spawn_app().await;
    let service = Uuid::new_v4();
    append(
        &app,
        "service",
        service,
        json!({"type": "l12.service_invoked", "schema_version": 1,
               "payload": {"service_name": "billing", "method": "charge", "execution_time": 3.0, "status": "OK"}}),
    )
    .await;
    let events = lines(replay_cli(&app, &["service", &service.to_string()]).await);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["schema_version"], 2);
    assert_eq!(events[0]["payload"]["attempt"], 1);
    assert_eq!(events[0]["payload"]["caller"], Value::Null);

    let missing = replay_cli(&app, &["service", &Uuid::new_v4().to_string()]).await;
    assert!(
        !missing.ok && missing.stderr.contains("has no events"),
        "{missing:?}"
    );
    let bad = replay_cli(&app, &["service", &service.to_string(), "--as-of", "soon"]).await;
    assert!(
        !bad.ok
            && bad
                .stderr
                .contains("neither a version nor an RFC 3339 time"),
        "{bad:?}"
    );
}

#[tokio::test]
async fn republish_resends_stored_events_of_a_type_to_a_topic_in_each_aggregates_order() {
    use crate::relay_support::{assert_in_order, Broker, KafkaReader};
    use std::collections::HashMap;

    let broker = Broker::start().await;
    // The server republishes: it needs the broker.
    let app = spawn_app_with(|c| c.kafka_brokers = broker.brokers()).await;
    let mut expected: HashMap<Uuid, Vec<Uuid>> = HashMap::new();
    let agents: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for round in 0..5 {
        for agent in &agents {
            let e = append(
                &app,
                "agent",
                *agent,
                agent_state_changed(*agent, &format!("s{round}")),
            )
            .await;
            expected
                .entry(*agent)
                .or_default()
                .push(e["id"].as_str().unwrap().parse().unwrap());
        }
    }
    let service = Uuid::new_v4();
    append(
        &app,
        "service",
        service,
        json!({"type": "l12.service_invoked",
               "payload": {"service_name": "billing", "method": "charge", "execution_time": 3.0, "status": "OK"}}),
    )
    .await;

    // Republish reads below the transaction horizon, which is cluster-wide: a transaction open in
    // another test's database holds it back. Wait until the log shows every event.
    crate::helpers::eventually(
        std::time::Duration::from_secs(30),
        "the log to show the 15 agent events",
        || async {
            let page = app
                .get("/v1/events?event_type=agent.state.changed&limit=100")
                .await;
            (page.body["events"].as_array().map(Vec::len) == Some(15)).then_some(())
        },
    )
    .await;
    let out = republish_agents(&app, &["--topic", "replay.copy"]).await;
    assert!(
        out.contains("republished 15 events to replay.copy"),
        "{out}"
    );

    let mut reader = KafkaReader::new(&broker.brokers(), &["replay.copy"]);
    let all: Vec<Uuid> = expected.values().flatten().copied().collect();
    reader
        .read_ids(&all, std::time::Duration::from_secs(30))
        .await;
    assert_in_order(&reader.received, &expected);
    assert!(reader.received.iter().all(|r| r.aggregate_id() != service));

    // Resuming with --after (a cursor from the log API, the kind republish prints when
    // interrupted) re-sends only what follows it.
    let first = app
        .get("/v1/events?event_type=agent.state.changed&limit=5")
        .await;
    let skipped: Vec<Uuid> = first.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();
    let after = first.body["next"].as_str().unwrap();
    let out = republish_agents(&app, &["--topic", "replay.rest", "--after", after]).await;
    assert!(
        out.contains("republished 10 events to replay.rest"),
        "{out}"
    );
    let rest: Vec<Uuid> = all.into_iter().filter(|id| !skipped.contains(id)).collect();
    let mut reader = KafkaReader::new(&broker.brokers(), &["replay.rest"]);
    reader
        .read_ids(&rest, std::time::Duration::from_secs(30))
        .await;
    assert!(reader
        .received
        .iter()
        .all(|r| !skipped.contains(&r.event_id())));
}

/// `keel replay republish` of the agent events, at 1,000 a second, with `args`, through `app`
/// (which publishes to its broker); its standard output.
async fn republish_agents(app: &TestApp, args: &[&str]) -> String {
    let mut command = app.keel();
    command.args(["replay", "republish"]).args(args).args([
        "--event-type",
        "agent.state.changed",
        "--rate",
        "1000",
    ]);
    run(command).await.expect_ok("keel replay republish")
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Snapped(Vec<String>);

impl Aggregate for Snapped {
    fn apply(&mut self, event: &RecordedEvent) {
        self.0
            .push(event.payload["to_state"].as_str().unwrap().to_owned());
    }
}

impl replay::Snapshot for Snapped {
    const KIND: &'static str = "test-states-v1";
}

#[tokio::test]
async fn a_snapshotted_load_folds_only_the_events_after_its_snapshot() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let agent_type = AggregateType::parse("agent").unwrap();
    for state in ["a", "b", "c", "d", "e"] {
        append(&app, "agent", agent, agent_state_changed(agent, state)).await;
    }
    let load =
        || replay::load_snapshotted::<Snapped>(&app.store, &app.registry, &agent_type, agent, 2);
    let (state, version) = load().await.unwrap();
    assert_eq!((state.0.join(""), version), ("abcde".to_owned(), 5));
    let stored: (i32, Value) = sqlx::query_as(
        "SELECT version, state FROM aggregate_snapshots WHERE aggregate_id = $1 AND kind = 'test-states-v1'",
    )
    .bind(agent)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, (5, json!(["a", "b", "c", "d", "e"])));
    // Mark the snapshot: a later load starts from it and folds only the new events.
    sqlx::query("UPDATE aggregate_snapshots SET state = '[\"S\"]' WHERE aggregate_id = $1")
        .bind(agent)
        .execute(app.store.pool())
        .await
        .unwrap();
    for state in ["f", "g"] {
        append(&app, "agent", agent, agent_state_changed(agent, state)).await;
    }
    let (state, version) = load().await.unwrap();
    assert_eq!((state.0.join(""), version), ("Sfg".to_owned(), 7));
    // Two events after the snapshot are not more than `every`: the snapshot stays at 5.
    let version: i32 =
        sqlx::query_scalar("SELECT version FROM aggregate_snapshots WHERE aggregate_id = $1")
            .bind(agent)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(version, 5);
    // A snapshot of another kind is ignored: a new state shape folds everything.
    let (v2, version) =
        replay::load_snapshotted::<SnappedV2>(&app.store, &app.registry, &agent_type, agent, 100)
            .await
            .unwrap();
    assert_eq!((v2.0 .0.join(""), version), ("abcdefg".to_owned(), 7));
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
struct SnappedV2(Snapped);

impl Aggregate for SnappedV2 {
    fn apply(&mut self, event: &RecordedEvent) {
        self.0.apply(event);
    }
}

impl replay::Snapshot for SnappedV2 {
    const KIND: &'static str = "test-states-v2";
}
