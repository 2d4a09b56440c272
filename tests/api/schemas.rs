//! Payload validation on append and upcasting on read, through the HTTP API.

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use keel::model::VersionSpec;
use keel::registry::UpcastError;

use crate::helpers::spawn_app;

fn invoked_v1() -> serde_json::Value {
    json!({"service_name": "planner", "method": "plan", "execution_time": 12.5, "status": "OK"})
}

#[tokio::test]
async fn an_invalid_payload_is_refused_with_its_index_path_and_expectation() {
    let app = spawn_app().await;
    let service = Uuid::new_v4();
    let mut wrong_enum = invoked_v1();
    wrong_enum["status"] = json!("MAYBE");
    let mut missing = invoked_v1();
    missing.as_object_mut().unwrap().remove("method");
    let mut wrong_type = invoked_v1();
    wrong_type["execution_time"] = json!("fast");
    let mut unknown_field = invoked_v1();
    unknown_field["colour"] = json!("red");

    for (payload, path, expected) in [
        (
            wrong_enum,
            "$.status",
            "one of OK, ERROR, TIMEOUT, CANCELLED",
        ),
        (missing, "$.method", "required field method (no default)"),
        (wrong_type, "$.execution_time", "a number"),
        (unknown_field, "$.colour", ""),
    ] {
        let body = json!({"events": [
            {"type": "l12.service_invoked", "payload": invoked_v1()},
            {"type": "l12.service_invoked", "payload": payload},
        ]});
        let reply = app.append("service", service, &body).await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            reply.body
        );
        assert_eq!(reply.error_code(), "schema_validation_failed");
        let details = &reply.body["error"]["details"];
        assert_eq!(details["index"], 1);
        assert_eq!(details["path"], path);
        assert!(
            details["expected"].as_str().unwrap().starts_with(expected),
            "{details}"
        );
        assert_eq!(
            details["schema_version"], 2,
            "validated against the latest version"
        );
    }
    assert_eq!(
        app.count("events").await,
        0,
        "a rejected batch writes nothing"
    );

    let reply = app
        .append("service", service, &json!({"events": [{"type": "l12.service_invoked", "schema_version": 7, "payload": invoked_v1()}]}))
        .await;
    assert_eq!(
        (reply.status, reply.error_code()),
        (StatusCode::UNPROCESSABLE_ENTITY, "unknown_schema_version")
    );
}

