//! `keel archive verify`: is every segment the catalog names in storage, whole, and the same
//! events the database held?
//!
//! Three depths, each including the one before:
//! - **shallow**: the object and its manifest exist; the object's size and sha256 are the
//!   catalog's; the manifest says what the catalog says, and names the previous segment's
//!   manifest (the hash chain per type is unbroken);
//! - **deep**: the file decodes as Avro, its header and record count match, cursors rise
//!   strictly within the segment's range, and the records' content digest is the catalog's;
//! - **against the database**: the digest recomputed from the database rows of the same cursor
//!   range equals it. This is what a purge requires, recently, before deleting anything, since a
//!   forged file with a matching forged manifest passes every other check. A purged segment has
//!   no rows left to compare with; it was compared before its purge.

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::manifest::{self, Segment, SegmentRow};
use super::objects::{self, Objects};
use super::segment::{self, ArchivedEvent, ContentDigest, ARCHIVED_COLUMNS};
use super::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    Shallow,
    Deep,
    AgainstDb,
}

/// The verdict on one segment: `problems` is empty when it passed.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub segment_id: Uuid,
    pub event_type: String,
    pub seq: i64,
    pub object_key: String,
    pub state: String,
    pub problems: Vec<String>,
}

/// The verdicts on every segment (of one type, when given), and objects nothing names.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub segments: Vec<Verdict>,
    /// Objects under the archive's `v1/` that no catalog row names: left by a crashed run
    /// before its commit, or written by someone else. Listed for clean-up, never deleted here.
    pub orphans: Vec<String>,
}

impl Report {
    pub fn failed(&self) -> usize {
        self.segments
            .iter()
            .filter(|v| !v.problems.is_empty())
            .count()
    }
}

pub async fn verify(
    pool: &PgPool,
    objects: &Objects,
    event_type: Option<&str>,
    depth: Depth,
) -> Result<Report, Error> {
    let rows = manifest::list(pool, event_type).await?;
    let mut verdicts = Vec::new();
    let mut prev: Option<&SegmentRow> = None;
    for row in &rows {
        let chained = prev.filter(|p| p.segment.event_type == row.segment.event_type);
        let problems = check(pool, objects, row, chained, depth).await?;
        if problems.is_empty() && depth == Depth::AgainstDb && row.state != "purged" {
            manifest::mark_verified(pool, row.segment.segment_id).await?;
        }
        if !problems.is_empty() {
            metrics::counter!(crate::metrics::ARCHIVE_VERIFY_FAILURES).increment(1);
        }
        verdicts.push(Verdict {
            segment_id: row.segment.segment_id,
            event_type: row.segment.event_type.clone(),
            seq: row.segment.seq,
            object_key: row.segment.object_key.clone(),
            state: row.state.clone(),
            problems,
        });
        prev = Some(row);
    }
    let known: std::collections::HashSet<String> = rows
        .iter()
        .flat_map(|r| [r.segment.object_key.clone(), r.segment.manifest_key()])
        .collect();
    let prefix = match event_type {
        Some(t) => format!("v1/{t}/"),
        None => "v1/".into(),
    };
    let orphans = objects
        .list(&prefix)
        .await?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| !known.contains(key))
        .collect();
    Ok(Report {
        segments: verdicts,
        orphans,
    })
}

/// Reads a segment back and compares it with the database; marks it verified if it passes.
/// The archiver calls this on every segment it writes.
pub(crate) async fn verify_one(
    pool: &PgPool,
    objects: &Objects,
    segment_id: Uuid,
) -> Result<(), Error> {
    // The segment and its predecessor only: the archiver calls this once per segment written.
    let rows = manifest::with_previous(pool, segment_id).await?;
    let Some(row) = rows.iter().find(|r| r.segment.segment_id == segment_id) else {
        return Ok(());
    };
    let prev = rows.iter().find(|r| r.segment.seq + 1 == row.segment.seq);
    let problems = check(pool, objects, row, prev, Depth::AgainstDb).await?;
    if let Some(first) = problems.first() {
        metrics::counter!(crate::metrics::ARCHIVE_VERIFY_FAILURES).increment(1);
        return Err(Error::Verify {
            key: row.segment.object_key.clone(),
            why: first.clone(),
        });
    }
    manifest::mark_verified(pool, segment_id).await?;
    Ok(())
}

