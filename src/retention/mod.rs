//! Retention: what may leave the hot store, and the guarded purge that removes it.
//!
//! Each event type's policy is in the catalog (`[retention]` in `event.toml`,
//! [`crate::catalog::retention`]); each aggregate type's history rule in
//! `schemas/_aggregates/<type>.toml`. An event is **due** once it is older than its type's `hot`
//! age. A due event is **eligible** when nothing still needs it from the store:
//! - its type has no legal hold;
//! - it is in a verified archive segment, unless its type says `archive = "none"` with
//!   `allow_loss = true` (see [`crate::archive::verify`] for what verified means);
//! - it has no outbox row and is not parked in the relay (every sink has it);
//! - every projection that reads its type has applied it (`keel_applied` is at or past its
//!   version), so a lagging runner never finds its input gone;
//! - its aggregate's history rule allows it: `full` keeps everything, `after_snapshot` only
//!   lets go what the aggregate's latest snapshot of the named kind covers.
//!
//! Then the **prefix rule**: an aggregate loses only a prefix of its history. Its cut is its
//! first event that is not eligible, whatever that event's type; only versions below the cut go.
//! No aggregate ever has a hole in the middle of its history, and `streams.version` (optimistic
//! concurrency) is untouched, so an aggregate whose every event was purged still refuses
//! `expected_version = 0`.
//!
//! [`plan`] reports all of this without changing anything; [`purge`] deletes the eligible
//! prefixes in small transactions (each records the type's new horizon, the aggregates'
//! `truncated_before`, the segments it touched and an audit row), so a purge killed midway
//! leaves a consistent store and a rerun carries on.

mod scan;

pub mod plan;
pub mod purge;
pub mod schedule;

pub use plan::{plan, Plan, TypePlan};
pub use purge::{purge, PurgeOptions, PurgeReport};

use std::sync::Arc;

use crate::projection::Projection;

/// A projection the purge must not outrun: its live schema and the types it reads.
#[derive(Debug, Clone)]
pub struct Reader {
    pub name: String,
    pub schema: String,
    pub event_types: Vec<String>,
}

impl Reader {
    /// A saga's inputs: they run as the projection `saga_<name>` and must not be outrun either.
    pub fn of_saga(saga: &Arc<dyn crate::saga::DynSaga>) -> Self {
        let name = crate::saga::inputs::projection_name(saga.name());
        Self {
            schema: crate::projection::live_schema(&name),
            name,
            event_types: saga
                .routes()
                .iter()
                .map(|r| r.event_type.to_owned())
                .collect(),
        }
    }

    pub fn of(projection: &Arc<dyn Projection>) -> Self {
        Self {
            name: projection.name().into(),
            schema: crate::projection::live_schema(projection.name()),
            event_types: projection
                .event_types()
                .iter()
                .map(|t| t.to_string())
                .collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("projection {0:?} is registered in this database but this process does not know which event types it reads, so nothing it might need can be purged; run the purge where that projection is wired, or remove it (DELETE FROM projections WHERE name = ...) if it is gone for good")]
    UnknownReader(String),
    #[error(transparent)]
    Archive(#[from] crate::archive::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}
