//! The saga tables' SQL: instances, timeouts, associations and the per-instance inbox.

use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{Emit, Input};

/// An instance as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Instance {
    pub instance_id: Uuid,
    pub correlation: String,
    pub status: String,
    pub resume_status: Option<String>,
    pub state: Option<Value>,
    pub state_version: i32,
    pub compensations: Value,
    pub version: i32,
    pub steps: i32,
}

impl Instance {
    pub fn ended(&self) -> bool {
        is_ended(&self.status)
    }

    pub fn compensations(&self) -> Vec<Emit> {
        serde_json::from_value(self.compensations.clone()).unwrap_or_default()
    }
}

/// Whether `status` is terminal.
pub fn is_ended(status: &str) -> bool {
    matches!(status, "completed" | "compensated" | "failed")
}

/// The statuses an instance can have, in display order.
pub const STATUSES: [&str; 6] = [
    "active",
    "compensating",
    "parked",
    "completed",
    "compensated",
    "failed",
];

pub async fn load(
    conn: &mut PgConnection,
    saga: &str,
    instance: Uuid,
) -> sqlx::Result<Option<Instance>> {
    sqlx::query_as(
        "SELECT instance_id, correlation, status, resume_status, state, state_version,
                compensations, version, steps
           FROM saga_instances WHERE saga = $1 AND instance_id = $2",
    )
    .bind(saga)
    .bind(instance)
    .fetch_optional(conn)
    .await
}

/// What a step leaves behind on its instance row.
pub struct Written<'a> {
    pub instance: Uuid,
    pub correlation: &'a str,
    pub status: &'a str,
    pub state: &'a Value,
    pub state_version: i32,
    pub compensations: &'a [Emit],
    pub version: i32,
    pub error: Option<&'a str>,
}

pub async fn write(conn: &mut PgConnection, saga: &str, w: Written<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO saga_instances (saga, instance_id, correlation, status, state, state_version,
                                     compensations, version, steps, error, ended_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $9,
                 CASE WHEN $4 IN ('completed', 'compensated', 'failed') THEN now() END)
         ON CONFLICT (saga, instance_id) DO UPDATE SET
             status = EXCLUDED.status, resume_status = NULL, state = EXCLUDED.state,
             state_version = EXCLUDED.state_version, compensations = EXCLUDED.compensations,
             version = EXCLUDED.version, steps = saga_instances.steps + 1, error = EXCLUDED.error,
             updated_at = now(), ended_at = EXCLUDED.ended_at",
    )
    .bind(saga)
    .bind(w.instance)
    .bind(w.correlation)
    .bind(w.status)
    .bind(w.state)
    .bind(w.state_version)
    .bind(serde_json::to_value(w.compensations).unwrap_or_default())
    .bind(w.version)
    .bind(w.error)
    .execute(conn)
    .await?;
    Ok(())
}

/// Parks an instance (creating its row when it parked on its first input) and stores the input
/// it failed on.
pub async fn park(
    conn: &mut PgConnection,
    saga: &str,
    instance: Uuid,
    correlation: &str,
    input: &Input,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO saga_instances (saga, instance_id, correlation, status, resume_status, error)
         VALUES ($1, $2, $3, 'parked', 'new', $4)
         ON CONFLICT (saga, instance_id) DO UPDATE SET
             resume_status = CASE WHEN saga_instances.status = 'parked'
                                  THEN saga_instances.resume_status ELSE saga_instances.status END,
             status = 'parked', error = EXCLUDED.error, updated_at = now()",
    )
    .bind(saga)
    .bind(instance)
    .bind(correlation)
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    inbox(conn, saga, instance, input, "parked", Some(reason)).await
}

