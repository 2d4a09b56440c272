//! The Confluent-compatible registry API under `/registry`: status codes, error codes, bodies.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, Reply, TestApp};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"order","namespace":"shop","fields":[{fields}]}}"#)
}

async fn register(app: &TestApp, subject: &str, schema: &str) -> Reply {
    app.post_raw(
        &format!("/registry/subjects/{subject}/versions"),
        Some(CONTENT_TYPE),
        json!({"schema": schema}).to_string().into_bytes(),
    )
    .await
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value, String) {
    let mut request = app.client().request(method, app.url(path));
    if let Some(body) = body {
        request = request
            .header("content-type", CONTENT_TYPE)
            .body(body.to_string());
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
        content_type,
    )
}

async fn get(app: &TestApp, path: &str) -> (StatusCode, Value, String) {
    send(app, reqwest::Method::GET, path, None).await
}

/// Asserts a Confluent error: HTTP status and `error_code`.
fn assert_confluent_error(
    (status, body, _): &(StatusCode, Value, String),
    want_status: StatusCode,
    want_code: u64,
) {
    assert_eq!(*status, want_status, "{body}");
    assert_eq!(body["error_code"], want_code, "{body}");
    assert!(body["message"].is_string(), "{body}");
}

#[tokio::test]
async fn register_look_up_and_fetch_by_id_as_confluent_does() {
    let app = spawn_app().await;
    let v1 = record(r#"{"name":"id","type":"string"}"#);

    let first = register(&app, "shop.order", &v1).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    let id = first.body["id"].as_i64().unwrap();

    // Same schema (other whitespace) again: same id, no new version.
    let again = register(&app, "shop.order", &format!(" {v1} ")).await;
    assert_eq!(again.body["id"], id);
    // Same schema in another subject: same global id, version 1 there.
    assert_eq!(register(&app, "orders-value", &v1).await.body["id"], id);

    let (status, body, content_type) =
        get(&app, "/registry/subjects/shop.order/versions/latest").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, CONTENT_TYPE);
    assert_eq!(
        (
            body["subject"].as_str(),
            body["version"].as_i64(),
            body["id"].as_i64()
        ),
        (Some("shop.order"), Some(1), Some(id))
    );
    let stored: Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
    assert_eq!(stored, serde_json::from_str::<Value>(&v1).unwrap());

    assert_eq!(
        get(&app, "/registry/subjects/shop.order/versions").await.1,
        json!([1])
    );
    let subjects = get(&app, "/registry/subjects").await.1;
    for subject in ["orders-value", "shop.order", "agent.state.changed"] {
        assert!(
            subjects.as_array().unwrap().contains(&json!(subject)),
            "{subjects}"
        );
    }
    assert_eq!(
        get(&app, &format!("/registry/schemas/ids/{id}")).await.1["schema"],
        body["schema"]
    );
    assert_eq!(
        get(&app, &format!("/registry/schemas/ids/{id}/versions"))
            .await
            .1,
        json!([{"subject": "orders-value", "version": 1}, {"subject": "shop.order", "version": 1}])
    );
    assert_eq!(
        get(&app, "/registry/schemas/types").await.1,
        json!(["AVRO"])
    );
    let raw = get(&app, "/registry/subjects/shop.order/versions/1/schema")
        .await
        .1;
    assert_eq!(raw, stored);

    let lookup = send(
        &app,
        reqwest::Method::POST,
        "/registry/subjects/shop.order",
        Some(json!({"schema": v1})),
    )
    .await;
    assert_eq!(
        (
            lookup.0,
            lookup.1["id"].as_i64(),
            lookup.1["version"].as_i64()
        ),
        (StatusCode::OK, Some(id), Some(1))
    );
}

