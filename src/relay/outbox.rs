//! The relay's SQL on the data path: reading the outbox in log order, moving cursors, parking,
//! cleaning up. What operators see and do with it is [`super::admin`].

use sqlx::PgPool;
use uuid::Uuid;

use super::sink::SinkKind;
use crate::model::{ParkState, RecordedEvent};
use crate::store::log::{self, LogCursor};

/// The number of relay partitions; fixed by migration 0004.
pub const PARTITIONS: i16 = 16;

/// The relay partition of the aggregate id in `aggregate_id_column`, as SQL: the expression of
/// migration 0004's generated column `outbox.partition`, for readers that have an event but not
/// (any longer) its outbox row.
pub fn partition_of(aggregate_id_column: &str) -> String {
    format!("(uuid_hash_extended({aggregate_id_column}, 0) & 15)::smallint")
}

/// An outbox row with its event, as a sink publishes it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct OutboxRow {
    pub partition: i16,
    pub tx_id: i64,
    #[sqlx(flatten)]
    pub event: RecordedEvent,
    /// The aggregate has parked or held rows for this sink: this row must wait behind them.
    pub blocked: bool,
    /// For rows re-sent from the parked table: their attempts so far.
    pub attempts: i32,
}

impl OutboxRow {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            tx_id: self.tx_id,
            position: self.event.position,
        }
    }

    pub fn aggregate(&self) -> (&str, Uuid) {
        (&self.event.aggregate_type, self.event.aggregate_id)
    }
}

const ROW_COLUMNS: &str = "e.id, e.position, e.aggregate_type, e.aggregate_id, e.version, \
     e.event_type, e.schema_id, e.schema_version, e.payload, e.metadata, e.created_at";

/// The sink's stored cursor of each of `partitions`.
pub async fn cursors(
    pool: &PgPool,
    sink: SinkKind,
    partitions: &[i16],
) -> Result<Vec<(i16, LogCursor)>, sqlx::Error> {
    let rows: Vec<(i16, i64, i64)> = sqlx::query_as(
        "SELECT partition, tx_id::text::bigint, position FROM relay_progress
          WHERE sink = $1 AND partition = ANY($2) ORDER BY partition",
    )
    .bind(sink.as_str())
    .bind(partitions)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(p, tx_id, position)| (p, LogCursor { tx_id, position }))
        .collect())
}

/// Up to `per_partition` rows after the sink's stored cursor in each of `partitions`; see
/// [`read_batch_from`].
pub async fn read_batch(
    pool: &PgPool,
    sink: SinkKind,
    partitions: &[i16],
    per_partition: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let from = cursors(pool, sink, partitions).await?;
    read_batch_from(pool, sink, &from, per_partition).await
}

/// Up to `per_partition` rows after each `(partition, cursor)`, in log order per partition, and
/// only below the transaction horizon (see [`crate::store::log`]): a row that commits later
/// always sorts after the cursor, so nothing is ever skipped.
#[tracing::instrument(level = "debug", skip_all, fields(db.system = "postgresql", db.operation.name = "read_outbox", sink = %sink, partitions = from.len()))]
pub async fn read_batch_from(
    pool: &PgPool,
    sink: SinkKind,
    from: &[(i16, LogCursor)],
    per_partition: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    // Only the outbox index is read (ordered, stopping at the limit); the rest comes from
    // `events`. The relay's connections turn bitmap scans off: with a fresh backlog the planner
    // otherwise scans a partition's whole backlog and sorts it, every round.
    let below_horizon = log::below_horizon("o.tx_id");
    let sql = format!(
        "SELECT c.partition, o.tx_id::text::bigint AS tx_id, {ROW_COLUMNS},
                EXISTS (SELECT 1 FROM relay_parked k
                         WHERE k.sink = $1 AND k.aggregate_type = e.aggregate_type
                           AND k.aggregate_id = e.aggregate_id) AS blocked,
                0 AS attempts
           FROM unnest($2::int2[], $3::int8[], $4::int8[]) AS c(partition, tx, pos)
          CROSS JOIN LATERAL (
                SELECT o.tx_id, o.position FROM outbox o
                 WHERE o.partition = c.partition
                   AND (o.tx_id, o.position) > (c.tx::text::xid8, c.pos)
                   AND {below_horizon}
                 ORDER BY o.tx_id, o.position
                 LIMIT $5) o
           JOIN events e ON e.position = o.position"
    );
    let mut rows: Vec<OutboxRow> = sqlx::query_as(&sql)
        .bind(sink.as_str())
        .bind(from.iter().map(|(p, _)| *p).collect::<Vec<_>>())
        .bind(from.iter().map(|(_, c)| c.tx_id).collect::<Vec<_>>())
        .bind(from.iter().map(|(_, c)| c.position).collect::<Vec<_>>())
        .bind(per_partition)
        .fetch_all(pool)
        .await?;
    // Sorted here rather than by PostgreSQL: cheaper than sorting the wide rows there.
    rows.sort_unstable_by_key(|r| (r.partition, r.tx_id, r.event.position));
    Ok(rows)
}

