//! keel's Kafka headers (the table in [`super`]): names, and the envelope in both directions.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Error, CONTENT_AVRO};
use crate::model::{is_traceparent, is_tracestate, Metadata, RecordedEvent};

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

/// Metadata keys carried as headers of their own: `(header, metadata key)`.
pub const METADATA_HEADERS: [(&str, &str); 4] = [
    ("keel-correlation-id", Metadata::CORRELATION_ID),
    ("keel-causation-id", Metadata::CAUSATION_ID),
    ("traceparent", Metadata::TRACEPARENT),
    ("tracestate", Metadata::TRACESTATE),
];

/// Whether a metadata value may become its header. Metadata is checked on append, but rows
/// written before a rule existed are not: trace context that is not valid W3C is left out, so
/// a consumer never continues a trace from a garbage header.
fn fits_header(key: &str, value: &str) -> bool {
    match key {
        Metadata::TRACEPARENT => is_traceparent(value),
        Metadata::TRACESTATE => is_tracestate(value),
        _ => true,
    }
}

/// The headers of a Kafka record, as `(name, value)` pairs in a fixed order.
pub fn encode(
    event: &RecordedEvent,
    content_type: &str,
    schema: Option<(i32, i32)>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (EVENT_ID, event.id.to_string()),
        (EVENT_TYPE, event.event_type.clone()),
        (AGGREGATE_TYPE, event.aggregate_type.clone()),
        (AGGREGATE_ID, event.aggregate_id.to_string()),
        (AGGREGATE_VERSION, event.version.to_string()),
        (POSITION, event.position.to_string()),
        (
            CREATED_AT,
            event
                .created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
        (CONTENT_TYPE, content_type.to_owned()),
    ];
    if let Some((id, version)) = schema {
        h.push((SCHEMA_ID, id.to_string()));
        h.push((SCHEMA_VERSION, version.to_string()));
    }
    for (name, key) in METADATA_HEADERS {
        if let Some(v) = event.metadata.get(key).and_then(Value::as_str) {
            if fits_header(key, v) {
                h.push((name, v.to_owned()));
            }
        }
    }
    h
}

/// The record's content type; a record without the header is Avro (what keel wrote before the
/// header existed, and what other Confluent producers write).
pub fn content_type(headers: &HashMap<String, String>) -> &str {
    headers
        .get(CONTENT_TYPE)
        .map(String::as_str)
        .unwrap_or(CONTENT_AVRO)
}

/// The event described by keel's headers, with a `Null` payload and no schema id (both are the
/// value's to give).
pub fn decode(headers: &HashMap<String, String>) -> Result<RecordedEvent, Error> {
    fn get<'h>(h: &'h HashMap<String, String>, name: &'static str) -> Result<&'h str, Error> {
        h.get(name).map(String::as_str).ok_or(Error::Header(name))
    }
    fn parse<T: std::str::FromStr>(
        h: &HashMap<String, String>,
        name: &'static str,
    ) -> Result<T, Error> {
        get(h, name)?.parse().map_err(|_| Error::Header(name))
    }
    let created_at: DateTime<Utc> = DateTime::parse_from_rfc3339(get(headers, CREATED_AT)?)
        .map_err(|_| Error::Header(CREATED_AT))?
        .with_timezone(&Utc);
    let mut metadata = Map::new();
    for (header, key) in METADATA_HEADERS {
        if let Some(v) = headers.get(header) {
            metadata.insert(key.to_owned(), Value::String(v.clone()));
        }
    }
    Ok(RecordedEvent {
        id: parse::<Uuid>(headers, EVENT_ID)?,
        position: parse(headers, POSITION)?,
        aggregate_type: get(headers, AGGREGATE_TYPE)?.to_owned(),
        aggregate_id: parse(headers, AGGREGATE_ID)?,
        version: parse(headers, AGGREGATE_VERSION)?,
        event_type: get(headers, EVENT_TYPE)?.to_owned(),
        schema_id: None,
        schema_version: headers.get(SCHEMA_VERSION).and_then(|v| v.parse().ok()),
        payload: Value::Null,
        metadata: Value::Object(metadata),
        created_at,
    })
}

/// The headers of an example record, for tests that need a well-formed envelope.
#[cfg(test)]
pub(crate) fn example() -> HashMap<String, String> {
    [
        (EVENT_ID, "0b9a7f3e-9a56-4c39-8d8e-2f6f1d2a7c11"),
        (EVENT_TYPE, "agent.state.changed"),
        (AGGREGATE_TYPE, "agent"),
        (AGGREGATE_ID, "3f6c1f0e-8a4b-4f7e-9a51-0c2d6c1f9b10"),
        (AGGREGATE_VERSION, "3"),
        (POSITION, "42"),
        (CREATED_AT, "2026-11-27T10:00:00.000001Z"),
        ("keel-correlation-id", "req-42"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn headers() -> HashMap<String, String> {
        example()
    }

    #[test]
    fn the_envelope_comes_from_keels_headers() {
        let event = decode(&headers()).unwrap();
        assert_eq!((event.version, event.position), (3, 42));
        assert_eq!(event.event_type, "agent.state.changed");
        assert_eq!(event.metadata["correlation_id"], "req-42");
    }

    #[test]
    fn a_missing_or_malformed_header_is_named() {
        let mut h = headers();
        h.remove("keel-position");
        assert_eq!(decode(&h), Err(Error::Header("keel-position")));
        let mut h = headers();
        h.insert("keel-aggregate-version".into(), "three".into());
        assert_eq!(decode(&h), Err(Error::Header("keel-aggregate-version")));
    }

    #[test]
    fn encoding_then_decoding_the_headers_gives_the_envelope_back() {
        let mut event = decode(&headers()).unwrap();
        event.metadata = json!({"correlation_id": "c", "causation_id": "k", "other": 1});
        event.schema_version = Some(2);
        let encoded: HashMap<String, String> = encode(&event, CONTENT_AVRO, Some((7, 2)))
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(encoded[SCHEMA_ID], "7");
        let back = decode(&encoded).unwrap();
        // Free-form metadata keys are not headers; the tracing ones round-trip.
        assert_eq!(
            back.metadata,
            json!({"correlation_id": "c", "causation_id": "k"})
        );
        let traced = json!({
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "k=v",
        });
        event.metadata = traced.clone();
        let encoded: HashMap<String, String> = encode(&event, CONTENT_AVRO, None)
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(decode(&encoded).unwrap().metadata, traced);
        assert_eq!(
            (back.id, back.version, back.schema_version, back.created_at),
            (event.id, event.version, Some(2), event.created_at)
        );
    }

    #[test]
    fn trace_context_that_is_not_valid_w3c_never_becomes_a_header() {
        let mut event = decode(&headers()).unwrap();
        // As a row stored before metadata was checked could hold it.
        event.metadata = json!({
            "traceparent": "00-xyz-01\r\nkeel-event-id: forged",
            "tracestate": "x".repeat(600),
            "correlation_id": "c",
        });
        let names: Vec<&str> = encode(&event, CONTENT_AVRO, None)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(!names.contains(&"traceparent"), "{names:?}");
        assert!(!names.contains(&"tracestate"), "{names:?}");
        assert!(names.contains(&"keel-correlation-id"));
    }
}
