//! What operators read about sagas: every saga's counts, a saga's instances (by status,
//! correlation key, or stuck), and one instance in full (state, pending timeouts, associations,
//! held inputs, step history from its stream). Shared by the HTTP routes and the UI.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::stream_type;

#[derive(Debug, Clone, Serialize)]
pub struct SagaSummary {
    pub name: String,
    /// The input runner's state (`running`, `failing`, `stopped`) and its last error.
    pub runner: Option<String>,
    pub error: Option<String>,
    pub lag_records: Option<i64>,
    pub instances: serde_json::Map<String, Value>,
    pub timeouts_pending: i64,
    pub timeouts_overdue: i64,
    pub held_inputs: i64,
}

/// Every saga this database has seen: its runner's state and its instances by status.
pub async fn overview(pool: &PgPool) -> sqlx::Result<Vec<SagaSummary>> {
    let runners: Vec<(String, String, Option<String>, Option<i64>)> = sqlx::query_as(
        "SELECT substr(name, 6), state, error, lag_records FROM projections
          WHERE name LIKE 'saga\\_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT saga, status, count(*) FROM saga_instances GROUP BY saga, status")
            .fetch_all(pool)
            .await?;
    let timers: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT saga, count(*), count(*) FILTER (WHERE due_at < now() - interval '3 seconds')
           FROM saga_timeouts GROUP BY saga",
    )
    .fetch_all(pool)
    .await?;
    let held: Vec<(String, i64)> =
        sqlx::query_as("SELECT saga, count(*) FROM saga_inbox GROUP BY saga")
            .fetch_all(pool)
            .await?;
    let mut names: Vec<String> = runners.iter().map(|r| r.0.clone()).collect();
    names.extend(counts.iter().map(|c| c.0.clone()));
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|name| {
            let runner = runners.iter().find(|r| r.0 == name);
            let mut instances = serde_json::Map::new();
            for status in super::store::STATUSES {
                let n = counts
                    .iter()
                    .find(|c| c.0 == name && c.1 == status)
                    .map_or(0, |c| c.2);
                instances.insert(status.to_owned(), n.into());
            }
            let t = timers.iter().find(|t| t.0 == name);
            SagaSummary {
                runner: runner.map(|r| r.1.clone()),
                error: runner.and_then(|r| r.2.clone()),
                lag_records: runner.and_then(|r| r.3),
                instances,
                timeouts_pending: t.map_or(0, |t| t.1),
                timeouts_overdue: t.map_or(0, |t| t.2),
                held_inputs: held.iter().find(|h| h.0 == name).map_or(0, |h| h.1),
                name,
            }
        })
        .collect())
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct InstanceRow {
    pub instance_id: Uuid,
    pub correlation: String,
    pub status: String,
    pub steps: i32,
    pub version: i32,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The next pending timeout's due time.
    pub next_timeout_at: Option<DateTime<Utc>>,
    pub held_inputs: i64,
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub status: Option<String>,
    pub correlation: Option<String>,
    /// Only instances stuck for at least this many seconds: parked, or active or compensating
    /// with no pending timeout or an overdue one, and no step for that long.
    pub stuck_for_secs: Option<u64>,
    pub limit: i64,
}

pub async fn instances(
    pool: &PgPool,
    saga: &str,
    filter: &Filter,
) -> sqlx::Result<Vec<InstanceRow>> {
    sqlx::query_as(
        "SELECT i.instance_id, i.correlation, i.status, i.steps, i.version, i.error, i.started_at,
                i.updated_at, i.ended_at, t.next AS next_timeout_at,
                (SELECT count(*) FROM saga_inbox b WHERE b.saga = i.saga AND b.instance_id = i.instance_id) AS held_inputs
           FROM saga_instances i
           LEFT JOIN LATERAL (SELECT min(due_at) AS next FROM saga_timeouts t
                               WHERE t.saga = i.saga AND t.instance_id = i.instance_id) t ON true
          WHERE i.saga = $1
            AND ($2::text IS NULL OR i.status = $2)
            AND ($3::text IS NULL OR i.correlation = $3)
            AND ($4::float8 IS NULL OR (
                  i.updated_at < now() - make_interval(secs => $4)
                  AND (i.status = 'parked'
                       OR (i.status IN ('active', 'compensating')
                           AND (t.next IS NULL OR t.next < now() - make_interval(secs => $4))))))
          ORDER BY i.updated_at DESC, i.instance_id
          LIMIT $5",
    )
    .bind(saga)
    .bind(&filter.status)
    .bind(&filter.correlation)
    .bind(filter.stuck_for_secs.map(|s| s as f64))
    .bind(filter.limit)
    .fetch_all(pool)
    .await
}

