//! The dashboard's schema, audit, aggregate and consumer-group pages over real HTTP against a
//! real database and registry: grants, escaping of hostile names, coded 400s for bad query
//! parameters, the schema diff and payload test, the audit CSV, and the groups table from the
//! monitor's readings.

use std::time::Duration;

use reqwest::header;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, spawn_app, spawn_app_with, TestApp};
use crate::ui_support::{browser, csrf_of, login, page};

/// A principal that may append and nothing else the pages need.
async fn producer(app: &TestApp) -> String {
    let key = app
        .principal("pages-producer", &[keel::auth::Role::Producer], &[])
        .await;
    login(app, &key).await
}

#[tokio::test]
async fn the_schema_pages_list_subjects_and_diff_v1_and_v2_of_l12_service_invoked() {
    let app = spawn_app().await;
    let admin = login(&app, &app.admin_key).await;
    let (status, html) = page(&app, &admin, "/ui/schemas").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(r#"href="/ui/schemas/l12.service_invoked""#),
        "{html}"
    );
    assert!(html.contains(r#"data-testid="global-mode""#));

    let (status, html) = page(&app, &admin, "/ui/schemas/l12.service_invoked?a=1&b=2").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let diff = &html[html.find(r#"data-testid="diff""#).unwrap()..];
    let diff = &diff[..diff.find("</pre>").unwrap()];
    assert!(
        diff.contains(r#"<span class="added">+ "#) && diff.contains("&#34;caller&#34;"),
        "v2's new field is shown as added: {diff}"
    );
    let caller_line = diff
        .lines()
        .find(|l| l.contains("&#34;caller&#34;"))
        .unwrap();
    assert!(caller_line.contains(r#"class="added""#), "{caller_line}");
    assert!(html.contains(r#"data-testid="versions""#));

    for bad in ["?a=zero", "?b=-1"] {
        let (status, html) = page(
            &app,
            &admin,
            &format!("/ui/schemas/l12.service_invoked{bad}"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(html.contains(r#"data-code="invalid_version""#), "{html}");
    }
    let (status, html) = page(&app, &admin, "/ui/schemas/no.such.subject").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains(r#"data-code="subject_not_found""#), "{html}");
    let (status, html) = page(&app, &admin, "/ui/schemas/l12.service_invoked?b=99").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains(r#"data-code="version_not_found""#), "{html}");

    let key = app
        .principal("events-only", &[], &[("allow", "event.read", "*", "*")])
        .await;
    let reader = login(&app, &key).await;
    for path in ["/ui/schemas", "/ui/schemas/l12.service_invoked"] {
        let (status, html) = page(&app, &reader, path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(html.contains(r#"data-code="forbidden""#));
    }
}

#[tokio::test]
async fn the_payload_test_accepts_a_valid_payload_and_refuses_an_invalid_one_with_the_reason() {
    let app = spawn_app().await;
    let admin = login(&app, &app.admin_key).await;
    let (_, html) = page(&app, &admin, "/ui/schemas/l12.service_invoked").await;
    let csrf = csrf_of(&html);
    let test = |payload: String| {
        let (app, admin, csrf) = (&app, &admin, &csrf);
        async move {
            let reply = browser()
                .post(app.url("/ui/schemas/l12.service_invoked/test"))
                .header(header::COOKIE, admin)
                .form(&[
                    ("csrf", csrf.as_str()),
                    ("version", "2"),
                    ("payload", &payload),
                ])
                .send()
                .await
                .unwrap();
            (reply.status(), reply.text().await.unwrap())
        }
    };
    let good = json!({"service_name": "s", "method": "m", "execution_time": 1.5, "status": "OK"});
    let (status, html) = test(good.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let result = &html[html.find(r#"data-testid="test-result""#).unwrap()..];
    assert!(result.contains("Valid against version 2"), "{result}");
    assert!(
        result.contains("&#34;attempt&#34;: 1"),
        "defaults are filled in: {result}"
    );

    let bad = json!({"service_name": "s", "method": "m", "execution_time": "<b>slow</b>", "status": "OK"});
    let (status, html) = test(bad.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    let result = &html[html.find(r#"data-testid="test-result""#).unwrap()..];
    assert!(result.contains("Not valid against version 2"), "{result}");
    assert!(result.contains("$.execution_time"), "{result}");
    assert!(
        !html.contains("<b>slow</b>"),
        "the echoed payload is escaped"
    );

    let (_, html) = test("{not json".into()).await;
    assert!(html.contains("the payload is not JSON"), "{html}");

    let forged = browser()
        .post(app.url("/ui/schemas/l12.service_invoked/test"))
        .header(header::COOKIE, &admin)
        .form(&[
            ("csrf", "0".repeat(64).as_str()),
            ("version", "2"),
            ("payload", "{}"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn the_audit_page_filters_and_pages_and_its_csv_quotes_and_neutralises_formulas() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let hostile = "=HYPERLINK(\"http://evil\",\"<b>x</b>\")";
    let entry = keel::auth::audit::Entry::system("key.create", json!({"name": hostile}), json!({}));
    keel::auth::audit::record_alone(pool, &entry).await.unwrap();
    let mut entry =
        keel::auth::audit::Entry::system("dlq.replay", json!({"group": "g"}), json!({"n": 1}));
    entry.principal = "-ops,night".into();
    keel::auth::audit::record_alone(pool, &entry).await.unwrap();

    let admin = login(&app, &app.admin_key).await;
    let (status, html) = page(&app, &admin, "/ui/audit").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("key.create") && html.contains("dlq.replay"));
    assert!(!html.contains("<b>x</b>") && html.contains("&#60;b&#62;x"));

    let (_, html) = page(&app, &admin, "/ui/audit?action=dlq.replay").await;
    assert!(html.contains("dlq.replay") && !html.contains("key.create"));
    assert!(
        html.contains(r#"href="/ui/audit.csv?action=dlq.replay""#),
        "{html}"
    );

    let reply = browser()
        .get(app.url("/ui/audit.csv"))
        .header(header::COOKIE, &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(reply.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = reply.text().await.unwrap();
    assert!(csv.starts_with("id,at,principal,"), "{csv}");
    assert!(
        csv.contains(r#""{""name"":""=HYPERLINK(\""http://evil\"",\""<b>x</b>\"")""}""#),
        "{csv}"
    );
    assert!(csv.contains(r#","'-ops,night","#), "{csv}");

    for bad in ["/ui/audit?before=x", "/ui/audit.csv?before=-3"] {
        let (status, html) = page(&app, &admin, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(html.contains(r#"data-code="invalid_before""#), "{html}");
    }
    let producer = producer(&app).await;
    for path in ["/ui/audit", "/ui/audit.csv"] {
        let (status, _) = page(&app, &producer, path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test]
async fn the_aggregate_page_lists_its_events_by_version_with_its_key_and_topic() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    for to in ["idle", "<script>busy</script>", "done"] {
        let reply = app
            .append(
                "agent",
                agent,
                &json!({"events": [agent_state_changed(agent, to)]}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    }
    let admin = login(&app, &app.admin_key).await;
    let path = format!("/ui/aggregates/agent/{agent}");
    let (status, html) = page(&app, &admin, &path).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(
        html.contains(r#"data-testid="current-version">3<"#),
        "{html}"
    );
    assert_eq!(html.matches(r#"<a href="/ui/events/"#).count(), 3);
    assert!(
        html.contains("agent.state.changed") && html.contains("<code>keel.agent</code>"),
        "{html}"
    );
    assert!(html.contains(r#"data-testid="aggregate-state""#));

    let (_, html) = page(&app, &admin, &format!("{path}?from_version=3")).await;
    assert_eq!(html.matches(r#"<a href="/ui/events/"#).count(), 1);

    for (bad, code) in [
        (format!("{path}?from_version=0"), "invalid_from_version"),
        (
            "/ui/aggregates/agent/not-a-uuid".to_owned(),
            "invalid_aggregate_id",
        ),
        (
            format!("/ui/aggregates/%3Cb%3E/{agent}"),
            "invalid_aggregate_type",
        ),
    ] {
        let (status, html) = page(&app, &admin, &bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            html.contains(&format!(r#"data-code="{code}""#)),
            "{bad}: {html}"
        );
    }
    let producer = producer(&app).await;
    let (status, _) = page(&app, &producer, &path).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Makes the monitor see consumer group `group` (its member's heartbeat row).
async fn group_member(app: &TestApp, group: &str) {
    sqlx::query(
        "INSERT INTO pipeline_stages (component, instance, process, beat_at, detail)
         VALUES ($1, gen_random_uuid(), 'test:1', now(), '{\"topics\": [\"keel.agent\"]}')",
    )
    .bind(format!("group.{group}"))
    .execute(app.store.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn the_groups_page_shows_readable_groups_from_the_monitor_escaped_and_streams_its_table() {
    let app = spawn_app_with(|c| c.observability.stall_after_ms = 1_200).await;
    let hostile = "<img src=x onerror=alert(1)>";
    group_member(&app, "billing").await;
    group_member(&app, hostile).await;
    let admin = login(&app, &app.admin_key).await;
    let html = eventually(Duration::from_secs(20), "both groups on the page", || {
        let (app, admin) = (app.clone(), admin.clone());
        async move {
            let (status, html) = page(&app, &admin, "/ui/groups").await;
            assert_eq!(status, StatusCode::OK, "{html}");
            (html.contains(r#"data-component="group.billing""#) && html.contains("&#60;img src=x"))
                .then_some(html)
        }
    })
    .await;
    assert!(!html.contains("<img src=x"), "hostile names are escaped");
    let row = &html[html.find(r#"data-component="group.billing""#).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    assert!(row.contains(r#"data-testid="lag">0<"#), "{row}");
    assert!(
        row.contains(r#"href="/ui/groups/billing""#) && row.contains("caught up"),
        "{row}"
    );
    assert!(row.contains(r#"<svg class="spark""#), "{row}");
    assert!(html.contains(r#"data-live="/ui/live?view=groups""#));

    let (status, html) = page(&app, &admin, "/ui/groups/billing").await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains(r#"id="chart-group-seconds""#));
    assert!(html.contains(r#"href="/ui/dead-letters?group=billing""#));

    let key = app
        .principal(
            "billing-reader",
            &[],
            &[("allow", "dlq.read", "billing", "*")],
        )
        .await;
    let reader = login(&app, &key).await;
    let (status, html) = page(&app, &reader, "/ui/groups").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"data-component="group.billing""#), "{html}");
    assert!(
        !html.contains("onerror"),
        "a group the viewer may not read is left out"
    );
    let (status, _) = page(&app, &reader, "/ui/groups/other").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let producer = producer(&app).await;
    let (status, html) = page(&app, &producer, "/ui/groups").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains(r#"data-code="forbidden""#));

    let reply = app
        .client()
        .get(app.url("/ui/live?view=groups"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let mut reply = reply;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(text.contains("event: fragment") && text.contains("groups-live")) {
        let chunk = tokio::time::timeout_at(deadline, reply.chunk())
            .await
            .unwrap_or_else(|_| panic!("no groups fragment within 20 s: {text}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("group.billing"), "{text}");
}
