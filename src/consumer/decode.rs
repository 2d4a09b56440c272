//! Turning a Kafka record keel published back into an event.
//!
//! * The envelope (id, type, aggregate, version, position, created-at, tracing ids) comes from
//!   keel's headers; see [`crate::relay::envelope`].
//! * A Confluent-framed value is decoded with the writer's schema, fetched from keel's registry by
//!   the id in its first five bytes (cached by the registry). A JSON value (topics in `relay.kafka.json_topics`)
//!   is the envelope itself.
//! * With a reader version, the payload is resolved to it: fields the writer lacked get their
//!   defaults (upcasting), exactly as reads through the API do.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::model::{RecordedEvent, VersionSpec};
use crate::registry::Registry;
use crate::relay::envelope::{header, CONTENT_AVRO, CONTENT_JSON, METADATA_HEADERS};
use crate::schema::ParsedSchema;

/// Why a record cannot be decoded. A subscriber treats these as permanent: the record will not
/// decode on a retry either.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("header {0} is missing or malformed")]
    Header(&'static str),
    #[error("unknown content type {0:?}")]
    ContentType(String),
    #[error("the value is not Confluent-framed Avro (magic byte 0 and a 4-byte schema id)")]
    Framing,
    #[error("schema id {id}: {reason}")]
    Schema { id: i32, reason: String },
    #[error("the value does not decode with schema id {id}: {reason}")]
    Avro { id: i32, reason: String },
    #[error("the JSON envelope is invalid: {0}")]
    Json(String),
    #[error("cannot read the payload as the requested version: {0}")]
    Upcast(String),
}

/// Decodes records; writer schemas come from the registry's cache by id.
pub struct Decoder {
    registry: Arc<Registry>,
}

impl Decoder {
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }

    /// The event in a record with `headers` and `value`; with `reader`, its payload resolved to
    /// that version of its type's schema.
    pub async fn decode(
        &self,
        headers: &HashMap<String, String>,
        value: &[u8],
        reader: Option<VersionSpec>,
    ) -> Result<RecordedEvent, DecodeError> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(String::as_str)
            .unwrap_or(CONTENT_AVRO);
        let mut event = match content_type {
            CONTENT_JSON => serde_json::from_slice::<RecordedEvent>(value)
                .map_err(|e| DecodeError::Json(e.to_string()))?,
            CONTENT_AVRO => {
                let mut event = envelope(headers)?;
                let (id, payload) = self.avro_payload(value).await?;
                event.schema_id = Some(id);
                event.payload = payload;
                event
            }
            other => return Err(DecodeError::ContentType(other.to_owned())),
        };
        if let Some(wanted) = reader {
            self.registry
                .upcast(&mut event, wanted)
                .await
                .map_err(|e| DecodeError::Upcast(e.to_string()))?;
        }
        Ok(event)
    }

    async fn avro_payload(&self, value: &[u8]) -> Result<(i32, Value), DecodeError> {
        if value.len() < 5 || value[0] != 0 {
            return Err(DecodeError::Framing);
        }
        let id = i32::from_be_bytes(value[1..5].try_into().expect("four bytes"));
        let schema = self.schema(id).await?;
        let datum =
            apache_avro::from_avro_datum(schema.schema(), &mut &value[5..], None).map_err(|e| {
                DecodeError::Avro {
                    id,
                    reason: e.to_string(),
                }
            })?;
        let payload = Value::try_from(datum).map_err(|e| DecodeError::Avro {
            id,
            reason: e.to_string(),
        })?;
        Ok((id, payload))
    }

    async fn schema(&self, id: i32) -> Result<Arc<ParsedSchema>, DecodeError> {
        self.registry
            .parsed_by_id(id)
            .await
            .map_err(|e| DecodeError::Schema {
                id,
                reason: e.to_string(),
            })
    }
}

/// The event described by keel's headers, with an empty payload.
fn envelope(headers: &HashMap<String, String>) -> Result<RecordedEvent, DecodeError> {
    fn get<'h>(h: &'h HashMap<String, String>, name: &'static str) -> Result<&'h str, DecodeError> {
        h.get(name)
            .map(String::as_str)
            .ok_or(DecodeError::Header(name))
    }
    fn parse<T: std::str::FromStr>(
        h: &HashMap<String, String>,
        name: &'static str,
    ) -> Result<T, DecodeError> {
        get(h, name)?.parse().map_err(|_| DecodeError::Header(name))
    }
    let created_at: DateTime<Utc> = DateTime::parse_from_rfc3339(get(headers, header::CREATED_AT)?)
        .map_err(|_| DecodeError::Header(header::CREATED_AT))?
        .with_timezone(&Utc);
    let mut metadata = Map::new();
    for (header, key) in METADATA_HEADERS {
        if let Some(v) = headers.get(header) {
            metadata.insert(key.to_owned(), Value::String(v.clone()));
        }
    }
    Ok(RecordedEvent {
        id: parse::<Uuid>(headers, header::EVENT_ID)?,
        position: parse(headers, header::POSITION)?,
        aggregate_type: get(headers, header::AGGREGATE_TYPE)?.to_owned(),
        aggregate_id: parse(headers, header::AGGREGATE_ID)?,
        version: parse(headers, header::AGGREGATE_VERSION)?,
        event_type: get(headers, header::EVENT_TYPE)?.to_owned(),
        schema_id: None,
        schema_version: headers
            .get(header::SCHEMA_VERSION)
            .and_then(|v| v.parse().ok()),
        payload: Value::Null,
        metadata: Value::Object(metadata),
        created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers() -> HashMap<String, String> {
        [
            ("keel-event-id", "0b9a7f3e-9a56-4c39-8d8e-2f6f1d2a7c11"),
            ("keel-event-type", "agent.state.changed"),
            ("keel-aggregate-type", "agent"),
            ("keel-aggregate-id", "3f6c1f0e-8a4b-4f7e-9a51-0c2d6c1f9b10"),
            ("keel-aggregate-version", "3"),
            ("keel-position", "42"),
            ("keel-created-at", "2026-11-27T10:00:00.000001Z"),
            ("keel-correlation-id", "req-42"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn the_envelope_comes_from_keels_headers() {
        let event = envelope(&headers()).unwrap();
        assert_eq!((event.version, event.position), (3, 42));
        assert_eq!(event.event_type, "agent.state.changed");
        assert_eq!(event.metadata["correlation_id"], "req-42");
    }

    #[test]
    fn a_missing_or_malformed_header_is_named() {
        let mut h = headers();
        h.remove("keel-position");
        assert!(matches!(
            envelope(&h),
            Err(DecodeError::Header("keel-position"))
        ));
        let mut h = headers();
        h.insert("keel-aggregate-version".into(), "three".into());
        assert!(matches!(
            envelope(&h),
            Err(DecodeError::Header("keel-aggregate-version"))
        ));
    }

    #[tokio::test]
    async fn a_value_without_the_confluent_frame_is_refused_before_any_lookup() {
        // A lazy pool never connects: framing is checked first.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let decoder = Decoder::new(Arc::new(Registry::new(pool)));
        for value in [&b""[..], b"\x01\x00\x00\x00\x01abc", b"\x00\x00"] {
            let err = decoder.decode(&headers(), value, None).await.unwrap_err();
            assert!(matches!(err, DecodeError::Framing), "{err}");
        }
    }
}