#[tokio::test]
async fn a_valid_payload_is_stored_normalised_with_the_schema_that_validated_it() {
    let app = spawn_app().await;
    let service = Uuid::new_v4();
    let reply = app
        .append(
            "service",
            service,
            &json!({"events": [{"type": "l12.service_invoked", "payload": invoked_v1()}]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["events"][0]["id"].as_str().unwrap().to_owned();

    let stored = app.get(&format!("/v1/events/{id}")).await.body;
    assert_eq!(stored["schema_version"], 2);
    assert!(stored["schema_id"].is_i64());
    // v2's defaults are filled in: the stored JSON is the whole Avro datum.
    assert_eq!(stored["payload"]["caller"], json!(null));
    assert_eq!(stored["payload"]["attempt"], 1);

    let schema = app
        .get(&format!("/registry/schemas/ids/{}", stored["schema_id"]))
        .await;
    assert!(schema.body["schema"].as_str().unwrap().contains("attempt"));
}

#[tokio::test]
async fn v1_events_read_as_v2_with_defaults_and_stay_stored_as_v1() {
    let app = spawn_app().await;
    let service = Uuid::new_v4();
    let body = json!({"events": [{"type": "l12.service_invoked", "schema_version": 1, "payload": invoked_v1()}]});
    let reply = app.append("service", service, &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["events"][0]["id"].as_str().unwrap().to_owned();

    let as_stored = app.get(&format!("/v1/events/{id}")).await.body;
    assert_eq!(as_stored["schema_version"], 1);
    assert_eq!(as_stored["payload"], invoked_v1());

    for query in ["schema_version=latest", "schema_version=2"] {
        let upcast = app.get(&format!("/v1/events/{id}?{query}")).await.body;
        assert_eq!(upcast["schema_version"], 2, "{query}");
        let mut expected = invoked_v1();
        expected["caller"] = json!(null);
        expected["attempt"] = json!(1);
        assert_eq!(upcast["payload"], expected, "{query}");
    }

    let stream = app
        .get(&format!(
            "/v1/aggregates/service/{service}/events?schema_version=2"
        ))
        .await
        .body;
    assert_eq!(stream["events"][0]["payload"]["attempt"], 1);
    let log = crate::helpers::eventually(
        std::time::Duration::from_secs(20),
        "the event in the log",
        || async {
            let page = app
                .get(&format!(
                    "/v1/events?aggregate_id={service}&schema_version=2"
                ))
                .await
                .body;
            (page["events"].as_array().map(Vec::len) == Some(1)).then_some(page)
        },
    )
    .await;
    assert_eq!(log["events"][0]["payload"]["attempt"], 1);

    // Nothing was rewritten.
    assert_eq!(
        app.get(&format!("/v1/events/{id}")).await.body["payload"],
        invoked_v1()
    );

    for (query, status, code) in [
        (
            "schema_version=9",
            StatusCode::NOT_FOUND,
            "schema_version_not_found",
        ),
        (
            "schema_version=two",
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
    ] {
        let reply = app.get(&format!("/v1/events/{id}?{query}")).await;
        assert_eq!(
            (reply.status, reply.error_code()),
            (status, code),
            "{query}"
        );
    }
}

#[tokio::test]
async fn the_library_upcasts_a_stored_event_to_the_version_a_reader_declares() {
    let app = spawn_app().await;
    let service = Uuid::new_v4();
    let body = json!({"events": [{"type": "l12.service_invoked", "schema_version": 1, "payload": invoked_v1()}]});
    let reply = app.append("service", service, &body).await;
    let id: Uuid = reply.body["events"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let stored = keel::store::get_event(app.store.pool(), id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.schema_version, Some(1));
    let mut event = stored.clone();
    app.registry
        .upcast(&mut event, VersionSpec::Number(2))
        .await
        .unwrap();
    assert_eq!(event.schema_version, Some(2));
    assert_eq!(event.payload["attempt"], 1);
    assert_eq!(event.payload["caller"], json!(null));
    assert_eq!(
        event.payload["service_name"],
        stored.payload["service_name"]
    );

    // The consuming forms that rebuilds and consumers use read the same, the batch one also
    // from the schemas it looked up for the event before.
    let owned = app
        .registry
        .upcast_owned(stored.clone(), VersionSpec::Number(2))
        .await
        .unwrap();
    assert_eq!(owned, event);
    let mut batch = app.registry.upcaster(VersionSpec::Number(2));
    for _ in 0..2 {
        assert_eq!(batch.upcast(stored.clone()).await.unwrap(), event);
    }

    let mut unread = stored.clone();
    let err = app
        .registry
        .upcast(&mut unread, VersionSpec::Number(5))
        .await
        .unwrap_err();
    assert!(matches!(err, UpcastError::NoSuchVersion { .. }), "{err}");
    assert_eq!(unread, stored, "a failed upcast leaves the event as it was");
    let err = app
        .registry
        .upcaster(VersionSpec::Number(5))
        .upcast(stored)
        .await
        .unwrap_err();
    assert!(matches!(err, UpcastError::NoSuchVersion { .. }), "{err}");
}

/// A client appends, loses the reply, a new schema version is registered (adding a field with a
/// default), and the client retries: the retry is still recognised as the same events.
#[tokio::test]
async fn a_retry_after_a_new_schema_version_is_still_an_idempotent_replay() {
    let app = spawn_app().await;
    let service = Uuid::new_v4();
    let body = json!({"events": [{"id": Uuid::new_v4(), "type": "l12.service_invoked", "payload": invoked_v1()}]});
    let first = app.append("service", service, &body).await;
    assert_eq!(first.status, StatusCode::CREATED);

    let v3 = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/l12.service_invoked/v2.avsc"))
        .unwrap()
        .replace(
            r#"{"name": "attempt", "type": "int", "default": 1, "doc": "1 for the first call, 2 for the first retry..."}"#,
            r#"{"name": "attempt", "type": "int", "default": 1}, {"name": "zone", "type": "string", "default": "eu"}"#,
        );
    let registered = app
        .post_json(
            "/registry/subjects/l12.service_invoked/versions",
            &json!({"schema": v3}),
        )
        .await;
    assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
    // A registration through this keel is seen by its own appends at once (no cache delay).
    let fresh = app
        .append(
            "service",
            Uuid::new_v4(),
            &json!({"events": [{"type": "l12.service_invoked", "payload": invoked_v1()}]}),
        )
        .await;
    let id = fresh.body["events"][0]["id"].as_str().unwrap().to_owned();
    let stored = app.get(&format!("/v1/events/{id}")).await.body;
    assert_eq!(stored["schema_version"], 3);
    assert_eq!(stored["payload"]["zone"], "eu");

    let retry = app.append("service", service, &body).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
    assert_eq!(retry.body["idempotent_replay"], true);
    assert_eq!(retry.body["events"], first.body["events"]);

    let mut changed = body.clone();
    changed["events"][0]["payload"]["method"] = json!("replan");
    let conflict = app.append("service", service, &changed).await;
    assert_eq!(
        (conflict.status, conflict.error_code()),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );
}

/// In a list, an event whose type has no such version is returned as stored (its own
/// `schema_version` says so) instead of failing the page.
#[tokio::test]
async fn a_list_read_as_a_version_some_types_lack_returns_those_events_as_stored() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"events": [crate::helpers::agent_state_changed(agent, "up")]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);

    let page = app
        .get(&format!(
            "/v1/aggregates/agent/{agent}/events?schema_version=2"
        ))
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(page.body["events"][0]["schema_version"], 1);
    let id = page.body["events"][0]["id"].as_str().unwrap();
    let one = app.get(&format!("/v1/events/{id}?schema_version=2")).await;
    assert_eq!(
        (one.status, one.error_code()),
        (StatusCode::NOT_FOUND, "schema_version_not_found")
    );
}

/// An event whose payload cannot be resolved to the version asked for (its enum symbol is gone,
/// with no default): the borrowing upcast fails and leaves the event as it was, as the API's
/// non-strict reads rely on; the consuming forms fail the same way.
#[tokio::test]
async fn an_upcast_that_cannot_resolve_fails_and_leaves_the_event_as_it_was() {
    let app = spawn_app().await;
    let body = json!({"events": [{"type": "l12.service_invoked", "schema_version": 1, "payload": invoked_v1()}]});
    let reply = app.append("service", Uuid::new_v4(), &body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id: Uuid = reply.body["events"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let mode = app
        .client()
        .put(app.url("/registry/config/l12.service_invoked"))
        .json(&json!({"compatibility": "NONE"}))
        .send()
        .await
        .unwrap();
    assert_eq!(mode.status(), StatusCode::OK);
    let without_ok = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/schemas/l12.service_invoked/v1.avsc"
    ))
    .unwrap()
    .replace(
        r#""symbols": ["OK", "ERROR", "TIMEOUT"]"#,
        r#""symbols": ["ERROR", "TIMEOUT"]"#,
    );
    let registered = app
        .post_json(
            "/registry/subjects/l12.service_invoked/versions",
            &json!({"schema": without_ok}),
        )
        .await;
    assert_eq!(registered.status, StatusCode::OK, "{}", registered.body);
    let v3 = VersionSpec::Number(3);

    let stored = keel::store::get_event(app.store.pool(), id)
        .await
        .unwrap()
        .unwrap();
    let mut event = stored.clone();
    let err = app.registry.upcast(&mut event, v3).await.unwrap_err();
    assert!(matches!(err, UpcastError::Resolve(_)), "{err}");
    assert!(err.to_string().contains("$.status"), "{err}");
    assert_eq!(event, stored, "a failed upcast leaves the event as it was");
    let err = app
        .registry
        .upcast_owned(stored.clone(), v3)
        .await
        .unwrap_err();
    assert!(matches!(err, UpcastError::Resolve(_)), "{err}");
    let err = app.registry.upcaster(v3).upcast(stored).await.unwrap_err();
    assert!(matches!(err, UpcastError::Resolve(_)), "{err}");
}
