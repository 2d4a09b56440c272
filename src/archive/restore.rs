//! `keel archive restore`: puts archived events back into the store, as they were.
//!
//! Each event goes back with its original id, position, transaction id and time (the purge freed
//! those positions, and no append can take them: the identity only counts up). Events already in
//! the store are left alone, so restoring twice changes nothing. Nothing reaches the relay
//! unless `republish` is asked for, which also writes each restored event's outbox row (in the
//! restore's own transaction, so the relay sends it after everything it has already sent).
//! Afterwards, segments whose every event is back are `verified` again, a type with no purged
//! segment left loses its horizon, and each aggregate's `truncated_before` moves down to the
//! first version from which its history is whole.

use serde::Serialize;
use sqlx::PgPool;

use super::manifest;
use super::objects::Objects;
use super::Error;

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub event_type: String,
    /// Only events at or above this position.
    pub from: Option<i64>,
    /// Only events at or below this position.
    pub to: Option<i64>,
    /// Also write outbox rows, so the relay sends the restored events again.
    pub republish: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreReport {
    pub restored: u64,
    pub already_present: u64,
    pub segments_read: usize,
    /// The type's horizon was removed: every purged event of it is back.
    pub horizon_cleared: bool,
}

pub async fn restore(
    pool: &PgPool,
    objects: &Objects,
    options: &RestoreOptions,
) -> Result<RestoreReport, Error> {
    let lease = super::run::lease(pool).await?;
    let mut report = RestoreReport::default();
    let from = options.from.unwrap_or(i64::MIN);
    let to = options.to.unwrap_or(i64::MAX);
    let segments = manifest::list(pool, Some(&options.event_type)).await?;
    for row in segments
        .iter()
        .filter(|r| r.segment.position_max >= from && r.segment.position_min <= to)
    {
        let bytes = objects.get(&row.segment.object_key).await?;
        if super::segment::sha256(&bytes) != row.segment.file_sha256 {
            return Err(Error::Verify {
                key: row.segment.object_key.clone(),
                why: "its sha256 is not the catalog's; nothing was restored from it".into(),
            });
        }
        let events = super::segment::decode(&bytes)?.events;
        report.segments_read += 1;
        let mut tx = pool.begin().await?;
        for e in events
            .iter()
            .filter(|e| e.position >= from && e.position <= to)
        {
            let inserted = sqlx::query(
                "INSERT INTO events (id, position, tx_id, aggregate_type, aggregate_id, version,
                    event_type, schema_id, schema_version, payload, metadata, created_at)
                 OVERRIDING SYSTEM VALUE
                 VALUES ($1, $2, $3::bigint::text::xid8, $4, $5, $6, $7, $8, $9, $10::jsonb,
                    $11::jsonb, $12)
                 ON CONFLICT DO NOTHING",
            )
            .bind(e.id)
            .bind(e.position)
            .bind(e.tx_id)
            .bind(&e.aggregate_type)
            .bind(e.aggregate_id)
            .bind(e.version)
            .bind(&e.event_type)
            .bind(e.schema_id)
            .bind(e.schema_version)
            .bind(&e.payload_json)
            .bind(&e.metadata_json)
            .bind(e.created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                report.already_present += 1;
                continue;
            }
            report.restored += 1;
            if options.republish {
                sqlx::query(
                    "INSERT INTO outbox (position, event_id, aggregate_type, aggregate_id, event_type, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
                )
                .bind(e.position)
                .bind(e.id)
                .bind(&e.aggregate_type)
                .bind(e.aggregate_id)
                .bind(&e.event_type)
                .bind(e.created_at)
                .execute(&mut *tx)
                .await?;
            }
        }
        // The first version from which each touched aggregate's history is whole.
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.aggregate_id).collect();
        sqlx::query(
            "UPDATE streams s SET truncated_before = w.first_whole
               FROM (SELECT aggregate_type, aggregate_id, min(version) AS first_whole
                       FROM (SELECT e.aggregate_type, e.aggregate_id, e.version, st.version AS head,
                                    count(*) OVER (PARTITION BY e.aggregate_type, e.aggregate_id
                                                   ORDER BY e.version DESC) AS at_or_above
                               FROM events e JOIN streams st USING (aggregate_type, aggregate_id)
                              WHERE e.aggregate_id = ANY($1)) v
                      WHERE at_or_above = head - version + 1
                      GROUP BY aggregate_type, aggregate_id) w
              WHERE s.aggregate_type = w.aggregate_type AND s.aggregate_id = w.aggregate_id",
        )
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    // Segments whose events are all back are no longer purged.
    for row in manifest::list(pool, Some(&options.event_type)).await? {
        if row.state != "purged" {
            continue;
        }
        let present = super::verify::rows_of(pool, &row.segment).await?.len();
        if present == row.segment.record_count as usize {
            sqlx::query(
                "UPDATE archive_segments SET state = 'verified', purged_at = NULL, verified_at = NULL
                  WHERE segment_id = $1",
            )
            .bind(row.segment.segment_id)
            .execute(pool)
            .await?;
        }
    }
    let still_purged: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM archive_segments WHERE event_type = $1 AND state = 'purged')",
    )
    .bind(&options.event_type)
    .fetch_one(pool)
    .await?;
    if !still_purged {
        report.horizon_cleared =
            sqlx::query("DELETE FROM retention_horizons WHERE event_type = $1")
                .bind(&options.event_type)
                .execute(pool)
                .await?
                .rows_affected()
                > 0;
    }
    lease.release().await;
    Ok(report)
}