#[tokio::test]
async fn errors_carry_confluent_error_codes() {
    let app = spawn_app().await;
    let v1 = record(r#"{"name":"id","type":"string"}"#);
    register(&app, "shop.order", &v1).await;
    let other = record(r#"{"name":"sku","type":"string"}"#);
    use reqwest::Method as M;

    let cases = [
        (
            M::GET,
            "/registry/subjects/nope/versions",
            None,
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            M::GET,
            "/registry/subjects/shop.order/versions/9",
            None,
            StatusCode::NOT_FOUND,
            40402,
        ),
        (
            M::GET,
            "/registry/schemas/ids/999",
            None,
            StatusCode::NOT_FOUND,
            40403,
        ),
        (
            M::POST,
            "/registry/subjects/shop.order",
            Some(json!({"schema": other})),
            StatusCode::NOT_FOUND,
            40403,
        ),
        (
            M::POST,
            "/registry/subjects/nope",
            Some(json!({"schema": v1})),
            StatusCode::NOT_FOUND,
            40401,
        ),
        (
            M::GET,
            "/registry/subjects/shop.order/versions/zero",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
        ),
        (
            M::GET,
            "/registry/subjects/shop.order/versions/0",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            42202,
        ),
        (
            M::POST,
            "/registry/subjects/shop.order/versions",
            Some(json!({"schema": "{\"type\":\"nope\"}"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            M::POST,
            "/registry/subjects/shop.order/versions",
            Some(json!({"schema": v1, "schemaType": "PROTOBUF"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            M::POST,
            "/registry/subjects/shop.order/versions",
            Some(json!({"schemaType": "AVRO"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
        ),
        (
            M::PUT,
            "/registry/config",
            Some(json!({"compatibility": "SIDEWAYS"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
        ),
        (
            M::GET,
            "/registry/config/shop.order",
            None,
            StatusCode::NOT_FOUND,
            40408,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let reply = send(&app, method.clone(), path, body.clone()).await;
        assert_confluent_error(&reply, status, code);
        assert!(
            reply.1["error"]["code"].is_string(),
            "keel's error object too: {}",
            reply.1
        );
    }

    let malformed = app
        .post_raw(
            "/registry/subjects/shop.order/versions",
            Some(CONTENT_TYPE),
            b"{".to_vec(),
        )
        .await;
    assert_eq!(
        (malformed.status, malformed.body["error_code"].as_i64()),
        (StatusCode::BAD_REQUEST, Some(400))
    );
}

#[tokio::test]
async fn an_incompatible_schema_is_refused_with_the_field_and_the_rule() {
    let app = spawn_app().await;
    register(
        &app,
        "shop.order",
        &record(r#"{"name":"id","type":"string"}"#),
    )
    .await;

    // Adding a required field breaks BACKWARD_TRANSITIVE, the default.
    let breaking = record(r#"{"name":"id","type":"string"},{"name":"total","type":"long"}"#);
    let reply = register(&app, "shop.order", &breaking).await;
    assert_eq!(
        (reply.status, reply.body["error_code"].as_i64()),
        (StatusCode::CONFLICT, Some(409)),
        "{}",
        reply.body
    );
    let message = reply.body["message"].as_str().unwrap();
    assert!(
        message.contains("$.total") && message.contains("no default"),
        "{message}"
    );
    assert_eq!(
        reply.body["error"]["details"]["incompatibilities"][0]["kind"],
        "READER_FIELD_MISSING_DEFAULT_VALUE"
    );

    let check = send(
        &app,
        reqwest::Method::POST,
        "/registry/compatibility/subjects/shop.order/versions/latest?verbose=true",
        Some(json!({"schema": breaking})),
    )
    .await;
    assert_eq!(check.1["is_compatible"], false);
    assert!(
        check.1["messages"][0]
            .as_str()
            .unwrap()
            .contains("READER_FIELD_MISSING_DEFAULT_VALUE"),
        "{}",
        check.1
    );

    let fine =
        record(r#"{"name":"id","type":"string"},{"name":"total","type":"long","default":0}"#);
    let check = send(
        &app,
        reqwest::Method::POST,
        "/registry/compatibility/subjects/shop.order/versions",
        Some(json!({"schema": fine})),
    )
    .await;
    assert_eq!(check.1, json!({"is_compatible": true}));
    assert_eq!(
        register(&app, "shop.order", &fine).await.status,
        StatusCode::OK
    );

    // With the subject's mode set to NONE the breaking schema is accepted.
    let put = send(
        &app,
        reqwest::Method::PUT,
        "/registry/config/shop.order",
        Some(json!({"compatibility": "NONE"})),
    )
    .await;
    assert_eq!(put.1, json!({"compatibility": "NONE"}));
    assert_eq!(
        send(
            &app,
            reqwest::Method::GET,
            "/registry/config/shop.order",
            None
        )
        .await
        .1,
        json!({"compatibilityLevel": "NONE"})
    );
    assert_eq!(
        register(&app, "shop.order", &breaking).await.status,
        StatusCode::OK
    );
    let deleted = send(
        &app,
        reqwest::Method::DELETE,
        "/registry/config/shop.order",
        None,
    )
    .await;
    assert_eq!(deleted.1, json!({"compatibilityLevel": "NONE"}));
    let effective = send(
        &app,
        reqwest::Method::GET,
        "/registry/config/shop.order?defaultToGlobal=true",
        None,
    )
    .await;
    assert_eq!(
        effective.1,
        json!({"compatibilityLevel": "BACKWARD_TRANSITIVE"})
    );
    assert_eq!(
        send(&app, reqwest::Method::GET, "/registry/config", None)
            .await
            .1,
        json!({"compatibilityLevel": "BACKWARD_TRANSITIVE"})
    );
}

#[tokio::test]
async fn deletes_are_soft_first_and_permanent_only_after() {
    let app = spawn_app().await;
    let v1 = record(r#"{"name":"id","type":"string"}"#);
    let v2 = record(
        r#"{"name":"id","type":"string"},{"name":"note","type":["null","string"],"default":null}"#,
    );
    let v1_id = register(&app, "s", &v1).await.body["id"].as_i64().unwrap();
    register(&app, "s", &v2).await;
    use reqwest::Method as M;

    assert_confluent_error(
        &send(
            &app,
            M::DELETE,
            "/registry/subjects/s/versions/2?permanent=true",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40407,
    );
    assert_eq!(
        send(&app, M::DELETE, "/registry/subjects/s/versions/2", None)
            .await
            .1,
        json!(2)
    );
    assert_eq!(
        send(&app, M::GET, "/registry/subjects/s/versions", None)
            .await
            .1,
        json!([1])
    );
    assert_eq!(
        send(
            &app,
            M::GET,
            "/registry/subjects/s/versions?deleted=true",
            None
        )
        .await
        .1,
        json!([1, 2])
    );
    assert_eq!(
        send(&app, M::GET, "/registry/subjects/s/versions/latest", None)
            .await
            .1["version"],
        1
    );
    assert_eq!(
        send(
            &app,
            M::DELETE,
            "/registry/subjects/s/versions/2?permanent=true",
            None
        )
        .await
        .1,
        json!(2)
    );

    assert_confluent_error(
        &send(&app, M::DELETE, "/registry/subjects/s?permanent=true", None).await,
        StatusCode::NOT_FOUND,
        40405,
    );
    assert_eq!(
        send(&app, M::DELETE, "/registry/subjects/s", None).await.1,
        json!([1])
    );
    assert_confluent_error(
        &send(&app, M::DELETE, "/registry/subjects/s", None).await,
        StatusCode::NOT_FOUND,
        40404,
    );
    assert_eq!(
        send(&app, M::GET, "/registry/subjects", None)
            .await
            .1
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| *s == "s")
            .count(),
        0
    );
    assert_eq!(
        send(&app, M::DELETE, "/registry/subjects/s?permanent=true", None)
            .await
            .1,
        json!([1])
    );
    assert_confluent_error(
        &send(
            &app,
            M::GET,
            "/registry/subjects/s/versions?deleted=true",
            None,
        )
        .await,
        StatusCode::NOT_FOUND,
        40401,
    );

    // The schema id stays valid: events may still point at it.
    assert_eq!(
        send(
            &app,
            M::GET,
            &format!("/registry/schemas/ids/{v1_id}"),
            None
        )
        .await
        .0,
        StatusCode::OK
    );
}

/// Confluent's own Python client and Avro serdes, pointed at keel. `scripts/test` installs them
/// (confluent-kafka from PyPI) and sets `KEEL_TEST_PYTHON`.
#[tokio::test]
async fn confluents_python_client_and_serdes_work_against_keel() {
    let app = spawn_app().await;
    let python = std::env::var("KEEL_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/confluent_registry.py"
    );
    let url = app.url("/registry");
    // keel_<key id>_<secret> as Confluent's user info, key id:secret.
    let user_info = app.admin_key["keel_".len()..].replacen('_', ":", 1);
    let output = tokio::process::Command::new(&python)
        .args([script, &url, &user_info])
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run the tests with scripts/test"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the Confluent client failed against keel (is confluent-kafka installed for {python}? scripts/test installs it):\n{stderr}"
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("confluent client: ok"));
}

#[tokio::test]
async fn a_subject_with_no_versions_is_compatible_with_anything() {
    let app = spawn_app().await;
    let check = send(
        &app,
        reqwest::Method::POST,
        "/registry/compatibility/subjects/brand.new/versions/latest",
        Some(json!({"schema": record(r#"{"name":"id","type":"string"}"#)})),
    )
    .await;
    assert_eq!(
        (check.0, check.1.clone()),
        (StatusCode::OK, json!({"is_compatible": true}))
    );
}

/// Events written with a soft-deleted version may still be stored, so the version still guards
/// compatibility (a deliberate difference from Confluent).
#[tokio::test]
async fn a_soft_deleted_version_still_guards_compatibility() {
    let app = spawn_app().await;
    register(&app, "s", &record(r#"{"name":"a","type":"string"}"#)).await;
    register(&app, "s", &record("")).await;
    assert_eq!(
        send(
            &app,
            reqwest::Method::DELETE,
            "/registry/subjects/s/versions/1",
            None
        )
        .await
        .1,
        json!(1)
    );

    // Reads v2's data (no field a: default used) but not v1's (a was a string).
    let reply = register(
        &app,
        "s",
        &record(r#"{"name":"a","type":"int","default":0}"#),
    )
    .await;
    assert_eq!(
        (reply.status, reply.body["error_code"].as_i64()),
        (StatusCode::CONFLICT, Some(409)),
        "{}",
        reply.body
    );
    assert!(
        reply.body["message"]
            .as_str()
            .unwrap()
            .contains("version 1"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_schema_is_read_from_the_database_once_per_id_and_then_served_from_memory() {
    let app = crate::helpers::spawn_app().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&app.config.database_url)
        .await
        .unwrap();
    let registry = keel::registry::Registry::new(pool.clone());
    let v1 = app.schema_id("l12.service_invoked", 1).await;
    let first = registry.parsed_by_id(v1).await.unwrap();
    // With its database gone, the registry still serves the schema it has read...
    pool.close().await;
    let again = registry.parsed_by_id(v1).await.unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // ...but not one it has not.
    let v2 = app.schema_id("l12.service_invoked", 2).await;
    assert!(registry.parsed_by_id(v2).await.is_err());
}
