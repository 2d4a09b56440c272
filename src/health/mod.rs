//! Pipeline health: what `/v1/health/pipeline` answers, on every keel process.
//!
//! * [`Monitor`] is a long-lived task that samples the whole pipeline from PostgreSQL (stage
//!   heartbeats from [`crate::heartbeat`], the store's head, the relay's cursors and outbox, the
//!   projections' checkpoints), Kafka (partition ends, groups' committed offsets) and Redis, and
//!   keeps each stage's history between samples. A request only reads its last verdict, so a
//!   stall is judged over time, never from one request's snapshot.
//! * Each stage is compared with the stage upstream of it ([`rules`]): a relay sink with the
//!   outbox rows waiting for it, a consumer group or projection with the ends of the partitions it
//!   reads. Never with its own last mark: a frozen mark next to a frozen stage reads as "no lag".
//! * Liveness is separate from progress: a stage's loop beats even when idle, so an idle pipeline
//!   stays healthy and a frozen process shows within the stall threshold.
//! * [`canary`] sends a heartbeat event through the whole path and records where it was seen.
//! * Slow but moving (a rebuild, a catch-up) is `degraded`, never `unhealthy`.

pub mod canary;
pub mod kafka;
pub mod monitor;
pub mod reading;
pub mod rules;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use self::monitor::{Monitor, Watching};
pub use self::reading::{History, Reading};

/// One component's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Degraded,
    Unhealthy,
}

impl Status {
    /// The value of `keel_pipeline_status`.
    pub fn gauge(self) -> f64 {
        match self {
            Status::Ok => 0.0,
            Status::Degraded => 1.0,
            Status::Unhealthy => 2.0,
        }
    }
}

/// A component's status, why, and since when it has had that status.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Component {
    pub status: Status,
    pub reason: String,
    pub since: DateTime<Utc>,
}

/// The whole pipeline's verdict: the worst of its components'.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub status: Status,
    pub components: BTreeMap<String, Component>,
}

impl Verdict {
    pub fn new(components: BTreeMap<String, Component>) -> Self {
        let status = components
            .values()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok);
        Self { status, components }
    }
}
