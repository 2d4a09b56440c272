//! The outbox's parked rows by aggregate sequence, as operators see and change them (`keel outbox
//! sequences|retry|skip`; the model is [`crate::model::sequence`]).
//!
//! A sequence is one sink's parked and held rows of one aggregate, in log order; its head is the
//! oldest. Sequences are walked in (sink, aggregate id, aggregate type) order on the
//! `relay_parked_key` index (migration 0011, [`crate::store::sequence`]).
//!
//! Changes apply to sequences whose head is `parked`: a retry releases the parked row (with a
//! fresh attempt count), a skip deletes it, and the relay then re-sends the aggregate's rows in
//! log order, stopping at the first that fails for good ([`super::super::outbox::read_redrive`]).
//! So no change reorders an aggregate. Every change wakes the relays.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, Row};
use uuid::Uuid;

use super::super::outbox::wake_relays;
use super::super::sink::SinkKind;
use crate::model::sequence::{Change, Chunk, Filter};
use crate::store::sequence::{budget_param, chunk_of, Layout, Walk};

/// A sequence's place in the walk's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    pub sink: String,
    pub key: Uuid,
    pub aggregate_type: String,
}

/// One sequence as the operator's view lists it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Sequence {
    pub sink: String,
    /// The aggregate id: the Kafka record key.
    pub key: Uuid,
    pub aggregate_type: String,
    #[sqlx(flatten)]
    pub head: Head,
    /// Rows behind the head.
    pub held: i64,
    /// When the head was parked, and when it last failed (or was last released).
    pub first_failed_at: DateTime<Utc>,
    pub last_failed_at: DateTime<Utc>,
}

/// A sequence's head: the row that holds the others up.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Head {
    pub event_id: Uuid,
    pub position: i64,
    pub state: String,
    pub event_type: String,
    /// The sink's error kind (`message_too_large`, `wrong_type`...).
    pub reason_class: Option<String>,
    pub reason: Option<String>,
    pub attempts: i32,
}

/// Which sequences a read or a change covers.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// One sink's, or every sink's.
    pub sink: Option<SinkKind>,
    pub filter: &'a Filter<Uuid>,
    /// Only the sequence this event heads.
    pub head: Option<Uuid>,
}

/// The parked table's sequences for [`crate::store::sequence`]. Rows are ordered by position:
/// an aggregate's rows commit one after the other (its versions are serialised), so within one
/// aggregate position order is the log's `(tx_id, position)` order.
const LAYOUT: Layout = Layout {
    table: "relay_parked",
    id: ["sink", "aggregate_id", "aggregate_type"],
    order: "position",
    columns: "r.sink, r.aggregate_id, r.aggregate_type, r.event_id, r.position, r.state,
              r.event_type, r.error_class, r.error, r.attempts, r.parked_at, r.updated_at",
    counts: "count(*) AS open, count(*) FILTER (WHERE r.state = 'parked') AS stuck,
             count(*) FILTER (WHERE r.state = 'held') AS held",
};

impl Scope<'_> {
    /// The walk over this scope, parameters `$1..$10` ([`Scope::bind`]); with `parked_only`,
    /// only sequences whose head is parked (the ones a change applies to).
    fn walk(&self, parked_only: bool) -> Walk<'static> {
        let mut scope = vec!["true"];
        if self.sink.is_some() {
            scope.push("r.sink = $4");
        }
        if self.filter.key.is_some() {
            scope.push("r.aggregate_id = $5");
        }
        let parked = if parked_only {
            " AND h.state = 'parked'"
        } else {
            ""
        };
        Walk {
            layout: &LAYOUT,
            scope: scope.join(" AND "),
            start: ["$1", "$2", "$3"],
            head: format!(
                "($6::text IS NULL OR h.error_class = $6)
                 AND ($7::text IS NULL OR h.event_type = $7)
                 AND ($8::int8 IS NULL OR h.parked_at <= now() - make_interval(secs => $8::float8))
                 AND ($9::uuid IS NULL OR h.event_id = $9){parked}"
            ),
            limit: "$10",
        }
    }

    /// Binds the walk's parameters, starting after `after`: without one, at the scope's sink and
    /// key, or at `''` (before every sink).
    fn bind<'q>(
        &self,
        query: Query<'q, Postgres, PgArguments>,
        after: Option<&Id>,
        limit: i64,
    ) -> Query<'q, Postgres, PgArguments> {
        let start = after.cloned().unwrap_or_else(|| Id {
            sink: self.sink.map(|s| s.as_str()).unwrap_or_default().to_owned(),
            key: self.filter.key.unwrap_or_default(),
            aggregate_type: String::new(),
        });
        query
            .bind(start.sink)
            .bind(start.key)
            .bind(start.aggregate_type)
            .bind(self.sink.map(SinkKind::as_str))
            .bind(self.filter.key)
            .bind(self.filter.reason_class.clone())
            .bind(self.filter.event_type.clone())
            .bind(self.filter.older_than.map(|a| a.seconds()))
            .bind(self.head)
            .bind(limit)
    }
}

/// Up to `limit` parked sequences after `after`, in (sink, aggregate) order.
pub async fn list(
    pool: &PgPool,
    scope: &Scope<'_>,
    after: Option<&Id>,
    limit: i64,
) -> Result<Vec<Sequence>, sqlx::Error> {
    let sql = format!(
        "{} SELECT sink, aggregate_id AS key, aggregate_type, event_id, position, state,
                   event_type, error_class AS reason_class, error AS reason, attempts,
                   open - 1 AS held, parked_at AS first_failed_at, updated_at AS last_failed_at
              FROM heads ORDER BY sink, aggregate_id, aggregate_type",
        scope.walk(false).heads()
    );
    scope
        .bind(sqlx::query(&sql), after, limit)
        .try_map(|row| Sequence::from_row(&row))
        .fetch_all(pool)
        .await
}

/// One chunk of a change: up to `limit` selected sequences after `after` whose head is parked,
/// as many of them in order as fit in `budget` rows, changed (`apply`) or only counted, in one
/// statement. A change wakes the relays when its transaction commits.
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
                ", changed AS (UPDATE relay_parked d SET state = 'retry', attempts = 0,
                                                     updated_at = now()
                      FROM chosen c WHERE {same} AND d.state = 'parked' RETURNING 1)"
            ),
            "0::int8",
        ),
        // The rows held behind a dropped head are due: the relay re-sends them in order.
        Change::SkipHead => (
            "1::int8",
            ", changed AS (DELETE FROM relay_parked d USING chosen c
                  WHERE d.sink = c.sink AND d.position = c.position AND d.state = 'parked'
                 RETURNING 1)"
                .to_owned(),
            "t.held",
        ),
        Change::SkipSequence => (
            "open",
            format!(
                ", changed AS (DELETE FROM relay_parked d USING chosen c WHERE {same} RETURNING 1)"
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
    let chunk = chunk_of(&row, limit, |row| {
        Ok(match row.try_get::<Option<String>, _>("sink")? {
            Some(sink) => Some(Id {
                sink,
                key: row.try_get("aggregate_id")?,
                aggregate_type: row.try_get("aggregate_type")?,
            }),
            None => None,
        })
    })?;
    if apply && chunk.touched > 0 {
        wake_relays(&mut *conn).await?;
    }
    Ok(chunk)
}
