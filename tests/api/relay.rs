//! The relay against a real Kafka-protocol broker (nisshi), real Redis and real PostgreSQL: order,
//! no loss across crashes and outages, parking, encoding, and a bounded outbox.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use keel::relay::sink::SinkKind;
use keel::relay::{self, admin};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, spawn_app_with, TestApp};
use crate::relay_support::{
    all_ids, append_concurrently, append_one, assert_in_order, fast_relay, merge,
    spawn_kafka_relayed_app, Broker, KafkaReader, Received, RedisServer, RelayProcess, Server,
};

const AGENT_TOPIC: &str = "keel.agent";

/// Appends one event and waits at most `within` for it on the agent topic.
async fn append_and_expect_on_kafka_within(app: &TestApp, broker: &Server, within: Duration) {
    let agent = Uuid::new_v4();
    let log = Mutex::new(HashMap::new());
    append_one(app, agent, &log, agent_state_changed(agent, "a")).await;
    let id = log.into_inner()[&agent][0];
    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader.read_ids(&[id], within).await;
}

/// How many partitions the relay named `name` holds a live lease on.
async fn leases_held(app: &TestApp, name: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM relay_leases WHERE owner_name = $1 AND lease_until > now()",
    )
    .bind(name)
    .fetch_one(app.store.pool())
    .await
    .unwrap()
}

