//! Authorisation over HTTP: every route in the router's own table, for anonymous callers, each
//! built-in role and custom grants; and the scope of every read path.

use std::collections::HashMap;

use keel::api::Need;
use keel::auth::{Action, Role};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{agent_state_changed, client_with_key, spawn_app, spawn_app_with, TestApp};

/// What each built-in role may do, written out here rather than read from keel, so that a
/// change to a role's grants must change this table too.
fn role_actions(role: Role) -> Vec<Action> {
    use Action::*;
    match role {
        Role::Producer => vec![EventAppend, RegistryRead],
        Role::Reader => vec![EventRead, ProjectionRead, SagaRead, RegistryRead, JobRead],
        Role::RegistryAdmin => vec![RegistryRead, RegistryWrite, RegistryDelete, RegistryConfig],
        Role::Operator => vec![
            EventRead,
            ProjectionRead,
            ProjectionRebuild,
            SagaRead,
            SagaRedrive,
            RegistryRead,
            OutboxRead,
            OutboxRetry,
            OutboxSkip,
            DlqRead,
            DlqRetry,
            DlqSkip,
            ReplayRun,
            RetentionSet,
            JobRead,
            Metrics,
        ],
        Role::Admin => Action::ALL.to_vec(),
    }
}

/// Every route and what it needs, written out here rather than read from keel: a route added
/// to the router without a line here fails the matrix, and so does a guard that changes.
/// `anyone` needs no credential, `authenticated` any valid one; otherwise the grant's action.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("GET", "/v1/health/live", "anyone"),
    ("GET", "/v1/health/ready", "anyone"),
    ("GET", "/v1/health/pipeline", "anyone"),
    ("GET", "/metrics", "metrics"),
    (
        "POST",
        "/v1/aggregates/{aggregate_type}/{aggregate_id}/events",
        "event.append",
    ),
    (
        "GET",
        "/v1/aggregates/{aggregate_type}/{aggregate_id}/events",
        "event.read",
    ),
    ("GET", "/v1/events", "event.read"),
    ("GET", "/v1/events/{id}", "event.read"),
    ("GET", "/v1/events/{id}/journey", "event.read"),
    (
        "GET",
        "/v1/aggregates/{aggregate_type}/{aggregate_id}/state",
        "event.read",
    ),
    ("GET", "/v1/projections", "projection.read"),
    ("GET", "/v1/projections/{name}", "projection.read"),
    (
        "GET",
        "/v1/projections/agent_status/agents",
        "projection.read",
    ),
    (
        "GET",
        "/v1/projections/agent_status/agents/{agent_id}",
        "projection.read",
    ),
    (
        "GET",
        "/v1/projections/service_invocations/methods",
        "projection.read",
    ),
    ("GET", "/registry", "authenticated"),
    ("GET", "/registry/", "authenticated"),
    ("GET", "/registry/subjects", "registry.read"),
    ("POST", "/registry/subjects/{subject}", "registry.read"),
    ("DELETE", "/registry/subjects/{subject}", "registry.delete"),
    (
        "GET",
        "/registry/subjects/{subject}/versions",
        "registry.read",
    ),
    (
        "POST",
        "/registry/subjects/{subject}/versions",
        "registry.write",
    ),
    (
        "GET",
        "/registry/subjects/{subject}/versions/{version}",
        "registry.read",
    ),
    (
        "DELETE",
        "/registry/subjects/{subject}/versions/{version}",
        "registry.delete",
    ),
    (
        "GET",
        "/registry/subjects/{subject}/versions/{version}/schema",
        "registry.read",
    ),
    ("GET", "/registry/schemas/types", "authenticated"),
    ("GET", "/registry/schemas/ids/{id}", "registry.read"),
    ("GET", "/registry/schemas/ids/{id}/schema", "registry.read"),
    (
        "GET",
        "/registry/schemas/ids/{id}/versions",
        "registry.read",
    ),
    (
        "POST",
        "/registry/compatibility/subjects/{subject}/versions",
        "registry.read",
    ),
    (
        "POST",
        "/registry/compatibility/subjects/{subject}/versions/{version}",
        "registry.read",
    ),
    ("GET", "/registry/config", "authenticated"),
    ("PUT", "/registry/config", "registry.config"),
    ("GET", "/registry/config/{subject}", "registry.read"),
    ("PUT", "/registry/config/{subject}", "registry.config"),
    ("DELETE", "/registry/config/{subject}", "registry.config"),
    ("GET", "/v1/outbox/status", "outbox.read"),
    ("GET", "/v1/outbox/parked", "outbox.read"),
    ("GET", "/v1/outbox/parked/sequences", "outbox.read"),
    ("POST", "/v1/outbox/retry", "outbox.retry"),
    ("POST", "/v1/outbox/skip", "outbox.skip"),
    ("GET", "/v1/dlq", "dlq.read"),
    ("GET", "/v1/dlq/{group}", "dlq.read"),
    ("GET", "/v1/dlq/{group}/sequences", "dlq.read"),
    ("GET", "/v1/dlq/{group}/rows/{id}", "dlq.read"),
    ("POST", "/v1/dlq/{group}/retry", "dlq.retry"),
    ("POST", "/v1/dlq/{group}/skip", "dlq.skip"),
    ("GET", "/v1/sagas", "saga.read"),
    ("GET", "/v1/sagas/{name}/instances", "saga.read"),
    ("GET", "/v1/sagas/{name}/instances/{id}", "saga.read"),
    ("POST", "/v1/sagas/{name}/retry", "saga.redrive"),
    ("POST", "/v1/sagas/{name}/skip", "saga.redrive"),
    ("POST", "/v1/replay/republish", "replay.run"),
    (
        "POST",
        "/v1/projections/{name}/rebuild",
        "projection.rebuild",
    ),
    ("GET", "/v1/jobs", "job.read"),
    ("GET", "/v1/jobs/{id}", "job.read"),
    // And then the grant that starts the job, on its target (the handler checks it).
    ("POST", "/v1/jobs/{id}/cancel", "job.read"),
    ("POST", "/v1/jobs/{id}/resume", "job.read"),
    ("GET", "/v1/principals", "principal.manage"),
    ("POST", "/v1/principals", "principal.manage"),
    (
        "POST",
        "/v1/principals/{principal}/disable",
        "principal.manage",
    ),
    ("GET", "/v1/principals/{principal}/keys", "principal.manage"),
    (
        "POST",
        "/v1/principals/{principal}/keys",
        "principal.manage",
    ),
    ("DELETE", "/v1/keys/{key_id}", "principal.manage"),
    (
        "POST",
        "/v1/principals/{principal}/grants",
        "principal.manage",
    ),
    (
        "POST",
        "/v1/principals/{principal}/grants/remove",
        "principal.manage",
    ),
    ("GET", "/v1/audit", "audit.read"),
    ("GET", "/v1/audit/verify", "audit.read"),
];

