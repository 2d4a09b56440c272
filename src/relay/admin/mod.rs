//! What operators see and do with the outbox (`keel outbox status|parked|retry|skip`, the backlog
//! metrics): each sink's backlog and the parked and held rows; releasing or skipping them, by
//! aggregate sequence, is [`sequence`]. The data path that ships rows is [`super::outbox`].

pub mod sequence;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// One sink's backlog, as `keel outbox status` and the metrics show it.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct SinkStatus {
    pub sink: String,
    /// Outbox rows the sink has not passed yet.
    pub backlog: i64,
    /// Age of the oldest of them, in seconds (0 with no backlog).
    pub oldest_age_seconds: f64,
    /// Rows parked for an operator, and rows held behind them.
    pub parked: i64,
    pub held: i64,
}

/// The backlog of every sink over `partitions`.
pub async fn status(pool: &PgPool, partitions: &[i16]) -> Result<Vec<SinkStatus>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.sink,
                coalesce(sum(b.n), 0)::bigint AS backlog,
                coalesce(extract(epoch FROM now() - min(b.oldest)), 0)::float8 AS oldest_age_seconds,
                (SELECT count(*) FROM relay_parked k
                  WHERE k.sink = c.sink AND k.partition = ANY($1) AND k.state <> 'held') AS parked,
                (SELECT count(*) FROM relay_parked k
                  WHERE k.sink = c.sink AND k.partition = ANY($1) AND k.state = 'held') AS held
           FROM relay_progress c
          CROSS JOIN LATERAL (
                SELECT count(*) AS n, min(o.created_at) AS oldest FROM outbox o
                 WHERE o.partition = c.partition AND (o.tx_id, o.position) > (c.tx_id, c.position)) b
          WHERE c.partition = ANY($1)
          GROUP BY c.sink
          ORDER BY c.sink",
    )
    .bind(partitions)
    .fetch_all(pool)
    .await
}

/// A parked or held row, for `keel outbox parked`.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ParkedEntry {
    pub sink: String,
    pub event_id: Uuid,
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub event_type: String,
    pub state: String,
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub parked_at: DateTime<Utc>,
}

/// Parked and held rows, oldest first.
pub async fn parked(pool: &PgPool, limit: i64) -> Result<Vec<ParkedEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sink, event_id, position, aggregate_type, aggregate_id, event_type, state,
                error_class, error, attempts, parked_at
           FROM relay_parked ORDER BY tx_id, position, sink LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
