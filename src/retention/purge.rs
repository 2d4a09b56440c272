//! `keel retention run`: deletes the eligible prefixes ([`super`]) in small transactions.
//!
//! It holds the archive lease (no archiver runs meanwhile), first re-verifies against the
//! database every segment whose last check is older than `archive.verify_max_age_secs`, then
//! collects the victims once into a temporary table and deletes them a batch at a time, each
//! batch in aggregate and version order, with a short `lock_timeout` so appends never queue
//! behind it. Each batch's transaction also raises the types' horizons, the aggregates'
//! `truncated_before`, marks the segments it reached `purged`, and writes an audit row. Every
//! delete re-checks the outbox and the relay's parked rows, so an event that gained one since
//! the scan stays.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::scan::Inputs;
use super::{Error, Reader};
use crate::archive::{self, manifest, Objects};
use crate::auth::audit;
use crate::catalog::Catalog;

#[derive(Debug, Clone)]
pub struct PurgeOptions {
    pub now: DateTime<Utc>,
    pub batch: i64,
    pub verify_max_age_secs: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// Events deleted, per type.
    pub purged: Vec<(String, i64)>,
    /// Segments verified against the database before the purge.
    pub verified: usize,
    pub batches: usize,
}

pub async fn purge(
    pool: &PgPool,
    objects: Option<&Objects>,
    catalog: &Catalog,
    readers: &[Reader],
    options: &PurgeOptions,
) -> Result<PurgeReport, Error> {
    let lease = archive::run::lease(pool).await?;
    let mut report = PurgeReport::default();

    // Re-verify what has not been compared with the database recently.
    let stale_before = Utc::now() - chrono::Duration::seconds(options.verify_max_age_secs as i64);
    for row in manifest::list(pool, None).await? {
        let stale = row.state == "written"
            || (row.state == "verified" && row.verified_at.is_none_or(|t| t < stale_before));
        if stale {
            let objects = objects.ok_or(archive::Error::NotConfigured)?;
            archive::verify::verify_one(pool, objects, row.segment.segment_id).await?;
            report.verified += 1;
        }
    }

    let mut conn = pool.acquire().await?;
    let inputs = Inputs::load(
        &mut conn,
        catalog,
        readers,
        options.now,
        options.verify_max_age_secs,
    )
    .await?;
    sqlx::query("DROP TABLE IF EXISTS pg_temp.keel_purge")
        .execute(&mut *conn)
        .await?;
    let mut q = QueryBuilder::<Postgres>::new(
        "CREATE TEMP TABLE keel_purge AS SELECT position, event_type, aggregate_type, aggregate_id, version FROM (",
    );
    inputs.push_scan(&mut q);
    q.push(") scan WHERE victim");
    q.build().execute(&mut *conn).await?;
    sqlx::query("CREATE INDEX ON pg_temp.keel_purge (aggregate_type, aggregate_id, version)")
        .execute(&mut *conn)
        .await?;

    let mut totals: std::collections::BTreeMap<String, i64> = Default::default();
    loop {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("SET LOCAL lock_timeout = '2s'")
            .execute(&mut *tx)
            .await?;
        let deleted: Vec<(String, i64, i64, String, uuid::Uuid, i32)> = sqlx::query_as(
            "WITH batch AS (
                DELETE FROM keel_purge WHERE (aggregate_type, aggregate_id, version) IN (
                    SELECT aggregate_type, aggregate_id, version FROM keel_purge
                     ORDER BY aggregate_type, aggregate_id, version LIMIT $1)
                RETURNING position)
             DELETE FROM events e USING batch b
              WHERE e.position = b.position
                AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position)
                AND NOT EXISTS (SELECT 1 FROM relay_parked r WHERE r.position = e.position)
             RETURNING e.event_type, e.tx_id::text::bigint, e.position, e.aggregate_type,
                       e.aggregate_id, e.version",
        )
        .bind(options.batch)
        .fetch_all(&mut *tx)
        .await?;
        let left: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM keel_purge)")
            .fetch_one(&mut *tx)
            .await?;
        if deleted.is_empty() {
            tx.commit().await?;
            if left {
                continue;
            }
            break;
        }
        let types: Vec<String> = deleted.iter().map(|d| d.0.clone()).collect();
        let tx_ids: Vec<i64> = deleted.iter().map(|d| d.1).collect();
        let positions: Vec<i64> = deleted.iter().map(|d| d.2).collect();
        let aggregate_types: Vec<String> = deleted.iter().map(|d| d.3.clone()).collect();
        let aggregate_ids: Vec<uuid::Uuid> = deleted.iter().map(|d| d.4).collect();
        let versions: Vec<i32> = deleted.iter().map(|d| d.5).collect();
        sqlx::query(
            "UPDATE streams s SET truncated_before = GREATEST(s.truncated_before, d.v + 1)
               FROM (SELECT at, id, max(v) AS v FROM unnest($1::text[], $2::uuid[], $3::int[]) u(at, id, v)
                      GROUP BY at, id) d
              WHERE s.aggregate_type = d.at AND s.aggregate_id = d.id",
        )
        .bind(&aggregate_types)
        .bind(&aggregate_ids)
        .bind(&versions)
        .execute(&mut *tx)
        .await?;
        let horizons: Vec<(String, i64, i64)> = sqlx::query_as(
            "INSERT INTO retention_horizons AS h (event_type, tx_id, position, purged_events)
             SELECT DISTINCT ON (t) t, tx, pos, count(*) OVER (PARTITION BY t)
               FROM unnest($1::text[], $2::bigint[], $3::bigint[]) u(t, tx, pos)
              ORDER BY t, tx DESC, pos DESC
             ON CONFLICT (event_type) DO UPDATE SET
                tx_id = CASE WHEN (EXCLUDED.tx_id, EXCLUDED.position) > (h.tx_id, h.position)
                             THEN EXCLUDED.tx_id ELSE h.tx_id END,
                position = CASE WHEN (EXCLUDED.tx_id, EXCLUDED.position) > (h.tx_id, h.position)
                                THEN EXCLUDED.position ELSE h.position END,
                purged_events = h.purged_events + EXCLUDED.purged_events,
                purged_at = now()
             RETURNING event_type, tx_id, position",
        )
        .bind(&types)
        .bind(&tx_ids)
        .bind(&positions)
        .fetch_all(&mut *tx)
        .await?;
        for (event_type, tx_id, position) in &horizons {
            sqlx::query(
                "UPDATE archive_segments SET state = 'purged', purged_at = now()
                  WHERE event_type = $1 AND state <> 'purged' AND (lo_tx_id, lo_position) <= ($2, $3)",
            )
            .bind(event_type)
            .bind(tx_id)
            .bind(position)
            .execute(&mut *tx)
            .await?;
            metrics::gauge!(crate::metrics::RETENTION_HORIZON, "event_type" => event_type.clone())
                .set(*position as f64);
        }
        let mut counts: std::collections::BTreeMap<&str, i64> = Default::default();
        for t in &types {
            *counts.entry(t.as_str()).or_default() += 1;
        }
        let entry = audit::Entry::system(
            "retention.purge",
            json!({ "event_types": counts.keys().collect::<Vec<_>>() }),
            json!({
                "deleted": counts,
                "positions": [positions.iter().min(), positions.iter().max()],
                "now": options.now,
            }),
        );
        audit::record(&mut tx, &entry)
            .await
            .map_err(|e| Error::Database(sqlx::Error::Protocol(e.to_string())))?;
        tx.commit().await?;
        for (t, n) in counts {
            metrics::counter!(crate::metrics::PURGED_EVENTS, "event_type" => t.to_owned())
                .increment(n as u64);
            *totals.entry(t.to_owned()).or_default() += n;
        }
        report.batches += 1;
    }
    sqlx::query("DROP TABLE IF EXISTS pg_temp.keel_purge")
        .execute(&mut *conn)
        .await?;
    report.purged = totals.into_iter().collect();
    lease.release().await;
    Ok(report)
}
