//! Appending through the HTTP API: versions, the outbox, optimistic concurrency, idempotency.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, spawn_app};

#[tokio::test]
async fn append_returns_versions_and_positions_and_writes_one_outbox_row_per_event() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();

    let reply = app
        .append("agent", agent, &json!({
            "expected_version": "no_stream",
            "events": [agent_state_changed(agent, "starting"), agent_state_changed(agent, "running")]
        }))
        .await;

    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["version"], 2);
    assert_eq!(reply.body["idempotent_replay"], false);
    let events = reply.body["events"].as_array().unwrap();
    assert_eq!(
        events
            .iter()
            .map(|e| e["version"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(events[0]["position"].as_i64() < events[1]["position"].as_i64());

    // The outbox rows carry the same position and transaction as their events.
    let joined: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events e JOIN outbox o ON o.position = e.position
          WHERE o.event_id = e.id AND o.tx_id = e.tx_id AND o.aggregate_id = e.aggregate_id",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(joined, 2);
    assert_eq!(app.count("outbox").await, 2);
}

#[tokio::test]
async fn expected_version_is_checked_and_a_conflict_reports_the_current_version() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let first = json!({"expected_version": 0, "events": [agent_state_changed(agent, "a")]});
    assert_eq!(
        app.append("agent", agent, &first).await.status,
        StatusCode::CREATED
    );

    for expected in [json!("no_stream"), json!(0), json!(2), json!(7)] {
        let reply = app
            .append(
                "agent",
                agent,
                &json!({"expected_version": expected, "events": [agent_state_changed(agent, "b")]}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{expected}: {}",
            reply.body
        );
        assert_eq!(reply.error_code(), "wrong_expected_version");
        assert_eq!(reply.body["error"]["details"]["current_version"], 1);
    }

    let ok = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": 1, "events": [agent_state_changed(agent, "b")]}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED);
    let any = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": "any", "events": [agent_state_changed(agent, "c")]}),
        )
        .await;
    assert_eq!(any.body["version"], 3);
    assert_eq!(app.count("events").await, 3);
}

#[tokio::test]
async fn an_exact_version_on_a_missing_aggregate_is_a_conflict_at_version_zero() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": 3, "events": [agent_state_changed(agent, "a")]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["error"]["details"]["current_version"], 0);
    assert_eq!(app.count("streams").await, 0);
}

#[tokio::test]
async fn a_retried_batch_returns_the_original_result_and_writes_nothing() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let mut event = agent_state_changed(agent, "running");
    event["id"] = json!(Uuid::new_v4());
    event["metadata"] = json!({"correlation_id": "req-1"});
    let body = json!({"expected_version": "no_stream", "events": [event.clone()]});

    let first = app.append("agent", agent, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);

    // The retry carries a different trace context: metadata is not part of the identity.
    let mut retry_event = event.clone();
    retry_event["metadata"] = json!({"correlation_id": "req-1-retry"});
    for expected in [json!("no_stream"), json!("any"), json!(0)] {
        let retry = app
            .append(
                "agent",
                agent,
                &json!({"expected_version": expected, "events": [retry_event.clone()]}),
            )
            .await;
        assert_eq!(retry.status, StatusCode::OK, "{expected}: {}", retry.body);
        assert_eq!(retry.body["idempotent_replay"], true);
        assert_eq!(retry.body["events"], first.body["events"]);
        assert_eq!(retry.body["version"], 1);
    }
    assert_eq!(app.count("events").await, 1);
    assert_eq!(app.count("outbox").await, 1);
}

#[tokio::test]
async fn reusing_an_event_id_with_other_content_is_a_conflict() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let id = Uuid::new_v4();
    let mut event = agent_state_changed(agent, "running");
    event["id"] = json!(id);
    app.append("agent", agent, &json!({"events": [event.clone()]}))
        .await;

    let mut changed = event.clone();
    changed["payload"]["to_state"] = json!("stopped");
    let mut other_batch = agent_state_changed(agent, "x");
    other_batch["id"] = json!(Uuid::new_v4());
    let other_agent = Uuid::new_v4();

    for (aggregate, body) in [
        (agent, json!({"events": [changed]})),
        (
            agent,
            json!({"expected_version": 1, "events": [event.clone(), other_batch]}),
        ),
        (other_agent, json!({"events": [event.clone()]})),
    ] {
        let reply = app.append("agent", aggregate, &body).await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{body}: {}", reply.body);
        assert_eq!(reply.error_code(), "idempotency_conflict");
    }
    assert_eq!(app.count("events").await, 1);
}

#[tokio::test]
async fn metadata_tracing_fields_are_stored_with_the_event() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut event = agent_state_changed(agent, "running");
    event["metadata"] =
        json!({"correlation_id": "c-9", "causation_id": "cmd-3", "traceparent": traceparent});
    let reply = app
        .append("agent", agent, &json!({"events": [event]}))
        .await;
    let id = reply.body["events"][0]["id"].as_str().unwrap().to_owned();

    let stored = app.get(&format!("/v1/events/{id}")).await;
    assert_eq!(stored.status, StatusCode::OK);
    assert_eq!(stored.body["metadata"]["correlation_id"], "c-9");
    assert_eq!(stored.body["metadata"]["causation_id"], "cmd-3");
    assert_eq!(stored.body["metadata"]["traceparent"], traceparent);
    assert_eq!(stored.body["type"], "agent.state.changed");
    assert_eq!(stored.body["aggregate_type"], "agent");
    assert_eq!(stored.body["version"], 1);
}
