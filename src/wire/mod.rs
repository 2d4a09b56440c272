//! What a published event looks like on the wire, both ways, with no IO: keel's Kafka headers
//! ([`header`]), the Confluent-framed Avro value ([`frame`]), and the JSON envelope that JSON topics
//! and Redis carry ([`json`]). The relay encodes with it; the consumer runtime, the dead-letter
//! store and republish decode or read headers with it, so the format is written down once.
//!
//! # Kafka headers (all UTF-8 strings)
//! | header | value |
//! |---|---|
//! | `keel-event-id` | the event's UUID; consumers deduplicate on it |
//! | `keel-event-type` | for example `agent.state.changed` |
//! | `keel-aggregate-type`, `keel-aggregate-id` | the aggregate; the id is also the record key |
//! | `keel-aggregate-version` | the event's version in its aggregate (1, 2, ...) |
//! | `keel-position` | the event's global position in keel's store |
//! | `keel-schema-id`, `keel-schema-version` | the registry schema that encoded the value (when it has one) |
//! | `keel-created-at` | commit-side timestamp, RFC 3339 |
//! | `keel-content-type` | `application/vnd.confluent.avro` or `application/json` |
//! | `keel-correlation-id`, `keel-causation-id` | from the event's metadata, when present |
//! | `traceparent`, `tracestate` | W3C trace context, from the event's metadata, when present and valid |
//!
//! The trace context headers carry the event's *creation* context unchanged: the one stored in
//! its metadata, which is the append request's span when keel exports traces (or the client's
//! own, when it set `metadata.traceparent`). The relay's `publish <topic>` span and every
//! consumer's `process <topic>` span are both children of it, so they land in the append's
//! trace without the headers depending on which relay attempt delivered the record (the
//! OpenTelemetry messaging conventions' creation context; a redelivery carries the same headers).

pub mod datum;
pub mod frame;
pub mod header;
pub mod json;

/// The value is Confluent-framed Avro.
pub const CONTENT_AVRO: &str = "application/vnd.confluent.avro";
/// The value is the JSON envelope.
pub const CONTENT_JSON: &str = "application/json";

/// Why bytes or headers are not a keel event. Permanent: the same input never decodes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("header {0} is missing or malformed")]
    Header(&'static str),
    #[error("unknown content type {0:?}")]
    ContentType(String),
    #[error("the value is not Confluent-framed Avro (magic byte 0 and a 4-byte schema id)")]
    Framing,
    #[error("the payload does not fit schema id {id}: {reason}")]
    Encode { id: i32, reason: String },
    #[error("the value does not decode with schema id {id}: {reason}")]
    Avro { id: i32, reason: String },
    #[error("the JSON envelope is invalid: {0}")]
    Json(String),
}
