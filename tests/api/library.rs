//! The library API: appending inside the caller's own transaction, through the same validator as
//! the HTTP API.

use keel::append::{self, Refusal};
use keel::model::{AggregateType, EventType, ExpectedVersion, NewEvent};
use keel::store::Error;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{spawn_app, TestApp};

fn state_changed(agent: Uuid, to: &str) -> NewEvent {
    NewEvent::new(
        EventType::parse("agent.state.changed").unwrap(),
        json!({"agent_id": agent, "from_state": null, "to_state": to, "reason": null}),
    )
}

fn agent() -> AggregateType {
    AggregateType::parse("agent").unwrap()
}

#[tokio::test]
async fn a_services_own_writes_and_its_events_commit_or_roll_back_together() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    sqlx::query("CREATE TABLE agents (id uuid PRIMARY KEY, state text NOT NULL)")
        .execute(pool)
        .await
        .unwrap();

    for commit in [false, true] {
        let id = Uuid::new_v4();
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("INSERT INTO agents VALUES ($1, 'running')")
            .bind(id)
            .execute(&mut *tx)
            .await
            .unwrap();
        let result = append::append(
            &mut tx,
            app.appender.validator(),
            &keel::auth::Access::everything(),
            &agent(),
            id,
            ExpectedVersion::NoStream,
            vec![state_changed(id, "running")],
        )
        .await
        .unwrap();
        assert_eq!(result.version, 1);
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        let agents: i64 = sqlx::query_scalar("SELECT count(*) FROM agents WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
        let (events, outbox) = rows_of(&app, id).await;
        let expected = i64::from(commit);
        assert_eq!(
            (agents, events, outbox),
            (expected, expected, expected),
            "commit = {commit}"
        );
    }
}

#[tokio::test]
async fn a_wrong_version_leaves_the_callers_transaction_usable() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    app.appender
        .append(
            &keel::auth::Access::everything(),
            &agent(),
            id,
            ExpectedVersion::Any,
            vec![state_changed(id, "a")],
        )
        .await
        .unwrap();

    let mut tx = app.store.pool().begin().await.unwrap();
    let err = append::append(
        &mut tx,
        app.appender.validator(),
        &keel::auth::Access::everything(),
        &agent(),
        id,
        ExpectedVersion::Exact(5),
        vec![state_changed(id, "b")],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            append::Error::Store(Error::WrongExpectedVersion { current: 1, .. })
        ),
        "{err:?}"
    );
    let retried = append::append(
        &mut tx,
        app.appender.validator(),
        &keel::auth::Access::everything(),
        &agent(),
        id,
        ExpectedVersion::Exact(1),
        vec![state_changed(id, "b")],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(retried.version, 2);
}

/// The guard that keeps the log order equal to version order: a transaction that got its id before
/// the aggregate's last writer may not append after it.
#[tokio::test]
async fn an_append_from_a_transaction_older_than_the_aggregates_last_writer_is_refused() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let pool = app.store.pool();

    let mut old = pool.begin().await.unwrap();
    let _: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *old)
        .await
        .unwrap();

    // A newer transaction writes version 1 and commits.
    app.appender
        .append(
            &keel::auth::Access::everything(),
            &agent(),
            id,
            ExpectedVersion::Any,
            vec![state_changed(id, "newer")],
        )
        .await
        .unwrap();

    // The older one would write version 2 with a smaller transaction id: refused.
    let err = append::append(
        &mut old,
        app.appender.validator(),
        &keel::auth::Access::everything(),
        &agent(),
        id,
        ExpectedVersion::Any,
        vec![state_changed(id, "older")],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, append::Error::Store(Error::TransactionOrder)),
        "{err:?}"
    );
    assert!(err.is_retriable());
    old.rollback().await.unwrap();

    // Appender::append retries in a new transaction, which is newer, and succeeds.
    let result = app
        .appender
        .append(
            &keel::auth::Access::everything(),
            &agent(),
            id,
            ExpectedVersion::Exact(1),
            vec![state_changed(id, "older")],
        )
        .await
        .unwrap();
    assert_eq!(result.version, 2);
}

