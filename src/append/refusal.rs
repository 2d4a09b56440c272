//! Why the write path refuses a batch. Every refusal writes nothing, names the event (`index`, its
//! place in the batch) and has a stable code, the same over HTTP and in the library.

use serde_json::{json, Value};
use uuid::Uuid;

use crate::model::{AggregateType, EventType, SchemaRef};
use crate::schema::PayloadError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("an append needs at least one event")]
    EmptyBatch,

    #[error("event id {id} appears twice in the batch")]
    DuplicateEventId { index: usize, id: Uuid },

    #[error("payload must be a JSON object")]
    InvalidPayload { index: usize },

    /// The type has no schema in the registry (no catalog entry was ever registered for it).
    #[error("event type {event_type} is not registered")]
    UnknownEventType { index: usize, event_type: EventType },

    #[error("event type {event_type} has no schema version {version}")]
    UnknownSchemaVersion {
        index: usize,
        event_type: EventType,
        version: i32,
    },

    /// The catalog ties the type to another aggregate type.
    #[error("events of type {event_type} belong to aggregates of type {required}")]
    AggregateTypeMismatch {
        index: usize,
        event_type: EventType,
        required: AggregateType,
    },

    #[error("payload does not match schema version {} of {event_type}: {error}", schema.version)]
    SchemaMismatch {
        index: usize,
        event_type: EventType,
        error: PayloadError,
        schema: SchemaRef,
    },
}

impl Refusal {
    /// The machine-readable code, as the HTTP API returns it.
    pub fn code(&self) -> &'static str {
        match self {
            Self::EmptyBatch => "empty_batch",
            Self::DuplicateEventId { .. } => "duplicate_event_id",
            Self::InvalidPayload { .. } => "invalid_payload",
            Self::UnknownEventType { .. } => "unknown_event_type",
            Self::UnknownSchemaVersion { .. } => "unknown_schema_version",
            Self::AggregateTypeMismatch { .. } => "aggregate_type_mismatch",
            Self::SchemaMismatch { .. } => "schema_validation_failed",
        }
    }

    /// The refused event's place in the batch.
    pub fn index(&self) -> Option<usize> {
        match self {
            Self::EmptyBatch => None,
            Self::DuplicateEventId { index, .. }
            | Self::InvalidPayload { index }
            | Self::UnknownEventType { index, .. }
            | Self::UnknownSchemaVersion { index, .. }
            | Self::AggregateTypeMismatch { index, .. }
            | Self::SchemaMismatch { index, .. } => Some(*index),
        }
    }

    /// The details the HTTP API returns beside the code (`index` included).
    pub fn details(&self) -> Value {
        let mut details = match self {
            Self::EmptyBatch | Self::DuplicateEventId { .. } | Self::InvalidPayload { .. } => {
                json!({})
            }
            Self::UnknownEventType { event_type, .. } => json!({"event_type": event_type}),
            Self::UnknownSchemaVersion {
                event_type,
                version,
                ..
            } => json!({"event_type": event_type, "schema_version": version}),
            Self::AggregateTypeMismatch {
                event_type,
                required,
                ..
            } => json!({"event_type": event_type, "aggregate_type": required}),
            Self::SchemaMismatch { error, schema, .. } => json!({
                "path": error.path,
                "expected": error.expected,
                "schema_id": schema.id,
                "schema_version": schema.version,
            }),
        };
        if let (Some(index), Some(map)) = (self.index(), details.as_object_mut()) {
            map.insert("index".into(), json!(index));
        }
        details
    }
}
