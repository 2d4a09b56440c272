//! A consumer group's dead letters by key sequence, as operators see and change them (`keel dlq
//! sequences|retry|skip`; the model is [`crate::model::sequence`]).
//!
//! A sequence is one record key's open rows in one partition, in offset order; its head is the
//! oldest. Sequences are walked in (key, topic, partition) order on the `consumer_dlq_open_key`
//! index (migration 0011, [`crate::store::sequence`]): one index probe leads from one sequence to
//! the next, so a page or a chunk costs what it returns, however many rows wait behind its heads.
//!
//! Changes apply to sequences whose head is `parked`, and only mark rows (`retry`, `skipped`): the
//! partition's consumer redelivers a key's `retry` rows in offset order and stops at the first
//! that fails again ([`super::failed_again`]), so no change ever reorders a key.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::{show, DlqRow};
use crate::model::sequence::{Change, Chunk, Filter};
use crate::model::ParkState;
use crate::store::sequence::{budget_param, chunk_of, Layout, Walk};

/// A sequence's place in the walk's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    pub key: String,
    pub topic: String,
    pub partition: i32,
}

/// One sequence as the operator's view lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Sequence {
    pub key: String,
    pub topic: String,
    pub partition: i32,
    #[sqlx(flatten)]
    pub head: Head,
    /// Open rows behind the head.
    pub held: i64,
    /// When the head was first parked, and when it last failed (or was last marked).
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

/// A sequence's head: the row that holds the others up.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Head {
    pub id: i64,
    #[sqlx(try_from = "String")]
    pub state: ParkState,
    #[sqlx(rename = "kafka_offset")]
    pub offset: i64,
    pub event_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub reason_class: String,
    pub reason: String,
    pub attempts: i32,
}

/// Which of a group's sequences a read or a change covers.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub group: &'a str,
    pub filter: &'a Filter<String>,
    /// Only the sequence this row heads.
    pub head: Option<i64>,
}

/// The dead-letter store's sequences for [`crate::store::sequence`].
const LAYOUT: Layout = Layout {
    table: "consumer_dlq",
    id: ["record_key", "topic", "partition"],
    order: "kafka_offset",
    columns: "r.id, r.record_key, r.topic, r.partition, r.state, r.kafka_offset, r.event_id,
              r.event_type, r.reason_class, r.reason, r.attempts, r.created_at, r.updated_at",
    counts: "count(*) AS open, count(*) FILTER (WHERE r.state IN ('parked', 'held')) AS stuck,
             count(*) FILTER (WHERE r.state = 'held') AS held",
};

impl Scope<'_> {
    /// The walk over this scope, parameters `$1..$10` ([`Scope::bind`]); with `parked_only`,
    /// only sequences whose head is parked (the ones a change applies to).
    fn walk(&self, parked_only: bool) -> Walk<'static> {
        let key = if self.filter.key.is_some() {
            " AND r.record_key = $5"
        } else {
            ""
        };
        let parked = if parked_only {
            " AND h.state = 'parked'"
        } else {
            ""
        };
        Walk {
            layout: &LAYOUT,
            // The literal states match the partial index on open rows.
            scope: format!("r.group_id = $1 AND r.state IN ('parked', 'held', 'retry'){key}"),
            start: ["$2", "$3", "$4"],
            head: format!(
                "($6::text IS NULL OR h.reason_class = $6)
                 AND ($7::text IS NULL OR h.event_type = $7)
                 AND ($8::int8 IS NULL OR h.created_at <= now() - make_interval(secs => $8::float8))
                 AND ($9::int8 IS NULL OR h.id = $9){parked}"
            ),
            limit: "$10",
        }
    }

    /// Binds the walk's parameters, starting after `after`: without one, a key filter starts at
    /// its key (so the walk seeks straight to its sequences), and otherwise at `''`, which sorts
    /// before every key (topics are never empty).
    fn bind<'q>(
        &self,
        query: Query<'q, Postgres, PgArguments>,
        after: Option<&Id>,
        limit: i64,
    ) -> Query<'q, Postgres, PgArguments> {
        let start = after.cloned().unwrap_or_else(|| Id {
            key: self.filter.key.clone().unwrap_or_default(),
            topic: String::new(),
            partition: 0,
        });
        query
            .bind(self.group.to_owned())
            .bind(start.key)
            .bind(start.topic)
            .bind(start.partition)
            .bind(self.filter.key.clone())
            .bind(self.filter.reason_class.clone())
            .bind(self.filter.event_type.clone())
            .bind(self.filter.older_than.map(|a| a.seconds()))
            .bind(self.head)
            .bind(limit)
    }
}

/// Up to `limit` of the group's open sequences after `after`, in key order.
pub async fn list(
    pool: &PgPool,
    scope: &Scope<'_>,
    after: Option<&Id>,
    limit: i64,
) -> Result<Vec<Sequence>, sqlx::Error> {
    let sql = format!(
        "{} SELECT record_key AS key, topic, partition, id, state, kafka_offset, event_id,
                   event_type, reason_class, reason, attempts, open - 1 AS held,
                   created_at AS first_failed_at, updated_at AS last_failed_at
              FROM heads ORDER BY record_key, topic, partition",
        scope.walk(false).heads()
    );
    scope
        .bind(sqlx::query(&sql), after, limit)
        .try_map(|row| Sequence::from_row(&row))
        .fetch_all(pool)
        .await
}

