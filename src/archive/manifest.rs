//! Segments: the catalog row in `archive_segments` and the manifest object stored next to each
//! segment file (`<file>.manifest.json`), which hold the same facts.
//!
//! The manifest makes an archive readable without the database: it names the segment's cursor
//! range, counts, schema, the sha256 of the file and the content digest of its records, and the
//! sha256 of the previous segment's manifest of the same type, so the segments of a type form a
//! hash chain: removing, reordering or rewriting one breaks it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::store::LogCursor;

/// One segment, as `archive_segments` and its manifest hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Segment {
    pub segment_id: Uuid,
    pub event_type: String,
    pub seq: i64,
    pub schema_id: Option<i32>,
    pub lo_tx_id: i64,
    pub lo_position: i64,
    pub hi_tx_id: i64,
    pub hi_position: i64,
    pub position_min: i64,
    pub position_max: i64,
    pub created_min: DateTime<Utc>,
    pub created_max: DateTime<Utc>,
    pub record_count: i32,
    pub codec: String,
    pub object_key: String,
    pub byte_size: i64,
    pub file_sha256: String,
    pub content_digest: String,
    pub prev_manifest_sha256: Option<String>,
    pub keel_version: String,
}

/// A catalog row: the segment and where it stands.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SegmentRow {
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub segment: Segment,
    pub manifest_sha256: String,
    pub state: String,
    pub written_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    pub purged_at: Option<DateTime<Utc>>,
}

const COLUMNS: &str = "segment_id, event_type, seq, schema_id, lo_tx_id, lo_position, hi_tx_id, \
     hi_position, position_min, position_max, created_min, created_max, record_count, codec, \
     object_key, byte_size, file_sha256, content_digest, prev_manifest_sha256, keel_version, \
     manifest_sha256, state, written_at, verified_at, purged_at";

impl Segment {
    pub fn lo(&self) -> LogCursor {
        LogCursor {
            tx_id: self.lo_tx_id,
            position: self.lo_position,
        }
    }

    pub fn hi(&self) -> LogCursor {
        LogCursor {
            tx_id: self.hi_tx_id,
            position: self.hi_position,
        }
    }

    /// The key of the manifest object.
    pub fn manifest_key(&self) -> String {
        format!("{}.manifest.json", self.object_key)
    }

    /// The manifest's bytes: the segment as pretty JSON with the format version. Deterministic,
    /// so a rerun that finds the object already written can compare it byte for byte.
    pub fn manifest(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Manifest<'a> {
            format: &'a str,
            #[serde(flatten)]
            segment: &'a Segment,
        }
        let mut bytes = serde_json::to_vec_pretty(&Manifest {
            format: super::segment::FORMAT,
            segment: self,
        })
        .unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Reads a manifest object.
    pub fn from_manifest(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not a keel manifest: {e}"))
    }

    /// The object key of segment `seq` of `event_type`: one folder per type, schema and month of
    /// the first event, Hive-style (`key=value`) so Spark and DuckDB can prune on them, and the
    /// sequence number zero-padded so that listing order is cursor order.
    pub fn key_for(
        event_type: &str,
        schema_id: Option<i32>,
        created_min: DateTime<Utc>,
        seq: i64,
    ) -> String {
        let schema = schema_id.map_or("none".to_owned(), |id| id.to_string());
        format!(
            "v1/{event_type}/schema={schema}/created={}/seg-{seq:010}.avro",
            created_min.format("%Y-%m")
        )
    }
}

/// Every segment, or those of one type, in type and sequence order.
pub async fn list<'e>(
    executor: impl PgExecutor<'e>,
    event_type: Option<&str>,
) -> Result<Vec<SegmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM archive_segments
          WHERE $1::text IS NULL OR event_type = $1 ORDER BY event_type, seq"
    ))
    .bind(event_type)
    .fetch_all(executor)
    .await
}

/// The type's last segment.
pub async fn last<'e>(
    executor: impl PgExecutor<'e>,
    event_type: &str,
) -> Result<Option<SegmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM archive_segments WHERE event_type = $1 ORDER BY seq DESC LIMIT 1"
    ))
    .bind(event_type)
    .fetch_optional(executor)
    .await
}

/// One segment by id, and the segment before it in its type's chain (for the chain check).
pub async fn with_previous<'e>(
    executor: impl PgExecutor<'e>,
    segment_id: Uuid,
) -> Result<Vec<SegmentRow>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM archive_segments a
          WHERE EXISTS (SELECT 1 FROM archive_segments s
                         WHERE s.segment_id = $1 AND s.event_type = a.event_type
                           AND a.seq IN (s.seq - 1, s.seq))
          ORDER BY seq"
    ))
    .bind(segment_id)
    .fetch_all(executor)
    .await
}

/// Records a written segment: state `written`, not yet verified.
pub async fn insert<'e>(
    executor: impl PgExecutor<'e>,
    s: &Segment,
    manifest_sha256: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO archive_segments (segment_id, event_type, seq, schema_id, lo_tx_id,
            lo_position, hi_tx_id, hi_position, position_min, position_max, created_min,
            created_max, record_count, codec, object_key, byte_size, file_sha256, content_digest,
            prev_manifest_sha256, keel_version, manifest_sha256)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21)",
    )
    .bind(s.segment_id)
    .bind(&s.event_type)
    .bind(s.seq)
    .bind(s.schema_id)
    .bind(s.lo_tx_id)
    .bind(s.lo_position)
    .bind(s.hi_tx_id)
    .bind(s.hi_position)
    .bind(s.position_min)
    .bind(s.position_max)
    .bind(s.created_min)
    .bind(s.created_max)
    .bind(s.record_count)
    .bind(&s.codec)
    .bind(&s.object_key)
    .bind(s.byte_size)
    .bind(&s.file_sha256)
    .bind(&s.content_digest)
    .bind(&s.prev_manifest_sha256)
    .bind(&s.keel_version)
    .bind(manifest_sha256)
    .execute(executor)
    .await?;
    Ok(())
}

/// Marks a segment verified against the database now (a purged one stays purged).
pub async fn mark_verified<'e>(
    executor: impl PgExecutor<'e>,
    segment_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE archive_segments SET verified_at = now(),
                state = CASE WHEN state = 'written' THEN 'verified' ELSE state END
          WHERE segment_id = $1",
    )
    .bind(segment_id)
    .execute(executor)
    .await?;
    Ok(())
}