/// The expected decision for a route: `None` for anyone, `Some(None)` for any credential,
/// `Some(Some(action))` for a grant.
fn expected(method: &Method, path: &str) -> Option<Option<Action>> {
    let (_, _, need) = EXPECTED
        .iter()
        .find(|(m, p, _)| *m == method.as_str() && *p == path)
        .unwrap_or_else(|| panic!("{method} {path} has no expected decision in EXPECTED"));
    match *need {
        "anyone" => None,
        "authenticated" => Some(None),
        action => Some(Some(Action::parse(action).unwrap())),
    }
}

/// A concrete path for a route: every `{param}` filled with a value that exists nowhere, so that
/// no request of the matrix changes anything (mutations answer 404 or 422 once allowed).
fn concrete(path: &str, values: &HashMap<&str, String>) -> String {
    let mut out = path.to_owned();
    if let Some(rebuild) = out.strip_suffix("{name}/rebuild") {
        // A projection that does not exist: an allowed caller gets 404, and nothing is rebuilt.
        out = format!("{rebuild}matrix_nothing/rebuild");
    }
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    assert!(
        !out.contains('{'),
        "no sample value for a parameter of {path}"
    );
    out
}

fn samples(aggregate_type: &str) -> HashMap<&'static str, String> {
    HashMap::from([
        ("aggregate_type", aggregate_type.to_owned()),
        ("aggregate_id", Uuid::new_v4().to_string()),
        ("id", "1".to_owned()),
        ("subject", "matrix.nothing".to_owned()),
        ("version", "1".to_owned()),
        ("name", "agent_status".to_owned()),
        ("agent_id", Uuid::new_v4().to_string()),
        ("group", "matrix-nothing".to_owned()),
        ("key_id", "00000000000000aa".to_owned()),
        ("principal", "matrix-nobody".to_owned()),
    ])
}

