//! `keel retention plan`: what a purge would delete now, per type, and why the rest stays.
//! It runs the purge's own scan ([`super::scan`]) read-only and changes nothing.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use super::scan::Inputs;
use super::{Error, Reader};
use crate::catalog::Catalog;

/// The plan for every type in the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub now: DateTime<Utc>,
    pub types: Vec<TypePlan>,
}

/// One type's plan. `blocked` counts due events (older than `hot`) kept, by reason; an event
/// kept for several reasons counts under each.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TypePlan {
    pub event_type: String,
    /// The policy, in words: `forever`, or `hot 90d, archive required, cold forever`.
    pub policy: String,
    /// Events of the type in the store.
    pub stored: i64,
    /// Older than the hot age.
    pub due: i64,
    /// What a purge would delete now.
    pub purge: i64,
    /// Their estimated size in the store (payload and metadata).
    pub purge_bytes: i64,
    /// The lowest and highest position a purge would delete.
    pub purge_positions: Option<(i64, i64)>,
    /// Due events not yet in a verified archive segment (`keel archive run` writes them).
    pub not_archived: i64,
    pub blocked: Blocked,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Blocked {
    /// Outbox rows not yet delivered to every sink, or parked in the relay.
    pub undelivered: i64,
    /// A projection has not applied them yet.
    pub projection_behind: i64,
    /// The type is under legal hold.
    pub legal_hold: i64,
    /// Their aggregate type keeps its full history (`history = "full"`).
    pub full_history: i64,
    /// Not covered by their aggregate's latest snapshot (`history = "after_snapshot"`).
    pub not_in_snapshot: i64,
    /// Eligible, but an earlier version of their aggregate is not: only prefixes go.
    pub prefix: i64,
}

pub async fn plan(
    pool: &PgPool,
    catalog: &Catalog,
    readers: &[Reader],
    now: DateTime<Utc>,
    verify_max_age_secs: u64,
) -> Result<Plan, Error> {
    let mut conn = pool.acquire().await?;
    let inputs = Inputs::load(&mut conn, catalog, readers, now, verify_max_age_secs).await?;
    let mut q = QueryBuilder::<Postgres>::new("WITH scan AS (");
    // The scan is a whole WITH ... SELECT; wrapped, its CTEs stay inside.
    inputs.push_scan(&mut q);
    q.push(
        ") SELECT event_type, count(*), count(*) FILTER (WHERE due),
                  count(*) FILTER (WHERE victim),
                  COALESCE(sum(bytes) FILTER (WHERE victim), 0)::bigint,
                  min(position) FILTER (WHERE victim), max(position) FILTER (WHERE victim),
                  count(*) FILTER (WHERE due AND NOT archived),
                  count(*) FILTER (WHERE due AND NOT delivered),
                  count(*) FILTER (WHERE due AND NOT applied),
                  count(*) FILTER (WHERE due AND held),
                  count(*) FILTER (WHERE due AND full_history),
                  count(*) FILTER (WHERE due AND NOT covered),
                  count(*) FILTER (WHERE eligible AND NOT victim)
             FROM scan GROUP BY event_type",
    );
    type Row = (
        String,
        i64,
        i64,
        i64,
        i64,
        Option<i64>,
        Option<i64>,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = q.build_query_as().fetch_all(&mut *conn).await?;
    let mut types = Vec::new();
    for entry in catalog.iter() {
        let name = entry.event_type.as_str();
        let mut t = TypePlan {
            event_type: name.into(),
            policy: entry.retention.to_string(),
            ..Default::default()
        };
        if let Some(r) = rows.iter().find(|r| r.0 == name) {
            t.stored = r.1;
            t.due = r.2;
            t.purge = r.3;
            t.purge_bytes = r.4;
            t.purge_positions = r.5.zip(r.6);
            t.not_archived = r.7;
            t.blocked = Blocked {
                undelivered: r.8,
                projection_behind: r.9,
                legal_hold: r.10,
                full_history: r.11,
                not_in_snapshot: r.12,
                prefix: r.13,
            };
        }
        types.push(t);
    }
    Ok(Plan { now, types })
}