/// The Kafka publishes a `keel relay` process reports on its metrics `port`, once it serves them.
async fn published_by(port: u16) -> Option<f64> {
    let url = format!("http://127.0.0.1:{port}/metrics");
    let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
    let line = body
        .lines()
        .find(|l| l.starts_with("keel_relay_published_total{sink=\"kafka\"}"))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// Waits until a relay's lease task has begun a round after this call. The round before it, which
/// claimed the leases the database shows, has then also handed them to the sink loops (it does so
/// after its last statement, before it sleeps), so a wake-up from now on finds partitions to read.
async fn next_lease_round(app: &TestApp) {
    let now: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    eventually(Duration::from_secs(10), "the next lease round", || async {
        let later: i64 =
            sqlx::query_scalar("SELECT count(*) FROM relay_members WHERE heartbeat_at > $1")
                .bind(now)
                .fetch_one(app.store.pool())
                .await
                .unwrap();
        (later > 0).then_some(())
    })
    .await;
}

/// Reads the agent topic from the beginning until every expected event arrived, and checks the
/// order.
async fn expect_on_kafka(broker: &Server, expected: &HashMap<Uuid, Vec<Uuid>>, timeout: Duration) {
    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader.read_ids(&all_ids(expected), timeout).await;
    assert_in_order(&reader.received, expected);
}

/// An in-process relay for `app` (Kafka only), with librdkafka's `message.max.bytes` set.
///
/// Batches hold one row per partition, so an aggregate's events go out in successive batches,
/// the next one sent while the previous one is in flight: a failure must stop the aggregate's
/// later events across batches too, not only within one.
async fn start_relay(app: &TestApp, message_max_bytes: Option<&str>) -> relay::RelayHandle {
    let mut config = app.config.clone();
    config.relay.redis.enabled = false;
    config.relay.batch_size = 1;
    if let Some(max) = message_max_bytes {
        config
            .relay
            .kafka
            .properties
            .insert("message.max.bytes".into(), max.into());
    }
    let catalog = keel::catalog::Catalog::load(&config.schemas_dir).unwrap();
    relay::start(
        &config,
        app.store.pool().clone(),
        Arc::new(catalog),
        app.registry.clone(),
        Some(app.store.commits()),
    )
    .await
    .unwrap()
}

/// An `agent.state.changed` event too big for a 3000-byte message limit.
fn too_big(agent: Uuid, to: &str) -> Value {
    let mut event = agent_state_changed(agent, to);
    event["payload"]["reason"] = json!("x".repeat(5_000));
    event
}

/// Runs `keel outbox ARGS` against `app`'s API; returns its standard output.
async fn keel_outbox(app: &TestApp, args: &[&str]) -> String {
    let mut command = app.keel();
    command.arg("outbox").args(args);
    crate::helpers::run(command)
        .await
        .expect_ok(&format!("keel outbox {args:?}"))
}

async fn redis_del(conn: &mut redis::aio::MultiplexedConnection, key: &str) {
    let _: () = redis::cmd("DEL").arg(key).query_async(conn).await.unwrap();
}

async fn metrics_text(app: &TestApp) -> String {
    app.client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn outbox_status(app: &TestApp, sink: SinkKind) -> admin::SinkStatus {
    admin::status(app.store.pool(), &relay::all_partitions())
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.sink == sink.as_str())
        .unwrap()
}

#[tokio::test]
async fn relay_publishes_avro_with_headers_to_kafka_and_json_to_redis_and_empties_the_outbox() {
    let broker = Broker::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379");
        c.relay.in_process = true;
    })
    .await;
    let redis = redis::Client::open(app.config.redis_url.as_str()).unwrap();
    let channel = format!("{}agent", app.config.relay.redis.channel_prefix);
    let stream = format!("{}agent", app.config.relay.redis.stream_prefix);
    let mut pubsub = redis.get_async_pubsub().await.unwrap();
    pubsub.subscribe(&channel).await.unwrap();

    let agent = Uuid::new_v4();
    let correlation = Uuid::new_v4();
    let mut event = agent_state_changed(agent, "running");
    event["metadata"] = json!({
        "correlation_id": correlation.to_string(),
        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    });
    let reply = app
        .append("agent", agent, &json!({"expected_version": "no_stream", "events": [event, agent_state_changed(agent, "idle")]}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let ids: Vec<Uuid> = reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().parse().unwrap())
        .collect();

    // Kafka: the catalog's topic, keyed by aggregate id, Confluent-framed Avro, keel's headers.
    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader.read_ids(&ids, Duration::from_secs(30)).await;
    let first = reader
        .received
        .iter()
        .find(|r| r.event_id() == ids[0])
        .unwrap();
    assert_eq!(first.topic, AGENT_TOPIC);
    assert_eq!(first.key, agent.to_string());
    for (header, value) in [
        ("keel-event-type", "agent.state.changed".to_owned()),
        ("keel-aggregate-type", "agent".to_owned()),
        ("keel-aggregate-id", agent.to_string()),
        ("keel-aggregate-version", "1".to_owned()),
        ("keel-schema-version", "1".to_owned()),
        (
            "keel-content-type",
            "application/vnd.confluent.avro".to_owned(),
        ),
        ("keel-correlation-id", correlation.to_string()),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        ),
    ] {
        assert_eq!(first.headers.get(header), Some(&value), "header {header}");
    }
    assert!(first.headers["keel-created-at"].ends_with('Z'));
    assert!(first.headers["keel-position"].parse::<i64>().unwrap() > 0);
    // The value decodes with the schema the registry serves for the id in its first five bytes.
    assert_eq!(first.value[0], 0, "Confluent magic byte");
    let schema_id = i32::from_be_bytes(first.value[1..5].try_into().unwrap());
    assert_eq!(first.headers["keel-schema-id"], schema_id.to_string());
    let (_, schema) = app.registry.schema_by_id(schema_id).await.unwrap();
    let decoded =
        apache_avro::from_avro_datum(schema.schema(), &mut &first.value[5..], None).unwrap();
    let decoded: Value = serde_json::Value::try_from(decoded).unwrap();
    assert_eq!(decoded["to_state"], "running");
    assert_eq!(decoded["agent_id"], agent.to_string());
    assert_eq!(decoded["from_state"], Value::Null);

    // Redis pub/sub: the JSON envelope, in order.
    let mut messages = pubsub.on_message();
    for (i, id) in ids.iter().enumerate() {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("a pub/sub message")
            .unwrap();
        let envelope: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        assert_eq!(envelope["id"], id.to_string());
        assert_eq!(envelope["version"], i as i64 + 1);
        assert_eq!(envelope["payload"]["agent_id"], agent.to_string());
    }
    // Redis stream: the same, durable, with the event id as a field.
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async::<redis::Value>(&mut conn)
        .await
        .map(|v| redis::from_redis_value(v).unwrap())
        .unwrap();
    let stream_ids: Vec<String> = entries
        .iter()
        .map(|(_, fields)| fields.iter().find(|(k, _)| k == "id").unwrap().1.clone())
        .collect();
    assert_eq!(
        stream_ids,
        ids.iter().map(Uuid::to_string).collect::<Vec<_>>()
    );

    // The relay's metrics are on /metrics.
    eventually(Duration::from_secs(10), "the relay's metrics", || async {
        let body = metrics_text(&app).await;
        [
            "keel_relay_published_total{sink=\"kafka\"}",
            "keel_relay_published_total{sink=\"redis\"}",
            "keel_relay_lag_seconds{sink=\"kafka\"}",
            "keel_outbox_backlog{sink=\"kafka\"}",
            "keel_outbox_oldest_age_seconds{sink=\"redis\"}",
            "keel_outbox_parked{sink=\"kafka\"}",
            "keel_relay_partitions_owned",
        ]
        .iter()
        .all(|m| body.contains(m))
        .then_some(())
    })
    .await;

    // Delivered to every sink: the outbox is emptied.
    eventually(Duration::from_secs(10), "an empty outbox", || async {
        (app.count("outbox").await == 0).then_some(())
    })
    .await;
    redis_del(&mut conn, &stream).await;
}

