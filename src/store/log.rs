//! The log: every committed event in one order that is safe to follow with a cursor.
//!
//! # The problem
//! `events.position` comes from a sequence, and sequence values are handed out when a row is
//! inserted, not when its transaction commits. A transaction can take position 10, stay open, and
//! commit after position 11 is already visible. A reader that keeps "the highest position I have
//! seen" moves past 10 and never sees it. That is the skipped-events bug of Marten #2370,
//! Eventuous #222, Watermill #311 and SQLStreamStore #121; time-outs and gap detection only narrow it.
//!
//! # The design: a transaction-id horizon
//! Each event row stores `tx_id`, the id of the transaction that wrote it (`pg_current_xact_id()`).
//! A reader orders by `(tx_id, position)` and reads only rows whose `tx_id` is below
//! `pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running in the cluster.
//! Every transaction below that horizon has finished, so its rows are either visible now or never
//! will be. Every transaction that may still commit has an id at or above the horizon, so it sorts
//! after the reader's cursor. Nothing can appear behind the cursor: no skips, no time-outs, no gap
//! guessing. The price is that one long write transaction anywhere in the cluster holds the
//! log back (delays delivery, never loses it). Read-only transactions have no id and do not count.
//!
//! # Why the order agrees with each aggregate's versions
//! Transaction ids are handed out when a transaction first writes, not when it commits, so two
//! transactions writing the same aggregate could get ids in the opposite order to their versions
//! (under contention on one aggregate this is common, not rare: waiters on a row lock already hold
//! ids and are woken in any order). Two measures close it:
//! 1. An append first queues on an advisory lock for the aggregate, which takes no transaction id,
//!    so a fresh transaction gets its id only after the previous writer committed.
//! 2. `streams.last_tx_id` records the aggregate's last writer; a transaction older than it (one
//!    that wrote something else before appending) gets [`super::Error::TransactionOrder`] and must
//!    retry in a new transaction.
//!
//! Within one transaction positions follow versions. So for every aggregate, `(tx_id, position)`
//! order is version order.
//!
//! Alternatives considered: post-commit sequencing (a single sequencer re-numbers committed rows:
//! an extra update of every event and a leader to elect) and advisory-lock epochs (a lock per
//! append and a more fragile protocol). The horizon costs one index and one comparison.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Postgres, QueryBuilder};
use uuid::Uuid;

use super::read::EVENT_COLUMNS;
use super::Error;
use crate::model::{AggregateType, EventType, Pattern, RecordedEvent, Scope};

/// A place in the log: the `(tx_id, position)` of the last event read. Ordered like the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogCursor {
    pub tx_id: i64,
    pub position: i64,
}

impl LogCursor {
    /// Before the first event.
    pub const START: LogCursor = LogCursor {
        tx_id: 0,
        position: 0,
    };

    /// An opaque, URL-safe token for APIs.
    pub fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1:{}:{}", self.tx_id, self.position))
    }

    pub fn decode(token: &str) -> Option<Self> {
        let bytes = URL_SAFE_NO_PAD.decode(token).ok()?;
        let text = std::str::from_utf8(&bytes).ok()?;
        let mut parts = text.strip_prefix("v1:")?.split(':');
        let tx_id = parts.next()?.parse().ok().filter(|v: &i64| *v >= 0)?;
        let position = parts.next()?.parse().ok().filter(|v: &i64| *v >= 0)?;
        parts.next().is_none().then_some(Self { tx_id, position })
    }
}

impl fmt::Display for LogCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tx_id, self.position)
    }
}

/// Optional filters on the log. Filters never change the order, only which events are returned.
#[derive(Debug, Clone, Default)]
pub struct LogFilter {
    pub aggregate_type: Option<AggregateType>,
    pub aggregate_id: Option<Uuid>,
    /// Events of these types; empty for every type.
    pub event_types: Vec<EventType>,
    /// Events created at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Events created before this time.
    pub to: Option<DateTime<Utc>>,
    /// Events whose `metadata.correlation_id` is this (an index serves it).
    pub correlation_id: Option<String>,
    /// Only aggregate types in this scope (a reader's grants); `None` for every type.
    pub readable: Option<Scope>,
}

/// An event with its place in the log.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct LoggedEvent {
    #[sqlx(flatten)]
    pub event: RecordedEvent,
    pub tx_id: i64,
}

impl LoggedEvent {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            tx_id: self.tx_id,
            position: self.event.position,
        }
    }
}

/// Reads up to `limit` committed events after `after`, in log order, skipping `offset` matches.
///
/// This is the one function every ordered reader uses. Calling it again with the last returned
/// event's cursor continues exactly where the page ended: an event that commits later always sorts
/// after that cursor (see the module docs for why).
pub async fn read_committed_after<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
    filter: &LogFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<LoggedEvent>, Error> {
    let mut q = QueryBuilder::<Postgres>::new(format!(
        "SELECT {EVENT_COLUMNS}, tx_id::text::bigint AS tx_id FROM events"
    ));
    push_committed_after(&mut q, after, filter);
    // Qualified: a bare `tx_id` would name the bigint output column, which no index orders.
    q.push(" ORDER BY events.tx_id, events.position LIMIT ")
        .push_bind(limit)
        .push(" OFFSET ")
        .push_bind(offset);
    Ok(q.build_query_as().fetch_all(executor).await?)
}

/// How many events [`read_committed_after`] would return from `after` with no limit: for
/// progress reports.
pub async fn count_committed_after<'e>(
    executor: impl PgExecutor<'e>,
    after: LogCursor,
    filter: &LogFilter,
) -> Result<i64, Error> {
    let mut q = QueryBuilder::<Postgres>::new("SELECT count(*) FROM events");
    push_committed_after(&mut q, after, filter);
    Ok(q.build_query_scalar().fetch_one(executor).await?)
}

