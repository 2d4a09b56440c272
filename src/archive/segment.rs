//! One archive segment file: an Avro Object Container File of [`ArchivedEvent`] records.
//!
//! The file is open: any Avro reader (fastavro, avro-c's `avrocat`, Java, Spark) opens it without
//! keel, because the writer's schema is embedded and the default codec, deflate, is the one the
//! Avro specification requires every reader to support. Each record is the event exactly as the
//! store held it: its place in the log (`position`, `tx_id`), ids, aggregate, version, schema,
//! time, and the payload and metadata as PostgreSQL's own text of the `jsonb` (`payload::text`),
//! so nothing a schema does not know about is lost and a restore gives back the same `jsonb`.
//!
//! Avro file bytes are not reproducible: the sync marker is random and the header metadata is
//! written from a hash map. So the file's sha256 only says "this is the object we uploaded"; what
//! the records are is pinned by the **content digest**, the sha256 of the records' Avro binary
//! encodings concatenated in cursor order. It does not depend on the codec, the marker or the
//! header, so it can be recomputed from the database rows and compared (`keel archive verify
//! --against-db`).

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::types::Value as Avro;
use apache_avro::{Codec, DeflateSettings, Reader, Schema, Writer};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::model::RecordedEvent;
use crate::store::{LogCursor, LoggedEvent};

/// The envelope every archived event is written in. Version 1 of the archive format.
const ENVELOPE: &str = r#"{
  "type": "record",
  "name": "EventV1",
  "namespace": "keel.archive",
  "doc": "One event of keel's store, as it was in PostgreSQL when it was archived.",
  "fields": [
    {"name": "position", "type": "long", "doc": "events.position: global, unique, not commit-ordered"},
    {"name": "tx_id", "type": "long", "doc": "events.tx_id: the writing transaction; the log orders by (tx_id, position)"},
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "aggregate_type", "type": "string"},
    {"name": "aggregate_id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "version", "type": "int"},
    {"name": "event_type", "type": "string"},
    {"name": "schema_id", "type": ["null", "int"], "default": null},
    {"name": "schema_version", "type": ["null", "int"], "default": null},
    {"name": "created_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
    {"name": "payload_json", "type": "string", "doc": "PostgreSQL's text of the jsonb payload"},
    {"name": "metadata_json", "type": "string", "doc": "PostgreSQL's text of the jsonb metadata"}
  ]
}"#;

/// The archive format version, in every file's header as `keel.format`.
pub const FORMAT: &str = "1";

fn envelope() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| match Schema::parse_str(ENVELOPE) {
        Ok(schema) => schema,
        Err(e) => unreachable!("the archive envelope is valid Avro: {e}"),
    })
}

/// One event in an archive segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ArchivedEvent {
    pub position: i64,
    pub tx_id: i64,
    pub id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    pub version: i32,
    pub event_type: String,
    pub schema_id: Option<i32>,
    pub schema_version: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub payload_json: String,
    pub metadata_json: String,
}

/// The columns of [`ArchivedEvent`] read from `events`, with the JSON as PostgreSQL's own text.
pub(crate) const ARCHIVED_COLUMNS: &str = "position, tx_id::text::bigint AS tx_id, id, \
     aggregate_type, aggregate_id, version, event_type, schema_id, schema_version, created_at, \
     payload::text AS payload_json, metadata::text AS metadata_json";

impl ArchivedEvent {
    pub fn cursor(&self) -> LogCursor {
        LogCursor {
            tx_id: self.tx_id,
            position: self.position,
        }
    }

    /// The event as the log returns it. Fails only if the archived JSON is not JSON.
    pub fn to_logged(&self) -> Result<LoggedEvent, Error> {
        let json = |text: &str, what: &str| {
            serde_json::from_str(text)
                .map_err(|e| Error::Corrupt(format!("{what} of event {}: {e}", self.id)))
        };
        Ok(LoggedEvent {
            event: RecordedEvent {
                id: self.id,
                position: self.position,
                aggregate_type: self.aggregate_type.clone(),
                aggregate_id: self.aggregate_id,
                version: self.version,
                event_type: self.event_type.clone(),
                schema_id: self.schema_id,
                schema_version: self.schema_version,
                payload: json(&self.payload_json, "payload")?,
                metadata: json(&self.metadata_json, "metadata")?,
                created_at: self.created_at,
            },
            tx_id: self.tx_id,
        })
    }