#[tokio::test]
async fn two_relays_split_the_partitions_and_keep_each_aggregates_order() {
    let broker = Broker::start().await;
    let app = spawn_app_with(|c| fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379")).await;
    let mut config = app.config.clone();
    config.relay.redis.enabled = false;
    let a = RelayProcess::start(&config, "relay-a");
    let _b = RelayProcess::start(&config, "relay-b");
    eventually(
        Duration::from_secs(20),
        "two relays holding 8 partitions each",
        || async {
            let split: Vec<i64> = sqlx::query_scalar(
            "SELECT count(*) FROM relay_leases WHERE lease_until > now() GROUP BY owner ORDER BY 1",
        )
        .fetch_all(app.store.pool())
        .await
        .unwrap();
            (split == [8, 8]).then_some(())
        },
    )
    .await;

    let expected = append_concurrently(&app, 40, 8, 16).await;
    expect_on_kafka(&broker, &expected, Duration::from_secs(60)).await;

    // A standalone relay serves its own metrics.
    let url = format!("http://127.0.0.1:{}/metrics", a.metrics_port);
    eventually(Duration::from_secs(10), "relay A's metrics", || async {
        let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
        (body.contains("keel_relay_partitions_owned 8")
            && body.contains("keel_relay_published_total{sink=\"kafka\"}"))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_relay_killed_mid_stream_is_taken_over_without_loss_or_reordering() {
    let broker = Broker::start().await;
    let app = Arc::new(
        spawn_app_with(|c| fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379")).await,
    );
    let mut config = app.config.clone();
    config.relay.redis.enabled = false;
    let mut a = RelayProcess::start(&config, "relay-a");
    let _b = RelayProcess::start(&config, "relay-b");
    eventually(
        Duration::from_secs(20),
        "both relays holding partitions",
        || async {
            (leases_held(&app, "relay-a").await == 8 && leases_held(&app, "relay-b").await == 8)
                .then_some(())
        },
    )
    .await;

    let writer = {
        let app = app.clone();
        tokio::spawn(async move { append_concurrently(&app, 30, 20, 8).await })
    };
    // Kill relay A while the writers are busy and it has published part of the stream.
    eventually(Duration::from_secs(30), "relay A to publish", || async {
        let moved: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM relay_progress p JOIN relay_leases l USING (partition)
              WHERE p.sink = 'kafka' AND l.owner_name = 'relay-a' AND p.position > 0",
        )
        .fetch_one(app.store.pool())
        .await
        .unwrap();
        (moved > 0).then_some(())
    })
    .await;
    a.kill();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(15),
        "relay B to take over every partition",
        || async { (leases_held(&app, "relay-b").await == 16).then_some(()) },
    )
    .await;
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_secs(6),
        "takeover took {takeover:?}"
    );

    let expected = writer.await.unwrap();
    expect_on_kafka(&broker, &expected, Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_broker_outage_builds_a_backlog_that_drains_without_loss_when_it_returns() {
    // keel's producer has no local time-out: sends wait for the broker.
    broker_outage(None).await;
}

#[tokio::test]
async fn with_a_finite_send_timeout_a_broker_outage_still_loses_nothing() {
    // An operator's finite time-out turns the outage into failed sends, which must not move the
    // cursor.
    broker_outage(Some("1000")).await;
}

async fn broker_outage(message_timeout_ms: Option<&str>) {
    let mut broker = Broker::start_persistent().await;
    let app = spawn_kafka_relayed_app(&broker, |c| {
        if let Some(ms) = message_timeout_ms {
            c.relay
                .kafka
                .properties
                .insert("message.timeout.ms".into(), ms.into());
        }
    })
    .await;
    let before = append_concurrently(&app, 10, 5, 4).await;
    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader
        .read_ids(&all_ids(&before), Duration::from_secs(30))
        .await;
    drop(reader);
    eventually(
        Duration::from_secs(10),
        "the relay to record its progress",
        || async { (outbox_status(&app, SinkKind::Kafka).await.backlog == 0).then_some(()) },
    )
    .await;

    broker.stop();
    // Appends do not depend on the broker: they succeed, and the backlog grows.
    let during = append_concurrently(&app, 10, 10, 4).await;
    let backlog = outbox_status(&app, SinkKind::Kafka).await;
    assert_eq!(backlog.backlog, 100, "{backlog:?}");
    // A window in which nothing may happen, so it has to be waited out: over several relay rounds
    // and retries (50 ms polls, backoff up to 500 ms) with the broker down, no row may count as
    // sent. A relay that acknowledged rows it never delivered would shrink the backlog here.
    const OUTAGE: Duration = Duration::from_secs(3);
    tokio::time::sleep(OUTAGE).await;
    assert_eq!(outbox_status(&app, SinkKind::Kafka).await.backlog, 100);
    broker.restart().await;

    eventually(Duration::from_secs(60), "the backlog to drain", || async {
        (outbox_status(&app, SinkKind::Kafka).await.backlog == 0).then_some(())
    })
    .await;
    let expected = merge(before, during);
    expect_on_kafka(&broker, &expected, Duration::from_secs(60)).await;
}

async fn stream_ids(redis_url: &str, stream: &str) -> Option<Vec<Uuid>> {
    let client = redis::Client::open(redis_url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .ok()?;
    Some(
        entries
            .iter()
            .filter_map(|(_, f)| {
                f.iter()
                    .find(|(k, _)| k == "id")
                    .map(|(_, v)| v.parse().unwrap())
            })
            .collect(),
    )
}

#[tokio::test]
async fn a_redis_outage_holds_back_redis_only_and_its_backlog_drains_when_it_returns() {
    let broker = Broker::start().await;
    let mut redis_server = RedisServer::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), &redis_server.url());
        c.relay.in_process = true;
    })
    .await;
    let stream = format!("{}agent", app.config.relay.redis.stream_prefix);
    let before = append_concurrently(&app, 5, 4, 4).await;
    eventually(
        Duration::from_secs(20),
        "redis to receive the first events",
        || async {
            let got = stream_ids(&redis_server.url(), &stream).await?;
            (got.len() == 20).then_some(())
        },
    )
    .await;

    redis_server.stop();
    let during = append_concurrently(&app, 5, 6, 4).await;
    let expected = merge(before, during);
    // Kafka carries on while Redis is down.
    expect_on_kafka(&broker, &expected, Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(10),
        "kafka's cursors to pass every row",
        || async { (outbox_status(&app, SinkKind::Kafka).await.backlog == 0).then_some(()) },
    )
    .await;
    assert_eq!(outbox_status(&app, SinkKind::Redis).await.backlog, 30);

    redis_server.restart().await;
    let got = eventually(Duration::from_secs(30), "redis to catch up", || async {
        let got = stream_ids(&redis_server.url(), &stream).await?;
        let want = all_ids(&expected).len();
        (got.len() >= want).then_some(got)
    })
    .await;
    // Per aggregate, the stream holds each event once... or again after a retry, in version order.
    let as_received: Vec<Received> = got
        .iter()
        .map(|id| {
            let (agent, index) = expected
                .iter()
                .find_map(|(a, ids)| ids.iter().position(|x| x == id).map(|i| (*a, i)))
                .expect("an appended event");
            Received {
                topic: stream.clone(),
                key: agent.to_string(),
                value: Vec::new(),
                headers: [
                    ("keel-event-id".to_owned(), id.to_string()),
                    ("keel-aggregate-id".to_owned(), agent.to_string()),
                    ("keel-aggregate-version".to_owned(), (index + 1).to_string()),
                ]
                .into(),
            }
        })
        .collect();
    assert_in_order(&as_received, &expected);
}

#[tokio::test]
async fn a_poison_event_is_parked_its_aggregate_waits_others_flow_and_retry_delivers_in_order() {
    let broker = Broker::start().await;
    let app = spawn_app_with(|c| fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379")).await;
    // The cause: a producer limit the big event does not fit.
    let relay = start_relay(&app, Some("3000")).await;

    let (poisoned, other) = (Uuid::new_v4(), Uuid::new_v4());
    let log = Mutex::new(HashMap::new());
    append_one(&app, poisoned, &log, agent_state_changed(poisoned, "a")).await;
    append_one(&app, poisoned, &log, too_big(poisoned, "b")).await;
    append_one(&app, poisoned, &log, agent_state_changed(poisoned, "c")).await;
    for s in ["1", "2", "3"] {
        append_one(&app, other, &log, agent_state_changed(other, s)).await;
    }
    let expected = log.into_inner();
    let (p, o) = (&expected[&poisoned], &expected[&other]);

    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader
        .read_ids(&[p[0], o[0], o[1], o[2]], Duration::from_secs(30))
        .await;
    let parked = eventually(
        Duration::from_secs(20),
        "the poison event to be parked",
        || async {
            let rows = admin::parked(app.store.pool(), 10).await.unwrap();
            (rows.len() == 2).then_some(rows)
        },
    )
    .await;
    assert_eq!(
        (parked[0].event_id, parked[0].state.as_str()),
        (p[1], "parked")
    );
    assert_eq!(parked[0].error_class.as_deref(), Some("message_too_large"));
    assert_eq!(parked[0].attempts, 2);
    assert_eq!(
        (parked[1].event_id, parked[1].state.as_str()),
        (p[2], "held")
    );
    // Later events of the parked aggregate keep waiting behind it; they are not sent.
    let mut log = Mutex::new(expected.clone());
    append_one(&app, poisoned, &log, agent_state_changed(poisoned, "d")).await;
    let other_later = {
        append_one(&app, other, &log, agent_state_changed(other, "4")).await;
        *log.get_mut().get(&other).unwrap().last().unwrap()
    };
    reader
        .read_ids(&[other_later], Duration::from_secs(20))
        .await;
    assert!(
        !reader
            .received
            .iter()
            .any(|r| r.aggregate_id() == poisoned && r.version() > 1),
        "an event of the parked aggregate was sent"
    );
    // (The round that sent it records the held row when it commits, just after the send.)
    eventually(Duration::from_secs(10), "two held rows", || async {
        (outbox_status(&app, SinkKind::Kafka).await.held == 2).then_some(())
    })
    .await;
    relay.shutdown().await;

    // The cause is fixed (a relay with default limits), and an operator releases the event.
    let relay = start_relay(&app, None).await;
    let out = keel_outbox(&app, &["retry", &p[1].to_string()]).await;
    assert!(out.contains("released 1 parked row"), "{out}");
    let expected = log.into_inner();
    reader
        .read_ids(&all_ids(&expected), Duration::from_secs(30))
        .await;
    assert_in_order(&reader.received, &expected);
    eventually(
        Duration::from_secs(10),
        "the parked table to empty",
        || async {
            admin::parked(app.store.pool(), 10)
                .await
                .unwrap()
                .is_empty()
                .then_some(())
        },
    )
    .await;
    relay.shutdown().await;
}

#[tokio::test]
async fn skipping_a_parked_event_releases_the_events_held_behind_it() {
    let broker = Broker::start().await;
    let app = spawn_app_with(|c| fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379")).await;
    let relay = start_relay(&app, Some("3000")).await;
    let agent = Uuid::new_v4();
    let log = Mutex::new(HashMap::new());
    append_one(&app, agent, &log, too_big(agent, "a")).await;
    append_one(&app, agent, &log, agent_state_changed(agent, "b")).await;
    let ids = log.into_inner().remove(&agent).unwrap();
    eventually(
        Duration::from_secs(20),
        "the first event to be parked",
        || async {
            let rows = admin::parked(app.store.pool(), 10).await.unwrap();
            (rows.len() == 2 && rows[0].state == "parked").then_some(())
        },
    )
    .await;

    let parked = keel_outbox(&app, &["parked"]).await;
    assert!(parked.contains(&ids[0].to_string()), "{parked}");
    let status: Value =
        serde_json::from_str(&keel_outbox(&app, &["status", "--json"]).await).unwrap();
    let kafka = status
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["sink"] == "kafka")
        .expect("a kafka row");
    assert_eq!(
        (kafka["parked"].as_i64(), kafka["held"].as_i64()),
        (Some(1), Some(1))
    );
    let id = ids[0].to_string();
    let out = keel_outbox(
        &app,
        &["skip", &id, "--sink", "kafka", "--reason", "too big"],
    )
    .await;
    assert!(out.contains("skipped 1 parked row(s)"), "{out}");
    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader.read_ids(&[ids[1]], Duration::from_secs(30)).await;
    assert!(!reader.received.iter().any(|r| r.event_id() == ids[0]));
    relay.shutdown().await;
}

#[tokio::test]
async fn missing_topics_are_created_with_the_configured_partitions_and_json_topics_get_json() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |c| {
        c.relay.kafka.partitions = 3;
        c.relay.kafka.json_topics = vec![AGENT_TOPIC.to_owned()];
    })
    .await;
    let agent = Uuid::new_v4();
    let log = Mutex::new(HashMap::new());
    append_one(&app, agent, &log, agent_state_changed(agent, "running")).await;
    let id = log.into_inner()[&agent][0];

    let mut reader = KafkaReader::new(&broker.brokers(), &[AGENT_TOPIC]);
    reader.read_ids(&[id], Duration::from_secs(30)).await;
    let record = &reader.received[0];
    assert_eq!(record.headers["keel-content-type"], "application/json");
    let envelope: Value = serde_json::from_slice(&record.value).unwrap();
    assert_eq!(envelope["id"], id.to_string());
    assert_eq!(envelope["payload"]["to_state"], "running");

    use rdkafka::consumer::{BaseConsumer, Consumer};
    let metadata_client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", broker.brokers())
        .create()
        .unwrap();
    let metadata = metadata_client
        .fetch_metadata(Some(AGENT_TOPIC), Duration::from_secs(10))
        .unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 3);
}