/// One chunk of a change: up to `limit` selected sequences after `after` whose head is parked,
/// as many of them in key order as fit in `budget` rows, changed (`apply`) or only counted, in
/// one statement.
pub async fn walk(
    conn: &mut PgConnection,
    scope: &Scope<'_>,
    change: Change,
    after: Option<&Id>,
    limit: i64,
    budget: Option<u64>,
    apply: bool,
) -> Result<Chunk<Id>, sqlx::Error> {
    let same = LAYOUT.same_sequence("d", "c");
    let (touch, writes, released) = match change {
        Change::Retry => (
            "stuck",
            format!(
                ", changed AS (UPDATE consumer_dlq d SET state = 'retry', updated_at = now()
                      FROM chosen c WHERE d.group_id = $1 AND {same}
                       AND d.state IN ('parked', 'held') RETURNING 1)"
            ),
            "0::int8",
        ),
        // The held rows behind a skipped head are due: the consumer redelivers them in order.
        Change::SkipHead => (
            "1::int8",
            format!(
                ", changed AS (UPDATE consumer_dlq d SET state = 'skipped', updated_at = now()
                      FROM chosen c WHERE d.id = c.id AND d.state = 'parked' RETURNING 1),
                   freed AS (UPDATE consumer_dlq d SET state = 'retry', updated_at = now()
                      FROM chosen c WHERE d.group_id = $1 AND {same} AND d.state = 'held'
                    RETURNING 1)"
            ),
            if apply {
                "(SELECT count(*) FROM freed)"
            } else {
                "t.held"
            },
        ),
        Change::SkipSequence => (
            "open",
            format!(
                ", changed AS (UPDATE consumer_dlq d SET state = 'skipped', updated_at = now()
                      FROM chosen c WHERE d.group_id = $1 AND {same}
                       AND d.state IN ('parked', 'held', 'retry') RETURNING 1)"
            ),
            "0::int8",
        ),
    };
    let (writes, changed) = if apply {
        (writes, "(SELECT count(*) FROM changed)")
    } else {
        (String::new(), "NULL::int8")
    };
    let sql = scope
        .walk(true)
        .chunk(touch, "$11", &writes, changed, released);
    let row = scope
        .bind(sqlx::query(&sql), after, limit)
        .bind(budget_param(budget))
        .fetch_one(&mut *conn)
        .await?;
    chunk_of(&row, limit, |row| {
        Ok(match row.try_get::<Option<String>, _>("record_key")? {
            Some(key) => Some(Id {
                key,
                topic: row.try_get("topic")?,
                partition: row.try_get("partition")?,
            }),
            None => None,
        })
    })
}

/// Why a change by row id changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("no dead-letter row {0} in group {1:?}")]
    NotFound(i64, String),
    #[error("row {id} is {state}; only a parked row heads a sequence that can be retried or skipped (a held row waits for the parked row of its key: retry or skip that one, or select its key)")]
    NotParked { id: i64, state: ParkState },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The parked row `id` of `group`, the head of the sequence an action by id applies to.
pub async fn parked_head(pool: &PgPool, group: &str, id: i64) -> Result<DlqRow, HeadError> {
    let row = show(pool, id)
        .await?
        .filter(|r| r.group_id == group)
        .ok_or_else(|| HeadError::NotFound(id, group.to_owned()))?;
    if row.state != ParkState::Parked {
        return Err(HeadError::NotParked {
            id,
            state: row.state,
        });
    }
    Ok(row)
}

/// One group's open dead letters, for the overview of every group.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct GroupDepth {
    pub group: String,
    /// Open rows, counted up to [`DEPTH_COUNTED`].
    pub depth: i64,
    /// The group has more open rows than were counted.
    pub depth_capped: bool,
    /// Age of its oldest open row, in seconds.
    pub oldest_age_seconds: f64,
}

/// The most open rows the overview counts per group, so that one huge group does not make the
/// overview slow; the metric `keel_dlq_depth` counts them all.
pub const DEPTH_COUNTED: i64 = 10_000;

/// Up to `limit` groups with open rows after `after` (by name), each with its depth and oldest
/// row. The groups are found by index probes on `consumer_dlq_open_age`, one per group.
pub async fn groups(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<GroupDepth>, sqlx::Error> {
    sqlx::query_as(
        "WITH RECURSIVE g AS (
            (SELECT group_id FROM consumer_dlq
              WHERE state IN ('parked', 'held', 'retry') AND group_id > $1
              ORDER BY group_id LIMIT 1)
            UNION ALL
            SELECT n.group_id FROM g CROSS JOIN LATERAL (
                SELECT group_id FROM consumer_dlq
                 WHERE state IN ('parked', 'held', 'retry') AND group_id > g.group_id
                 ORDER BY group_id LIMIT 1) n
        )
        SELECT g.group_id AS \"group\", least(d.n, $3) AS depth, d.n > $3 AS depth_capped,
               coalesce(extract(epoch FROM now() - a.oldest), 0)::float8 AS oldest_age_seconds
          FROM (SELECT group_id FROM g LIMIT $2) g
         CROSS JOIN LATERAL (
                SELECT count(*) AS n FROM (
                    SELECT 1 FROM consumer_dlq
                     WHERE group_id = g.group_id AND state IN ('parked', 'held', 'retry')
                     LIMIT $3 + 1) x) d
         CROSS JOIN LATERAL (
                SELECT min(created_at) AS oldest FROM consumer_dlq
                 WHERE group_id = g.group_id AND state IN ('parked', 'held', 'retry')) a
         ORDER BY g.group_id",
    )
    .bind(after.unwrap_or_default())
    .bind(limit)
    .bind(DEPTH_COUNTED)
    .fetch_all(pool)
    .await
}
