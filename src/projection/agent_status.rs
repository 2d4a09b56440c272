//! `agent_status`: each agent's current lifecycle state and when it last changed, from
//! `agent.state.changed`. One row per agent aggregate.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ApplyContext, Projection};
use crate::model::RecordedEvent;

pub struct AgentStatus;

/// One agent, as `/v1/projections/agent_status/agents` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AgentRow {
    pub agent_id: Uuid,
    pub state: String,
    pub previous_state: Option<String>,
    pub reason: Option<String>,
    pub changed_at: DateTime<Utc>,
    /// The aggregate version of the last change.
    pub version: i32,
    /// State changes applied so far: a double application would show here.
    pub transitions: i64,
}

#[async_trait]
impl Projection for AgentStatus {
    fn name(&self) -> &'static str {
        "agent_status"
    }

    fn event_types(&self) -> &'static [&'static str] {
        &["agent.state.changed"]
    }

    fn ddl(&self) -> &'static str {
        "CREATE TABLE IF NOT EXISTS agent_status (
             agent_id       uuid        PRIMARY KEY,
             state          text        NOT NULL,
             previous_state text,
             reason         text,
             changed_at     timestamptz NOT NULL,
             version        integer     NOT NULL,
             transitions    bigint      NOT NULL
         );
         CREATE INDEX IF NOT EXISTS agent_status_by_state ON agent_status (state, agent_id);"
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        events: &[RecordedEvent],
        _ctx: ApplyContext,
    ) -> anyhow::Result<()> {
        // The last change per agent wins; every change counts.
        let mut last: HashMap<Uuid, (&RecordedEvent, i64)> = HashMap::new();
        for e in events {
            let entry = last.entry(e.aggregate_id).or_insert((e, 0));
            entry.0 = e;
            entry.1 += 1;
        }
        let text = |e: &RecordedEvent, field: &str| {
            e.payload
                .get(field)
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        let mut cols: (
            Vec<Uuid>,
            Vec<String>,
            Vec<Option<String>>,
            Vec<Option<String>>,
        ) = Default::default();
        let (mut at, mut version, mut count) = (Vec::new(), Vec::new(), Vec::new());
        for (agent, (e, n)) in last {
            let Some(state) = text(e, "to_state") else {
                anyhow::bail!("event {} has no to_state", e.id);
            };
            cols.0.push(agent);
            cols.1.push(state);
            cols.2.push(text(e, "from_state"));
            cols.3.push(text(e, "reason"));
            at.push(e.created_at);
            version.push(e.version);
            count.push(n);
        }
        sqlx::query(
            "INSERT INTO agent_status AS s
                 (agent_id, state, previous_state, reason, changed_at, version, transitions)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[],
                                  $5::timestamptz[], $6::int[], $7::bigint[])
             ON CONFLICT (agent_id) DO UPDATE SET
                 state = EXCLUDED.state, previous_state = EXCLUDED.previous_state,
                 reason = EXCLUDED.reason, changed_at = EXCLUDED.changed_at,
                 version = EXCLUDED.version, transitions = s.transitions + EXCLUDED.transitions",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&at)
        .bind(&version)
        .bind(&count)
        .execute(tx)
        .await?;
        Ok(())
    }

    async fn forget(&self, tx: &mut PgConnection, aggregate_id: Uuid) -> anyhow::Result<bool> {
        sqlx::query("DELETE FROM agent_status WHERE agent_id = $1")
            .bind(aggregate_id)
            .execute(tx)
            .await?;
        Ok(true)
    }
}

/// Agents, optionally in one state, ordered by id, after `after`.
pub async fn list(
    conn: &mut PgConnection,
    state: Option<&str>,
    after: Option<Uuid>,
    limit: i64,
) -> sqlx::Result<Vec<AgentRow>> {
    sqlx::query_as(
        "SELECT agent_id, state, previous_state, reason, changed_at, version, transitions
           FROM keel_proj_agent_status.agent_status
          WHERE ($1::text IS NULL OR state = $1) AND ($2::uuid IS NULL OR agent_id > $2)
          ORDER BY agent_id LIMIT $3",
    )
    .bind(state)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await
}

pub async fn get(conn: &mut PgConnection, agent: Uuid) -> sqlx::Result<Option<AgentRow>> {
    sqlx::query_as(
        "SELECT agent_id, state, previous_state, reason, changed_at, version, transitions
           FROM keel_proj_agent_status.agent_status WHERE agent_id = $1",
    )
    .bind(agent)
    .fetch_optional(conn)
    .await
}
