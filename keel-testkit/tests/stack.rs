//! The shared stack as a downstream team uses it: the example flow from the README (append over
//! HTTP, consume the Confluent-framed Avro record from Kafka, find it in the Redis stream) and a
//! check that every endpoint is reachable. Both tests share one stack (`keel_testkit::shared`).

mod common;

use std::time::{Duration, Instant};

use apache_avro::types::Value as Avro;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use redis::streams::StreamRangeReply;
use serde_json::{json, Value};
use sqlx::Connection;
use uuid::Uuid;

const TOPIC: &str = "keel.agent";
const STREAM: &str = "keel.stream.agent";
/// How long the relay may take to deliver an appended event on a loaded machine.
const DELIVERY: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn an_appended_event_arrives_on_kafka_as_confluent_avro_and_in_the_redis_stream() {
    let Some(stack) = common::stack().await else {
        return;
    };
    let endpoints = stack.endpoints();
    let http = reqwest::Client::new();
    let agent = Uuid::new_v4();

    // Act: append one event through the API.
    let response = http
        .post(format!(
            "{}/v1/aggregates/agent/{agent}/events",
            endpoints.http_url
        ))
        .bearer_auth(&endpoints.api_key)
        .json(&json!({"events": [{
            "type": "agent.state.changed",
            "payload": {"agent_id": agent.to_string(), "to_state": "running"}
        }]}))
        .send()
        .await
        .expect("append request");
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let appended: Value = response.json().await.unwrap();
    let event_id = appended["events"][0]["id"].as_str().unwrap().to_string();

    // Kafka: the record keyed by the aggregate id, its value in the Confluent wire format.
    let value = consume_keyed(&endpoints.kafka_bootstrap, &agent.to_string()).await;
    assert_eq!(value[0], 0, "Confluent magic byte");
    let schema_id = u32::from_be_bytes(value[1..5].try_into().unwrap());
    let schema: Value = http
        .get(format!(
            "{}/schemas/ids/{schema_id}",
            endpoints.registry_url
        ))
        .bearer_auth(&endpoints.api_key)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .expect("the registry knows the record's schema id")
        .json()
        .await
        .unwrap();
    let schema = apache_avro::Schema::parse_str(schema["schema"].as_str().unwrap()).unwrap();
    let decoded = apache_avro::from_avro_datum(&schema, &mut &value[5..], None).unwrap();
    assert_eq!(field(&decoded, "agent_id"), agent.to_string());
    assert_eq!(field(&decoded, "to_state"), "running");

    // Redis: the same event in the aggregate type's stream.
    let entry = stream_entry(&endpoints.redis_url, &event_id).await;
    assert_eq!(entry["aggregate_id"], agent.to_string());
    assert_eq!(entry["type"], "agent.state.changed");
    let envelope: Value = serde_json::from_str(&entry["event"]).unwrap();
    assert_eq!(envelope["payload"]["to_state"], "running", "{envelope}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_is_reachable_with_the_handed_out_credentials() {
    let Some(stack) = common::stack().await else {
        return;
    };
    let endpoints = stack.endpoints();
    let http = reqwest::Client::new();

    // The database is keel's own, migrated.
    let mut db = sqlx::PgConnection::connect(&endpoints.database_url)
        .await
        .expect("database_url connects");
    let migrations: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert!(migrations > 0, "keel migrated its database");

    let redis = redis::Client::open(endpoints.redis_url.as_str()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    // The key works as a bearer token, and nothing works without one.
    let events = format!("{}/v1/events?limit=1", endpoints.http_url);
    let authed = http
        .get(&events)
        .bearer_auth(&endpoints.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status(), 200);
    assert_eq!(http.get(&events).send().await.unwrap().status(), 401);

    // The registry, as a Confluent client calls it: HTTP Basic with the key's id and secret.
    let (id, secret) = endpoints.api_key["keel_".len()..].split_once('_').unwrap();
    let subjects = http
        .get(format!("{}/subjects", endpoints.registry_url))
        .basic_auth(id, Some(secret))
        .send()
        .await
        .unwrap();
    assert_eq!(subjects.status(), 200);
    assert!(subjects.json::<Value>().await.unwrap().is_array());

    // The broker advertises the very address the test bootstraps from.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &endpoints.kafka_bootstrap)
        .create()
        .unwrap();
    let metadata =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(None, Duration::from_secs(10)))
            .await
            .unwrap()
            .expect("broker metadata");
    let advertised: Vec<String> = metadata
        .brokers()
        .iter()
        .map(|b| format!("{}:{}", b.host(), b.port()))
        .collect();
    assert_eq!(advertised, std::slice::from_ref(&endpoints.kafka_bootstrap));
}

/// The value of the first record on [`TOPIC`] keyed `key`, read from the beginning of every
/// partition once the relay has created the topic.
async fn consume_keyed(bootstrap: &str, key: &str) -> Vec<u8> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("keel-testkit-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let deadline = Instant::now() + DELIVERY;
    let partitions = loop {
        let metadata = consumer
            .fetch_metadata(Some(TOPIC), Duration::from_secs(5))
            .expect("broker metadata");
        let topic = &metadata.topics()[0];
        if topic.error().is_none() && !topic.partitions().is_empty() {
            break topic.partitions().len();
        }
        assert!(Instant::now() < deadline, "the relay never created {TOPIC}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions as i32 {
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("no record keyed {key} on {TOPIC} within {DELIVERY:?}"))
            .expect("kafka record");
        if message.key() == Some(key.as_bytes()) {
            return message.payload().expect("a record value").to_vec();
        }
    }
}

/// The fields of the entry of [`STREAM`] whose `id` is `event_id`, once the relay has added it.
async fn stream_entry(url: &str, event_id: &str) -> std::collections::HashMap<String, String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + DELIVERY;
    loop {
        let reply: StreamRangeReply = redis::cmd("XRANGE")
            .arg(STREAM)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .unwrap();
        for entry in reply.ids {
            let fields: std::collections::HashMap<String, String> = entry
                .map
                .iter()
                .map(|(k, v)| (k.clone(), redis::from_redis_value_ref(v).unwrap()))
                .collect();
            if fields.get("id").map(String::as_str) == Some(event_id) {
                return fields;
            }
        }
        assert!(
            Instant::now() < deadline,
            "event {event_id} never reached {STREAM}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A decoded record's field as text (a `uuid` string decodes as `Value::Uuid`).
fn field(record: &Avro, name: &str) -> String {
    let Avro::Record(fields) = record else {
        panic!("not a record: {record:?}");
    };
    match fields.iter().find(|(n, _)| n == name).map(|(_, v)| v) {
        Some(Avro::String(s)) => s.clone(),
        Some(Avro::Uuid(u)) => u.to_string(),
        other => panic!("field {name}: {other:?}"),
    }
}
