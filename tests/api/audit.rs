//! The audit log: one row per operator action in the same transaction as the change, one
//! `denied` row per refused attempt, rows nobody but a superuser can change, and a hash chain
//! that finds an edited row.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{client_with_key, spawn_app, TestApp};

async fn rows(app: &TestApp) -> Vec<Value> {
    let reply: Value = app
        .client()
        .get(app.url("/v1/audit?limit=500"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut rows = reply["rows"].as_array().unwrap().clone();
    rows.reverse();
    rows
}

async fn send(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> (StatusCode, Value) {
    let reply = app
        .client()
        .request(method, app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Inserts a parked dead-letter row for `group` and returns its id.
async fn parked_row(app: &TestApp, group: &str, offset: i64, key: &str) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO consumer_dlq (group_id, topic, partition, kafka_offset, record_key, state,
                                   reason_class, reason)
         VALUES ($1, 'keel.agent', 0, $2, $3, 'parked', 'permanent', 'test') RETURNING id",
    )
    .bind(group)
    .bind(offset)
    .bind(key)
    .fetch_one(app.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn each_operator_action_yields_exactly_one_ok_row_and_a_refusal_one_denied_row() {
    // Arrange: the catalog's first registration and the bootstrap admin's creation are the
    // first rows.
    use reqwest::Method as M;
    let app = spawn_app().await;
    let before = rows(&app).await;
    assert_eq!(before.len(), 2, "{before:?}");
    assert_eq!(before[0]["action"], "catalog.sync");
    assert_eq!(before[0]["principal"], "keel");
    assert!(before[0]["params"]["registered"].as_array().unwrap().len() >= 5);
    assert_eq!(before[1]["action"], "principal.create");
    assert_eq!(before[1]["auth_method"], "bootstrap");
    let first = parked_row(&app, "billing", 1, "k1").await;
    let second = parked_row(&app, "billing", 2, "k2").await;

    // Act: each action once.
    let steps: Vec<(M, String, Value, &str)> = vec![
        (
            M::POST,
            "/v1/principals".into(),
            json!({"name": "ops", "roles": ["operator"]}),
            "principal.create",
        ),
        (
            M::POST,
            "/v1/principals/ops/grants".into(),
            json!({"action": "dlq.read", "resource": "billing"}),
            "grant.add",
        ),
        (
            M::POST,
            "/v1/principals/ops/grants/remove".into(),
            json!({"action": "dlq.read", "resource": "billing"}),
            "grant.remove",
        ),
        (
            M::POST,
            "/v1/outbox/retry".into(),
            json!({"all": true}),
            "outbox.retry",
        ),
        (
            M::POST,
            "/v1/dlq/billing/retry".into(),
            json!({"id": first}),
            "dlq.retry",
        ),
        (
            M::POST,
            "/v1/dlq/billing/skip".into(),
            json!({"id": second, "reason": "test"}),
            "dlq.skip",
        ),
    ];
    for (method, path, body, action) in &steps {
        let (status, reply) = send(&app, method.clone(), path, body.clone()).await;
        assert!(status.is_success(), "{action}: {status} {reply}");
    }
    let (status, created) = send(&app, M::POST, "/v1/principals/ops/keys", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["key_id"].as_str().unwrap().to_owned();
    // A rebuild is a job: its start and its end.
    let rebuild = app
        .client()
        .post(app.url("/v1/projections/agent_status/rebuild"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebuild.status(), StatusCode::OK);
    let lines = rebuild.text().await.unwrap();
    let last: Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["state"], "done", "{lines}");

    // A refusal: the operator may not manage principals.
    let ops = client_with_key(&key);
    let refused = ops
        .post(app.url("/v1/principals"))
        .json(&json!({"name": "sneaky", "roles": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let (status, _) = send(&app, M::DELETE, &format!("/v1/keys/{key_id}"), json!({})).await;
    assert_eq!(status, StatusCode::OK);

    // Assert: exactly one row per action, in order, by whom, with the request's id.
    let after = rows(&app).await;
    let seen: Vec<(String, String, String)> = after[2..]
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["outcome"].as_str().unwrap().to_owned(),
                r["principal"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = steps
        .iter()
        .map(|(_, _, _, a)| (a.to_string(), "ok".into(), "admin".into()))
        .chain([
            ("key.create".into(), "ok".into(), "admin".into()),
            (
                "projection.rebuild".into(),
                "started".into(),
                "admin".into(),
            ),
            ("projection.rebuild".into(), "ok".into(), "admin".into()),
            ("principal.manage".into(), "denied".into(), "ops".into()),
            ("key.revoke".into(), "ok".into(), "admin".into()),
        ])
        .collect();
    assert_eq!(seen, expected);
    assert!(after[2..].iter().all(|r| r["request_id"].is_string()));
    let key_row = after.iter().find(|r| r["action"] == "key.create").unwrap();
    assert_eq!(key_row["params"]["key_id"], key_id.as_str());
    let secret = key.rsplit_once('_').unwrap().1;
    assert!(
        !after.iter().any(|r| r.to_string().contains(secret)),
        "a key's secret in the audit log"
    );
    let dlq_row = after.iter().find(|r| r["action"] == "dlq.retry").unwrap();
    assert_eq!(dlq_row["target"], json!({"group": "billing", "id": first}));
}

#[tokio::test]
async fn a_failed_change_is_rolled_back_and_recorded_as_failed() {
    let app = spawn_app().await;
    let (status, body) = send(
        &app,
        reqwest::Method::POST,
        "/v1/dlq/billing/retry",
        json!({"id": 999}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let after = rows(&app).await;
    let last = after.last().unwrap();
    assert_eq!(
        (last["action"].as_str(), last["outcome"].as_str()),
        (Some("dlq.retry"), Some("failed"))
    );
    assert_eq!(last["reason"], "not_found");
}

#[tokio::test]
async fn keels_database_role_cannot_update_or_delete_audit_rows() {
    // Arrange: a non-superuser role with every table privilege (a superuser bypasses triggers).
    let app = spawn_app().await;
    let role = format!("keel_audit_{}", uuid::Uuid::new_v4().simple());
    let pool = app.store.pool();
    sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(&format!("GRANT ALL ON audit_log TO {role}"))
        .execute(pool)
        .await
        .unwrap();
    let url = app
        .config
        .database_url
        .replacen("postgres@", &format!("{role}@"), 1);
    let as_role = sqlx::PgPool::connect(&url).await.unwrap();

    // Act and assert.
    for statement in [
        "UPDATE audit_log SET principal = 'someone-else'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(statement).execute(&as_role).await.unwrap_err();
        assert!(
            err.to_string().contains("append-only"),
            "{statement}: {err}"
        );
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&as_role)
        .await
        .unwrap();
    assert_eq!(count, 2);
    as_role.close().await;
    sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(&format!("DROP ROLE {role}"))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn the_hash_chain_finds_an_edited_or_removed_row() {
    // Arrange: a few rows.
    let app = spawn_app().await;
    for name in ["a1", "a2", "a3"] {
        let (status, _) = send(
            &app,
            reqwest::Method::POST,
            "/v1/principals",
            json!({"name": name}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let verify = |app: &TestApp| {
        let (client, url) = (app.client().clone(), app.url("/v1/audit/verify"));
        async move {
            client
                .get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(verify(&app).await, json!({"rows": 5, "broken_at": null}));

    // Act: edit row 3 as the superuser, around the trigger.
    let pool = app.store.pool();
    let mut tx = pool.begin().await.unwrap();
    for statement in [
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete",
        "UPDATE audit_log SET params = '{\"roles\": [\"admin\"]}' WHERE id = 3",
        "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete",
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();

    // Assert.
    assert_eq!(verify(&app).await, json!({"rows": 2, "broken_at": 3}));

    // A removed row is found too, at the row after the gap.
    let mut tx = pool.begin().await.unwrap();
    for statement in [
        "ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete",
        "DELETE FROM audit_log WHERE id = 3",
        "ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete",
    ] {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    assert_eq!(verify(&app).await, json!({"rows": 2, "broken_at": 4}));
}

#[tokio::test]
async fn a_second_rebuild_of_a_projection_while_one_runs_anywhere_is_refused_with_409() {
    // Arrange: another process (this test's own connection) holds the rebuild's lock.
    let app = spawn_app().await;
    let mut other = app.store.pool().acquire().await.unwrap().detach();
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('keel.rebuild.' || $1))")
            .bind("agent_status")
            .fetch_one(&mut other)
            .await
            .unwrap();
    assert!(locked);
    let rebuild = || {
        app.client()
            .post(app.url("/v1/projections/agent_status/rebuild"))
            .send()
    };

    // Act and assert: refused while it is held, and runs once it is released.
    let refused = rebuild().await.unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "job_running");
    drop(other);
    let ran = crate::helpers::eventually(
        std::time::Duration::from_secs(10),
        "the lock to go",
        || async {
            let reply = rebuild().await.unwrap();
            (reply.status() == StatusCode::OK).then_some(reply)
        },
    )
    .await;
    let lines = ran.text().await.unwrap();
    assert!(
        lines.lines().last().unwrap().contains("\"done\""),
        "{lines}"
    );
    // And the lock is free again after the job: a third rebuild runs too.
    assert_eq!(rebuild().await.unwrap().status(), StatusCode::OK);
}
