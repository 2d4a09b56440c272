//! `GET /v1/events/{id}/journey` against a real broker (nisshi), real Redis, real consumer groups
//! and projections: each hop as the pipeline left it, the Kafka offset checked by reading the
//! record back, and a partial answer when Kafka is away. Also the aggregate state route.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::consumer::{fault, ConsumerProcess};
use crate::helpers::{
    agent_state_changed, client_with_key, spawn_app, spawn_app_with, within, Reply, TestApp,
};
use crate::relay_support::{fast_relay, spawn_kafka_relayed_app, Broker};

const TOPIC: &str = "keel.agent";

async fn journey(app: &TestApp, id: Uuid) -> Reply {
    app.get(&format!("/v1/events/{id}/journey")).await
}

/// Appends one event of each of `states` to `agent`; returns their ids.
async fn append(app: &TestApp, agent: Uuid, states: &[&str]) -> Vec<Uuid> {
    let events: Vec<Value> = states
        .iter()
        .map(|s| agent_state_changed(agent, s))
        .collect();
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": "any", "events": events}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The journey of `id` once `done` holds for it; on a time-out, the last one seen is shown.
async fn journey_until(
    app: &TestApp,
    id: Uuid,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = within(Duration::from_secs(60), || async {
        let reply = journey(app, id).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let ok = done(&reply.body);
        *last.lock().unwrap() = reply.body.clone();
        ok.then_some(reply.body)
    })
    .await;
    found.unwrap_or_else(|| {
        panic!(
            "timed out waiting for {what}; last journey: {:#}",
            last.lock().unwrap()
        )
    })
}

fn sink<'j>(journey: &'j Value, name: &str) -> &'j Value {
    journey["outbox"]["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == name)
        .unwrap_or_else(|| panic!("no {name} sink in {journey}"))
}

fn group<'j>(journey: &'j Value, name: &str) -> Option<&'j Value> {
    journey["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["group"] == name)
}

