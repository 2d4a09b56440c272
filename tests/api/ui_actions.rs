//! The dashboard's actions over real HTTP: a rebuild previewed then started from the UI is the
//! API's job (same row, same audit entry); a reader gets no mutating control and its posts are
//! refused; the relay page and an event's journey render; bad action forms are coded 400s.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, spawn_app, TestApp};
use crate::ui_support::{login, page, post};

async fn some_agent_events(app: &TestApp, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let agent = Uuid::new_v4();
        let reply = app
            .append(
                "agent",
                agent,
                &json!({"events": [agent_state_changed(agent, &format!("s{i}"))]}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        ids.push(reply.body["events"][0]["id"].as_str().unwrap().to_owned());
    }
    ids
}

#[tokio::test]
async fn a_rebuild_previewed_and_started_from_the_dashboard_is_the_apis_job_and_is_audited() {
    let app = spawn_app().await;
    some_agent_events(&app, 5).await;
    let cookie = login(&app, &app.admin_key).await;
    let (status, html) = page(&app, &cookie, "/ui/projections").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"data-testid="rebuild-agent_status""#));

    let path = "/ui/projections/agent_status/rebuild";
    let (status, _, html) = post(
        &app,
        &cookie,
        path,
        &[("mode", "full"), ("step", "preview")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("will read 5 events"), "{html}");
    assert!(html.contains("keel replay projection agent_status --dry-run"));
    let jobs: i64 = app.count("jobs").await;
    assert_eq!(jobs, 0, "a preview starts nothing");

    let (status, location, _) =
        post(&app, &cookie, path, &[("mode", "full"), ("step", "start")]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/ui/jobs"));
    let job = eventually(Duration::from_secs(30), "the job to finish", || {
        let app = app.clone();
        async move {
            let listed = app.get("/v1/jobs").await;
            let job = listed.body["jobs"][0].clone();
            (job["state"] == "done").then_some(job)
        }
    })
    .await;
    assert_eq!(job["target"], "agent_status");
    assert_eq!(job["started_by"], "admin");
    let (_, html) = page(&app, &cookie, "/ui/jobs").await;
    let id = job["id"].as_str().unwrap();
    assert!(
        html.contains(&format!(r#"data-job="{id}" data-state="done""#)),
        "{html}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'projection.rebuild' AND principal = 'admin'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert!(audited >= 1, "the start is in the audit log");

    let (status, _, html) = post(
        &app,
        &cookie,
        path,
        &[("mode", "sideways"), ("step", "preview")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains(r#"data-code="invalid_mode""#));
    let (status, _, html) = post(
        &app,
        &cookie,
        path,
        &[
            ("mode", "aggregate"),
            ("aggregate", "x"),
            ("step", "preview"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains(r#"data-code="invalid_aggregate""#));
}

#[tokio::test]
async fn a_reader_gets_no_mutating_control_and_its_posts_are_refused_and_audited() {
    let app = spawn_app().await;
    some_agent_events(&app, 1).await;
    let key = app
        .principal("ui-reader", &[keel::auth::Role::Reader], &[])
        .await;
    let cookie = login(&app, &key).await;
    for path in ["/ui/projections", "/ui/jobs", "/ui/events", "/ui"] {
        let (status, html) = page(&app, &cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            !html.contains("class=\"danger\""),
            "{path} shows a mutating control"
        );
        assert!(
            !html.contains("data-testid=\"rebuild-"),
            "{path} offers a rebuild"
        );
        assert!(
            !html.contains("data-testid=\"republish\""),
            "{path} offers a republish"
        );
        // The navigation leaves out what a reader may not open.
        assert!(!html.contains("href=\"/ui/relay\"") && !html.contains("href=\"/ui/audit\""));
    }
    let (status, _, _) = post(
        &app,
        &cookie,
        "/ui/projections/agent_status/rebuild",
        &[("mode", "full"), ("step", "start")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = post(
        &app,
        &cookie,
        "/ui/dead-letters/some-group",
        &[("verb", "retry"), ("step", "run")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = post(
        &app,
        &cookie,
        "/ui/relay/parked",
        &[("verb", "retry"), ("step", "run")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = page(&app, &cookie, "/ui/relay").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(app.count("jobs").await, 0);
    let denied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE principal = 'ui-reader' AND outcome = 'denied'",
    )
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert!(
        denied >= 1,
        "refused operator actions are audited as denied"
    );
}

#[tokio::test]
async fn the_relay_and_dead_letter_pages_render_and_bad_action_forms_are_coded_400s() {
    let app = spawn_app().await;
    let cookie = login(&app, &app.admin_key).await;
    for path in ["/ui/relay", "/ui/dead-letters", "/ui/dead-letters?group=g1"] {
        let (status, html) = page(&app, &cookie, path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {html}");
    }
    let (status, html) = page(&app, &cookie, "/ui/dead-letters?group=g1&older_than=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains(r#"data-code="invalid_older_than""#));
    let (status, _, html) =
        post(&app, &cookie, "/ui/dead-letters/g1", &[("verb", "explode")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains(r#"data-code="invalid_verb""#));
    // A skip needs a reason, as on the API.
    let (status, _, html) = post(
        &app,
        &cookie,
        "/ui/dead-letters/g1",
        &[("verb", "skip"), ("step", "run")],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{html}");
    assert!(html.contains(r#"data-code="reason_required""#), "{html}");
    // A dry run over an empty group touches nothing and names the command.
    let (status, _, html) = post(
        &app,
        &cookie,
        "/ui/dead-letters/g1",
        &[("verb", "retry"), ("step", "preview")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"data-testid="count">0 rows"#), "{html}");
    assert!(html.contains("keel dlq retry"), "{html}");
}

#[tokio::test]
async fn an_events_journey_shows_its_hops_and_the_aggregate_page_its_state() {
    let app = spawn_app().await;
    let ids = some_agent_events(&app, 1).await;
    let cookie = login(&app, &app.admin_key).await;
    let (status, html) = page(&app, &cookie, &format!("/ui/events/{}", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"data-stage="appended""#), "{html}");
    assert!(
        html.contains(r#"data-stage="relay → kafka""#),
        "the relay hop is shown"
    );
    let (status, fragment) = page(&app, &cookie, &format!("/ui/events/{}/journey", ids[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(fragment.starts_with("<ol class=\"journey\">"));
    let (status, _) = page(
        &app,
        &cookie,
        &format!("/ui/events/{}/journey", Uuid::new_v4()),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let agent = Uuid::new_v4();
    for to in ["starting", "running"] {
        app.append(
            "agent",
            agent,
            &json!({"events": [agent_state_changed(agent, to)]}),
        )
        .await;
    }
    let (status, html) = page(
        &app,
        &cookie,
        &format!("/ui/aggregates/agent/{agent}?as_of=1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains(r#"data-testid="state""#) && html.contains("at version 1"),
        "{html}"
    );
    assert!(
        html.contains("starting") && !html.contains("&#34;running&#34;"),
        "the state as of version 1"
    );
    let (status, _) = page(
        &app,
        &cookie,
        &format!("/ui/aggregates/agent/{agent}?as_of=zero"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
