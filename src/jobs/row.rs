//! The `jobs` table: a job's row as callers see it ([`Job`]), and every statement on it. Only
//! these statements change a row's state, and each checks the state it changes from, so two
//! processes (a runner and a sweeper, two sweepers) never both move one row.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::meter::Reading;
use super::{Kind, Spec, State};

/// A job's row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    pub id: Uuid,
    pub kind: Kind,
    /// The projection (rebuild) or topic (republish).
    pub target: String,
    pub params: Value,
    pub state: State,
    /// The principal that started it.
    pub started_by: String,
    /// The keel process that runs (or ran) it.
    pub process: String,
    /// The job this one resumes.
    pub resumes: Option<Uuid>,
    /// Events done so far (this run's).
    pub done: i64,
    /// Events this run expects in all, when known.
    pub total: Option<i64>,
    /// Events per second over the last few seconds.
    pub rate: Option<f64>,
    /// Seconds left at that rate, while it runs.
    pub eta_s: Option<f64>,
    /// The log cursor after the last event done (a republish resumes after it).
    pub cursor: Option<String>,
    /// What the work reported at its end.
    pub report: Option<Value>,
    pub error: Option<String>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub cancelled_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// The row as stored; the CHECK constraints keep `kind` and `state` to known names.
#[derive(sqlx::FromRow)]
struct Stored {
    id: Uuid,
    kind: String,
    target: String,
    params: Value,
    state: String,
    started_by: String,
    process: String,
    resumes: Option<Uuid>,
    done: i64,
    total: Option<i64>,
    rate: Option<f64>,
    cursor: Option<String>,
    report: Option<Value>,
    error: Option<String>,
    cancel_requested_at: Option<DateTime<Utc>>,
    cancelled_by: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    heartbeat_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "id, kind, target, params, state, started_by, process, resumes, done, total,
    rate, cursor, report, error, cancel_requested_at, cancelled_by, created_at, updated_at,
    heartbeat_at, ended_at";

impl TryFrom<Stored> for Job {
    type Error = sqlx::Error;

    fn try_from(s: Stored) -> Result<Self, sqlx::Error> {
        let unknown = |what: &str, text: &str| {
            sqlx::Error::Decode(format!("unknown job {what} {text:?} in the jobs table").into())
        };
        let kind = Kind::parse(&s.kind).ok_or_else(|| unknown("kind", &s.kind))?;
        let state = State::parse(&s.state).ok_or_else(|| unknown("state", &s.state))?;
        let eta_s = match (state, s.total, s.rate) {
            (State::Running, Some(total), Some(rate)) if rate > 0.0 && total > s.done => {
                Some((total - s.done) as f64 / rate)
            }
            _ => None,
        };
        Ok(Self {
            id: s.id,
            kind,
            target: s.target,
            params: s.params,
            state,
            started_by: s.started_by,
            process: s.process,
            resumes: s.resumes,
            done: s.done,
            total: s.total,
            rate: s.rate,
            eta_s,
            cursor: s.cursor,
            report: s.report,
            error: s.error,
            cancel_requested_at: s.cancel_requested_at,
            cancelled_by: s.cancelled_by,
            created_at: s.created_at,
            updated_at: s.updated_at,
            heartbeat_at: s.heartbeat_at,
            ended_at: s.ended_at,
        })
    }
}

fn jobs(rows: Vec<Stored>) -> sqlx::Result<Vec<Job>> {
    rows.into_iter().map(Job::try_from).collect()
}

/// Which jobs to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub state: Option<State>,
    pub kind: Option<Kind>,
    /// At most this many, newest first.
    pub limit: i64,
}

pub(super) async fn insert(
    pool: &PgPool,
    spec: &Spec,
    process: &str,
    owner: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO jobs (id, kind, target, params, started_by, process, owner, resumes)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(spec.id)
    .bind(spec.kind.as_str())
    .bind(&spec.target)
    .bind(&spec.params)
    .bind(&spec.started_by)
    .bind(process)
    .bind(owner)
    .bind(spec.resumes)
    .execute(pool)
    .await?;
    Ok(())
}

pub(super) async fn get(conn: &mut PgConnection, id: Uuid) -> sqlx::Result<Option<Job>> {
    let row: Option<Stored> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.map(Job::try_from).transpose()
}

pub(super) async fn list(pool: &PgPool, filter: &Filter) -> sqlx::Result<Vec<Job>> {
    let rows = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM jobs
          WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
          ORDER BY created_at DESC, id DESC LIMIT $3"
    ))
    .bind(filter.state.map(State::as_str))
    .bind(filter.kind.map(Kind::as_str))
    .bind(filter.limit)
    .fetch_all(pool)
    .await?;
    jobs(rows)
}

