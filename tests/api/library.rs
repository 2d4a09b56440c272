//! The library API: appending inside the caller's own transaction.

use keel::model::{AggregateType, EventType, ExpectedVersion, NewEvent};
use keel::store::{self, Error};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::spawn_app;

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
        let result = store::append(
            &mut tx,
            &agent(),
            id,
            ExpectedVersion::NoStream,
            &[state_changed(id, "running")],
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
    app.store
        .append(
            &agent(),
            id,
            ExpectedVersion::Any,
            vec![state_changed(id, "a")],
        )
        .await
        .unwrap();

    let mut tx = app.store.pool().begin().await.unwrap();
    let err = store::append(
        &mut tx,
        &agent(),
        id,
        ExpectedVersion::Exact(5),
        &[state_changed(id, "b")],
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, Error::WrongExpectedVersion { current: 1, .. }),
        "{err:?}"
    );
    let retried = store::append(
        &mut tx,
        &agent(),
        id,
        ExpectedVersion::Exact(1),
        &[state_changed(id, "b")],
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
    app.store
        .append(
            &agent(),
            id,
            ExpectedVersion::Any,
            vec![state_changed(id, "newer")],
        )
        .await
        .unwrap();

    // The older one would write version 2 with a smaller transaction id: refused.
    let err = store::append(
        &mut old,
        &agent(),
        id,
        ExpectedVersion::Any,
        &[state_changed(id, "older")],
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TransactionOrder), "{err:?}");
    assert!(err.is_retriable());
    old.rollback().await.unwrap();

    // Store::append retries in a new transaction, which is newer, and succeeds.
    let result = app
        .store
        .append(
            &agent(),
            id,
            ExpectedVersion::Exact(1),
            vec![state_changed(id, "older")],
        )
        .await
        .unwrap();
    assert_eq!(result.version, 2);
}
