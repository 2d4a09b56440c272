//! Events as proposed (`NewEvent`), as checked for the store (`CheckedEvent`) and as stored
//! (`RecordedEvent`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{AggregateType, EventType};

/// An event a producer proposes to append, as it wrote it. Nothing is checked yet: the write path
/// (`keel::append`) validates it against the catalog and the schema registry and turns it into a
/// [`CheckedEvent`], the only thing the store writes.
///
/// `id` makes retries idempotent: an event whose id is already stored with the same content is not
/// written again.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: EventType,
    pub payload: Value,
    pub metadata: Metadata,
    /// Validate against this version of the type's schema instead of the latest.
    pub schema_version: Option<i32>,
}

impl NewEvent {
    /// An event with a fresh time-ordered (v7) id and no metadata.
    pub fn new(event_type: EventType, payload: Value) -> Self {
        Self {
            id: Uuid::now_v7(),
            event_type,
            payload,
            metadata: Metadata::default(),
            schema_version: None,
        }
    }

    pub fn with_id(self, id: Uuid) -> Self {
        Self { id, ..self }
    }

    pub fn with_metadata(self, metadata: Metadata) -> Self {
        Self { metadata, ..self }
    }

    pub fn with_schema_version(self, version: i32) -> Self {
        Self {
            schema_version: Some(version),
            ..self
        }
    }
}

/// An event that passed the write path's checks: its type is in the catalog and the registry, it
/// belongs to the aggregate's type, and its payload is normalised against the schema recorded in
/// `schema` (absent only when payload validation is switched off).
///
/// The fields are private and the constructor is the crate's: outside keel a `CheckedEvent` can
/// only come from `keel::append::Validator`, so an unchecked event cannot reach the store.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedEvent {
    id: Uuid,
    event_type: EventType,
    payload: Value,
    metadata: Metadata,
    schema: Option<SchemaRef>,
}

impl CheckedEvent {
    /// Only `append::validate` calls this, after the checks above, and `health::canary` for
    /// keel's own canary events ([`super::canary`]), which no catalog entry or schema describes.
    pub(crate) fn new(
        id: Uuid,
        event_type: EventType,
        payload: Value,
        metadata: Metadata,
        schema: Option<SchemaRef>,
    ) -> Self {
        Self {
            id,
            event_type,
            payload,
            metadata,
            schema,
        }
    }

    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    /// The payload as stored: normalised, with the schema's defaults filled in.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The registry schema that validated the payload, if one did.
    pub fn schema(&self) -> Option<SchemaRef> {
        self.schema
    }
}

/// A schema in the registry: its global id and its version within the event type's subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRef {
    pub id: i32,
    pub version: i32,
}

/// Free-form event metadata, a JSON object. The tracing keys have fixed meanings and are checked,
/// because the relay copies them into Kafka headers: `correlation_id` and `causation_id` are
/// non-empty strings of at most 256 characters with no control characters (no CR or LF can reach
/// a header), `traceparent` is a W3C trace context header (`00-<32 hex>-<16 hex>-<2 hex>`), and
/// `tracestate`, when present, is a W3C `tracestate` of at most 32 members and 512 characters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Metadata(Map<String, Value>);

/// Why a metadata object was refused, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metadata.{key}: {rule}")]
pub struct InvalidMetadata {
    pub key: String,
    pub rule: &'static str,
}

impl Metadata {
    pub const CORRELATION_ID: &'static str = "correlation_id";
    pub const CAUSATION_ID: &'static str = "causation_id";
    pub const TRACEPARENT: &'static str = "traceparent";
    pub const TRACESTATE: &'static str = "tracestate";

    pub fn parse(map: Map<String, Value>) -> Result<Self, InvalidMetadata> {
        let fail = |key: &str, rule| {
            Err(InvalidMetadata {
                key: key.to_owned(),
                rule,
            })
        };
        for key in [Self::CORRELATION_ID, Self::CAUSATION_ID] {
            match map.get(key) {
                None => {}
                Some(Value::String(s))
                    if !s.is_empty()
                        && s.chars().count() <= 256
                        && !s.chars().any(char::is_control) => {}
                Some(_) => {
                    return fail(
                        key,
                        "must be a string of 1 to 256 characters without control characters",
                    )
                }
            }
        }
        match map.get(Self::TRACEPARENT) {
            None => {}
            Some(Value::String(s)) if is_traceparent(s) => {}
            Some(_) => return fail(Self::TRACEPARENT, "must be a W3C traceparent header"),
        }
        match map.get(Self::TRACESTATE) {
            None => {}
            Some(Value::String(s)) if is_tracestate(s) => {}
            Some(_) => {
                return fail(
                    Self::TRACESTATE,
                    "must be a W3C tracestate of at most 32 members and 512 characters",
                )
            }
        }
        Ok(Self(map))
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }

    pub fn correlation_id(&self) -> Option<&str> {
        self.get_str(Self::CORRELATION_ID)
    }

    pub fn causation_id(&self) -> Option<&str> {
        self.get_str(Self::CAUSATION_ID)
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.get_str(Self::TRACEPARENT)
    }

