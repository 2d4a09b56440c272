//! Bad input: every case gets a 4xx with a stable code in the error shape, and writes nothing.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, spawn_app, test_limits, TestApp};

async fn assert_nothing_written(app: &TestApp) {
    for table in ["events", "outbox", "streams"] {
        assert_eq!(app.count(table).await, 0, "{table} has rows");
    }
}

#[tokio::test]
async fn malformed_or_misshapen_append_bodies_are_refused_with_stable_codes() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let path = format!("/v1/aggregates/agent/{agent}/events");
    let valid = agent_state_changed(agent, "running");
    let mut bad_id = valid.clone();
    bad_id["id"] = json!("not-a-uuid");
    let mut extra_field = valid.clone();
    extra_field["payload_v2"] = json!({});
    let mut missing_payload = valid.clone();
    missing_payload.as_object_mut().unwrap().remove("payload");

    // (case, content type, body, status, code)
    let raw_cases = [
        (
            "truncated json",
            Some("application/json"),
            &b"{\"events\": ["[..],
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "not json",
            Some("application/json"),
            &b"hello"[..],
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "no content type",
            None,
            &b"{\"events\": []}"[..],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "text content type",
            Some("text/plain"),
            &b"{}"[..],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
    ];
    for (name, content_type, body, status, code) in raw_cases {
        let reply = app.post_raw(&path, content_type, body.to_vec()).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert_eq!(reply.error_code(), code, "{name}");
    }

    let json_cases = [
        (
            "events not an array",
            json!({"events": {}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "events missing",
            json!({"expected_version": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "unknown top-level field",
            json!({"events": [valid], "expectedVersion": 0}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "unknown event field",
            json!({"events": [extra_field]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "missing payload",
            json!({"events": [missing_payload]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "bad event id",
            json!({"events": [bad_id]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "negative expected version",
            json!({"expected_version": -1, "events": [valid]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "expected version as text",
            json!({"expected_version": "3", "events": [valid]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "empty batch",
            json!({"events": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_batch",
        ),
        (
            "unknown event type",
            json!({"events": [{"type": "agent.exploded", "payload": {}}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_event_type",
        ),
        (
            "invalid event type",
            json!({"events": [{"type": "Agent Exploded", "payload": {}}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_event_type",
        ),
        (
            "payload not an object",
            json!({"events": [{"type": "agent.state.changed", "payload": [1]}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_payload",
        ),
        (
            "metadata not an object",
            json!({"events": [{"type": "agent.state.changed", "payload": {}, "metadata": "x"}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            "bad traceparent",
            json!({"events": [{"type": "agent.state.changed", "payload": {}, "metadata": {"traceparent": "abc"}}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_metadata",
        ),
        (
            "CR LF in a metadata value the relay copies into a Kafka header",
            json!({"events": [{"type": "agent.state.changed", "payload": {}, "metadata": {"correlation_id": "req-1\r\nkeel-event-id: forged"}}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_metadata",
        ),
        (
            "event type of another aggregate type",
            json!({"events": [{"type": "l12.service_invoked", "payload": {}}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "aggregate_type_mismatch",
        ),
    ];
    for (name, body, status, code) in json_cases {
        let reply = app.post_json(&path, &body).await;
        assert_eq!(reply.status, status, "{name}: {}", reply.body);
        assert_eq!(reply.error_code(), code, "{name}");
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn a_batch_is_refused_whole_and_the_failing_index_is_named() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let id = Uuid::new_v4();
    let mut first = agent_state_changed(agent, "a");
    first["id"] = json!(id);
    let cases = [
        (
            json!([agent_state_changed(agent, "a"), {"type": "nope.nope", "payload": {}}]),
            "unknown_event_type",
            1,
        ),
        (
            json!([first.clone(), agent_state_changed(agent, "b"), first]),
            "duplicate_event_id",
            2,
        ),
    ];
    for (events, code, index) in cases {
        let reply = app.append("agent", agent, &json!({"events": events})).await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(reply.error_code(), code);
        assert_eq!(
            reply.body["error"]["details"]["index"], index,
            "{}",
            reply.body
        );
    }
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn oversized_bodies_and_batches_are_refused() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let limits = test_limits();

    let batch: Vec<_> = (0..=limits.max_batch_events)
        .map(|_| agent_state_changed(agent, "x"))
        .collect();
    let reply = app.append("agent", agent, &json!({"events": batch})).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "batch_too_large");

    let huge = "x".repeat(limits.max_body_bytes + 1);
    let body = json!({"events": [{"type": "agent.state.changed", "payload": {"reason": huge}}]});
    let reply = app.append("agent", agent, &body).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "body_too_large");
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn bad_paths_queries_and_routes_get_stable_codes() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let body = json!({"events": [agent_state_changed(agent, "a")]});

    let reply = app
        .post_json("/v1/aggregates/agent/not-a-uuid/events", &body)
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::BAD_REQUEST, "invalid_aggregate_id")
    );
    let reply = app
        .post_json(&format!("/v1/aggregates/Agent%20X/{agent}/events"), &body)
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::BAD_REQUEST, "invalid_aggregate_type")
    );

    let gets = [
        (
            "/v1/events/not-a-uuid",
            StatusCode::BAD_REQUEST,
            "invalid_event_id",
        ),
        (
            &format!("/v1/events/{}", Uuid::new_v4()),
            StatusCode::NOT_FOUND,
            "event_not_found",
        ),
        (
            &format!("/v1/aggregates/agent/{agent}/events"),
            StatusCode::NOT_FOUND,
            "aggregate_not_found",
        ),
        (
            &format!("/v1/aggregates/agent/{agent}/events?limit=abc"),
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            &format!("/v1/aggregates/agent/{agent}/events?limit=0"),
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/v1/events?limit=100000",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/v1/events?colour=red",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/events?after=bm9wZQ",
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            "/v1/events?offset=-1",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/events?offset=10001",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/events?from=yesterday",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/events?aggregate_id=7",
            StatusCode::BAD_REQUEST,
            "invalid_aggregate_id",
        ),
        (
            "/v1/events?event_type=BAD",
            StatusCode::BAD_REQUEST,
            "invalid_event_type",
        ),
        ("/v1/nothing-here", StatusCode::NOT_FOUND, "route_not_found"),
    ];
    for (path, status, code) in gets {
        let reply = app.get(path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(reply.error_code(), code, "{path}");
    }

    let reply = app.post_json("/v1/events", &json!({})).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    assert_nothing_written(&app).await;
}

#[tokio::test]
async fn text_postgresql_cannot_store_is_refused_not_a_server_error() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let mut event = agent_state_changed(agent, "running");
    event["payload"]["reason"] = json!("nul \u{0000} here");
    let reply = app
        .append("agent", agent, &json!({"events": [event]}))
        .await;
    assert_eq!(
        reply.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        reply.body
    );
    assert_eq!(reply.error_code(), "unsupported_character");

    let mut event = agent_state_changed(agent, "running");
    event["metadata"] = json!({"note": "\u{0000}"});
    let reply = app
        .append("agent", agent, &json!({"events": [event]}))
        .await;
    assert_eq!(reply.error_code(), "unsupported_character");

    let registry = app.get("/registry/subjects/a%00b/versions").await;
    assert_eq!(
        (registry.status, registry.body["error_code"].as_i64()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some(42201))
    );
    assert_nothing_written(&app).await;
}

/// The body of a refusal in the Confluent dialect of `/registry`: `error_code` and `message`.
fn confluent_error(reply: &crate::helpers::Reply) -> (StatusCode, i64) {
    assert!(
        reply.body["message"].is_string(),
        "not a Confluent error body: {}",
        reply.body
    );
    let code = reply.body["error_code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not a Confluent error body: {}", reply.body));
    (reply.status, code)
}

#[tokio::test]
async fn projection_routes_refuse_bad_input_in_keels_error_shape() {
    let app = spawn_app().await;
    // As if agent_status had run once, so the handlers get past "not started" to the input.
    sqlx::query("INSERT INTO projections (name) VALUES ('agent_status'), ('service_invocations')")
        .execute(app.store.pool())
        .await
        .expect("projection rows");
    let gets = [
        (
            "/v1/projections/agent_status/agents?limit=x",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/projections/agent_status/agents?limit=0",
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            "/v1/projections/agent_status/agents?after=not-a-uuid",
            StatusCode::BAD_REQUEST,
            "invalid_agent_id",
        ),
        (
            "/v1/projections/agent_status/agents/not-a-uuid",
            StatusCode::BAD_REQUEST,
            "invalid_agent_id",
        ),
        (
            "/v1/projections/agent_status/agents/%FF",
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "/v1/projections/service_invocations/methods?service=a&service=b",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "/v1/projections/nothing",
            StatusCode::NOT_FOUND,
            "projection_not_found",
        ),
        (
            "/v1/projections/agent_status/nothing",
            StatusCode::NOT_FOUND,
            "route_not_found",
        ),
    ];
    for (path, status, code) in gets {
        let reply = app.get(path).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        assert_eq!(reply.error_code(), code, "{path}");
    }

    let reply = app.post_json("/v1/projections", &json!({})).await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
}

#[tokio::test]
async fn registry_routes_refuse_bad_requests_in_confluents_dialect() {
    let app = spawn_app().await;
    let unknown = app.get("/registry/nothing-here").await;
    assert_eq!(confluent_error(&unknown), (StatusCode::NOT_FOUND, 404));
    assert_eq!(unknown.error_code(), "route_not_found");

    let wrong_method = app.post_json("/registry/subjects", &json!({})).await;
    assert_eq!(
        confluent_error(&wrong_method),
        (StatusCode::METHOD_NOT_ALLOWED, 405)
    );
    assert_eq!(wrong_method.error_code(), "method_not_allowed");

    let bad_path = app.get("/registry/subjects/%FF/versions").await;
    assert_eq!(confluent_error(&bad_path), (StatusCode::NOT_FOUND, 404));
    assert_eq!(bad_path.error_code(), "invalid_path");

    let too_large = app
        .post_raw(
            "/registry/subjects/s/versions",
            Some("application/vnd.schemaregistry.v1+json"),
            vec![b' '; 65 * 1024],
        )
        .await;
    assert_eq!(
        confluent_error(&too_large),
        (StatusCode::PAYLOAD_TOO_LARGE, 413)
    );

    // keel's own routes keep keel's shape next to the registry's.
    let keel = app.get("/v1/nothing-here").await;
    assert!(keel.body.get("error_code").is_none(), "{}", keel.body);
    assert_eq!(keel.error_code(), "route_not_found");
}
