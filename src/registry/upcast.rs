//! Upcasting: showing a stored event as a reader of another schema version of its type sees it.
//! The payload is resolved from the schema that validated it to the one the reader names, by
//! Avro's resolution rules (see [`crate::schema::resolve`]); the stored event is never touched.

use std::sync::Arc;

use super::{Error, EventSchema, Registry};
use crate::model::{RecordedEvent, VersionSpec};
use crate::schema::{resolve, resolve_owned, ParsedSchema, ResolveError};

/// Why an event could not be shown in the schema version a reader asked for.
#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error("event type {event_type} has no schema version {version}")]
    NoSuchVersion { event_type: String, version: String },
    #[error("the event cannot be read with that schema version: {0}")]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Registry(#[from] Error),
}

impl Registry {
    /// Shows `event` as a reader of schema version `wanted` of its type sees it: the payload is
    /// resolved from the schema that validated it (upcasting), and `schema_id`/`schema_version`
    /// then describe the payload as it is now. Events stored without a schema are left alone.
    /// The stored event is not touched; this is the library's `?schema_version=`. On failure
    /// the event is left as it was.
    pub async fn upcast(
        &self,
        event: &mut RecordedEvent,
        wanted: VersionSpec,
    ) -> Result<(), UpcastError> {
        let Some((reader, writer)) = self.upcast_schemas(event, wanted).await? else {
            return Ok(());
        };
        if let Some(writer) = writer {
            event.payload = resolve(&writer, &reader.schema, &event.payload)?;
        }
        described_by(event, &reader);
        Ok(())
    }

    /// As [`Registry::upcast`], for a reader that drops the event on failure: the payload's
    /// fields move into the resolved one instead of being copied.
    pub async fn upcast_owned(
        &self,
        event: RecordedEvent,
        wanted: VersionSpec,
    ) -> Result<RecordedEvent, UpcastError> {
        self.upcaster(wanted).upcast(event).await
    }

    /// An [`Upcaster`] to version `wanted`, for a batch of events.
    pub fn upcaster(&self, wanted: VersionSpec) -> Upcaster<'_> {
        Upcaster {
            registry: self,
            wanted,
            seen: Vec::new(),
        }
    }

    /// The reader's schema for `event`, and the writer's when the two differ; `None` for an
    /// event stored without a schema.
    async fn upcast_schemas(
        &self,
        event: &RecordedEvent,
        wanted: VersionSpec,
    ) -> Result<Option<(EventSchema, Option<Arc<ParsedSchema>>)>, UpcastError> {
        let Some(writer_id) = event.schema_id else {
            return Ok(None);
        };
        let version = match wanted {
            VersionSpec::Latest => None,
            VersionSpec::Number(n) => Some(n),
        };
        let reader = self
            .event_schema(&event.event_type, version)
            .await?
            .ok_or_else(|| UpcastError::NoSuchVersion {
                event_type: event.event_type.clone(),
                version: wanted.to_string(),
            })?;
        let writer = match reader.id == writer_id {
            true => None,
            false => Some(self.parsed_by_id(writer_id).await?),
        };
        Ok(Some((reader, writer)))
    }
}

/// Upcasts a batch of events to one reader version, consuming each as [`Registry::upcast_owned`]
/// does, looking the schemas of each event type and writer up once instead of once per event. Keep one for a
/// batch, not longer: it does not see a new latest version registered meanwhile.
pub struct Upcaster<'r> {
    registry: &'r Registry,
    wanted: VersionSpec,
    /// Per event type and writer's schema id: the reader's schema, and the writer's when the
    /// two differ.
    seen: Vec<(String, i32, EventSchema, Option<Arc<ParsedSchema>>)>,
}

impl Upcaster<'_> {
    /// `event` as the reader sees it; on failure the event is dropped.
    pub async fn upcast(&mut self, mut event: RecordedEvent) -> Result<RecordedEvent, UpcastError> {
        let Some(writer_id) = event.schema_id else {
            return Ok(event);
        };
        let known = self
            .seen
            .iter()
            .position(|(t, w, ..)| *w == writer_id && *t == event.event_type);
        let i = match known {
            Some(i) => i,
            None => {
                let Some((reader, writer)) =
                    self.registry.upcast_schemas(&event, self.wanted).await?
                else {
                    return Ok(event);
                };
                let key = (event.event_type.clone(), writer_id);
                self.seen.push((key.0, key.1, reader, writer));
                self.seen.len() - 1
            }
        };
        let (_, _, reader, writer) = &self.seen[i];
        if let Some(writer) = writer {
            event.payload =
                resolve_owned(writer, &reader.schema, std::mem::take(&mut event.payload))?;
        }
        described_by(&mut event, reader);
        Ok(event)
    }
}

/// Marks `event`'s payload, now resolved, as written with `reader`.
fn described_by(event: &mut RecordedEvent, reader: &EventSchema) {
    event.schema_id = Some(reader.id);
    event.schema_version = Some(reader.version);
}