/// Parked-table rows that may be re-sent: those an operator released (`retry`) and those held
/// behind them, or behind a row that was delivered or skipped. A row stays put while an earlier
/// row of its aggregate is `parked`. Ordered by aggregate, then log order; at most
/// [`REDRIVE_PER_AGGREGATE`] rows of each aggregate.
#[tracing::instrument(level = "debug", skip_all, fields(db.system = "postgresql", db.operation.name = "read_redrive", sink = %sink))]
pub async fn read_redrive(
    pool: &PgPool,
    sink: SinkKind,
    partitions: &[i16],
    limit: i64,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let sql = format!(
        "SELECT k.partition, k.tx_id::text::bigint AS tx_id, {ROW_COLUMNS},
                false AS blocked, k.attempts
           FROM (SELECT k.*, row_number() OVER (PARTITION BY k.aggregate_type, k.aggregate_id
                                                ORDER BY k.tx_id, k.position) AS n
                   FROM relay_parked k
                  WHERE k.sink = $1 AND k.partition = ANY($2) AND k.state <> 'parked'
                    AND NOT EXISTS (SELECT 1 FROM relay_parked b
                                     WHERE b.sink = k.sink AND b.aggregate_type = k.aggregate_type
                                       AND b.aggregate_id = k.aggregate_id AND b.state = 'parked'
                                       AND (b.tx_id, b.position) < (k.tx_id, k.position))) k
           JOIN events e ON e.position = k.position
          WHERE k.n <= $4
          ORDER BY k.aggregate_type, k.aggregate_id, k.tx_id, k.position
          LIMIT $3"
    );
    sqlx::query_as(&sql)
        .bind(sink.as_str())
        .bind(partitions)
        .bind(limit)
        .bind(REDRIVE_PER_AGGREGATE)
        .fetch_all(pool)
        .await
}

/// Most rows of one aggregate a redrive takes, so that one aggregate that keeps failing cannot
/// crowd the others out of every redrive.
const REDRIVE_PER_AGGREGATE: i64 = 50;

/// A row to put into the parked table.
#[derive(Debug, Clone)]
pub struct Park {
    pub row_position: i64,
    pub tx_id: i64,
    pub partition: i16,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub event_type: String,
    /// Parked (this row failed), held (behind a parked row) or retry (failed again on a redrive,
    /// below `max_attempts`).
    pub state: ParkState,
    pub error_class: Option<&'static str>,
    pub error: Option<String>,
    pub attempts: i32,
}

impl Park {
    pub fn of(row: &OutboxRow, state: ParkState) -> Self {
        Self {
            row_position: row.event.position,
            tx_id: row.tx_id,
            partition: row.partition,
            event_id: row.event.id,
            aggregate_type: row.event.aggregate_type.clone(),
            aggregate_id: row.event.aggregate_id,
            event_type: row.event.event_type.clone(),
            state,
            error_class: None,
            error: None,
            attempts: row.attempts,
        }
    }
}

/// One iteration's results, written in one transaction.
#[derive(Debug, Default)]
pub struct Commit {
    /// New cursor per partition.
    pub advance: Vec<(i16, LogCursor)>,
    /// How many rows each cursor move passes (delivered, parked or held), for the dashboard's
    /// rates (`relay_progress.passed`).
    pub passed: std::collections::BTreeMap<i16, i64>,
    /// New parked or held rows (from the main read), and re-parked ones (from a redrive).
    pub park: Vec<Park>,
    /// Parked-table rows that were delivered on a redrive: (partition, position).
    pub delivered: Vec<(i16, i64)>,
}

impl Commit {
    /// Adds the commit of a batch settled after this one's: its cursor moves replace this one's,
    /// partition by partition.
    pub fn absorb(&mut self, later: Commit) {
        for (p, c) in later.advance {
            match self.advance.iter_mut().find(|(q, _)| *q == p) {
                Some(slot) => slot.1 = c,
                None => self.advance.push((p, c)),
            }
        }
        for (p, n) in later.passed {
            *self.passed.entry(p).or_default() += n;
        }
        self.park.extend(later.park);
        self.delivered.extend(later.delivered);
    }

    pub fn is_empty(&self) -> bool {
        self.advance.is_empty() && self.park.is_empty() && self.delivered.is_empty()
    }

    fn partitions(&self) -> Vec<i16> {
        let mut p: Vec<i16> = self
            .advance
            .iter()
            .map(|(p, _)| *p)
            .chain(self.park.iter().map(|k| k.partition))
            .chain(self.delivered.iter().map(|(p, _)| *p))
            .collect();
        p.sort_unstable();
        p.dedup();
        p
    }
}

