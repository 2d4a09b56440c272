//! `keel consume`: records the relay published, decoded through the registry and resolved to the
//! schema version a subscriber declares.

use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use uuid::Uuid;

use crate::relay_support::{spawn_kafka_relayed_app, Broker};

#[tokio::test]
async fn a_subscriber_declaring_v2_gets_v1_events_with_the_defaults_filled_in() {
    let broker = Broker::start().await;
    let app = spawn_kafka_relayed_app(&broker, |_| {}).await;
    let service = Uuid::new_v4();
    let v1 = |method: &str| {
        json!({
            "type": "l12.service_invoked",
            "schema_version": 1,
            "payload": {"service_name": "billing", "method": method, "execution_time": 12.5, "status": "OK"}
        })
    };
    let reply = app
        .append(
            "service",
            service,
            &json!({"events": [v1("charge"), v1("refund")]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let ids: Vec<String> = reply.body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["consume", "--topic", "keel.service", "--from-beginning"])
        .args(["--schema-version", "2", "--max-messages", "2"])
        .env("KEEL_DATABASE_URL", &app.config.database_url)
        .env("KEEL_KAFKA_BROKERS", broker.brokers())
        .env("KEEL_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut events = Vec::new();
    while events.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("keel consume printed nothing for 30 s")
            .unwrap()
            .expect("keel consume ended early");
        let line: Value = serde_json::from_str(&line).unwrap();
        assert!(line.get("error").is_none(), "{line}");
        events.push(line);
    }
    assert!(child.wait().await.unwrap().success());

    let v2_id = app.schema_id("l12.service_invoked", 2).await;
    for (line, (id, method)) in events.iter().zip(ids.iter().zip(["charge", "refund"])) {
        assert_eq!(line["record"]["topic"], "keel.service");
        assert_eq!(line["record"]["key"], service.to_string());
        let event = &line["event"];
        assert_eq!(event["id"], *id);
        assert_eq!(event["type"], "l12.service_invoked");
        assert_eq!(event["aggregate_id"], service.to_string());
        // Written as v1, read as v2: v2's new fields carry their defaults.
        assert_eq!(event["schema_version"], 2);
        assert_eq!(event["schema_id"], v2_id);
        assert_eq!(
            event["payload"],
            json!({"service_name": "billing", "method": method, "execution_time": 12.5,
                   "status": "OK", "caller": null, "attempt": 1})
        );
    }
    assert_eq!(events[0]["event"]["version"], 1);
    assert_eq!(events[1]["event"]["version"], 2);
}
