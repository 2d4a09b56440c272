//! Upcasting: showing a stored event as a reader of another schema version of its type sees it.
//! The payload is resolved from the schema that validated it to the one the reader names, by
//! Avro's resolution rules (see [`crate::schema::resolve`]); the stored event is never touched.

use super::{Error, Registry};
use crate::model::{RecordedEvent, VersionSpec};
use crate::schema::{resolve, ResolveError};

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
    /// The stored event is not touched; this is the library's `?schema_version=`.
    pub async fn upcast(
        &self,
        event: &mut RecordedEvent,
        wanted: VersionSpec,
    ) -> Result<(), UpcastError> {
        let Some(writer_id) = event.schema_id else {
            return Ok(());
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
        if reader.id != writer_id {
            let writer = self.parsed_by_id(writer_id).await?;
            event.payload = resolve(&writer, &reader.schema, &event.payload)?;
        }
        event.schema_id = Some(reader.id);
        event.schema_version = Some(reader.version);
        Ok(())
    }
}