async fn call(
    client: &reqwest::Client,
    app: &TestApp,
    method: &Method,
    path: &str,
) -> (StatusCode, Value) {
    let mut request = client.request(method.clone(), app.url(path));
    if *method == Method::POST || *method == Method::PUT {
        request = request.json(&json!({}));
    }
    let reply = request.send().await.unwrap();
    let status = reply.status();
    let body = reply.json().await.unwrap_or(Value::Null);
    (status, body)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn every_route_decides_for_anonymous_callers_each_role_and_a_custom_grant() {
    // Arrange: one principal per built-in role, and one with custom grants only.
    let app = spawn_app().await;
    assert!(
        app.routes.len() >= 25,
        "the table lists the routes: {}",
        app.routes.len()
    );
    let mut callers = Vec::new();
    for role in Role::ALL {
        let key = app
            .principal(&format!("matrix-{role}"), &[*role], &[])
            .await;
        callers.push((role.to_string(), client_with_key(&key), role_actions(*role)));
    }
    let custom = app
        .principal(
            "matrix-custom",
            &[],
            &[
                ("allow", "event.read", "invoice", "*"),
                ("allow", "dlq.read", "matrix-nothing", "*"),
                ("allow", "projection.read", "agent_status", "*"),
                ("allow", "registry.read", "matrix.*", "*"),
            ],
        )
        .await;
    let custom = client_with_key(&custom);
    let anonymous = reqwest::Client::new();
    let values = samples("invoice");
    let listed: Vec<(String, String)> = app
        .routes
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    for (method, path, _) in EXPECTED {
        assert!(
            listed.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is expected but the router does not serve it"
        );
    }

    for route in &app.routes {
        let path = concrete(route.path, &values);
        let what = format!("{} {}", route.method, route.path);

        let decision = expected(&route.method, route.path);
        // Anonymous: 401 unauthenticated everywhere but the routes anyone may use.
        let (status, body) = call(&anonymous, &app, &route.method, &path).await;
        match decision {
            None => assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{what}: anonymous got {status}"
            ),
            _ => {
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{what}: anonymous: {body}"
                );
                assert_eq!(code(&body), "unauthenticated", "{what}");
            }
        }

        // Each role: allowed exactly when the role holds the route's action.
        for (role, client, actions) in &callers {
            let allowed = decision.flatten().is_none_or(|a| actions.contains(&a));
            let (status, body) = call(client, &app, &route.method, &path).await;
            // The pipeline's verdict is 503 while it is unhealthy (no broker here): an answer.
            let verdict =
                route.path == "/v1/health/pipeline" && status == StatusCode::SERVICE_UNAVAILABLE;
            assert!(
                status.as_u16() < 500 || verdict,
                "{what} as {role}: {status} {body}"
            );
            if allowed {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{what} as {role}: {status} {body}"
                );
            } else {
                assert_eq!(status, StatusCode::FORBIDDEN, "{what} as {role}: {body}");
                assert_eq!(code(&body), "forbidden", "{what} as {role}");
            }
        }

        // Custom grants: the named resources only.
        let allowed = match (decision.flatten(), route.need) {
            (None, _) => true,
            (Some(Action::ProjectionRead), Need::Named(_, name)) => name == "agent_status",
            (Some(action), _) => [
                Action::EventRead,
                Action::DlqRead,
                Action::ProjectionRead,
                Action::RegistryRead,
            ]
            .contains(&action),
        };
        let (status, body) = call(&custom, &app, &route.method, &path).await;
        if allowed {
            assert!(
                status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                "{what} with custom grants: {status} {body}"
            );
        } else {
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} with custom grants: {body}"
            );
        }
        // ... and a name outside them is refused where the path names one.
        if let Need::Path(action, param) = route.need {
            let mut other = values.clone();
            other.insert(param, "order".into());
            if action == Action::ProjectionRead {
                other.insert(param, "service_invocations".into());
            }
            if action == Action::RegistryRead || action == Action::RegistryWrite {
                other.insert(param, "other.subject".into());
            }
            let (status, body) =
                call(&custom, &app, &route.method, &concrete(route.path, &other)).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{what} outside the custom grants: {body}"
            );
        }
    }
}