/// How many rows an aggregate has in `events` and in `outbox`.
async fn rows_of(app: &TestApp, id: Uuid) -> (i64, i64) {
    let pool = app.store.pool();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    let outbox: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE aggregate_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap();
    (events, outbox)
}

/// The promise of `keel::append`: a library append is checked exactly as an HTTP one. Each bad
/// batch is sent both ways; the library's refusal has the HTTP reply's code, message and details,
/// and neither path writes anything (the library's transaction is even committed afterwards).
#[tokio::test]
async fn a_library_append_that_breaks_the_schema_is_refused_as_over_http_and_writes_nothing() {
    let app = spawn_app().await;
    let cases: [(&str, &str, Value); 4] = [
        (
            "agent",
            "schema_validation_failed",
            json!({"type": "agent.state.changed", "payload": {"agent_id": "3f6c1f0e-8a4b-4f7e-9a51-0c2d6c1f9b10", "to_state": 5}}),
        ),
        (
            "agent",
            "unknown_event_type",
            json!({"type": "agent.never.registered", "payload": {}}),
        ),
        (
            "entity",
            "aggregate_type_mismatch",
            json!({"type": "agent.state.changed", "payload": {"agent_id": "3f6c1f0e-8a4b-4f7e-9a51-0c2d6c1f9b10", "to_state": "running"}}),
        ),
        (
            "agent",
            "invalid_payload",
            json!({"type": "agent.state.changed", "payload": [1, 2]}),
        ),
    ];
    for (aggregate_type, code, event) in cases {
        let id = Uuid::new_v4();
        let http = app
            .append(aggregate_type, id, &json!({"events": [event.clone()]}))
            .await;
        assert_eq!(http.status, 422, "{code}: {:?}", http.body);
        assert_eq!(http.error_code(), code);

        let proposed = NewEvent::new(
            EventType::parse(event["type"].as_str().unwrap()).unwrap(),
            event["payload"].clone(),
        );
        let mut tx = app.store.pool().begin().await.unwrap();
        let err = append::append(
            &mut tx,
            app.appender.validator(),
            &keel::auth::Access::everything(),
            &AggregateType::parse(aggregate_type).unwrap(),
            id,
            ExpectedVersion::Any,
            vec![proposed],
        )
        .await
        .unwrap_err();
        tx.commit().await.unwrap();

        let refusal: &Refusal = err.refusal().unwrap_or_else(|| panic!("{code}: {err:?}"));
        assert_eq!(refusal.code(), code);
        assert_eq!(refusal.to_string(), http.body["error"]["message"], "{code}");
        assert_eq!(refusal.details(), http.body["error"]["details"], "{code}");
        assert_eq!(rows_of(&app, id).await, (0, 0), "{code} wrote something");
    }
}

/// What the library stores is what the HTTP API stores: the payload normalised against the
/// schema (defaults filled in) and the schema recorded, so the relay never has to validate it at
/// publish time.
#[tokio::test]
async fn a_library_append_stores_the_normalised_payload_with_its_schema() {
    let app = spawn_app().await;
    let id = Uuid::new_v4();
    let sparse = NewEvent::new(
        EventType::parse("agent.state.changed").unwrap(),
        json!({"agent_id": id, "to_state": "running"}),
    );
    let mut tx = app.store.pool().begin().await.unwrap();
    let result = append::append(
        &mut tx,
        app.appender.validator(),
        &keel::auth::Access::everything(),
        &agent(),
        id,
        ExpectedVersion::NoStream,
        vec![sparse],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let stored = app
        .get(&format!("/v1/events/{}", result.events[0].id))
        .await;
    assert_eq!(stored.status, 200);
    let (schema_id, version) = (&stored.body["schema_id"], &stored.body["schema_version"]);
    assert!(schema_id.is_i64() && version.is_i64(), "{:?}", stored.body);
    assert_eq!(stored.body["payload"]["from_state"], Value::Null);
    assert!(
        stored.body["payload"]
            .as_object()
            .unwrap()
            .contains_key("from_state"),
        "the default was not filled in: {:?}",
        stored.body
    );
}