#[derive(Debug, Clone, Serialize)]
pub struct InstanceDetail {
    #[serde(flatten)]
    pub row: InstanceRow,
    pub saga: String,
    pub state: Option<Value>,
    pub state_version: i32,
    pub compensations: Value,
    pub timeouts: Vec<Value>,
    pub associations: Vec<Value>,
    pub inbox: Vec<Value>,
    /// The `saga.step` records of the instance's stream, oldest first.
    pub history: Vec<Value>,
}

/// One instance, by id or by correlation key.
pub async fn instance(
    pool: &PgPool,
    saga: &str,
    id: Option<Uuid>,
    correlation: Option<&str>,
) -> sqlx::Result<Option<InstanceDetail>> {
    let id = match (id, correlation) {
        (Some(id), _) => id,
        (None, Some(key)) => super::instance_id(saga, key),
        (None, None) => return Ok(None),
    };
    one(pool, saga, id).await
}

async fn one(pool: &PgPool, saga: &str, id: Uuid) -> sqlx::Result<Option<InstanceDetail>> {
    let row: Option<InstanceRow> = sqlx::query_as(
        "SELECT i.instance_id, i.correlation, i.status, i.steps, i.version, i.error, i.started_at,
                i.updated_at, i.ended_at,
                (SELECT min(due_at) FROM saga_timeouts t WHERE t.saga = i.saga AND t.instance_id = i.instance_id) AS next_timeout_at,
                (SELECT count(*) FROM saga_inbox b WHERE b.saga = i.saga AND b.instance_id = i.instance_id) AS held_inputs
           FROM saga_instances i WHERE i.saga = $1 AND i.instance_id = $2",
    )
    .bind(saga)
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let (state, state_version, compensations): (Option<Value>, i32, Value) = sqlx::query_as(
        "SELECT state, state_version, compensations FROM saga_instances WHERE saga = $1 AND instance_id = $2",
    )
    .bind(saga)
    .bind(id)
    .fetch_one(pool)
    .await?;
    let timeouts: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('name', name, 'due_at', due_at, 'payload', payload,
                'due_in_ms', (extract(epoch FROM due_at - now()) * 1000)::bigint)
           FROM saga_timeouts WHERE saga = $1 AND instance_id = $2 ORDER BY due_at",
    )
    .bind(saga)
    .bind(id)
    .fetch_all(pool)
    .await?;
    let associations: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('key', key, 'value', value)
           FROM saga_associations WHERE saga = $1 AND instance_id = $2 ORDER BY key, value",
    )
    .bind(saga)
    .bind(id)
    .fetch_all(pool)
    .await?;
    let inbox: Vec<Value> = sqlx::query_scalar(
        "SELECT json_build_object('id', id, 'kind', kind, 'state', state, 'reason', reason,
                'input', CASE kind WHEN 'event' THEN json_build_object('id', input->>'id', 'type', input->>'type',
                         'aggregate_id', input->>'aggregate_id', 'version', input->'version')
                         ELSE json_build_object('name', input->>'name', 'due_at', input->>'due_at') END,
                'created_at', created_at)
           FROM saga_inbox WHERE saga = $1 AND instance_id = $2 ORDER BY id",
    )
    .bind(saga)
    .bind(id)
    .fetch_all(pool)
    .await?;
    let history: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('version', version, 'event_id', id, 'created_at', created_at)
                || (payload - 'state' - 'saga' - 'instance_id')
           FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND event_type = 'saga.step'
          ORDER BY version",
    )
    .bind(stream_type(saga))
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some(InstanceDetail {
        row,
        saga: saga.to_owned(),
        state,
        state_version,
        compensations,
        timeouts,
        associations,
        inbox,
        history,
    }))
}
