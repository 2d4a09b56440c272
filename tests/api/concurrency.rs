//! Optimistic concurrency under real contention: versions stay contiguous and unique.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::json;
use tokio::sync::Barrier;
use uuid::Uuid;

use crate::helpers::{agent_state_changed, spawn_app};

const APPENDERS: usize = 50;

/// Every version of the aggregate, in order, from the database.
async fn stored_versions(app: &crate::helpers::TestApp, agent: Uuid) -> Vec<(i32, Uuid)> {
    sqlx::query_as("SELECT version, id FROM events WHERE aggregate_id = $1 ORDER BY version")
        .bind(agent)
        .fetch_all(app.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_appenders_racing_for_each_version_exactly_one_wins_and_the_rest_get_409() {
    let app = Arc::new(spawn_app().await);
    let agent = Uuid::new_v4();
    const ROUNDS: i32 = 6;

    let mut winners = Vec::new();
    for round in 0..ROUNDS {
        let barrier = Arc::new(Barrier::new(APPENDERS));
        let tasks: Vec<_> = (0..APPENDERS)
            .map(|_| {
                let (app, barrier) = (app.clone(), barrier.clone());
                tokio::spawn(async move {
                    let mut event = agent_state_changed(agent, "racing");
                    let id = Uuid::new_v4();
                    event["id"] = json!(id);
                    let body = json!({"expected_version": round, "events": [event]});
                    barrier.wait().await;
                    (id, app.append("agent", agent, &body).await)
                })
            })
            .collect();

        let mut won = Vec::new();
        for task in tasks {
            let (id, reply) = task.await.unwrap();
            match reply.status {
                StatusCode::CREATED => won.push(id),
                StatusCode::CONFLICT => {
                    assert_eq!(reply.error_code(), "wrong_expected_version");
                    assert_eq!(reply.body["error"]["details"]["current_version"], round + 1);
                }
                other => panic!("round {round}: unexpected {other}: {}", reply.body),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: exactly one appender wins");
        winners.push((round + 1, won[0]));
    }
    assert_eq!(stored_versions(&app, agent).await, winners);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_appenders_retrying_on_conflict_leave_contiguous_versions_and_lose_nothing() {
    let app = Arc::new(spawn_app().await);
    let agent = Uuid::new_v4();
    const PER_APPENDER: usize = 4;

    let tasks: Vec<_> = (0..APPENDERS)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut expected = json!("any");
                while mine.len() < PER_APPENDER {
                    let id = Uuid::new_v4();
                    let mut event = agent_state_changed(agent, "racing");
                    event["id"] = json!(id);
                    let reply = app
                        .append(
                            "agent",
                            agent,
                            &json!({"expected_version": expected, "events": [event]}),
                        )
                        .await;
                    match reply.status {
                        StatusCode::CREATED => {
                            mine.push(id);
                            expected = reply.body["version"].clone();
                        }
                        StatusCode::CONFLICT => {
                            expected = reply.body["error"]["details"]["current_version"].clone();
                        }
                        other => panic!("unexpected {other}: {}", reply.body),
                    }
                }
                mine
            })
        })
        .collect();

    let mut appended = Vec::new();
    for task in tasks {
        appended.extend(task.await.unwrap());
    }
    let stored = stored_versions(&app, agent).await;
    let versions: Vec<i32> = stored.iter().map(|(v, _)| *v).collect();
    let total = (APPENDERS * PER_APPENDER) as i32;
    assert_eq!(
        versions,
        (1..=total).collect::<Vec<_>>(),
        "versions are 1..N without gaps"
    );
    let mut stored_ids: Vec<Uuid> = stored.into_iter().map(|(_, id)| id).collect();
    stored_ids.sort();
    appended.sort();
    assert_eq!(
        stored_ids, appended,
        "every acknowledged append is stored, nothing else"
    );
    assert_eq!(app.count("outbox").await, total as i64);
}

/// Group commit puts concurrent appends in one transaction. An append in that batch that aborts
/// the transaction (here: re-sent event ids with `expected_version: any`) must not cost the others
/// anything: they are re-run alone, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_append_in_a_shared_commit_costs_the_other_appends_nothing() {
    let app = Arc::new(spawn_app().await);
    let agents: Vec<Uuid> = (0..20).map(|_| Uuid::new_v4()).collect();

    // Already stored: these will be re-sent, and each re-send aborts a shared transaction.
    let mut stored = Vec::new();
    for agent in &agents[..5] {
        let mut event = agent_state_changed(*agent, "first");
        event["id"] = json!(Uuid::new_v4());
        let reply = app
            .append("agent", *agent, &json!({"events": [event.clone()]}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        stored.push((*agent, event));
    }

    let barrier = Arc::new(Barrier::new(200));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (app, barrier) = (app.clone(), barrier.clone());
            let resend = (i % 10 == 0).then(|| stored[(i / 10) % stored.len()].clone());
            let agent = agents[i % agents.len()];
            tokio::spawn(async move {
                barrier.wait().await;
                match resend {
                    Some((agent, event)) => {
                        let reply = app
                            .append("agent", agent, &json!({"events": [event]}))
                            .await;
                        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
                        assert_eq!(reply.body["idempotent_replay"], true);
                        None
                    }
                    None => {
                        let id = Uuid::new_v4();
                        let mut event = agent_state_changed(agent, "next");
                        event["id"] = json!(id);
                        let reply = app
                            .append("agent", agent, &json!({"events": [event]}))
                            .await;
                        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
                        Some(id)
                    }
                }
            })
        })
        .collect();
    let mut created = Vec::new();
    for task in tasks {
        created.extend(task.await.unwrap());
    }
    assert_eq!(created.len(), 180);

    let total: i64 = app.count("events").await;
    assert_eq!(total, 5 + 180, "each append stored exactly once");
    for agent in &agents {
        let versions: Vec<i32> = stored_versions(&app, *agent)
            .await
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        assert_eq!(
            versions,
            (1..=versions.len() as i32).collect::<Vec<_>>(),
            "contiguous"
        );
    }
}
