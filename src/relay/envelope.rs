//! What a published event looks like: Kafka headers, the Confluent-framed Avro value, and the
//! JSON envelope used for JSON topics and Redis.
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
//! | `traceparent` | W3C trace context, from the event's metadata, when present |

use std::sync::Arc;

use apache_avro::types::Value as AvroValue;
use serde_json::Value;

use crate::model::{Metadata, RecordedEvent};
use crate::schema::ParsedSchema;

pub const CONTENT_AVRO: &str = "application/vnd.confluent.avro";
pub const CONTENT_JSON: &str = "application/json";

/// The Confluent wire format: magic byte 0, the schema id (4 bytes, big-endian), then the Avro
/// binary encoding of `payload` with `schema`.
pub fn confluent_avro(
    schema_id: i32,
    schema: &Arc<ParsedSchema>,
    payload: &Value,
) -> Result<Vec<u8>, String> {
    let value = AvroValue::from(payload.clone())
        .resolve(schema.schema())
        .map_err(|e| format!("payload does not fit schema id {schema_id}: {e}"))?;
    let datum = apache_avro::to_avro_datum(schema.schema(), value)
        .map_err(|e| format!("cannot encode with schema id {schema_id}: {e}"))?;
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

/// keel's Kafka header names (see the table above).
pub mod header {
    pub const EVENT_ID: &str = "keel-event-id";
    pub const EVENT_TYPE: &str = "keel-event-type";
    pub const AGGREGATE_TYPE: &str = "keel-aggregate-type";
    pub const AGGREGATE_ID: &str = "keel-aggregate-id";
    pub const AGGREGATE_VERSION: &str = "keel-aggregate-version";
    pub const POSITION: &str = "keel-position";
    pub const CREATED_AT: &str = "keel-created-at";
    pub const CONTENT_TYPE: &str = "keel-content-type";
    pub const SCHEMA_ID: &str = "keel-schema-id";
    pub const SCHEMA_VERSION: &str = "keel-schema-version";
}

/// Metadata keys carried as headers of their own: `(header, metadata key)`.
pub const METADATA_HEADERS: [(&str, &str); 3] = [
    ("keel-correlation-id", Metadata::CORRELATION_ID),
    ("keel-causation-id", Metadata::CAUSATION_ID),
    ("traceparent", Metadata::TRACEPARENT),
];

/// The headers of a Kafka record, as `(name, value)` pairs in a fixed order.
pub fn headers(
    event: &RecordedEvent,
    content_type: &str,
    schema: Option<(i32, i32)>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (header::EVENT_ID, event.id.to_string()),
        (header::EVENT_TYPE, event.event_type.clone()),
        (header::AGGREGATE_TYPE, event.aggregate_type.clone()),
        (header::AGGREGATE_ID, event.aggregate_id.to_string()),
        (header::AGGREGATE_VERSION, event.version.to_string()),
        (header::POSITION, event.position.to_string()),
        (
            header::CREATED_AT,
            event
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        (header::CONTENT_TYPE, content_type.to_owned()),
    ];
    if let Some((id, version)) = schema {
        h.push((header::SCHEMA_ID, id.to_string()));
        h.push((header::SCHEMA_VERSION, version.to_string()));
    }
    for (name, key) in METADATA_HEADERS {
        if let Some(v) = event.metadata.get(key).and_then(Value::as_str) {
            h.push((name, v.to_owned()));
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use apache_avro::from_avro_datum;
    use serde_json::json;

    fn schema() -> Arc<ParsedSchema> {
        Arc::new(
            ParsedSchema::parse(
                r#"{"type":"record","name":"t.e","fields":[
                    {"name":"status","type":"string"},
                    {"name":"note","type":["null","string"],"default":null},
                    {"name":"count","type":"long"}]}"#,
            )
            .unwrap(),
        )
    }

    #[test]
    fn the_value_is_confluent_framed_avro_that_decodes_with_the_schema() {
        let s = schema();
        let bytes =
            confluent_avro(42, &s, &json!({"status": "ok", "note": null, "count": 7})).unwrap();
        assert_eq!(bytes[0], 0);
        assert_eq!(i32::from_be_bytes(bytes[1..5].try_into().unwrap()), 42);
        let decoded = from_avro_datum(s.schema(), &mut &bytes[5..], None).unwrap();
        assert_eq!(
            decoded,
            AvroValue::Record(vec![
                ("status".into(), AvroValue::String("ok".into())),
                (
                    "note".into(),
                    AvroValue::Union(0, Box::new(AvroValue::Null))
                ),
                ("count".into(), AvroValue::Long(7)),
            ])
        );
    }

    #[test]
    fn a_payload_that_does_not_fit_is_an_error_not_a_panic() {
        let err = confluent_avro(1, &schema(), &json!({"status": 5})).unwrap_err();
        assert!(err.contains("schema id 1"), "{err}");
    }
}