    fn to_avro(&self) -> Avro {
        let optional = |v: Option<i32>| match v {
            Some(v) => Avro::Union(1, Box::new(Avro::Int(v))),
            None => Avro::Union(0, Box::new(Avro::Null)),
        };
        Avro::Record(vec![
            ("position".into(), Avro::Long(self.position)),
            ("tx_id".into(), Avro::Long(self.tx_id)),
            ("id".into(), Avro::Uuid(self.id)),
            (
                "aggregate_type".into(),
                Avro::String(self.aggregate_type.clone()),
            ),
            ("aggregate_id".into(), Avro::Uuid(self.aggregate_id)),
            ("version".into(), Avro::Int(self.version)),
            ("event_type".into(), Avro::String(self.event_type.clone())),
            ("schema_id".into(), optional(self.schema_id)),
            ("schema_version".into(), optional(self.schema_version)),
            (
                "created_at".into(),
                Avro::TimestampMicros(self.created_at.timestamp_micros()),
            ),
            (
                "payload_json".into(),
                Avro::String(self.payload_json.clone()),
            ),
            (
                "metadata_json".into(),
                Avro::String(self.metadata_json.clone()),
            ),
        ])
    }

    fn from_avro(value: Avro) -> Result<Self, Error> {
        let Avro::Record(fields) = value else {
            return Err(Error::Corrupt("a record is not an Avro record".into()));
        };
        let mut fields: HashMap<String, Avro> = fields.into_iter().collect();
        let mut take = |name: &str| {
            fields
                .remove(name)
                .ok_or_else(|| Error::Corrupt(format!("a record has no field {name}")))
        };
        let wrong = |name: &str| Error::Corrupt(format!("field {name} has the wrong type"));
        let long = |v: Avro, name: &str| match v {
            Avro::Long(n) => Ok(n),
            _ => Err(wrong(name)),
        };
        let int = |v: Avro, name: &str| match v {
            Avro::Int(n) => Ok(n),
            _ => Err(wrong(name)),
        };
        let string = |v: Avro, name: &str| match v {
            Avro::String(s) => Ok(s),
            _ => Err(wrong(name)),
        };
        let uuid = |v: Avro, name: &str| match v {
            Avro::Uuid(u) => Ok(u),
            Avro::String(s) => s.parse().map_err(|_| wrong(name)),
            _ => Err(wrong(name)),
        };
        let optional = |v: Avro, name: &str| match v {
            Avro::Union(_, inner) => match *inner {
                Avro::Null => Ok(None),
                Avro::Int(n) => Ok(Some(n)),
                _ => Err(wrong(name)),
            },
            _ => Err(wrong(name)),
        };
        let micros = match take("created_at")? {
            Avro::TimestampMicros(m) | Avro::Long(m) => m,
            _ => return Err(wrong("created_at")),
        };
        Ok(Self {
            position: long(take("position")?, "position")?,
            tx_id: long(take("tx_id")?, "tx_id")?,
            id: uuid(take("id")?, "id")?,
            aggregate_type: string(take("aggregate_type")?, "aggregate_type")?,
            aggregate_id: uuid(take("aggregate_id")?, "aggregate_id")?,
            version: int(take("version")?, "version")?,
            event_type: string(take("event_type")?, "event_type")?,
            schema_id: optional(take("schema_id")?, "schema_id")?,
            schema_version: optional(take("schema_version")?, "schema_version")?,
            created_at: DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| wrong("created_at"))?,
            payload_json: string(take("payload_json")?, "payload_json")?,
            metadata_json: string(take("metadata_json")?, "metadata_json")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the archive file is damaged: {0}")]
    Corrupt(String),
    #[error("cannot write the archive file: {0}")]
    Write(String),
    #[error("archive.codec {0:?} is not one keel writes: use deflate or null")]
    Codec(String),
}

/// The codecs keel writes. Readers accept whatever apache-avro reads.
pub fn codec(name: &str) -> Result<Codec, Error> {
    match name {
        "deflate" => Ok(Codec::Deflate(DeflateSettings::default())),
        "null" => Ok(Codec::Null),
        other => Err(Error::Codec(other.into())),
    }
}

/// The header of a segment file: `keel.*` user metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Header {
    pub format: String,
    pub segment_id: String,
    pub event_type: String,
    pub schema_id: String,
    pub cursor_lo: String,
    pub cursor_hi: String,
    pub record_count: String,
}

/// Running content digest: sha256 over the records' Avro binary encodings, in order.
#[derive(Default)]
pub struct ContentDigest {
    hash: Sha256,
    count: usize,
}

impl ContentDigest {
    pub fn add(&mut self, event: &ArchivedEvent) -> Result<(), Error> {
        let datum = apache_avro::to_avro_datum(envelope(), event.to_avro())
            .map_err(|e| Error::Write(e.to_string()))?;
        self.hash.update(&datum);
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn finish(self) -> String {
        hex(&self.hash.finalize())
    }
}

/// The sha256 of `bytes`, as lowercase hex.
pub fn sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A written segment: the file's bytes and its records' content digest.
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub content_digest: String,
}

/// Writes `events` (one type and schema, in cursor order) as an Avro container file.
pub fn encode(
    events: &[ArchivedEvent],
    header: &Header,
    codec_name: &str,
) -> Result<Encoded, Error> {
    let write = |e: apache_avro::Error| Error::Write(e.to_string());
    let mut writer = Writer::builder()
        .schema(envelope())
        .writer(Vec::new())
        .codec(codec(codec_name)?)
        .build();
    for (key, value) in [
        ("keel.format", &header.format),
        ("keel.segment_id", &header.segment_id),
        ("keel.event_type", &header.event_type),
        ("keel.schema_id", &header.schema_id),
        ("keel.cursor_lo", &header.cursor_lo),
        ("keel.cursor_hi", &header.cursor_hi),
        ("keel.record_count", &header.record_count),
    ] {
        writer.add_user_metadata(key.into(), value).map_err(write)?;
    }
    let mut digest = ContentDigest::default();
    for event in events {
        digest.add(event)?;
        writer.append(event.to_avro()).map_err(write)?;
    }
    let bytes = writer.into_inner().map_err(write)?;
    Ok(Encoded {
        bytes,
        content_digest: digest.finish(),
    })
}

/// A read segment: its header, records and their content digest.
pub struct Decoded {
    pub header: Header,
    pub events: Vec<ArchivedEvent>,
    pub content_digest: String,
}

/// Reads a whole segment file, checking every record against the envelope.
pub fn decode(bytes: &[u8]) -> Result<Decoded, Error> {
    let corrupt = |e: apache_avro::Error| Error::Corrupt(e.to_string());
    let reader = Reader::new(bytes).map_err(corrupt)?;
    let meta = reader.user_metadata();
    let text = |key: &str| {
        meta.get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let header = Header {
        format: text("keel.format"),
        segment_id: text("keel.segment_id"),
        event_type: text("keel.event_type"),
        schema_id: text("keel.schema_id"),
        cursor_lo: text("keel.cursor_lo"),
        cursor_hi: text("keel.cursor_hi"),
        record_count: text("keel.record_count"),
    };
    if header.format != FORMAT {
        return Err(Error::Corrupt(format!(
            "keel.format is {:?}, expected {FORMAT:?}: written by another version of keel, or not a keel archive",
            header.format
        )));
    }
    let mut digest = ContentDigest::default();
    let mut events = Vec::new();
    for value in reader {
        let event = ArchivedEvent::from_avro(value.map_err(corrupt)?)?;
        digest.add(&event)?;
        events.push(event);
    }
    Ok(Decoded {
        header,
        events,
        content_digest: digest.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: i64, payload: &str) -> ArchivedEvent {
        ArchivedEvent {
            position,
            tx_id: 700 + position,
            id: Uuid::new_v4(),
            aggregate_type: "agent".into(),
            aggregate_id: Uuid::new_v4(),
            version: position as i32,
            event_type: "agent.state.changed".into(),
            schema_id: Some(3),
            schema_version: None,
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            payload_json: payload.into(),
            metadata_json: "{}".into(),
        }
    }

    fn header() -> Header {
        Header {
            format: FORMAT.into(),
            segment_id: Uuid::new_v4().to_string(),
            event_type: "agent.state.changed".into(),
            schema_id: "3".into(),
            cursor_lo: "701/1".into(),
            cursor_hi: "702/2".into(),
            record_count: "2".into(),
        }
    }

    #[test]
    fn a_segment_round_trips_and_its_digest_does_not_depend_on_the_codec() {
        let events = vec![event(1, r#"{"a": 1}"#), event(2, r#"{"b": [1, 2.50]}"#)];
        let deflate = encode(&events, &header(), "deflate").unwrap();
        let null = encode(&events, &header(), "null").unwrap();
        assert_ne!(deflate.bytes, null.bytes);
        assert_eq!(deflate.content_digest, null.content_digest);

        let back = decode(&deflate.bytes).unwrap();
        assert_eq!(back.events, events);
        assert_eq!(back.header, header_with(&back.header.segment_id));
        assert_eq!(back.content_digest, deflate.content_digest);
        assert_eq!(
            back.events[1].to_logged().unwrap().event.payload["b"][1],
            2.5
        );

        fn header_with(id: &str) -> Header {
            Header {
                segment_id: id.into(),
                ..header()
            }
        }
    }

    #[test]
    fn a_changed_payload_changes_the_digest_and_a_truncated_file_is_refused() {
        let events = vec![event(1, r#"{"a": 1}"#)];
        let mut changed = events.clone();
        changed[0].payload_json = r#"{"a": 2}"#.into();
        let a = encode(&events, &header(), "deflate").unwrap();
        let b = encode(&changed, &header(), "deflate").unwrap();
        assert_ne!(a.content_digest, b.content_digest);

        let truncated = &a.bytes[..a.bytes.len() - 7];
        assert!(decode(truncated).is_err());
        assert!(matches!(codec("zstandard"), Err(Error::Codec(_))));
    }
}
