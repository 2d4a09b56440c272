//! Appending events: optimistic concurrency, the event rows and their outbox rows, in one statement.

use serde_json::Value;
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::Error;
use crate::model::{
    AggregateType, AppendResult, AppendedEvent, CheckedEvent, ExpectedVersion, Metadata,
};

/// The part shared by every expectation: insert the events numbered after `bumped.version`, and an
/// outbox row for each. Parameters: $1 aggregate type, $2 aggregate id, $3 event count, $4 ids,
/// $5 event types, $6 payloads, $7 metadata, $8 schema ids, $9 schema versions.
macro_rules! append_sql {
    ($bump:literal) => {
        concat!(
            "WITH bumped AS (",
            $bump,
            "), appended AS (
                INSERT INTO events (id, aggregate_type, aggregate_id, version, event_type, payload, metadata,
                                    schema_id, schema_version)
                SELECT n.id, $1, $2, (bumped.version - $3 + n.ord)::int, n.event_type, n.payload, n.metadata,
                       n.schema_id, n.schema_version
                FROM bumped,
                     UNNEST($4::uuid[], $5::text[], $6::jsonb[], $7::jsonb[], $8::int[], $9::int[])
                         WITH ORDINALITY AS n(id, event_type, payload, metadata, schema_id, schema_version, ord)
                ORDER BY n.ord
                RETURNING id, version, position, tx_id, event_type, created_at
            ), queued AS (
                INSERT INTO outbox (position, tx_id, event_id, aggregate_type, aggregate_id, event_type, created_at)
                SELECT position, tx_id, id, $1, $2, event_type, created_at FROM appended
            )
            SELECT id, version, position FROM appended ORDER BY version"
        )
    };
}

/// The first key of keel's advisory locks ("keel" in ASCII), so that they do not meet an
/// application's own two-key advisory locks in the same database.
const ADVISORY_LOCK_CLASS: i32 = 0x6B65_656C;

/// `expected_version: "any"`: create the stream or bump it, whatever its version.
const APPEND_ANY: &str = append_sql!(
    "INSERT INTO streams (aggregate_type, aggregate_id, version, last_tx_id)
     VALUES ($1, $2, $3, pg_current_xact_id())
     ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
        SET version = streams.version + $3, last_tx_id = pg_current_xact_id(), updated_at = now()
        WHERE streams.last_tx_id <= pg_current_xact_id()
     RETURNING version"
);

/// `expected_version: "no_stream"`: create the stream; nothing happens if it exists.
const APPEND_NO_STREAM: &str = append_sql!(
    "INSERT INTO streams (aggregate_type, aggregate_id, version, last_tx_id)
     VALUES ($1, $2, $3, pg_current_xact_id())
     ON CONFLICT (aggregate_type, aggregate_id) DO NOTHING
     RETURNING version"
);

/// `expected_version: N`: bump the stream only if it is at N. $10 is N.
const APPEND_EXACT: &str = append_sql!(
    "UPDATE streams
        SET version = version + $3, last_tx_id = pg_current_xact_id(), updated_at = now()
      WHERE aggregate_type = $1 AND aggregate_id = $2 AND version = $10
        AND last_tx_id <= pg_current_xact_id()
     RETURNING version"
);

/// Appends `events` to the aggregate inside the caller's transaction, which decides when they
/// commit: a service's own writes and its events become visible together, or not at all.
///
/// Writers of one aggregate take turns on its advisory lock and `streams` row, so versions are
/// contiguous; writers of different aggregates never wait for each other. An append is two
/// statements: the aggregate's lock, then the stream bump, events and outbox rows together.
///
/// Errors leave the transaction as follows: [`Error::WrongExpectedVersion`] and
/// [`Error::TransactionOrder`] write nothing and leave it usable; [`Error::DuplicateEventId`] and
/// database errors abort it. [`super::Store::append`] handles retries and idempotent replays for
/// callers that do not need their own transaction.
///
/// It takes a transaction, not a connection: on an autocommit connection the advisory lock would
/// be released after its own statement. It checks nothing about the events' content; the public
/// entry point is `keel::append::append`, which validates them first.
pub(crate) async fn append(
    tx: &mut Transaction<'_, Postgres>,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    expected: ExpectedVersion,
    events: &[CheckedEvent],
) -> Result<AppendResult, Error> {
    lock_aggregates(&mut *tx, &[(aggregate_type, aggregate_id)]).await?;
    append_locked(tx, aggregate_type, aggregate_id, expected, events).await
}

