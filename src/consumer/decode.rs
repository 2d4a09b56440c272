//! Turning a Kafka record keel published back into an event: [`crate::wire`] for the format, the
//! registry for the writer's schema.
//!
//! * The envelope (id, type, aggregate, version, position, created-at, tracing ids) comes from
//!   keel's headers.
//! * A Confluent-framed value is decoded with the writer's schema, fetched from keel's registry by
//!   the id in its first five bytes (cached by the registry). A JSON value (topics in
//!   `relay.kafka.json_topics`) is the envelope itself.
//! * With a reader version, the payload is resolved to it: fields the writer lacked get their
//!   defaults (upcasting), exactly as reads through the API do.

use std::collections::HashMap;
use std::sync::Arc;

use crate::model::{RecordedEvent, VersionSpec};
use crate::registry::{Registry, Upcaster};
use crate::schema::ParsedSchema;
use crate::wire::{self, frame, header, CONTENT_AVRO, CONTENT_JSON};

/// Why a record cannot be decoded. A subscriber treats these as permanent: the record will not
/// decode on a retry either.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Wire(#[from] wire::Error),
    #[error("schema id {id}: {reason}")]
    Schema { id: i32, reason: String },
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
        let mut upcaster = reader.map(|wanted| self.upcaster(wanted));
        self.decode_as(headers, value, upcaster.as_mut()).await
    }

    /// An upcaster to `wanted` for [`Decoder::decode_as`], kept for a batch of records.
    pub fn upcaster(&self, wanted: VersionSpec) -> Upcaster<'_> {
        self.registry.upcaster(wanted)
    }

    /// As [`Decoder::decode`], resolving the payload with `upcaster`, which looks each type's
    /// schemas up once for the batch it is kept for.
    pub async fn decode_as(
        &self,
        headers: &HashMap<String, String>,
        value: &[u8],
        upcaster: Option<&mut Upcaster<'_>>,
    ) -> Result<RecordedEvent, DecodeError> {
        let event = match header::content_type(headers) {
            CONTENT_JSON => wire::json::decode(value)?,
            CONTENT_AVRO => {
                let mut event = header::decode(headers)?;
                // Framing is checked before any registry lookup.
                let (id, datum) = frame::split(value)?;
                let schema = self.schema(id).await?;
                event.schema_id = Some(id);
                event.payload = frame::decode(id, &schema, datum)?;
                event
            }
            other => return Err(wire::Error::ContentType(other.to_owned()).into()),
        };
        match upcaster {
            Some(upcaster) => upcaster
                .upcast(event)
                .await
                .map_err(|e| DecodeError::Upcast(e.to_string())),
            None => Ok(event),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::header::example as headers;

    #[tokio::test]
    async fn a_value_without_the_confluent_frame_is_refused_before_any_lookup() {
        // A lazy pool never connects: framing is checked first.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let decoder = Decoder::new(Arc::new(Registry::new(pool)));
        for value in [&b""[..], b"\x01\x00\x00\x00\x01abc", b"\x00\x00"] {
            let err = decoder.decode(&headers(), value, None).await.unwrap_err();
            assert!(
                matches!(err, DecodeError::Wire(wire::Error::Framing)),
                "{err}"
            );
        }
    }
}
