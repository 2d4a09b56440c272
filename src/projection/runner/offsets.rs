//! The runner's SQL: each partition's next offset (`projection_offsets`), the locks that let one
//! runner at a time apply a partition, and the projection's progress row (`projections`).

use std::collections::{BTreeMap, HashMap};

use sqlx::{PgPool, Postgres, Transaction};

use super::Place;
use crate::model::RecordedEvent;

/// A partition's stored next offset; `None` before its first batch.
pub(super) async fn stored(
    pool: &PgPool,
    projection: &str,
    topic: &str,
    partition: i32,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT next_offset FROM projection_offsets
          WHERE projection = $1 AND topic = $2 AND partition = $3",
    )
    .bind(projection)
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await
}

/// Takes the partitions of `last` for this transaction and returns every stored offset of the
/// projection.
pub(super) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    last: &BTreeMap<Place, i64>,
) -> sqlx::Result<HashMap<Place, i64>> {
    // One applier per partition at a time, even before its offset row exists (a row lock
    // would lock nothing then). One statement, in the batch's sorted order, so runners
    // cannot deadlock.
    let (topics, partitions): (Vec<&str>, Vec<i32>) =
        last.keys().map(|(t, p)| (t.as_str(), *p)).unzip();
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(hashtext('keel_projection:' || $1 || ':' || t), p))
           FROM (SELECT * FROM unnest($2::text[], $3::int[]) AS u(t, p) ORDER BY t, p) AS sorted",
    )
    .bind(projection)
    .bind(&topics)
    .bind(&partitions)
    .execute(&mut **tx)
    .await?;
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT topic, partition, next_offset FROM projection_offsets WHERE projection = $1",
    )
    .bind(projection)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// Stores the partitions' next offsets and the projection's progress, in the batch's
/// transaction.
pub(super) async fn store(
    tx: &mut Transaction<'_, Postgres>,
    projection: &str,
    next: &[(Place, i64)],
    applied: usize,
    events: &[RecordedEvent],
) -> sqlx::Result<()> {
    let topics: Vec<&str> = next.iter().map(|((t, _), _)| t.as_str()).collect();
    let partitions: Vec<i32> = next.iter().map(|((_, p), _)| *p).collect();
    let nexts: Vec<i64> = next.iter().map(|(_, o)| *o).collect();
    sqlx::query(
        "INSERT INTO public.projection_offsets (projection, topic, partition, next_offset)
         SELECT $1, * FROM unnest($2::text[], $3::int[], $4::bigint[])
         ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset",
    )
    .bind(projection)
    .bind(&topics)
    .bind(&partitions)
    .bind(&nexts)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE public.projections
            SET events_applied = events_applied + $2,
                last_event_at = greatest(last_event_at, $3),
                last_applied_at = now(), state = 'running', error = NULL, updated_at = now()
          WHERE name = $1",
    )
    .bind(projection)
    .bind(applied as i64)
    .bind(events.iter().map(|e| e.created_at).max())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Shows a failed batch as the projection's state, until the next success sets it back to
/// `running`.
pub(super) async fn mark_failing(pool: &PgPool, projection: &str, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE projections SET state = 'failing', error = $2, updated_at = now() WHERE name = $1",
    )
    .bind(projection)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores how many records the runner's partitions are behind.
pub(super) async fn store_lag(pool: &PgPool, projection: &str, lag: i64) -> sqlx::Result<()> {
    sqlx::query("UPDATE projections SET lag_records = $2 WHERE name = $1")
        .bind(projection)
        .bind(lag)
        .execute(pool)
        .await?;
    Ok(())
}