/// Queues on the advisory locks of the given aggregates, in one statement and in a fixed order
/// (so two transactions locking several aggregates cannot deadlock each other).
///
/// This must happen before the transaction writes anything, so that it is handed its transaction
/// id only once the previous writers of these aggregates have committed: ids then follow version
/// order and the check on `streams.last_tx_id` never trips for a fresh transaction. (A row lock
/// would not do: taking one assigns the id first and then waits.) Advisory locks are queued
/// without an id. Two aggregates whose hashes collide merely take turns.
pub(crate) async fn lock_aggregates(
    conn: &mut PgConnection,
    aggregates: &[(&AggregateType, Uuid)],
) -> Result<(), Error> {
    let types: Vec<&str> = aggregates.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<Uuid> = aggregates.iter().map(|(_, id)| *id).collect();
    sqlx::query(
        "SELECT pg_advisory_xact_lock($1, k)
           FROM (SELECT DISTINCT hashtext(t || '/' || id::text) AS k
                   FROM UNNEST($2::text[], $3::uuid[]) AS a(t, id)) keys
          ORDER BY k",
    )
    .bind(ADVISORY_LOCK_CLASS)
    .bind(&types)
    .bind(&ids)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// [`lock_aggregates`] for one aggregate, without waiting: `false` when another transaction
/// holds its lock. Same key, so it excludes the same writers.
pub(crate) async fn try_lock_aggregate(
    conn: &mut PgConnection,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
) -> Result<bool, Error> {
    Ok(
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2 || '/' || $3::text))")
            .bind(ADVISORY_LOCK_CLASS)
            .bind(aggregate_type.as_str())
            .bind(aggregate_id)
            .fetch_one(&mut *conn)
            .await?,
    )
}

/// [`append`] for a transaction that already holds the aggregate's lock.
pub(crate) async fn append_locked(
    conn: &mut PgConnection,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    expected: ExpectedVersion,
    events: &[CheckedEvent],
) -> Result<AppendResult, Error> {
    if events.is_empty() {
        return Err(Error::EmptyBatch);
    }
    let count = i32::try_from(events.len()).map_err(|_| Error::EmptyBatch)?;
    let columns = Columns::of(events);
    let sql = match expected {
        ExpectedVersion::Any => APPEND_ANY,
        ExpectedVersion::NoStream => APPEND_NO_STREAM,
        ExpectedVersion::Exact(_) => APPEND_EXACT,
    };
    let mut query = sqlx::query_as::<_, AppendedEvent>(sql)
        .bind(aggregate_type.as_str())
        .bind(aggregate_id)
        .bind(count)
        .bind(&columns.ids)
        .bind(&columns.types)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .bind(&columns.schema_ids)
        .bind(&columns.schema_versions);
    if let ExpectedVersion::Exact(n) = expected {
        query = query.bind(n);
    }
    let appended = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|err| match Error::from(err) {
            Error::DuplicateEventId { .. } => Error::DuplicateEventId {
                event_id: events.first().map(CheckedEvent::id),
            },
            other => other,
        })?;

    if let Some(last) = appended.last() {
        return Ok(AppendResult {
            aggregate_type: aggregate_type.clone(),
            aggregate_id,
            version: last.version,
            events: appended,
            idempotent_replay: false,
        });
    }
    Err(diagnose_refusal(conn, aggregate_type, aggregate_id, expected).await)
}

