//! `api.validate_payloads = false`: appends store payloads as sent, without a schema, and the
//! relay validates them at publish time instead. This is the only way an event reaches the relay
//! unvalidated (every append path goes through `keel::append::Validator`).

use std::time::Duration;

use keel::relay::admin;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually};
use crate::relay_support::{spawn_kafka_relayed_app, Broker, KafkaReader};

#[tokio::test]
async fn with_validation_off_the_relay_encodes_with_the_latest_schema_and_parks_what_does_not_fit()
{
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |c| c.api.validate_payloads = false).await;
    let (good, bad) = (Uuid::new_v4(), Uuid::new_v4());

    // Stored as sent: no schema, the defaults not filled in.
    let sparse = json!({"type": "agent.state.changed", "payload": {"agent_id": good, "to_state": "running"}});
    let stored = app
        .append("agent", good, &json!({"events": [sparse]}))
        .await;
    assert_eq!(stored.status, 201, "{:?}", stored.body);
    let good_id = stored.body["events"][0]["id"].as_str().unwrap().to_owned();
    let event = app.get(&format!("/v1/events/{good_id}")).await;
    assert_eq!(event.body["schema_id"], json!(null));

    // Accepted too, although the schema would refuse it; then a valid event behind it.
    let misfit =
        json!({"type": "agent.state.changed", "payload": {"agent_id": bad, "to_state": 5}});
    let refused_later = app.append("agent", bad, &json!({"events": [misfit]})).await;
    assert_eq!(refused_later.status, 201, "{:?}", refused_later.body);
    let behind = app
        .append(
            "agent",
            bad,
            &json!({"events": [agent_state_changed(bad, "idle")]}),
        )
        .await;
    assert_eq!(behind.status, 201);

    let latest = app.schema_id("agent.state.changed", 1).await;
    let mut reader = KafkaReader::new(&broker.brokers(), &["keel.agent"]);
    reader
        .read_ids(&[good_id.parse().unwrap()], Duration::from_secs(30))
        .await;
    let record = &reader.received[0];
    assert_eq!(record.headers["keel-schema-id"], latest.to_string());
    assert_eq!(&record.value[1..5], &latest.to_be_bytes());

    let parked = eventually(
        Duration::from_secs(20),
        "the misfit to be parked",
        || async {
            let rows = admin::parked(app.store.pool(), 10).await.unwrap();
            (rows.len() == 2).then_some(rows)
        },
    )
    .await;
    assert_eq!(parked[0].aggregate_id, bad);
    assert_eq!(
        (parked[0].state.as_str(), parked[0].error_class.as_deref()),
        ("parked", Some("serialization"))
    );
    assert_eq!(parked[1].state, "held");
    assert!(
        reader.received.iter().all(|r| r.aggregate_id() != bad),
        "an event of the parked aggregate reached Kafka"
    );
}