#[tokio::test]
async fn a_producer_granted_state_changes_on_invoices_gets_403_on_order_and_nothing_is_written() {
    // Arrange: a producer allowed `state_change` events on `invoice` aggregates only.
    let app = spawn_app().await;
    let key = app
        .principal(
            "billing",
            &[],
            &[("allow", "event.append", "invoice", "state_change")],
        )
        .await;
    let billing = client_with_key(&key);
    let change = json!({"events": [{"type": "state_change",
        "payload": {"entity": "x", "to_state": "paid"}}]});
    let append = |aggregate_type: &str, body: &Value| {
        billing
            .post(app.url(&format!(
                "/v1/aggregates/{aggregate_type}/{}/events",
                Uuid::new_v4()
            )))
            .json(body)
            .send()
    };

    // Act.
    let to_order = append("order", &change).await.unwrap();
    let other_type = append(
        "invoice",
        &json!({"events": [agent_state_changed(Uuid::new_v4(), "running")]}),
    )
    .await
    .unwrap();
    let mixed = append(
        "invoice",
        &json!({"events": [change["events"][0].clone(),
        agent_state_changed(Uuid::new_v4(), "running")]}),
    )
    .await
    .unwrap();

    // Assert: 403 before any check of the events (the mismatched aggregate type would be a 422
    // otherwise), and nothing in events or outbox.
    assert_eq!(to_order.status(), StatusCode::FORBIDDEN);
    assert_eq!(other_type.status(), StatusCode::FORBIDDEN);
    let mixed_status = mixed.status();
    let mixed: Value = mixed.json().await.unwrap();
    assert_eq!(mixed_status, StatusCode::FORBIDDEN);
    assert_eq!(mixed["error"]["details"]["index"], 1, "{mixed}");
    assert_eq!(app.count("events").await, 0);
    assert_eq!(app.count("outbox").await, 0);

    // The granted pair is written.
    let ok = append("invoice", &change).await.unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(app.count("events").await, 1);
}