/// Nothing was written: either the version did not match or a newer transaction wrote last.
async fn diagnose_refusal(
    conn: &mut PgConnection,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    expected: ExpectedVersion,
) -> Error {
    let row: Result<Option<(i32, bool)>, _> = sqlx::query_as(
        "SELECT version, last_tx_id <= pg_current_xact_id()
           FROM streams WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(aggregate_type.as_str())
    .bind(aggregate_id)
    .fetch_optional(&mut *conn)
    .await;
    match row {
        Ok(Some((current, in_order))) if expected.accepts(current) && !in_order => {
            Error::TransactionOrder
        }
        Ok(Some((current, _))) => Error::WrongExpectedVersion { expected, current },
        Ok(None) => Error::WrongExpectedVersion {
            expected,
            current: 0,
        },
        Err(err) => err.into(),
    }
}

/// Looks for a batch that is already stored: the answer to "did my earlier attempt commit?".
///
/// Returns the original result when every event id is stored in this aggregate with the same type
/// and payload (metadata is not compared, so a retry may carry a new trace context), `None` when
/// none of the ids is stored, and [`Error::IdempotencyConflict`] for anything in between.
pub(crate) async fn find_appended<'e>(
    executor: impl PgExecutor<'e>,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    events: &[CheckedEvent],
) -> Result<Option<AppendResult>, Error> {
    let columns = Columns::of(events);
    let rows: Vec<StoredMatch> = sqlx::query_as(
        "SELECT n.id, e.version, e.position,
                e.aggregate_type = $1 AND e.aggregate_id = $2
                    AND e.event_type = n.event_type AND e.payload = n.payload AS same
           FROM UNNEST($3::uuid[], $4::text[], $5::jsonb[]) WITH ORDINALITY AS n(id, event_type, payload, ord)
           LEFT JOIN events e ON e.id = n.id
          ORDER BY n.ord",
    )
    .bind(aggregate_type.as_str())
    .bind(aggregate_id)
    .bind(&columns.ids)
    .bind(&columns.types)
    .bind(&columns.payloads)
    .fetch_all(executor)
    .await?;

    if rows.iter().all(|row| row.version.is_none()) {
        return Ok(None);
    }
    let mut stored = Vec::with_capacity(rows.len());
    for StoredMatch {
        id,
        version,
        position,
        same,
    } in rows
    {
        match (version, position, same) {
            (Some(version), Some(position), Some(true)) => stored.push(AppendedEvent {
                id,
                version,
                position,
            }),
            _ => return Err(Error::IdempotencyConflict { event_id: id }),
        }
    }
    // The original batch was contiguous; a match spread over several batches is not a replay.
    if let Some(pair) = stored.windows(2).find(|w| w[1].version != w[0].version + 1) {
        return Err(Error::IdempotencyConflict {
            event_id: pair[1].id,
        });
    }
    let version = stored.last().map_or(0, |e| e.version);
    Ok(Some(AppendResult {
        aggregate_type: aggregate_type.clone(),
        aggregate_id,
        events: stored,
        version,
        idempotent_replay: true,
    }))
}

/// One event of a batch next to the stored event with its id, if any.
#[derive(sqlx::FromRow)]
struct StoredMatch {
    id: Uuid,
    version: Option<i32>,
    position: Option<i64>,
    same: Option<bool>,
}

/// A batch laid out as one array per column, for `UNNEST`. Payloads and metadata are borrowed
/// and serialised straight from the events, not copied first.
struct Columns<'e> {
    ids: Vec<Uuid>,
    types: Vec<&'e str>,
    payloads: Vec<Json<&'e Value>>,
    metadata: Vec<Json<&'e Metadata>>,
    schema_ids: Vec<Option<i32>>,
    schema_versions: Vec<Option<i32>>,
}

impl<'e> Columns<'e> {
    fn of(events: &'e [CheckedEvent]) -> Self {
        Self {
            ids: events.iter().map(CheckedEvent::id).collect(),
            types: events.iter().map(|e| e.event_type().as_str()).collect(),
            payloads: events.iter().map(|e| Json(e.payload())).collect(),
            metadata: events.iter().map(|e| Json(e.metadata())).collect(),
            schema_ids: events.iter().map(|e| e.schema().map(|s| s.id)).collect(),
            schema_versions: events
                .iter()
                .map(|e| e.schema().map(|s| s.version))
                .collect(),
        }
    }
}
