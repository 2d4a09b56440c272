//! The one query behind the plan and the purge: every event's verdict under the policies.
//!
//! It evaluates each guard of the module docs as a column per event, then the prefix rule per
//! aggregate, so the plan (which counts the columns) and the purge (which deletes the `victim`
//! rows) can never disagree about what is eligible.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, QueryBuilder};

use super::{Error, Reader};
use crate::archive::manifest;
use crate::catalog::{Catalog, History};
use crate::store::LogCursor;

/// One event type whose policy has a hot age.
#[derive(Debug, Clone)]
pub(super) struct TypeRule {
    pub event_type: String,
    pub cutoff: DateTime<Utc>,
    pub held: bool,
    /// Events at or below this cursor are in verified segments (`LogCursor` max for a type that
    /// needs no archive); `None` when none is.
    pub archived_through: Option<LogCursor>,
}

/// Everything the scan decides on.
#[derive(Debug, Clone, Default)]
pub(super) struct Inputs {
    pub types: Vec<TypeRule>,
    pub full_aggregates: Vec<String>,
    pub snapshot_aggregates: Vec<(String, String)>,
    pub readers: Vec<Reader>,
}

const ALL: LogCursor = LogCursor {
    tx_id: i64::MAX,
    position: i64::MAX,
};

impl Inputs {
    /// Reads the catalog's policies and the archive's verified ranges. A segment counts as
    /// verified when it was purged already, or its last check against the database passed
    /// within `verify_max_age_secs`.
    pub async fn load(
        conn: &mut PgConnection,
        catalog: &Catalog,
        readers: &[Reader],
        now: DateTime<Utc>,
        verify_max_age_secs: u64,
    ) -> Result<Self, Error> {
        let mut inputs = Inputs::default();
        let fresh_since = Utc::now() - chrono::Duration::seconds(verify_max_age_secs as i64);
        for entry in catalog.iter() {
            let policy = &entry.retention;
            let Some(hot) = policy.hot else { continue };
            let needs_archive = policy.needs_archive();
            let archived_through = if needs_archive {
                let mut through = None;
                for (expected, row) in
                    (1..).zip(manifest::list(&mut *conn, Some(entry.event_type.as_str())).await?)
                {
                    let fresh = row.state == "purged"
                        || (row.state == "verified"
                            && row.verified_at.is_some_and(|t| t >= fresh_since));
                    if row.segment.seq != expected || !fresh {
                        break;
                    }
                    through = Some(row.segment.hi());
                }
                through
            } else {
                Some(ALL)
            };
            inputs.types.push(TypeRule {
                event_type: entry.event_type.as_str().into(),
                cutoff: now - chrono::Duration::days(i64::from(hot.days())),
                held: policy.legal_hold,
                archived_through,
            });
        }
        for (aggregate_type, spec) in catalog.aggregates() {
            match &spec.history {
                History::Prefix => {}
                History::Full => inputs.full_aggregates.push(aggregate_type.to_string()),
                History::AfterSnapshot { snapshot_kind } => inputs
                    .snapshot_aggregates
                    .push((aggregate_type.to_string(), snapshot_kind.clone())),
            }
        }
        let registered: Vec<String> =
            sqlx::query_scalar("SELECT name FROM projections ORDER BY name")
                .fetch_all(&mut *conn)
                .await?;
        for name in registered {
            let Some(reader) = readers.iter().find(|r| r.name == name) else {
                return Err(Error::UnknownReader(name));
            };
            inputs.readers.push(reader.clone());
        }
        Ok(inputs)
    }

    /// Pushes `WITH ... SELECT` of every event with its guard columns, `eligible` and `victim`.
    pub fn push_scan(&self, q: &mut QueryBuilder<'_, Postgres>) {
        let column = |f: fn(&TypeRule) -> Option<i64>| -> Vec<Option<i64>> {
            self.types.iter().map(f).collect()
        };
        q.push(
            "WITH p(event_type, cutoff, held, vtx, vpos) AS (SELECT * FROM unnest(",
        )
        .push_bind(self.types.iter().map(|t| t.event_type.clone()).collect::<Vec<_>>())
        .push("::text[], ")
        .push_bind(self.types.iter().map(|t| t.cutoff).collect::<Vec<_>>())
        .push("::timestamptz[], ")
        .push_bind(self.types.iter().map(|t| t.held).collect::<Vec<_>>())
        .push("::bool[], ")
        .push_bind(column(|t| t.archived_through.map(|c| c.tx_id)))
        .push("::bigint[], ")
        .push_bind(column(|t| t.archived_through.map(|c| c.position)))
        .push(
            "::bigint[])),
             ev AS (
               SELECT e.position, e.tx_id::text::bigint AS tx_id, e.event_type, e.aggregate_type,
                      e.aggregate_id, e.version,
                      pg_column_size(e.payload) + pg_column_size(e.metadata) AS bytes,
                      (p.event_type IS NOT NULL AND e.created_at < p.cutoff) AS due,
                      COALESCE(p.held, false) AS held,
                      (e.aggregate_type = ANY(",
        )
        .push_bind(self.full_aggregates.clone())
        .push(
            "::text[])) AS full_history,
                      (p.vtx IS NOT NULL AND (e.tx_id::text::bigint, e.position) <= (p.vtx, p.vpos)) AS archived,
                      (NOT EXISTS (SELECT 1 FROM outbox o WHERE o.position = e.position)
                       AND NOT EXISTS (SELECT 1 FROM relay_parked r WHERE r.position = e.position)) AS delivered,
                      (true",
        );
        for reader in &self.readers {
            // The schema name is keel_proj_ plus a projection's static name, never user input.
            q.push(" AND (e.event_type <> ALL(")
                .push_bind(reader.event_types.clone())
                .push(format!(
                    "::text[]) OR COALESCE((SELECT a.version FROM {}.keel_applied a
                        WHERE a.aggregate_type = e.aggregate_type AND a.aggregate_id = e.aggregate_id), 0) >= e.version)",
                    reader.schema
                ));
        }
        let (snap_types, snap_kinds): (Vec<String>, Vec<String>) =
            self.snapshot_aggregates.iter().cloned().unzip();
        q.push(") AS applied, (e.aggregate_type <> ALL(")
            .push_bind(snap_types.clone())
            .push(
                "::text[]) OR e.version < COALESCE((SELECT s.version FROM aggregate_snapshots s
                   JOIN unnest(",
            )
            .push_bind(snap_types)
            .push("::text[], ")
            .push_bind(snap_kinds)
            .push(
                "::text[]) k(aggregate_type, kind)
                     ON k.aggregate_type = s.aggregate_type AND k.kind = s.kind
                  WHERE s.aggregate_type = e.aggregate_type AND s.aggregate_id = e.aggregate_id), 0)) AS covered
               FROM events e LEFT JOIN p ON p.event_type = e.event_type),
             ok AS (
               SELECT *, (due AND NOT held AND NOT full_history AND archived AND delivered AND applied
                          AND covered) AS eligible
                 FROM ev),
             cut AS (
               SELECT aggregate_type, aggregate_id, min(version) FILTER (WHERE NOT eligible) AS cut
                 FROM ok GROUP BY aggregate_type, aggregate_id)
             SELECT ok.*, (ok.eligible AND ok.version < COALESCE(cut.cut, 2147483647)) AS victim
               FROM ok JOIN cut USING (aggregate_type, aggregate_id)",
            );
    }
}
