//! The dead-letter store: records a consumer group could not handle, kept in PostgreSQL where
//! they can be listed, inspected and redriven (`keel dlq`).
//!
//! Per-key order: once a record is **parked**, the same group's later records with the same key
//! are stored behind it as **held**, in offset order, and are not handled until the parked one is
//! delivered or skipped. A retry marks a key's chain for redelivery; the consumer that owns the
//! partition then redelivers it in order and stops at the first record that fails again.
//!
//! What operators see and do, by key sequence (retry, skip, in bulk), is [`sequence`]; this
//! module is the consumer's side: parking, redelivery, and the rows as they are listed.

pub mod sequence;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::record::Record;
use crate::model::{ParkState, RecordedEvent};
use crate::wire::header;

/// Why a record was parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    /// The handler said the record can never succeed.
    Permanent,
    /// The handler kept failing with retriable errors.
    RetriesExhausted,
    /// The consumer died (or was stopped) handling it, too many times.
    CrashLoop,
    /// The record does not decode (bad framing, unknown schema...).
    Undecodable,
    /// An earlier record with the same key is parked.
    Held,
}

impl ParkReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ParkReason::Permanent => "permanent",
            ParkReason::RetriesExhausted => "retries_exhausted",
            ParkReason::CrashLoop => "crash_loop",
            ParkReason::Undecodable => "undecodable",
            ParkReason::Held => "held",
        }
    }
}

/// One row of the store.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DlqRow {
    pub id: i64,
    pub group_id: String,
    pub topic: String,
    pub partition: i32,
    pub kafka_offset: i64,
    pub record_key: String,
    #[sqlx(try_from = "String")]
    pub state: ParkState,
    pub reason_class: String,
    pub reason: String,
    pub attempts: i32,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub aggregate_id: Option<Uuid>,
    pub version: Option<i32>,
    pub headers: Value,
    #[serde(skip)]
    pub value: Option<Vec<u8>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DlqRow {
    /// The stored record, for redelivery.
    pub fn record(&self) -> Record {
        let headers = self
            .headers
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        Record {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.kafka_offset,
            key: self.record_key.clone(),
            headers,
            value: self.value.clone().unwrap_or_default(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.state.is_open()
    }
}

const COLUMNS: &str =
    "id, group_id, topic, partition, kafka_offset, record_key, state, reason_class,
    reason, attempts, event_id, event_type, aggregate_id, version, headers, value, created_at,
    updated_at";

/// Stores `record` as parked (or held, for [`ParkReason::Held`]). A record already open in the
/// store (a redelivery after a crash) is left as it is; one closed earlier (delivered or skipped,
/// then read again after an offset reset) is reopened. Returns whether a row was written.
pub async fn park(
    pool: &PgPool,
    group: &str,
    record: &Record,
    reason: ParkReason,
    detail: &str,
    attempts: i32,
    event: Option<&RecordedEvent>,
) -> Result<bool, sqlx::Error> {
    let state = if reason == ParkReason::Held {
        ParkState::Held
    } else {
        ParkState::Parked
    };
    // A map of strings always serialises; the default is never used.
    let headers = serde_json::to_value(&record.headers).unwrap_or_default();
    let written = sqlx::query(
        "INSERT INTO consumer_dlq (group_id, topic, partition, kafka_offset, record_key, state,
             reason_class, reason, attempts, event_id, event_type, aggregate_id, version, headers,
             value)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
         ON CONFLICT (group_id, topic, partition, kafka_offset) DO UPDATE
            SET state = EXCLUDED.state, reason_class = EXCLUDED.reason_class,
                reason = EXCLUDED.reason, attempts = consumer_dlq.attempts + EXCLUDED.attempts,
                updated_at = now()
          -- A record read again after an offset reset and failing again is reopened; one that
          -- is still open (a redelivery after a crash) is left as it is.
          WHERE consumer_dlq.state IN ('delivered', 'skipped')",
    )
    .bind(group)
    .bind(&record.topic)
    .bind(record.partition)
    .bind(record.offset)
    .bind(&record.key)
    .bind(state.as_str())
    .bind(reason.as_str())
    .bind(detail)
    .bind(attempts)
    .bind(
        event
            .map(|e| e.id)
            .or_else(|| record.header(header::EVENT_ID)),
    )
    .bind(
        event
            .map(|e| e.event_type.clone())
            .or_else(|| record.event_type().map(str::to_owned)),
    )
    .bind(
        event
            .map(|e| e.aggregate_id)
            .or_else(|| record.header(header::AGGREGATE_ID)),
    )
    .bind(
        event
            .map(|e| e.version)
            .or_else(|| record.header(header::AGGREGATE_VERSION)),
    )
    .bind(headers)
    .bind(&record.value)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(written == 1)
}

/// A partition's open rows (parked, held, retry), in offset order.
pub async fn open(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<Vec<DlqRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM consumer_dlq
          WHERE group_id = $1 AND topic = $2 AND partition = $3
            AND state IN ('parked', 'held', 'retry')
          ORDER BY kafka_offset"
    ))
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_all(pool)
    .await
}

/// A redelivered row was handled.
pub async fn delivered(pool: &PgPool, id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE consumer_dlq SET state = 'delivered', updated_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A redelivered row failed again: it is parked again, and the key's later rows that were
/// waiting to be redelivered are held behind it again.
pub async fn failed_again(
    pool: &PgPool,
    row: &DlqRow,
    reason: ParkReason,
    detail: &str,
    attempts: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE consumer_dlq
            SET state = CASE WHEN id = $1 THEN 'parked' ELSE 'held' END,
                reason_class = CASE WHEN id = $1 THEN $2 ELSE reason_class END,
                reason = CASE WHEN id = $1 THEN $3 ELSE reason END,
                attempts = CASE WHEN id = $1 THEN attempts + $4 ELSE attempts END,
                updated_at = now()
          WHERE group_id = $5 AND topic = $6 AND partition = $7 AND record_key = $8
            AND (id = $1 OR (state = 'retry' AND kafka_offset > $9))",
    )
    .bind(row.id)
    .bind(reason.as_str())
    .bind(detail)
    .bind(attempts)
    .bind(&row.group_id)
    .bind(&row.topic)
    .bind(row.partition)
    .bind(&row.record_key)
    .bind(row.kafka_offset)
    .execute(pool)
    .await?;
    Ok(())
}

/// Rows of a group (open ones only unless `include_closed`), optionally of one key, oldest first.
pub async fn list(
    pool: &PgPool,
    group: &str,
    key: Option<&str>,
    include_closed: bool,
) -> Result<Vec<DlqRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM consumer_dlq
          WHERE group_id = $1 AND ($2::text IS NULL OR record_key = $2)
            AND ($3 OR state IN ('parked', 'held', 'retry'))
          ORDER BY topic, partition, kafka_offset"
    ))
    .bind(group)
    .bind(key)
    .bind(include_closed)
    .fetch_all(pool)
    .await
}

pub async fn show<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    id: i64,
) -> Result<Option<DlqRow>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {COLUMNS} FROM consumer_dlq WHERE id = $1"))
        .bind(id)
        .fetch_optional(executor)
        .await
}

/// A group's open rows and the age of the oldest, in seconds.
pub async fn depth(pool: &PgPool, group: &str) -> Result<(i64, f64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
           FROM consumer_dlq WHERE group_id = $1 AND state IN ('parked', 'held', 'retry')",
    )
    .bind(group)
    .fetch_one(pool)
    .await
}