#[tokio::test]
async fn a_reader_of_one_aggregate_type_sees_only_it_on_every_read_path() {
    // Arrange: events of two aggregate types, and a reader of `agent` only (with a deny inside).
    let app = spawn_app().await;
    let agent = Uuid::new_v4();
    let created = app
        .append(
            "agent",
            agent,
            &json!({"events": [agent_state_changed(agent, "running")]}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let invoice = Uuid::new_v4();
    let hidden = app
        .append(
            "invoice",
            invoice,
            &json!({"events": [{"type": "state_change", "payload": {"entity": "i", "to_state": "paid"}}]}),
        )
        .await;
    assert_eq!(hidden.status, StatusCode::CREATED, "{}", hidden.body);
    let hidden_id = hidden.body["events"][0]["id"].as_str().unwrap().to_owned();
    let key = app
        .principal(
            "agent-reader",
            &[],
            &[
                ("allow", "event.read", "a*", "*"),
                ("deny", "event.read", "audit*", "*"),
                ("allow", "registry.read", "agent.*", "*"),
            ],
        )
        .await;
    let reader = client_with_key(&key);
    let get = |path: String| {
        let reader = reader.clone();
        let url = app.url(&path);
        async move {
            let reply = reader.get(url).send().await.unwrap();
            let status = reply.status();
            (status, reply.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Act and assert, path by path.
    let (status, log) = get("/v1/events".into()).await;
    assert_eq!(status, StatusCode::OK);
    let types: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["aggregate_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["agent"], "the log shows only readable types: {log}");

    let (status, _) = get("/v1/events?aggregate_type=invoice".into()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(format!("/v1/aggregates/invoice/{invoice}/events")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A stream that does not exist reads the same as one that does.
    let (status, _) = get(format!("/v1/aggregates/invoice/{}/events", Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = get(format!("/v1/events/{hidden_id}")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an unreadable event is not found: {body}"
    );
    let (status, body) = get(format!("/v1/events/{hidden_id}/journey")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "an unreadable event has no journey: {body}"
    );
    let (status, _) = get(format!("/v1/aggregates/invoice/{invoice}/state")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = get(format!("/v1/aggregates/agent/{agent}/events")).await;
    assert_eq!(status, StatusCode::OK);

    // The registry: only readable subjects are listed, and a schema id only through one.
    let (status, subjects) = get("/registry/subjects".into()).await;
    assert_eq!(status, StatusCode::OK);
    let subjects: Vec<&str> = subjects
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert!(
        !subjects.is_empty() && subjects.iter().all(|s| s.starts_with("agent.")),
        "{subjects:?}"
    );
    let agent_id = app.schema_id("agent.state.changed", 1).await;
    let other_id = app.schema_id("state_change", 1).await;
    let (status, _) = get(format!("/registry/schemas/ids/{agent_id}")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(format!("/registry/schemas/ids/{other_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get("/registry/subjects/state_change/versions".into()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn every_refused_credential_reads_the_same_and_health_needs_none() {
    let app = spawn_app().await;
    let (key_id, _) = app.admin_key["keel_".len()..].split_once('_').unwrap();
    let wrong_secret = format!("keel_{key_id}_{}", "0".repeat(64));
    let unknown = format!("keel_{}_{}", "f".repeat(16), "0".repeat(64));
    let mut seen = Vec::new();
    for header in [
        format!("Bearer {wrong_secret}"),
        format!("Bearer {unknown}"),
        "Bearer not-a-key".to_owned(),
        "Basic a2VlbDp4".to_owned(),
        "Negotiate abc".to_owned(),
    ] {
        let reply = reqwest::Client::new()
            .get(app.url("/v1/events"))
            .header("authorization", header)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);
        assert!(reply.headers().contains_key("www-authenticate"));
        let body: Value = reply.json().await.unwrap();
        seen.push(body);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let live = reqwest::get(app.url("/v1/health/live")).await.unwrap();
    assert_eq!(live.status(), StatusCode::OK);
}

#[tokio::test]
async fn with_auth_mode_none_every_caller_may_do_everything() {
    let app = spawn_app_with(|c| c.auth.mode = keel::config::AuthMode::None).await;
    let agent = Uuid::new_v4();
    let reply = reqwest::Client::new()
        .post(app.url(&format!("/v1/aggregates/agent/{agent}/events")))
        .json(&json!({"events": [agent_state_changed(agent, "running")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let metrics = reqwest::get(app.url("/metrics")).await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_bootstrap_key_is_used_once_then_ignored_while_an_admin_exists() {
    // Arrange: a keel that made its first admin from one key file.
    let app = spawn_app().await;
    let (other_file, other_key) = crate::helpers::bootstrap_key_file();

    // Act: a second keel on the same database with another bootstrap file.
    let mut config = app.config.clone();
    config.auth.bootstrap_key_file = Some(other_file);
    let again = keel::app::Application::build(&config).await.unwrap();
    let addr = again.local_addr();
    tokio::spawn(again.run_until_stopped(std::future::pending()));

    // Assert: the first key still works there, the second was never stored.
    let events = format!("http://{addr}/v1/events");
    let first = client_with_key(&app.admin_key)
        .get(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let second = client_with_key(&other_key)
        .get(&events)
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::UNAUTHORIZED);
    let admins: i64 =
        sqlx::query_scalar("SELECT count(*) FROM principals WHERE 'admin' = ANY(roles)")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(admins, 1);
}

#[tokio::test]
async fn refused_credentials_and_refused_grants_are_counted_by_reason() {
    let app = spawn_app().await;
    let (key_id, _) = app.admin_key["keel_".len()..].split_once('_').unwrap();
    let wrong = format!("keel_{key_id}_{}", "0".repeat(64));
    let refused = client_with_key(&wrong)
        .get(app.url("/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let reader = app.principal("counted-reader", &[Role::Reader], &[]).await;
    let forbidden = client_with_key(&reader)
        .get(app.url("/v1/outbox/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let metrics = app.get_text("/metrics").await;
    for reason in ["wrong_secret", "forbidden"] {
        assert!(
            metrics.contains(&format!("keel_auth_refused_total{{reason=\"{reason}\"}}")),
            "{reason} not counted:\n{metrics}"
        );
    }
}
