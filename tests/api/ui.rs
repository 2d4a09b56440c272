//! The dashboard's handlers over real HTTP against a real database: login and sessions, the
//! security headers, escaping of hostile data, read scopes, CSRF, masking, and the live streams.

use std::time::Duration;

use reqwest::header;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, spawn_app, spawn_app_with, TestApp};
use crate::ui_support::{browser, csrf_of, login, page};

#[tokio::test]
async fn the_dashboard_sends_a_stranger_to_login_and_a_session_opens_it_until_the_key_is_revoked() {
    let app = spawn_app().await;
    let reply = browser()
        .get(app.url("/ui/events?event_type=a.b"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        reply.headers()[header::LOCATION],
        "/ui/login?next=%2Fui%2Fevents%3Fevent_type%3Da.b"
    );

    let key = app
        .principal("ops-viewer", &[keel::auth::Role::Reader], &[])
        .await;
    let cookie = login(&app, &key).await;
    let (status, html) = page(&app, &cookie, "/ui").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(r#"data-testid="tiles""#) && html.contains("ops-viewer"));
    // The session row holds a digest, never the cookie's id.
    let id = cookie.split('=').nth(1).unwrap();
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM ui_sessions WHERE id_hash::text LIKE '%' || $1 || '%'",
    )
    .bind(id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, 0);

    let key_id = key.split('_').nth(1).unwrap().to_owned();
    let revoked = app
        .client()
        .delete(app.url(&format!("/v1/keys/{key_id}")))
        .send()
        .await
        .unwrap();
    assert!(revoked.status().is_success(), "{:?}", revoked.text().await);
    let (status, _) = page(&app, &cookie, "/ui").await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a revoked key's session ends"
    );
}

