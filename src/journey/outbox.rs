//! The first hops: the event as stored, and the relay's state on it for each sink.
//!
//! A sink has delivered an event once its cursor on the event's relay partition is at or past the
//! event's `(tx_id, position)` and the event has no `relay_parked` row for that sink: the cursor
//! also moves past parked and held rows, so the parked table is asked first. A row an operator
//! skipped (`keel outbox skip`) leaves no trace but the audit log, and reads as delivered.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::RelayConfig;
use crate::relay::outbox::partition_of;
use crate::relay::sink::SinkKind;

/// The event as stored, without its payload.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Event {
    pub id: Uuid,
    pub position: i64,
    /// The writing transaction's id: with `position`, the event's place in the log's order.
    pub tx_id: i64,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub version: i32,
    #[serde(rename = "type")]
    pub event_type: String,
    pub created_at: DateTime<Utc>,
    /// The relay partition of its aggregate; shown in [`Outbox::partition`].
    #[serde(skip)]
    pub relay_partition: i16,
}

/// The event, by its id (the primary key), with its aggregate's relay partition.
pub async fn event(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<Event>> {
    sqlx::query_as(&format!(
        "SELECT id, position, tx_id::text::bigint AS tx_id, aggregate_type, aggregate_id, version,
                event_type, created_at, {} AS relay_partition
           FROM events WHERE id = $1",
        partition_of("aggregate_id")
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// The relay's side of the journey.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outbox {
    /// The relay partition of the event's aggregate (0..16).
    pub partition: i16,
    /// The event's outbox row is still there. The relay deletes rows every enabled sink has
    /// passed, so `false` means every sink was done with it.
    pub in_outbox: bool,
    /// `kafka`, then `redis`.
    pub sinks: Vec<Sink>,
}

impl Outbox {
    /// The state of `sink` (`pending` for a sink the store has no cursor for).
    pub fn state(&self, sink: SinkKind) -> SinkState {
        self.sinks
            .iter()
            .find(|s| s.sink == sink.as_str())
            .map_or(SinkState::Pending, |s| s.state)
    }
}

/// One relay sink's state on the event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sink {
    /// `kafka` or `redis`.
    pub sink: String,
    /// Whether this process's configuration enables the sink (a relay run apart reads its own).
    pub enabled: bool,
    pub state: SinkState,
    /// The sink's cursor on the event's relay partition. `updated_at` is when it last moved: for
    /// a delivered event, at or after the delivery.
    pub cursor: Cursor,
    /// The `relay_parked` row, while there is one.
    pub parked: Option<Parked>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkState {
    /// The sink acknowledged it: its cursor is past the event and nothing is parked.
    Delivered,
    /// The cursor has not reached it yet.
    Pending,
    /// It failed for good and waits for an operator (`keel outbox retry|skip`).
    Parked,
    /// An earlier event of its aggregate is parked; it waits behind it.
    Held,
    /// An operator released it; the relay sends it again first.
    Retry,
}

impl SinkState {
    /// As serialised.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkState::Delivered => "delivered",
            SinkState::Pending => "pending",
            SinkState::Parked => "parked",
            SinkState::Held => "held",
            SinkState::Retry => "retry",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cursor {
    pub tx_id: i64,
    pub position: i64,
    pub updated_at: DateTime<Utc>,
}

/// Why and since when a sink set the event aside.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Parked {
    pub attempts: i32,
    /// The kind of the error that parked it (`message_too_large`, `wrong_type`, ...); absent
    /// for a held row.
    pub error_class: Option<String>,
    pub error: Option<String>,
    pub parked_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct SinkRow {
    sink: String,
    tx_id: i64,
    position: i64,
    updated_at: DateTime<Utc>,
    passed: bool,
    parked_state: Option<String>,
    attempts: Option<i32>,
    error_class: Option<String>,
    error: Option<String>,
    parked_at: Option<DateTime<Utc>>,
    parked_updated_at: Option<DateTime<Utc>>,
}

/// Each sink's state on `event`: two cursor rows and the parked rows, by primary key.
pub async fn outbox(pool: &PgPool, event: &Event, relay: &RelayConfig) -> sqlx::Result<Outbox> {
    let in_outbox: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE position = $1)")
            .bind(event.position)
            .fetch_one(pool)
            .await?;
    let rows: Vec<SinkRow> = sqlx::query_as(
        "SELECT c.sink, c.tx_id::text::bigint AS tx_id, c.position, c.updated_at,
                (c.tx_id, c.position) >= ($2::bigint::text::xid8, $3) AS passed,
                k.state AS parked_state, k.attempts, k.error_class, k.error, k.parked_at,
                k.updated_at AS parked_updated_at
           FROM relay_progress c
           LEFT JOIN relay_parked k ON k.sink = c.sink AND k.position = $3
          WHERE c.partition = $1
          ORDER BY c.sink",
    )
    .bind(event.relay_partition)
    .bind(event.tx_id)
    .bind(event.position)
    .fetch_all(pool)
    .await?;
    let sinks = rows
        .into_iter()
        .map(|r| {
            let enabled = match SinkKind::parse(&r.sink) {
                Some(SinkKind::Kafka) => relay.kafka.enabled,
                Some(SinkKind::Redis) => relay.redis.enabled,
                None => false,
            };
            let state = match (r.parked_state.as_deref(), r.passed) {
                (Some("parked"), _) => SinkState::Parked,
                (Some("held"), _) => SinkState::Held,
                (Some(_), _) => SinkState::Retry,
                (None, true) => SinkState::Delivered,
                (None, false) => SinkState::Pending,
            };
            let parked = match (r.parked_at, r.parked_updated_at) {
                (Some(parked_at), Some(updated_at)) => Some(Parked {
                    attempts: r.attempts.unwrap_or(0),
                    error_class: r.error_class,
                    error: r.error,
                    parked_at,
                    updated_at,
                }),
                _ => None,
            };
            Sink {
                sink: r.sink,
                enabled,
                state,
                cursor: Cursor {
                    tx_id: r.tx_id,
                    position: r.position,
                    updated_at: r.updated_at,
                },
                parked,
            }
        })
        .collect();
    Ok(Outbox {
        partition: event.relay_partition,
        in_outbox,
        sinks,
    })
}
