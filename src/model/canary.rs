//! keel's own canary events, as every layer that meets one names it: the write path appends them
//! outside the catalog and the registry (`health::canary`), the relay sends them to Kafka as the
//! JSON envelope since they have no registered schema, and the observers decode them.
//!
//! One aggregate carries every canary, with [`EVENT_TYPE`] events only.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The canary's aggregate type. Its Kafka topic follows the relay's default rule
/// (`relay.kafka.topic_prefix` + this, so `keel.keel.canary` by default); its Redis channel and
/// stream take the sink's prefixes the same way.
pub const AGGREGATE_TYPE: &str = "keel.canary";

/// The one aggregate every canary is appended to (every keel process uses this id).
pub const AGGREGATE_ID: Uuid = uuid::uuid!("6b65656c-0000-4000-8000-63616e617279");

/// The canary's event type.
pub const EVENT_TYPE: &str = "keel.canary.heartbeat";

/// Whether an event of these types is a canary, which only keel itself writes.
pub fn is_canary(aggregate_type: &str, event_type: &str) -> bool {
    aggregate_type == AGGREGATE_TYPE && event_type == EVENT_TYPE
}

/// A canary's payload: its number in the database's sequence of canaries and when it was
/// written (the database's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub seq: i64,
    pub sent_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AggregateType, EventType};

    #[test]
    fn the_canarys_names_are_valid_names() {
        assert!(AggregateType::parse(AGGREGATE_TYPE).is_ok());
        assert!(EventType::parse(EVENT_TYPE).is_ok());
        assert!(is_canary(AGGREGATE_TYPE, EVENT_TYPE));
        assert!(!is_canary(AGGREGATE_TYPE, "agent.state.changed"));
        assert!(!is_canary("agent", EVENT_TYPE));
    }
}