#[tokio::test]
async fn a_wrong_key_gets_401_and_the_form_again_and_a_login_from_another_site_is_refused() {
    let app = spawn_app().await;
    let reply = browser()
        .post(app.url("/ui/login"))
        .form(&[("key", "keel_0123456789abcdef_nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
    assert!(reply.headers().get(header::SET_COOKIE).is_none());
    assert!(reply
        .text()
        .await
        .unwrap()
        .contains(r#"data-testid="login-error""#));

    let reply = browser()
        .post(app.url("/ui/login"))
        .header(header::ORIGIN, "http://evil.example")
        .form(&[("key", app.admin_key.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    assert!(reply
        .text()
        .await
        .unwrap()
        .contains(r#"data-code="csrf_failed""#));
}

#[tokio::test]
async fn every_page_has_a_strict_content_security_policy_and_names_nothing_outside_keel() {
    let app = spawn_app().await;
    let cookie = login(&app, &app.admin_key).await;
    for path in ["/ui", "/ui/events", "/ui/login", "/ui/nowhere"] {
        let reply = browser()
            .get(app.url(path))
            .header(header::COOKIE, &cookie)
            .send()
            .await
            .unwrap();
        let csp = reply.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
            "{path}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{path}");
        assert_eq!(reply.headers()[header::X_FRAME_OPTIONS], "DENY");
        let html = reply.text().await.unwrap();
        for attr in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
            assert!(
                !html.contains(attr),
                "{path} names an outside address: {attr}"
            );
        }
        assert!(!html.contains("<script>"), "{path} has an inline script");
    }
    let (status, html) = page(&app, &cookie, "/ui/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(html.contains(r#"data-code="page_not_found""#));
}

#[tokio::test]
async fn assets_are_served_under_their_content_hash_for_good_and_other_hashes_are_not() {
    let app = spawn_app().await;
    let cookie = login(&app, &app.admin_key).await;
    let (_, html) = page(&app, &cookie, "/ui").await;
    let at = html.find("/ui/assets/").unwrap();
    let end = html[at..].find('"').unwrap();
    let css = &html[at..at + end];
    let reply = browser().get(app.url(css)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(reply.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let reply = browser()
        .get(app.url("/ui/assets/0000000000000000/keel.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn hostile_payloads_and_metadata_are_shown_escaped() {
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let mut event = agent_state_changed(agent, "<script>alert('to')</script>");
    event["metadata"] = json!({"correlation_id": "\"><img src=x onerror=alert(1)>"});
    let reply = app
        .append("agent", agent, &json!({"events": [event]}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["events"][0]["id"].as_str().unwrap().to_owned();
    let cookie = login(&app, &app.admin_key).await;
    for path in ["/ui/events".to_owned(), format!("/ui/events/{id}")] {
        let (status, html) = page(&app, &cookie, &path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!html.contains("<script>alert"), "{path} shows a script");
        assert!(!html.contains("<img src=x"), "{path} shows an image tag");
        assert!(
            html.contains("&#60;img src=x") || html.contains("%3Cimg"),
            "{path}"
        );
    }
    let (_, html) = page(&app, &cookie, &format!("/ui/events/{id}")).await;
    assert!(
        html.contains("&#60;script&#62;alert"),
        "the payload is shown, escaped"
    );
}

#[tokio::test]
async fn a_reader_sees_only_the_aggregate_types_it_may_read() {
    let app = spawn_app().await;
    let (agent, other) = (Uuid::new_v4(), Uuid::new_v4());
    let seen = app
        .append(
            "agent",
            agent,
            &json!({"events": [agent_state_changed(agent, "idle")]}),
        )
        .await;
    let robot = json!({"type": "state_change", "payload": {"entity": "r", "to_state": "busy"}});
    let hidden = app
        .append("robot", other, &json!({"events": [robot]}))
        .await;
    assert_eq!(hidden.status, StatusCode::CREATED, "{}", hidden.body);
    let key = app
        .principal(
            "agent-reader",
            &[],
            &[("allow", "event.read", "agent", "*")],
        )
        .await;
    let cookie = login(&app, &key).await;
    let (status, html) = page(&app, &cookie, "/ui/events").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(&agent.to_string()) && !html.contains(&other.to_string()));
    let hidden_id = hidden.body["events"][0]["id"].as_str().unwrap();
    let (status, _) = page(&app, &cookie, &format!("/ui/events/{hidden_id}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an unreadable event reads as a missing one"
    );
    let (status, _) = page(&app, &cookie, "/ui/events?aggregate_type=robot").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let seen_id = seen.body["events"][0]["id"].as_str().unwrap();
    let (status, _) = page(&app, &cookie, &format!("/ui/events/{seen_id}")).await;
    assert_eq!(status, StatusCode::OK);
    // Bad filters are 400 with a code, never a 500.
    for bad in [
        "/ui/events?from=yesterday",
        "/ui/events?aggregate_id=x",
        "/ui/events?after=zz",
    ] {
        let (status, html) = page(&app, &cookie, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(html.contains("data-code=\"invalid_"), "{bad}");
    }
}

#[tokio::test]
async fn masked_payloads_show_their_shape_and_not_their_values() {
    let app = spawn_app_with(|c| c.ui.payloads = keel::config::Payloads::Masked).await;
    let agent = Uuid::new_v4();
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"events": [agent_state_changed(agent, "secret-state-42")]}),
        )
        .await;
    let id = reply.body["events"][0]["id"].as_str().unwrap().to_owned();
    let cookie = login(&app, &app.admin_key).await;
    let (_, html) = page(&app, &cookie, &format!("/ui/events/{id}")).await;
    assert!(!html.contains("secret-state-42"));
    assert!(html.contains("to_state") && html.contains("‹string›"));
}

#[tokio::test]
async fn a_forged_post_from_another_site_or_without_the_csrf_token_is_refused() {
    let app = spawn_app().await;
    let cookie = login(&app, &app.admin_key).await;
    let reply = browser()
        .post(app.url("/ui/logout"))
        .header(header::COOKIE, &cookie)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    let (status, html) = page(&app, &cookie, "/ui").await;
    assert_eq!(status, StatusCode::OK, "the session is still open");
    let csrf = csrf_of(&html);
    for token in [
        "",
        "0000000000000000000000000000000000000000000000000000000000000000",
    ] {
        let reply = browser()
            .post(app.url("/ui/logout"))
            .header(header::COOKIE, &cookie)
            .form(&[("csrf", token)])
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::FORBIDDEN, "token {token:?}");
        assert!(reply
            .text()
            .await
            .unwrap()
            .contains(r#"data-code="csrf_failed""#));
    }
    let (status, _) = page(&app, &cookie, "/ui").await;
    assert_eq!(status, StatusCode::OK, "the session is still open");
    let reply = browser()
        .post(app.url("/ui/logout"))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::SEE_OTHER);
    let (status, _) = page(&app, &cookie, "/ui").await;
    assert_eq!(status, StatusCode::SEE_OTHER, "logged out");
}

/// Reads the SSE stream at `path` until `found` holds for the text so far, or panics.
async fn stream_until(app: &TestApp, path: &str, what: &str, found: impl Fn(&str) -> bool) {
    let reply = app.client().get(app.url(path)).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert_eq!(reply.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut reply = reply;
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !found(&text) {
        let chunk = tokio::time::timeout_at(deadline, reply.chunk())
            .await
            .unwrap_or_else(|_| panic!("{what}: not seen within 20 s; got {text}"))
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_live_tail_streams_a_new_event_that_matches_the_filter_and_not_others() {
    let app = spawn_app().await;
    let (wanted, other) = (Uuid::new_v4(), Uuid::new_v4());
    let path = format!("/ui/live?view=events&aggregate_id={wanted}");
    let appender = app.clone();
    tokio::spawn(async move {
        // Appends until the stream has surely subscribed; the other aggregate's never match.
        for _ in 0..40 {
            appender
                .append(
                    "agent",
                    other,
                    &json!({"events": [agent_state_changed(other, "x")]}),
                )
                .await;
            appender
                .append(
                    "agent",
                    wanted,
                    &json!({"events": [agent_state_changed(wanted, "y")]}),
                )
                .await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    let other_text = other.to_string();
    stream_until(&app, &path, "a row of the wanted aggregate", |t| {
        assert!(
            !t.contains(&other_text),
            "a row of another aggregate was streamed"
        );
        t.contains("event: rows") && t.contains(&wanted.to_string())
    })
    .await;
}

#[tokio::test]
async fn the_overview_streams_its_live_part_with_the_charts_after_each_reading() {
    let app = spawn_app_with(|c| c.observability.stall_after_ms = 1_200).await;
    stream_until(
        &app,
        "/ui/live?view=overview",
        "an overview fragment",
        |t| {
            t.contains("event: fragment") && t.contains("overview-live") && t.contains("chart-flow")
        },
    )
    .await;
    // The readings the charts are drawn from are kept: a new page starts with them.
    let cookie = login(&app, &app.admin_key).await;
    let html = eventually(Duration::from_secs(10), "readings on the overview", || {
        let (app, cookie) = (app.clone(), cookie.clone());
        async move {
            let (_, html) = page(&app, &cookie, "/ui").await;
            (!html.contains(r#"id="chart-flow" data-points="0""#)).then_some(html)
        }
    })
    .await;
    assert!(html.contains(r#"data-testid="health""#));
}
