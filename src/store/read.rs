//! Point and per-aggregate reads. These see every committed event at once; the global order with
//! its safety horizon lives in [`super::log`].

use sqlx::PgExecutor;
use uuid::Uuid;

use super::Error;
use crate::model::{AggregateType, RecordedEvent};

/// The columns of [`RecordedEvent`], for every query that returns one.
pub(crate) const EVENT_COLUMNS: &str =
    "id, position, aggregate_type, aggregate_id, version, event_type, \
     schema_id, schema_version, payload, metadata, created_at";

pub async fn get_event<'e>(
    executor: impl PgExecutor<'e>,
    id: Uuid,
) -> Result<Option<RecordedEvent>, Error> {
    let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id = $1");
    Ok(sqlx::query_as(&sql)
        .bind(id)
        .fetch_optional(executor)
        .await?)
}

/// The aggregate's events from `from_version` on, in version order, at most `limit`.
pub async fn read_stream<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    from_version: i32,
    limit: i64,
) -> Result<Vec<RecordedEvent>, Error> {
    let sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND version >= $3
          ORDER BY version LIMIT $4"
    );
    Ok(sqlx::query_as(&sql)
        .bind(aggregate_type.as_str())
        .bind(aggregate_id)
        .bind(from_version)
        .bind(limit)
        .fetch_all(executor)
        .await?)
}

/// The aggregate's current version, or `None` if it has no events.
pub async fn stream_version<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
) -> Result<Option<i32>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT version FROM streams WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type.as_str())
    .bind(aggregate_id)
    .fetch_optional(executor)
    .await?)
}
