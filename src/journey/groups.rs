//! The consumer groups' hop: for each group keel's consumer runtime runs on the event's topic,
//! whether it handled the record, set it aside, or has not reached it.
//!
//! * The groups: those whose members beat in `pipeline_stages` (`group.<id>`, with the topics
//!   they read) and those with a crash marker on the topic in `consumer_deliveries` (one row per
//!   group, topic and partition, kept after the group stops), at most [`MAX_GROUPS`].
//! * A dead-letter row for the record (by group, topic, partition and offset: the store's unique
//!   key) decides first: `parked`, `held` or `retry` while open, `handled` once redelivered,
//!   `skipped` once an operator gave up on it. A group commits past a record it parks, so the
//!   committed offset alone would call it handled.
//! * Otherwise the group's committed offset (asked of Kafka, no commit) says `handled` once it
//!   is past the record, `pending` before (and while the Kafka sink has not delivered it).
//!   Without the offset of a published record only an open dead-letter row can be found (among
//!   the group's open rows on the topic, by event id); the rest is `unknown`.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::kafka::Kafka;
use super::outbox::Event;
use super::{left, Sources};
use crate::health::kafka::KafkaView;
use crate::model::ParkState;

/// Most groups a journey shows.
pub const MAX_GROUPS: i64 = 50;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    pub group: String,
    pub state: GroupState,
    /// The group's committed offset on the record's partition: the next record it handles.
    pub committed_offset: Option<i64>,
    /// The group's dead-letter row for the record.
    pub dead_letter: Option<DeadLetter>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    Handled,
    Parked,
    Held,
    Retry,
    Skipped,
    Pending,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// The row's id, for `keel dlq show|retry|skip`.
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub state: ParkState,
    /// `permanent`, `retries_exhausted`, `crash_loop`, `undecodable` or `held`.
    pub reason_class: String,
    pub reason: String,
    pub attempts: i32,
    pub kafka_offset: i64,
    pub updated_at: DateTime<Utc>,
}

const DLQ_COLUMNS: &str = "id, state, reason_class, reason, attempts, kafka_offset, updated_at";

/// Each known group's state on the record `kafka` located, its offsets asked within `deadline`.
pub async fn groups(
    pool: &PgPool,
    sources: &Sources,
    event: &Event,
    kafka: &Kafka,
    deadline: Instant,
) -> sqlx::Result<Vec<Group>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT g FROM (
             SELECT substr(component, 7) AS g FROM pipeline_stages
              WHERE starts_with(component, 'group.') AND detail->'topics' ? $1
             UNION
             SELECT group_id FROM consumer_deliveries
              WHERE topic = $1 AND ($2::int IS NULL OR partition = $2)
         ) known ORDER BY g LIMIT $3",
    )
    .bind(&kafka.topic)
    .bind(kafka.partition)
    .bind(MAX_GROUPS)
    .fetch_all(pool)
    .await?;
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut letters = Vec::with_capacity(names.len());
    for name in &names {
        letters.push(dead_letter(pool, name, event, kafka).await?);
    }
    let view = KafkaView::new(
        &sources.kafka_brokers,
        &sources.relay.kafka.properties,
        left(deadline),
    );
    let committed = futures_util::future::join_all(
        names
            .iter()
            .map(|name| committed(&view, name, kafka, deadline)),
    )
    .await;
    // Closing librdkafka clients blocks for a moment: not on the runtime's threads.
    tokio::task::spawn_blocking(move || drop(view));
    Ok(names
        .into_iter()
        .zip(letters)
        .zip(committed)
        .map(|((group, dead_letter), committed)| judge(group, dead_letter, committed, kafka))
        .collect())
}

/// The group's dead-letter row for the record: by its unique key when the offset is known, else
/// an open one with the event's id.
async fn dead_letter(
    pool: &PgPool,
    group: &str,
    event: &Event,
    kafka: &Kafka,
) -> sqlx::Result<Option<DeadLetter>> {
    match (kafka.partition, kafka.offset) {
        (Some(partition), Some(offset)) => {
            sqlx::query_as(&format!(
                "SELECT {DLQ_COLUMNS} FROM consumer_dlq
                  WHERE group_id = $1 AND topic = $2 AND partition = $3 AND kafka_offset = $4"
            ))
            .bind(group)
            .bind(&kafka.topic)
            .bind(partition)
            .bind(offset)
            .fetch_optional(pool)
            .await
        }
        // The states as literals, so that the partial index on open rows serves the query.
        (partition, _) => {
            sqlx::query_as(&format!(
                "SELECT {DLQ_COLUMNS} FROM consumer_dlq
                  WHERE group_id = $1 AND topic = $2 AND ($3::int IS NULL OR partition = $3)
                    AND state IN ('parked', 'held', 'retry') AND event_id = $4
                  ORDER BY kafka_offset LIMIT 1"
            ))
            .bind(group)
            .bind(&kafka.topic)
            .bind(partition)
            .bind(event.id)
            .fetch_optional(pool)
            .await
        }
    }
}

/// The group's committed offset on the record's partition, or why it cannot be known.
async fn committed(
    view: &KafkaView,
    group: &str,
    kafka: &Kafka,
    deadline: Instant,
) -> Result<Option<i64>, String> {
    let Some(partition) = kafka.partition.filter(|_| kafka.reachable) else {
        return Err("kafka unavailable".into());
    };
    let asked = view.committed(group, vec![(kafka.topic.clone(), partition)]);
    match tokio::time::timeout(left(deadline), asked).await {
        Ok(Ok(offsets)) => Ok(offsets.values().next().copied().flatten()),
        Ok(Err(e)) => Err(format!("cannot read the committed offset: {e:#}")),
        Err(_) => Err("kafka did not answer within the time budget".into()),
    }
}

fn judge(
    group: String,
    dead_letter: Option<DeadLetter>,
    committed: Result<Option<i64>, String>,
    kafka: &Kafka,
) -> Group {
    let (committed_offset, committed_note) = match committed {
        Ok(c) => (c, None),
        Err(note) => (None, Some(note)),
    };
    let (state, note) = match (dead_letter.as_ref().map(|d| d.state), kafka.offset) {
        (Some(ParkState::Parked), _) => (GroupState::Parked, None),
        (Some(ParkState::Held), _) => (GroupState::Held, None),
        (Some(ParkState::Retry), _) => (GroupState::Retry, None),
        (Some(ParkState::Delivered), _) => (GroupState::Handled, None),
        (Some(ParkState::Skipped), _) => (GroupState::Skipped, None),
        (None, None) if !kafka.published => (
            GroupState::Pending,
            Some("not published to kafka yet".to_owned()),
        ),
        (None, None) => (
            GroupState::Unknown,
            Some("the record's offset is unknown".to_owned()),
        ),
        (None, Some(offset)) => match (committed_offset, committed_note) {
            (_, Some(note)) => (GroupState::Unknown, Some(note)),
            (Some(c), None) if c > offset => (GroupState::Handled, None),
            (_, None) => (GroupState::Pending, None),
        },
    };
    Group {
        group,
        state,
        committed_offset,
        dead_letter,
        note,
    }
}