/// Writes `commit` if `owner` still holds a lease on every partition it touches; otherwise writes
/// nothing and returns `false` (another relay owns that work now and will redo it). The lease rows
/// are share-locked until commit, so no other relay can take them over halfway.
#[tracing::instrument(level = "debug", skip_all, fields(db.system = "postgresql", db.operation.name = "commit_cursors", sink = %sink, %owner))]
pub async fn commit(
    pool: &PgPool,
    owner: Uuid,
    sink: SinkKind,
    commit: &Commit,
) -> Result<bool, sqlx::Error> {
    if commit.is_empty() {
        return Ok(true);
    }
    let partitions = commit.partitions();
    let mut tx = pool.begin().await?;
    // Progress need not survive a database crash: a lost cursor move only re-sends rows, and the
    // parked rows move together with it. Skipping the WAL flush takes milliseconds off every round.
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM relay_leases
          WHERE partition = ANY($1) AND owner = $2 AND lease_until > now() FOR SHARE) l",
    )
    .bind(&partitions)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    if held != partitions.len() as i64 {
        tx.rollback().await?;
        return Ok(false);
    }
    if !commit.advance.is_empty() {
        let (parts, (txs, positions)): (Vec<i16>, (Vec<i64>, Vec<i64>)) = commit
            .advance
            .iter()
            .map(|(p, c)| (*p, (c.tx_id, c.position)))
            .unzip();
        let passed: Vec<i64> = parts
            .iter()
            .map(|p| commit.passed.get(p).copied().unwrap_or(0))
            .collect();
        sqlx::query(
            "UPDATE relay_progress p
                SET tx_id = v.tx::text::xid8, position = v.pos, passed = p.passed + v.n,
                    updated_at = now()
               FROM unnest($2::int2[], $3::int8[], $4::int8[], $5::int8[]) AS v(partition, tx, pos, n)
              WHERE p.sink = $1 AND p.partition = v.partition",
        )
        .bind(sink.as_str())
        .bind(&parts)
        .bind(&txs)
        .bind(&positions)
        .bind(&passed)
        .execute(&mut *tx)
        .await?;
    }
    for k in &commit.park {
        sqlx::query(
            "INSERT INTO relay_parked (sink, position, tx_id, partition, event_id, aggregate_type,
                                       aggregate_id, event_type, state, error_class, error, attempts)
             VALUES ($1, $2, $3::text::xid8, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (sink, position) DO UPDATE
                SET state = EXCLUDED.state, error_class = EXCLUDED.error_class,
                    error = EXCLUDED.error, attempts = EXCLUDED.attempts, updated_at = now()",
        )
        .bind(sink.as_str())
        .bind(k.row_position)
        .bind(k.tx_id.to_string())
        .bind(k.partition)
        .bind(k.event_id)
        .bind(&k.aggregate_type)
        .bind(k.aggregate_id)
        .bind(&k.event_type)
        .bind(k.state.as_str())
        .bind(k.error_class)
        .bind(&k.error)
        .bind(k.attempts)
        .execute(&mut *tx)
        .await?;
    }
    if !commit.delivered.is_empty() {
        let positions: Vec<i64> = commit.delivered.iter().map(|(_, p)| *p).collect();
        sqlx::query("DELETE FROM relay_parked WHERE sink = $1 AND position = ANY($2)")
            .bind(sink.as_str())
            .bind(&positions)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Deletes the outbox rows of `partitions` that every sink in `sinks` has passed. Returns how many.
///
/// Each partition's delete names its cursor as constants, so that it walks the log-order index
/// from the start to the cursor and no further; sequential scans are off for it, because a plan
/// chosen for a large backlog otherwise scans the whole outbox once per partition every second
/// (the relay's drain spent more time there than reading). A lost delete only leaves rows for
/// the next round, so the commit does not wait for the WAL flush.
#[tracing::instrument(level = "debug", skip_all, fields(db.system = "postgresql", db.operation.name = "cleanup_outbox"))]
pub async fn cleanup(
    pool: &PgPool,
    partitions: &[i16],
    sinks: &[SinkKind],
) -> Result<u64, sqlx::Error> {
    let sinks: Vec<&str> = sinks.iter().map(|s| s.as_str()).collect();
    let passed: Vec<(i16, i64, i64)> = sqlx::query_as(
        "SELECT DISTINCT ON (partition) partition, tx_id::text::bigint, position
           FROM relay_progress WHERE partition = ANY($1) AND sink = ANY($2)
          ORDER BY partition, tx_id, position",
    )
    .bind(partitions)
    .bind(&sinks)
    .fetch_all(pool)
    .await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL synchronous_commit = off")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let mut deleted = 0;
    for (partition, tx_id, position) in passed {
        deleted += sqlx::query(
            "DELETE FROM outbox
              WHERE partition = $1 AND (tx_id, position) <= ($2::text::xid8, $3)",
        )
        .bind(partition)
        .bind(tx_id.to_string())
        .bind(position)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(deleted)
}

/// The channel relays listen on for "there is new work".
pub const WAKE_CHANNEL: &str = "keel_relay";

/// Tells every relay listening that there is new work. Issued outside append transactions, so it
/// never adds to their cost or holds their commit. Inside a transaction, the notice goes out when
/// it commits.
pub async fn wake_relays<'e>(executor: impl sqlx::PgExecutor<'e>) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, '')")
        .bind(WAKE_CHANNEL)
        .execute(executor)
        .await
        .map(|_| ())
}