    /// Sets `traceparent` (and `tracestate`, when given and the metadata has none) if the
    /// metadata has no `traceparent` yet; values that are not valid W3C trace context are not
    /// stored.
    pub fn or_trace_context(mut self, traceparent: &str, tracestate: Option<&str>) -> Self {
        if self.0.contains_key(Self::TRACEPARENT) || !is_traceparent(traceparent) {
            return self;
        }
        self.0.insert(
            Self::TRACEPARENT.to_owned(),
            Value::String(traceparent.to_owned()),
        );
        if let Some(state) = tracestate.filter(|s| is_tracestate(s)) {
            self.0
                .entry(Self::TRACESTATE.to_owned())
                .or_insert_with(|| Value::String(state.to_owned()));
        }
        self
    }

    pub fn into_value(self) -> Value {
        Value::Object(self.0)
    }
}

/// Whether `s` is a W3C `traceparent`: `version-traceid-parentid-flags`, lowercase hex, with the
/// all-zero ids that the W3C spec forbids refused. The one check for metadata, request headers
/// and Kafka headers alike.
pub fn is_traceparent(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    let hex = |p: &str, len: usize| {
        p.len() == len
            && p.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let nonzero = |p: &str| p.bytes().any(|b| b != b'0');
    matches!(parts.as_slice(), [v, t, p, f]
        if hex(v, 2) && *v != "ff" && hex(t, 32) && nonzero(t) && hex(p, 16) && nonzero(p) && hex(f, 2))
}

/// Whether `s` is a W3C `tracestate` keel accepts: `key=value` list members separated by commas,
/// at most 32 and 512 characters in all, in the W3C characters: keys lowercase `a-z0-9_-*/@`,
/// values printable ASCII without `,` and `=`.
pub fn is_tracestate(s: &str) -> bool {
    let members: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .collect();
    let key_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= 256
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/@".contains(&b))
    };
    let value_ok = |v: &str| {
        !v.is_empty()
            && v.len() <= 256
            && v.bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
    };
    s.len() <= 512
        && !members.is_empty()
        && members.len() <= 32
        && members.iter().all(|m| {
            m.split_once('=')
                .is_some_and(|(k, v)| key_ok(k) && value_ok(v.trim_end()))
        })
}

/// An event as stored.
/// Rows decode into it through the store (`store::row`), so the model needs no database crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub id: Uuid,
    /// Global, unique, but not gap-free and not commit-ordered; see `store::log` for the order
    /// readers use.
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub version: i32,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_id: Option<i32>,
    pub schema_version: Option<i32>,
    pub payload: Value,
    pub metadata: Value,
    pub created_at: DateTime<Utc>,
}

/// One appended event's place in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendedEvent {
    pub id: Uuid,
    pub version: i32,
    pub position: i64,
}

/// The outcome of an append: the events in batch order and the aggregate's version after them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    pub aggregate_type: AggregateType,
    pub aggregate_id: Uuid,
    pub events: Vec<AppendedEvent>,
    pub version: i32,
    /// True when every event was already stored with the same content, so nothing was written.
    pub idempotent_replay: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> Result<Metadata, InvalidMetadata> {
        Metadata::parse(v.as_object().unwrap().clone())
    }

    #[test]
    fn accepts_tracing_keys_and_free_form_ones() {
        let m = meta(json!({
            "correlation_id": "c-1",
            "causation_id": "7f1c",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
            "user": {"id": 3}
        }))
        .unwrap();
        assert_eq!(m.correlation_id(), Some("c-1"));
        assert_eq!(m.causation_id(), Some("7f1c"));
        assert!(m.traceparent().is_some());
    }

    #[test]
    fn rejects_malformed_tracing_keys_by_name() {
        let cases = [
            (json!({"correlation_id": 5}), "correlation_id"),
            (json!({"causation_id": ""}), "causation_id"),
            (
                json!({"traceparent": "00-xyz-00f067aa0ba902b7-01"}),
                "traceparent",
            ),
            (
                json!({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}),
                "traceparent",
            ),
            (
                json!({"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"}),
                "traceparent",
            ),
            // CR/LF or another control character would reach a Kafka header.
            (
                json!({"correlation_id": "req-1\r\nkeel-event-id: forged"}),
                "correlation_id",
            ),
            (json!({"causation_id": "a\u{0007}b"}), "causation_id"),
            (json!({"tracestate": "vendor=ok\r\nx=y"}), "tracestate"),
            (json!({"tracestate": "Upper=1"}), "tracestate"),
            (
                json!({"tracestate": (0..20).map(|i| format!("k{i}={}", "v".repeat(30))).collect::<Vec<_>>().join(",")}),
                "tracestate",
            ),
            (
                json!({"tracestate": (0..33).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join(",")}),
                "tracestate",
            ),
        ];
        for (value, key) in cases {
            assert_eq!(meta(value.clone()).unwrap_err().key, key, "{value}");
        }
    }

    #[test]
    fn a_trace_context_is_added_only_where_the_client_gave_none_and_only_when_valid() {
        let ours = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let added = Metadata::default().or_trace_context(ours, Some("k=v"));
        assert_eq!(
            added.into_value(),
            json!({"traceparent": ours, "tracestate": "k=v"})
        );
        let kept = meta(json!({"traceparent": theirs}))
            .unwrap()
            .or_trace_context(ours, Some("k=v"));
        assert_eq!(kept.into_value(), json!({"traceparent": theirs}));
        let refused = Metadata::default().or_trace_context("00-xyz-01", None);
        assert_eq!(refused.into_value(), json!({}));
        let state_refused = Metadata::default().or_trace_context(ours, Some("Bad=1"));
        assert_eq!(state_refused.into_value(), json!({"traceparent": ours}));
    }
}