/// Stores an input in the instance's inbox.
pub async fn inbox(
    conn: &mut PgConnection,
    saga: &str,
    instance: Uuid,
    input: &Input,
    state: &str,
    reason: Option<&str>,
) -> sqlx::Result<()> {
    let kind = match input {
        Input::Event(_) => "event",
        Input::Timeout { .. } => "timeout",
    };
    sqlx::query(
        "INSERT INTO saga_inbox (saga, instance_id, kind, state, reason, input)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(saga)
    .bind(instance)
    .bind(kind)
    .bind(state)
    .bind(reason)
    .bind(serde_json::to_value(input).unwrap_or_default())
    .execute(conn)
    .await?;
    Ok(())
}

/// Applies a step's timer changes. `cancel_all` first, then the cancellations, then the
/// schedules (which replace a pending timeout of the same name). Returns how many are pending.
pub async fn timers(
    conn: &mut PgConnection,
    saga: &str,
    instance: Uuid,
    cancel_all: bool,
    cancel: &[String],
    schedule: &[super::Timer],
) -> sqlx::Result<i64> {
    if cancel_all {
        sqlx::query("DELETE FROM saga_timeouts WHERE saga = $1 AND instance_id = $2")
            .bind(saga)
            .bind(instance)
            .execute(&mut *conn)
            .await?;
    } else if !cancel.is_empty() {
        sqlx::query(
            "DELETE FROM saga_timeouts WHERE saga = $1 AND instance_id = $2 AND name = ANY($3)",
        )
        .bind(saga)
        .bind(instance)
        .bind(cancel)
        .execute(&mut *conn)
        .await?;
    }
    for t in schedule {
        sqlx::query(
            "INSERT INTO saga_timeouts (saga, instance_id, name, due_at, payload)
             VALUES ($1, $2, $3, now() + make_interval(secs => $4), $5)
             ON CONFLICT (saga, instance_id, name) DO UPDATE
                 SET due_at = EXCLUDED.due_at, payload = EXCLUDED.payload, set_at = now()",
        )
        .bind(saga)
        .bind(instance)
        .bind(&t.name)
        .bind(t.after.as_secs_f64())
        .bind(&t.payload)
        .execute(&mut *conn)
        .await?;
    }
    sqlx::query_scalar("SELECT count(*) FROM saga_timeouts WHERE saga = $1 AND instance_id = $2")
        .bind(saga)
        .bind(instance)
        .fetch_one(conn)
        .await
}

pub async fn associate(
    conn: &mut PgConnection,
    saga: &str,
    instance: Uuid,
    pairs: &[(String, String)],
) -> sqlx::Result<()> {
    for (key, value) in pairs {
        sqlx::query(
            "INSERT INTO saga_associations (saga, key, value, instance_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(saga)
        .bind(key)
        .bind(value)
        .bind(instance)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// An end: no timeout, association or held input of the instance survives it.
pub async fn clear(conn: &mut PgConnection, saga: &str, instance: Uuid) -> sqlx::Result<()> {
    for table in ["saga_timeouts", "saga_associations"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE saga = $1 AND instance_id = $2"
        ))
        .bind(saga)
        .bind(instance)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The instances associated with `key` = `value`, with their correlation keys.
pub async fn associated(
    conn: &mut PgConnection,
    saga: &str,
    key: &str,
    value: &str,
) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT a.instance_id, i.correlation FROM saga_associations a
           JOIN saga_instances i ON i.saga = a.saga AND i.instance_id = a.instance_id
          WHERE a.saga = $1 AND a.key = $2 AND a.value = $3
          ORDER BY a.instance_id",
    )
    .bind(saga)
    .bind(key)
    .bind(value)
    .fetch_all(conn)
    .await
}

/// The instance that emitted event `id`, with its correlation key.
pub async fn emitter(
    conn: &mut PgConnection,
    saga: &str,
    id: Uuid,
) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as(
        "SELECT i.instance_id, i.correlation FROM events e
           JOIN saga_instances i ON i.saga = $1 AND i.instance_id = e.aggregate_id
          WHERE e.id = $2 AND e.aggregate_type = $3",
    )
    .bind(saga)
    .bind(id)
    .bind(super::stream_type(saga))
    .fetch_optional(conn)
    .await
}

/// Deletes instances that ended more than `older_than_secs` ago. Their streams stay: the steps
/// and outputs are history, and `keel_applied` still stops a duplicate input from starting them.
pub async fn prune(pool: &sqlx::PgPool, saga: &str, older_than_secs: u64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM saga_instances
          WHERE saga = $1 AND ended_at < now() - make_interval(secs => $2)",
    )
    .bind(saga)
    .bind(older_than_secs as f64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}
