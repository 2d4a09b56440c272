//! Reading: one event, one aggregate's stream, and the filtered log with its cursor.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, spawn_app, TestApp};

async fn append_n(app: &TestApp, agent: Uuid, n: usize) {
    let events: Vec<Value> = (0..n)
        .map(|i| agent_state_changed(agent, &format!("s{i}")))
        .collect();
    let reply = app.append("agent", agent, &json!({"events": events})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

fn versions(body: &Value) -> Vec<i64> {
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn a_stream_reads_in_version_order_from_a_version_with_a_limit() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    append_n(&app, agent, 5).await;
    append_n(&app, Uuid::new_v4(), 3).await;

    let all = app
        .get(&format!("/v1/aggregates/agent/{agent}/events"))
        .await;
    assert_eq!(all.status, StatusCode::OK);
    assert_eq!(versions(&all.body), [1, 2, 3, 4, 5]);
    assert_eq!(all.body["version"], 5);
    assert_eq!(all.body["next_version"], Value::Null);

    let page = app
        .get(&format!(
            "/v1/aggregates/agent/{agent}/events?from_version=2&limit=2"
        ))
        .await;
    assert_eq!(versions(&page.body), [2, 3]);
    assert_eq!(page.body["next_version"], 4);
    assert_eq!(page.body["events"][0]["payload"]["to_state"], "s1");
}

/// Pages through `/v1/events` with `query` until `has_more` is false, returning each page.
async fn pages(app: &TestApp, query: &str) -> Vec<Value> {
    let mut after = String::new();
    let mut out = Vec::new();
    loop {
        let reply = app.get(&format!("/v1/events?{query}{after}")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let more = reply.body["has_more"].as_bool().unwrap();
        after = format!("&after={}", reply.body["next"].as_str().unwrap());
        out.push(reply.body);
        if !more {
            return out;
        }
    }
}

#[tokio::test]
async fn the_log_query_filters_and_pages_with_a_cursor_and_an_offset() {
    let app = spawn_app().await;
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    append_n(&app, a, 4).await;
    append_n(&app, b, 3).await;
    append_n(&app, a, 1).await;
    let service = Uuid::new_v4();
    let invoked = json!({"events": [{"type": "l12.service_invoked", "payload": {
        "service_name": "planner", "method": "plan", "execution_time": 12.5, "status": "OK"}}]});
    assert_eq!(
        app.append("service", service, &invoked).await.status,
        StatusCode::CREATED
    );

    // Everything is committed; wait out any other test's open transaction holding the horizon.
    eventually(
        Duration::from_secs(20),
        "all 9 events in the log",
        || async {
            let reply = app.get("/v1/events?limit=100").await;
            (reply.body["events"].as_array().map(Vec::len) == Some(9)).then_some(())
        },
    )
    .await;

    // Paging by cursor yields every event of aggregate a, once, in version order.
    let got: Vec<i64> = pages(&app, &format!("aggregate_id={a}&limit=2"))
        .await
        .iter()
        .flat_map(versions)
        .collect();
    assert_eq!(got, [1, 2, 3, 4, 5]);

    let by_type = app.get("/v1/events?event_type=l12.service_invoked").await;
    assert_eq!(by_type.body["events"].as_array().unwrap().len(), 1);
    assert_eq!(by_type.body["events"][0]["aggregate_type"], "service");
    let by_aggregate_type = app.get("/v1/events?aggregate_type=agent&limit=100").await;
    assert_eq!(
        by_aggregate_type.body["events"].as_array().unwrap().len(),
        8
    );

    let offset = app
        .get(&format!("/v1/events?aggregate_id={b}&offset=1"))
        .await;
    assert_eq!(versions(&offset.body), [2, 3]);

    let future = app.get("/v1/events?from=2999-01-01T00:00:00Z").await;
    assert_eq!(future.body["events"], json!([]));
    let past = app.get("/v1/events?to=2000-01-01T00:00:00Z").await;
    assert_eq!(past.body["events"], json!([]));
    let window = app
        .get("/v1/events?from=2000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z&limit=100")
        .await;
    assert_eq!(window.body["events"].as_array().unwrap().len(), 9);

    // At the end of the log, `next` echoes the cursor so a follower can poll with it.
    let last_page = pages(&app, "limit=100").await.pop().unwrap();
    let next = last_page["next"].as_str().unwrap();
    let empty = app.get(&format!("/v1/events?after={next}")).await;
    assert_eq!(empty.body["events"], json!([]));
    assert_eq!(empty.body["next"], next);
}

#[tokio::test]
async fn health_endpoints_report_live_and_ready() {
    let app = spawn_app().await;
    let live = app.get("/v1/health/live").await;
    assert_eq!(
        (live.status, live.body["status"].as_str()),
        (StatusCode::OK, Some("live"))
    );
    let ready = app.get("/v1/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.body["checks"]["database"], "ok");
}
