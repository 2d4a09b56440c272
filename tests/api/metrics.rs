//! `/metrics` and the log-horizon report an operator watches.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, spawn_app};

#[tokio::test]
async fn metrics_count_appends_by_outcome_in_prometheus_format() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let body =
        json!({"expected_version": "no_stream", "events": [agent_state_changed(agent, "a")]});
    assert_eq!(
        app.append("agent", agent, &body).await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        app.append("agent", agent, &body).await.status,
        StatusCode::CONFLICT
    );
    let bad = app.append("agent", agent, &json!({"events": []})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);

    let response = app.client().get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    for expected in [
        // Described (metrics::describe, on install), so Prometheus shows what each one means.
        "# HELP keel_append_requests_total",
        "# HELP keel_append_duration_seconds",
        r#"keel_append_requests_total{outcome="created"}"#,
        r#"keel_append_requests_total{outcome="conflict"}"#,
        r#"keel_append_requests_total{outcome="rejected"}"#,
        "keel_append_events_total",
        "keel_append_duration_seconds_bucket",
        "keel_group_commit_batch_requests_bucket",
        "keel_log_horizon_age_seconds",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

#[tokio::test]
async fn readiness_reports_how_long_an_open_write_transaction_holds_the_log_back() {
    let app = spawn_app().await;
    let mut held = app.store.pool().begin().await.unwrap();
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *held)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // the scenario: a transaction held open

    let ready = app.get("/v1/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    let age = ready.body["log_horizon_age_seconds"].as_f64().unwrap();
    assert!(
        age >= 1.1,
        "the open transaction is {age} s old by the report"
    );
    held.rollback().await.unwrap();
}