/// The headers of the record at `offset` of `partition`, read with a consumer of no group.
async fn record_at(brokers: &str, partition: i32, offset: i64) -> HashMap<String, String> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("keel-test-{}", Uuid::new_v4().simple()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut at = TopicPartitionList::new();
    at.add_partition_offset(TOPIC, partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&at).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("the record within 20 s")
        .expect("a record");
    assert_eq!((m.partition(), m.offset()), (partition, offset));
    m.headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_owned(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_pending_before_the_relay_runs_then_shows_the_kafka_offset_and_redis_entry_that_hold_it(
) {
    // Arrange: its aggregate's earlier events (same key, same partition) and other agents'
    // before it, so the record is not the first of its partition.
    let broker = Broker::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379");
        c.relay.in_process = false;
    })
    .await;
    let agent = Uuid::new_v4();
    append(&app, agent, &["a", "b", "c", "d"]).await;
    for _ in 0..8 {
        append(&app, Uuid::new_v4(), &["a", "b", "c"]).await;
    }
    let id = append(&app, agent, &["running"]).await[0];

    // Before any relay ran: in the outbox, pending on both sinks, no offset.
    let before = journey(&app, id).await;
    assert_eq!(before.status, StatusCode::OK, "{}", before.body);
    let before = before.body;
    assert_eq!(before["event"]["id"], id.to_string());
    assert_eq!(before["event"]["aggregate_id"], agent.to_string());
    assert_eq!(before["event"]["type"], "agent.state.changed");
    assert_eq!(before["outbox"]["in_outbox"], true);
    let row_partition: i16 = sqlx::query_scalar("SELECT partition FROM outbox WHERE event_id = $1")
        .bind(id)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(before["outbox"]["partition"], row_partition);
    for name in ["kafka", "redis"] {
        assert_eq!(sink(&before, name)["state"], "pending", "{before}");
    }
    assert_eq!(before["kafka"]["topic"], TOPIC);
    assert_eq!(before["kafka"]["offset"], Value::Null);
    assert_eq!(
        before["kafka"]["offset_note"],
        "not published: the kafka sink's state is pending"
    );
    assert_eq!(before["redis"]["delivered"], false);

    // Act: relay.
    let mut config = app.config.clone();
    config.relay.in_process = true;
    let catalog = keel::catalog::Catalog::load(&config.schemas_dir).unwrap();
    let relay = keel::relay::start(
        &config,
        app.store.pool().clone(),
        Arc::new(catalog),
        app.registry.clone(),
        None,
    )
    .await
    .unwrap();

    // Assert: delivered on both sinks, at an offset that holds the event, and an entry that does.
    let after = journey_until(&app, id, "the kafka offset and the redis entry", |j| {
        j["kafka"]["offset"].is_i64() && j["redis"]["entry_id"].is_string()
    })
    .await;
    for name in ["kafka", "redis"] {
        let s = sink(&after, name);
        assert_eq!(s["state"], "delivered", "{after}");
        assert!(s["cursor"]["updated_at"].is_string());
    }
    assert_eq!(after["kafka"]["offset_note"], Value::Null, "{after}");
    let partition = after["kafka"]["partition"].as_i64().unwrap() as i32;
    let offset = after["kafka"]["offset"].as_i64().unwrap();
    assert!(
        offset >= 4,
        "behind its aggregate's four earlier records: {after}"
    );
    let headers = record_at(&broker.brokers(), partition, offset).await;
    assert_eq!(headers["keel-event-id"], id.to_string());
    assert_eq!(headers["keel-aggregate-id"], agent.to_string());
    assert!(after["kafka"]["timestamp"].is_string());

    let entry = after["redis"]["entry_id"].as_str().unwrap().to_owned();
    let stream = after["redis"]["stream"].as_str().unwrap().to_owned();
    assert_eq!(
        stream,
        format!("{}agent", app.config.relay.redis.stream_prefix)
    );
    let redis = redis::Client::open(app.config.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg(&entry)
        .arg(&entry)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].1[..2], ["id".to_owned(), id.to_string()]);

    // The relay deletes rows both sinks passed; the journey still tells the story.
    let gone = journey_until(&app, id, "the outbox row to go", |j| {
        j["outbox"]["in_outbox"] == false
    })
    .await;
    assert_eq!(sink(&gone, "kafka")["state"], "delivered");
    assert_eq!(gone["consumers"], json!([]));
    assert_eq!(gone["projections"], json!([]));
    relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_kafka_sink_parked_shows_parked_with_its_error_and_the_next_one_held() {
    // Arrange: a broker limit the first event is too big for.
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |c| {
        let limit = ("message.max.bytes".to_owned(), "3000".to_owned());
        c.relay.kafka.properties.extend([limit]);
    })
    .await;
    let agent = Uuid::new_v4();
    let mut big = agent_state_changed(agent, "running");
    big["payload"]["reason"] = json!("x".repeat(5_000));
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"events": [big, agent_state_changed(agent, "idle")]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let ids: Vec<Uuid> = reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();

    // Act and assert
    let parked = journey_until(&app, ids[0], "the kafka sink to park it", |j| {
        sink(j, "kafka")["state"] == "parked"
    })
    .await;
    let k = &sink(&parked, "kafka")["parked"];
    assert_eq!(k["error_class"], "message_too_large", "{parked}");
    assert_eq!(k["attempts"], 2);
    assert!(k["error"].is_string(), "{k}");
    assert_eq!(parked["kafka"]["offset"], Value::Null);
    assert_eq!(
        parked["kafka"]["offset_note"],
        "not published: the kafka sink's state is parked"
    );
    assert!(parked["kafka"]["partition"].is_i64(), "{parked}");
    let held = journey(&app, ids[1]).await.body;
    assert_eq!(sink(&held, "kafka")["state"], "held", "{held}");
    assert_eq!(sink(&held, "kafka")["parked"]["error_class"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_group_that_parked_the_event_shows_it_parked_with_the_reason() {
    // Arrange: a poison event and a healthy one, and a group that parks the poison.
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let poison = append(&app, Uuid::new_v4(), &["p"]).await[0];
    let healthy = append(&app, Uuid::new_v4(), &["h"]).await[0];
    fault(&app, poison, "poison").await;
    let name = "journey";

    // Act
    let _consumer = ConsumerProcess::start(&app, &broker, name, "c", &[]);

    // Assert
    // The Kafka hop's offset is looked up per request and may be unknown in the snapshot where
    // the group first shows parked (the relay's stored progress trails the broker by up to
    // 100 ms; the lookup has a time budget): wait for both.
    let parked = journey_until(
        &app,
        poison,
        "the group to park the event at a known offset",
        |j| group_state(j, name) == Some("parked") && j["kafka"]["offset"].is_i64(),
    )
    .await;
    let g = group(&parked, name).unwrap();
    assert_eq!(g["dead_letter"]["state"], "parked", "{parked}");
    assert_eq!(g["dead_letter"]["reason_class"], "permanent", "{parked}");
    assert!(g["dead_letter"]["reason"].is_string(), "{parked}");
    assert_eq!(
        g["dead_letter"]["kafka_offset"], parked["kafka"]["offset"],
        "{parked}"
    );
    let handled = journey_until(&app, healthy, "the group to handle the other event", |j| {
        group_state(j, name) == Some("handled")
    })
    .await;
    let g = group(&handled, name).unwrap();
    assert!(g["committed_offset"].as_i64().unwrap() > handled["kafka"]["offset"].as_i64().unwrap());
    assert_eq!(g["dead_letter"], Value::Null);
    // The Redis sink is off in this app: said, not guessed.
    assert_eq!(sink(&handled, "redis")["enabled"], false);
    assert!(handled["redis"]["entry_note"].is_string());
}

fn group_state<'j>(journey: &'j Value, name: &str) -> Option<&'j str> {
    group(journey, name)?["state"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_checkpoint_passed_the_event_shows_passed() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |c| {
        c.projections.in_process = true;
        c.projections.run = vec!["agent_status".into()];
        for (k, v) in [("session.timeout.ms", "6000"), ("fetch.wait.max.ms", "50")] {
            c.projections.properties.insert(k.into(), v.into());
        }
    })
    .await;

    let id = append(&app, Uuid::new_v4(), &["running"]).await[0];

    let passed = journey_until(&app, id, "agent_status to pass the event", |j| {
        j["projections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "agent_status" && p["passed"] == true)
    })
    .await;
    let p = &passed["projections"][0];
    assert_eq!(p["applies"], true, "{passed}");
    assert_eq!(p["state"], "running");
    assert!(p["next_offset"].as_i64().unwrap() > passed["kafka"]["offset"].as_i64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kafka_unreachable_the_journey_is_partial_with_a_note_and_not_an_error() {
    // Arrange: an event delivered to Kafka, then the broker gone.
    let mut broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let id = append(&app, Uuid::new_v4(), &["running"]).await[0];
    journey_until(&app, id, "the kafka offset", |j| {
        j["kafka"]["offset"].is_i64()
    })
    .await;
    broker.stop();

    // Act
    let started = Instant::now();
    let reply = journey(&app, id).await;

    // Assert: the database's hops in full, Kafka's with a note, within the time budget.
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let j = reply.body;
    assert_eq!(sink(&j, "kafka")["state"], "delivered");
    assert_eq!(j["kafka"]["offset"], Value::Null);
    let note = j["kafka"]["offset_note"].as_str().unwrap();
    assert!(note.contains("kafka unavailable"), "{note}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_reader_without_read_on_the_events_type_gets_the_404_of_a_missing_event() {
    let app = spawn_app_with(|c| {
        c.relay.kafka.enabled = false;
        c.relay.redis.enabled = false;
    })
    .await;
    let id = append(&app, Uuid::new_v4(), &["running"]).await[0];
    let key = app
        .principal(
            "invoice-reader",
            &[],
            &[("allow", "event.read", "invoice", "*")],
        )
        .await;
    let reader = client_with_key(&key);
    let get = |path: String| {
        let request = reader.get(app.url(&path));
        async move {
            let reply = request.send().await.unwrap();
            (reply.status(), reply.json::<Value>().await.unwrap())
        }
    };

    let (status, hidden) = get(format!("/v1/events/{id}/journey")).await;
    let (_, missing) = get(format!("/v1/events/{}/journey", Uuid::new_v4())).await;

    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(hidden["error"]["code"], "event_not_found");
    assert_eq!(missing["error"]["code"], "event_not_found");
    // The admin may read it; with both sinks off, no broker is asked.
    let shown = journey(&app, id).await;
    assert_eq!(shown.status, StatusCode::OK, "{}", shown.body);
    assert_eq!(
        shown.body["kafka"]["offset_note"],
        "the kafka sink is not enabled"
    );
    let bad = app.get("/v1/events/not-a-uuid/journey").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_code(), "invalid_event_id");
}

#[tokio::test]
async fn keel_events_journey_prints_one_line_per_hop_or_the_json() {
    let app = spawn_app_with(|c| {
        c.relay.kafka.enabled = false;
        c.relay.redis.enabled = false;
    })
    .await;
    let id = append(&app, Uuid::new_v4(), &["running"]).await[0];
    let keel = |json: bool| {
        let mut command = app.keel();
        command.args(["events", "journey", &id.to_string()]);
        if json {
            command.arg("--json");
        }
        crate::helpers::run(command)
    };

    let text = keel(false).await.expect_ok("keel events journey");
    let json = keel(true).await.expect_ok("keel events journey --json");

    assert!(
        text.starts_with(&format!("event      {id} agent/")),
        "{text}"
    );
    assert!(text.contains("  kafka    pending (disabled)"), "{text}");
    assert!(text.contains("(the kafka sink is not enabled)"), "{text}");
    let parsed: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["event"]["id"], id.to_string());
}

#[tokio::test]
async fn an_agents_state_at_version_n_folds_its_history_up_to_n() {
    // Arrange
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let task = json!({"type": "agent.task.completed", "payload": {
        "agent_id": agent, "task_id": "t1", "outcome": "SUCCEEDED", "duration_ms": 40, "error": null}});
    let events = json!([
        agent_state_changed(agent, "idle"),
        agent_state_changed(agent, "busy"),
        task
    ]);
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": "no_stream", "events": events}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let path = format!("/v1/aggregates/agent/{agent}/state");

    // Act
    let at2 = app.get(&format!("{path}?version=2")).await;
    let now = app.get(&path).await;

    // Assert
    assert_eq!(at2.status, StatusCode::OK, "{}", at2.body);
    assert_eq!(at2.body["version"], 2);
    assert_eq!(at2.body["aggregate_id"], agent.to_string());
    assert_eq!(at2.body["state"]["state"], "busy");
    assert_eq!(at2.body["state"]["transitions"], 2);
    assert_eq!(at2.body["state"]["tasks"]["succeeded"], 0);
    assert_eq!(now.body["version"], 3);
    assert_eq!(now.body["state"]["tasks"]["succeeded"], 1);
    assert_eq!(now.body["state"]["last_task"]["task_id"], "t1");

    let none = app
        .get(&format!("/v1/aggregates/service/{agent}/state"))
        .await;
    assert_eq!(none.status, StatusCode::NOT_FOUND);
    assert_eq!(none.error_code(), "no_aggregate_model");
    let missing = app
        .get(&format!("/v1/aggregates/agent/{}/state", Uuid::new_v4()))
        .await;
    assert_eq!(missing.error_code(), "aggregate_not_found");
    let zero = app.get(&format!("{path}?version=0")).await;
    assert_eq!(zero.status, StatusCode::BAD_REQUEST);
}