/// Marks running job `id` to be cancelled by `by` (the first request's time and name stay);
/// `None` when no running job has that id.
pub(super) async fn mark_cancel(
    conn: &mut PgConnection,
    id: Uuid,
    by: &str,
) -> sqlx::Result<Option<Job>> {
    let row: Option<Stored> = sqlx::query_as(&format!(
        "UPDATE jobs SET cancel_requested_at = COALESCE(cancel_requested_at, now()),
                cancelled_by = COALESCE(cancelled_by, $2), updated_at = now()
          WHERE id = $1 AND state = 'running'
          RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(by)
    .fetch_optional(conn)
    .await?;
    row.map(Job::try_from).transpose()
}

/// The runner's write: progress and heartbeat. `Some(true)` when the job was asked to stop,
/// `None` when the row is no longer running (it was marked interrupted).
pub(super) async fn beat(pool: &PgPool, id: Uuid, at: &Reading) -> sqlx::Result<Option<bool>> {
    sqlx::query_scalar(
        "UPDATE jobs SET done = $2, total = $3, rate = $4, cursor = COALESCE($5, cursor),
                heartbeat_at = now(), updated_at = now()
          WHERE id = $1 AND state = 'running'
          RETURNING cancel_requested_at IS NOT NULL",
    )
    .bind(id)
    .bind(at.done as i64)
    .bind(at.total.map(|t| t as i64))
    .bind(at.rate)
    .bind(at.cursor.map(|c| c.encode()))
    .fetch_optional(pool)
    .await
}

/// The runner's last write: the job ended in `state`. It applies to a running row, or to one
/// marked interrupted under its runner's nose (`owner` is the runner's); an interrupted end
/// keeps the message already there when it has none of its own. Whether the row took it.
pub(super) async fn end(
    pool: &PgPool,
    id: Uuid,
    owner: Uuid,
    state: State,
    at: &Reading,
    report: Option<&Value>,
    error: Option<&str>,
) -> sqlx::Result<bool> {
    let ended = sqlx::query(
        "UPDATE jobs SET state = $3, done = $4, total = $5, rate = $6,
                cursor = COALESCE($7, cursor), report = $8,
                error = CASE WHEN $3 = 'interrupted' THEN COALESCE($9, error) ELSE $9 END,
                heartbeat_at = now(), updated_at = now(), ended_at = now()
          WHERE id = $1 AND (state = 'running' OR (state = 'interrupted' AND owner = $2))",
    )
    .bind(id)
    .bind(owner)
    .bind(state.as_str())
    .bind(at.done as i64)
    .bind(at.total.map(|t| t as i64))
    .bind(at.rate)
    .bind(at.cursor.map(|c| c.encode()))
    .bind(report)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(ended.rows_affected() == 1)
}

/// One running row about to be marked interrupted.
#[derive(sqlx::FromRow)]
struct Lost {
    id: Uuid,
    kind: String,
    process: String,
    cursor: Option<String>,
    heartbeat_at: DateTime<Utc>,
}

/// Marks running jobs whose heartbeat is older than `stale` as interrupted, but `here` (the
/// ones running in the calling process).
pub(super) async fn interrupt_stale(
    pool: &PgPool,
    stale: Duration,
    here: &[Uuid],
) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let lost: Vec<Lost> = sqlx::query_as(&format!(
        "{LOST} WHERE state = 'running' AND heartbeat_at < now() - make_interval(secs => $1)
                  AND NOT (id = ANY($2))
            FOR UPDATE SKIP LOCKED"
    ))
    .bind(stale.as_secs_f64())
    .bind(here)
    .fetch_all(&mut *tx)
    .await?;
    interrupt(tx, &lost, |job| {
        format!(
            "keel process {} stopped beating at {} (it died or froze)",
            job.process,
            job.heartbeat_at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    })
    .await
}

/// Marks the running jobs of `owner` interrupted: its process `process` is stopping.
pub(super) async fn interrupt_own(pool: &PgPool, owner: Uuid, process: &str) -> sqlx::Result<u64> {
    let mut tx = pool.begin().await?;
    let lost: Vec<Lost> = sqlx::query_as(&format!(
        "{LOST} WHERE state = 'running' AND owner = $1 FOR UPDATE SKIP LOCKED"
    ))
    .bind(owner)
    .fetch_all(&mut *tx)
    .await?;
    interrupt(tx, &lost, |_| {
        format!("keel process {process} stopped while it ran")
    })
    .await
}

/// Running rows about to be marked interrupted, locked (SKIP LOCKED: a row another sweeper
/// holds is that sweeper's to mark).
const LOST: &str = "SELECT id, kind, process, cursor, heartbeat_at FROM jobs";

async fn interrupt(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    lost: &[Lost],
    why: impl Fn(&Lost) -> String,
) -> sqlx::Result<u64> {
    for job in lost {
        sqlx::query(
            "UPDATE jobs SET state = 'interrupted', error = $2, ended_at = now(),
                    updated_at = now()
              WHERE id = $1",
        )
        .bind(job.id)
        .bind(interrupted(
            &why(job),
            &job.kind,
            job.id,
            job.cursor.as_deref(),
        ))
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(lost.len() as u64)
}

/// An interrupted job's message: `why`, then how to resume job `id` of `kind`, whose row holds
/// `cursor`.
pub(super) fn interrupted(why: &str, kind: &str, id: Uuid, cursor: Option<&str>) -> String {
    let command = format!("resume it with `keel jobs resume {id}` (POST /v1/jobs/{id}/resume)");
    match (kind, cursor) {
        ("rebuild", _) => format!("{why}; {command}: the rebuild continues from its cursor"),
        (_, Some(cursor)) => {
            format!("{why}; {command}: it continues after cursor {cursor}, its last progress")
        }
        (_, None) => format!("{why}; {command}: it starts where this run started"),
    }
}