#[tokio::test]
async fn a_redis_stream_key_of_the_wrong_type_parks_the_event_and_retry_delivers_in_order() {
    let app = spawn_app_with(|c| {
        fast_relay(c, "127.0.0.1:1", "redis://127.0.0.1:6379");
        c.relay.in_process = true;
        c.relay.kafka.enabled = false;
    })
    .await;
    let stream = format!("{}agent", app.config.relay.redis.stream_prefix);
    let redis = redis::Client::open(app.config.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    // The cause: someone else's string where keel's stream should be.
    let _: () = redis::cmd("SET")
        .arg(&stream)
        .arg("not a stream")
        .query_async(&mut conn)
        .await
        .unwrap();

    let agent = Uuid::new_v4();
    let log = Mutex::new(HashMap::new());
    append_one(&app, agent, &log, agent_state_changed(agent, "a")).await;
    append_one(&app, agent, &log, agent_state_changed(agent, "b")).await;
    let ids = log.into_inner().remove(&agent).unwrap();
    let parked = eventually(
        Duration::from_secs(20),
        "the event to be parked",
        || async {
            let rows = admin::parked(app.store.pool(), 10).await.unwrap();
            (rows.len() == 2 && rows[0].state == "parked").then_some(rows)
        },
    )
    .await;
    assert_eq!(
        (parked[0].event_id, parked[0].sink.as_str()),
        (ids[0], "redis")
    );
    assert_eq!(parked[0].error_class.as_deref(), Some("wrong_type"));
    assert_eq!(
        (parked[1].event_id, parked[1].state.as_str()),
        (ids[1], "held")
    );

    redis_del(&mut conn, &stream).await;
    let out = keel_outbox(&app, &["retry", "--all", "--sink", "redis"]).await;
    assert!(out.contains("released 1 parked row"), "{out}");
    let got = eventually(
        Duration::from_secs(20),
        "the stream to get both events",
        || async {
            let got = stream_ids(&app.config.redis_url, &stream).await?;
            (got.len() >= 2).then_some(got)
        },
    )
    .await;
    assert_eq!(got, ids);
    redis_del(&mut conn, &stream).await;
}

#[tokio::test]
async fn a_relay_joining_mid_stream_takes_half_the_partitions_without_reordering() {
    let broker = Broker::start().await;
    let app = Arc::new(
        spawn_app_with(|c| fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379")).await,
    );
    let mut config = app.config.clone();
    config.relay.redis.enabled = false;
    let a = RelayProcess::start(&config, "relay-a");
    eventually(
        Duration::from_secs(20),
        "relay A to hold every partition",
        || async { (leases_held(&app, "relay-a").await == 16).then_some(()) },
    )
    .await;

    let writer = {
        let app = app.clone();
        tokio::spawn(async move { append_concurrently(&app, 40, 60, 8).await })
    };
    // Relay B joins while A is publishing: A hands 8 partitions over, each only after its round
    // in flight has finished, and B carries on from the stored cursors.
    eventually(Duration::from_secs(20), "relay A to publish", || async {
        (published_by(a.metrics_port).await? > 0.0).then_some(())
    })
    .await;
    let b = RelayProcess::start(&config, "relay-b");
    eventually(Duration::from_secs(20), "an 8/8 split", || async {
        (leases_held(&app, "relay-a").await == 8 && leases_held(&app, "relay-b").await == 8)
            .then_some(())
    })
    .await;
    let during = writer.await.unwrap();
    // And after the split, so that B surely publishes.
    let after = append_concurrently(&app, 30, 5, 8).await;
    let expected = merge(during, after);
    expect_on_kafka(&broker, &expected, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(10),
        "relay B to have published",
        || async { (published_by(b.metrics_port).await? > 0.0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_separate_relay_wakes_on_the_servers_notification_and_frees_its_leases_on_sigterm() {
    let broker = Broker::start().await;
    let app = spawn_app_with(|c| fast_relay(c, &broker.brokers(), "redis://127.0.0.1:6379")).await;
    let mut config = app.config.clone();
    config.relay.redis.enabled = false;
    // Polling alone would take 20 s to notice an event, and a lease would outlive the relay by
    // as long: only the notification and the release on shutdown make this test pass.
    config.relay.poll_interval_ms = 20_000;
    config.relay.lease_ttl_ms = 20_000;
    config.relay.heartbeat_ms = 1_000;
    let mut relay = RelayProcess::start(&config, "relay-a");
    eventually(
        Duration::from_secs(20),
        "the relay to hold every partition",
        || async { (leases_held(&app, "relay-a").await == 16).then_some(()) },
    )
    .await;
    let health = reqwest::get(format!(
        "http://127.0.0.1:{}/v1/health/live",
        relay.metrics_port
    ))
    .await
    .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    // A wake-up reaches the relay once it listens for the server's notification and its sink
    // loops have the partitions the database shows.
    eventually(
        Duration::from_secs(10),
        "the relay to listen for wake-ups",
        || async {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
            )
            .fetch_one(app.store.pool())
            .await
            .unwrap();
            (listening > 0).then_some(())
        },
    )
    .await;
    next_lease_round(&app).await;

    append_and_expect_on_kafka_within(&app, &broker, Duration::from_secs(8)).await;

    let stopped = Instant::now();
    assert!(
        relay.terminate(),
        "keel relay did not exit cleanly on SIGTERM"
    );
    let free: i64 = sqlx::query_scalar("SELECT count(*) FROM relay_leases WHERE owner IS NULL")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(free, 16, "leases were not released on shutdown");
    assert!(stopped.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn redis_streams_are_trimmed_to_about_the_configured_length() {
    let app = spawn_app_with(|c| {
        fast_relay(c, "127.0.0.1:1", "redis://127.0.0.1:6379");
        c.relay.in_process = true;
        c.relay.kafka.enabled = false;
        c.relay.redis.stream_maxlen = 10;
    })
    .await;
    let agent = Uuid::new_v4();
    for round in 0..25 {
        let events: Vec<Value> = (0..10)
            .map(|i| agent_state_changed(agent, &format!("s{round}-{i}")))
            .collect();
        let reply = app.append("agent", agent, &json!({"events": events})).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    eventually(
        Duration::from_secs(20),
        "redis to pass every row",
        || async { (outbox_status(&app, SinkKind::Redis).await.backlog == 0).then_some(()) },
    )
    .await;
    let stream = format!("{}agent", app.config.relay.redis.stream_prefix);
    let redis = redis::Client::open(app.config.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let len: i64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    // `MAXLEN ~` trims whole internal nodes (100 entries by default): about, never below.
    assert!((10..250).contains(&len), "stream length {len}");
    redis_del(&mut conn, &stream).await;
}

#[tokio::test]
async fn an_in_process_relay_wakes_on_the_apis_commit_signal() {
    let broker = Broker::start().await;
    // A 20 s poll and no NOTIFY: only the in-process signal after each commit can wake the relay
    // within the 8 s below.
    let app = spawn_kafka_relayed_app(&broker, |c| {
        c.relay.poll_interval_ms = 20_000;
        c.relay.notify = false;
    })
    .await;
    eventually(
        Duration::from_secs(20),
        "the relay to hold every partition",
        || async {
            let held: i64 =
                sqlx::query_scalar("SELECT count(*) FROM relay_leases WHERE lease_until > now()")
                    .fetch_one(app.store.pool())
                    .await
                    .unwrap();
            (held == 16).then_some(())
        },
    )
    .await;
    // The commit signal wakes the sink loops; they find the partitions once the lease task has
    // handed them over.
    next_lease_round(&app).await;
    append_and_expect_on_kafka_within(&app, &broker, Duration::from_secs(8)).await;
}