/// The horizon predicate, the heart of the gap-safe order: a row whose transaction id (in the
/// `xid8` column `tx_id_column`) is below the oldest transaction still running when the statement
/// took its snapshot. Every transaction below it has finished, so no row can later appear before
/// a cursor that only ever advances past such rows. Every ordered reader, the relay's outbox read
/// included, filters with this one predicate.
pub fn below_horizon(tx_id_column: &str) -> String {
    format!("{tx_id_column} < (SELECT pg_snapshot_xmin(pg_current_snapshot()))")
}

/// The newest `limit` events matching `filter` below global position `before` (all when
/// `None`), newest first: for browsing the log backwards, as a dashboard does. Unlike
/// [`read_committed_after`] this is not gap-safe (a late commit may appear above a page already
/// read); it is for reading, never for following.
pub async fn read_newest<'e>(
    executor: impl PgExecutor<'e>,
    before: Option<i64>,
    filter: &LogFilter,
    limit: i64,
) -> Result<Vec<RecordedEvent>, Error> {
    let mut q = QueryBuilder::<Postgres>::new(format!("SELECT {EVENT_COLUMNS} FROM events WHERE "));
    match before {
        Some(p) => q.push("position < ").push_bind(p),
        None => q.push("true"),
    };
    push_filter(&mut q, filter);
    q.push(" ORDER BY position DESC LIMIT ").push_bind(limit);
    Ok(q.build_query_as().fetch_all(executor).await?)
}

/// The `WHERE` clause both readers share: after the cursor, below the horizon, and the filters.
fn push_committed_after(q: &mut QueryBuilder<'_, Postgres>, after: LogCursor, filter: &LogFilter) {
    q.push(" WHERE (tx_id, position) > (")
        .push_bind(after.tx_id)
        .push("::bigint::text::xid8, ")
        .push_bind(after.position)
        .push(") AND ")
        .push(below_horizon("tx_id"));
    push_filter(q, filter);
}

/// `AND` each of the filter's conditions.
fn push_filter(q: &mut QueryBuilder<'_, Postgres>, filter: &LogFilter) {
    if let Some(t) = &filter.aggregate_type {
        q.push(" AND aggregate_type = ")
            .push_bind(t.as_str().to_owned());
    }
    if let Some(id) = filter.aggregate_id {
        q.push(" AND aggregate_id = ").push_bind(id);
    }
    match filter.event_types.as_slice() {
        [] => {}
        // One type as a plain equality, which the (event_type, tx_id, position) index serves.
        [t] => {
            q.push(" AND event_type = ")
                .push_bind(t.as_str().to_owned());
        }
        many => {
            let names: Vec<String> = many.iter().map(|t| t.as_str().to_owned()).collect();
            q.push(" AND event_type = ANY(").push_bind(names).push(")");
        }
    }
    if let Some(from) = filter.from {
        q.push(" AND created_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        q.push(" AND created_at < ").push_bind(to);
    }
    if let Some(c) = &filter.correlation_id {
        // The same expression as the `events_correlation` index.
        q.push(" AND metadata ? 'correlation_id' AND metadata->>'correlation_id' = ")
            .push_bind(c.clone());
    }
    if let Some(scope) = filter.readable.as_ref().filter(|s| !s.is_everything()) {
        push_scope(q, "aggregate_type", scope);
    }
}

/// `AND` the names in `column` are in `scope`: some allow pattern matches and no deny pattern
/// does. Patterns are bound, never spliced into the SQL.
fn push_scope(q: &mut QueryBuilder<'_, Postgres>, column: &str, scope: &Scope) {
    let split = |patterns: &[Pattern]| {
        let mut literals = Vec::new();
        let mut prefixes = Vec::new();
        for p in patterns {
            match p {
                Pattern::Literal(name) => literals.push(name.clone()),
                Pattern::Prefix(prefix) => prefixes.push(prefix.clone()),
            }
        }
        (literals, prefixes)
    };
    let matches = |q: &mut QueryBuilder<'_, Postgres>, patterns: &[Pattern]| {
        let (literals, prefixes) = split(patterns);
        q.push("(").push(column).push(" = ANY(").push_bind(literals);
        q.push(") OR EXISTS (SELECT 1 FROM unnest(")
            .push_bind(prefixes)
            .push("::text[]) AS p(prefix) WHERE starts_with(")
            .push(column)
            .push(", p.prefix)))");
    };
    q.push(" AND ");
    matches(q, &scope.allow);
    if !scope.deny.is_empty() {
        q.push(" AND NOT ");
        matches(q, &scope.deny);
    }
}

/// How long the oldest write transaction on the server has been open, in seconds (0 when none
/// is): the log holds back every event that sorts after it, so this is the delay it can add.
/// Without the `pg_read_all_stats` role, other users' transactions are not seen.
pub async fn horizon_age<'e>(executor: impl PgExecutor<'e>) -> Result<f64, Error> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(xact_start)), 0)::float8
           FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()",
    )
    .fetch_one(executor)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_tokens_round_trip_and_reject_garbage() {
        let c = LogCursor {
            tx_id: 741,
            position: 12,
        };
        assert_eq!(LogCursor::decode(&c.encode()), Some(c));
        for bad in [
            "",
            "x",
            "djE6MToy:",
            &URL_SAFE_NO_PAD.encode("v1:-1:2"),
            &URL_SAFE_NO_PAD.encode("v1:1:2:3"),
        ] {
            assert_eq!(LogCursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn cursors_order_by_transaction_then_position() {
        let a = LogCursor {
            tx_id: 5,
            position: 90,
        };
        let b = LogCursor {
            tx_id: 6,
            position: 10,
        };
        assert!(a < b);
    }
}