async fn check(
    pool: &PgPool,
    objects: &Objects,
    row: &SegmentRow,
    prev: Option<&SegmentRow>,
    depth: Depth,
) -> Result<Vec<String>, Error> {
    let s = &row.segment;
    let mut problems = Vec::new();

    // The chain: this manifest names the previous segment's manifest, and seq has no gap.
    let expected_prev = prev.map(|p| p.manifest_sha256.clone());
    if s.prev_manifest_sha256 != expected_prev {
        problems.push(
            "the hash chain is broken: prev_manifest_sha256 is not the previous segment's manifest"
                .into(),
        );
    }
    if prev.map_or(1, |p| p.segment.seq + 1) != s.seq {
        problems.push(format!(
            "segment {} of the type is missing from the catalog",
            s.seq - 1
        ));
    }

    match objects.get(&s.manifest_key()).await {
        Ok(bytes) => {
            if segment::sha256(&bytes) != row.manifest_sha256 {
                problems.push(format!(
                    "manifest {} was changed: its sha256 is not the catalog's",
                    s.manifest_key()
                ));
            }
            match Segment::from_manifest(&bytes) {
                Ok(m) if &m == s => {}
                Ok(_) => problems.push(format!(
                    "manifest {} disagrees with the catalog",
                    s.manifest_key()
                )),
                Err(e) => problems.push(format!("manifest {}: {e}", s.manifest_key())),
            }
        }
        Err(objects::Error::NotFound { .. }) => {
            problems.push(format!("manifest {} is missing", s.manifest_key()))
        }
        Err(e) => return Err(e.into()),
    }

    let bytes = match objects.get(&s.object_key).await {
        Ok(bytes) => bytes,
        Err(objects::Error::NotFound { .. }) => {
            problems.push(format!("object {} is missing", s.object_key));
            return Ok(problems);
        }
        Err(e) => return Err(e.into()),
    };
    if bytes.len() as i64 != s.byte_size {
        problems.push(format!(
            "object {} is {} bytes, the catalog says {} (truncated or replaced)",
            s.object_key,
            bytes.len(),
            s.byte_size
        ));
    }
    if segment::sha256(&bytes) != s.file_sha256 {
        problems.push(format!(
            "object {}: its sha256 is not the catalog's",
            s.object_key
        ));
    }
    if depth == Depth::Shallow {
        return Ok(problems);
    }

    let decoded = match segment::decode(&bytes) {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("object {}: {e}", s.object_key));
            return Ok(problems);
        }
    };
    if decoded.events.len() != s.record_count as usize {
        problems.push(format!(
            "object {} holds {} events, the catalog says {}",
            s.object_key,
            decoded.events.len(),
            s.record_count
        ));
    }
    if decoded.header.segment_id != s.segment_id.to_string()
        || decoded.header.event_type != s.event_type
    {
        problems.push(format!(
            "object {}: its header names another segment",
            s.object_key
        ));
    }
    let in_order = decoded
        .events
        .windows(2)
        .all(|w| w[0].cursor() < w[1].cursor());
    let in_range = decoded
        .events
        .iter()
        .all(|e| e.cursor() >= s.lo() && e.cursor() <= s.hi() && e.event_type == s.event_type);
    if !in_order || !in_range {
        problems.push(format!(
            "object {}: its events are out of order or outside the segment's range",
            s.object_key
        ));
    }
    if decoded.content_digest != s.content_digest {
        problems.push(format!(
            "object {}: its records' digest is not the catalog's (an event was changed)",
            s.object_key
        ));
    }
    if depth == Depth::Deep || row.state == "purged" {
        return Ok(problems);
    }

    let db = rows_of(pool, s).await?;
    let mut digest = ContentDigest::default();
    for e in &db {
        digest.add(e)?;
    }
    if db.len() != s.record_count as usize || digest.finish() != s.content_digest {
        problems.push(format!(
            "object {}: the database's events in its range differ from it ({} rows there)",
            s.object_key,
            db.len()
        ));
    }
    Ok(problems)
}

/// The database's events of a segment's type and range, in log order.
pub(crate) async fn rows_of(pool: &PgPool, s: &Segment) -> Result<Vec<ArchivedEvent>, Error> {
    Ok(sqlx::query_as(&format!(
        "SELECT {ARCHIVED_COLUMNS} FROM events
          WHERE event_type = $1
            AND (tx_id, position) >= ($2::bigint::text::xid8, $3)
            AND (tx_id, position) <= ($4::bigint::text::xid8, $5)
          ORDER BY events.tx_id, events.position"
    ))
    .bind(&s.event_type)
    .bind(s.lo_tx_id)
    .bind(s.lo_position)
    .bind(s.hi_tx_id)
    .bind(s.hi_position)
    .fetch_all(pool)
    .await?)
}
