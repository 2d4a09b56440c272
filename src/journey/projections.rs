//! The projections' hop: for each projection that reads the event's topic (it has a checkpoint
//! on it) or applies the event's type, whether its checkpoint passed the record.
//!
//! A runner stores the next offset it applies per partition in `projection_offsets`, in the same
//! transaction as its read model, so a checkpoint past the record's offset means the read model
//! has seen it (applied it, or skipped it for a type the projection does not apply, or as a
//! duplicate). The rows read are one per projection: the `projections` table and a primary-key
//! lookup of each one's checkpoint.

use serde::Serialize;
use sqlx::PgPool;

use super::kafka::Kafka;
use super::outbox::Event;
use super::Sources;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Projection {
    pub name: String,
    /// `running`, `stopped` or `failing`, as its runner last wrote it.
    pub state: String,
    pub error: Option<String>,
    /// It applies the event's type; `null` when this process does not know the projection.
    pub applies: Option<bool>,
    /// The next offset it applies on the record's partition.
    pub next_offset: Option<i64>,
    /// Its checkpoint is past the record (`false` while the record is not published); `null`
    /// when the offset of a published record is unknown.
    pub passed: Option<bool>,
    pub note: Option<String>,
}

#[derive(sqlx::FromRow)]
struct Row {
    name: String,
    state: String,
    error: Option<String>,
    next_offset: Option<i64>,
    reads: bool,
}

/// Each projection's checkpoint against the record `kafka` located.
pub async fn projections(
    pool: &PgPool,
    sources: &Sources,
    event: &Event,
    kafka: &Kafka,
) -> sqlx::Result<Vec<Projection>> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT p.name, p.state, p.error,
                (SELECT o.next_offset FROM projection_offsets o
                  WHERE o.projection = p.name AND o.topic = $1 AND o.partition = $2) AS next_offset,
                EXISTS (SELECT 1 FROM projection_offsets o
                         WHERE o.projection = p.name AND o.topic = $1) AS reads
           FROM projections p ORDER BY p.name",
    )
    .bind(&kafka.topic)
    .bind(kafka.partition)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let applies = sources
                .projections
                .iter()
                .find(|(name, _)| *name == r.name)
                .map(|(_, types)| types.contains(&event.event_type));
            if !r.reads && applies != Some(true) {
                return None;
            }
            let (passed, note) = match (kafka.offset, r.next_offset) {
                _ if !kafka.published => {
                    (Some(false), Some("not published to kafka yet".to_owned()))
                }
                (Some(offset), Some(next)) => (Some(next > offset), None),
                (Some(_), None) => (
                    Some(false),
                    Some("no checkpoint on the record's partition yet".to_owned()),
                ),
                (None, _) => (None, Some("the record's offset is unknown".to_owned())),
            };
            Some(Projection {
                name: r.name,
                state: r.state,
                error: r.error,
                applies,
                next_offset: r.next_offset,
                passed,
                note,
            })
        })
        .collect())
}
