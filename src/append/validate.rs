//! The one validator of the write path. It alone turns [`NewEvent`]s into [`CheckedEvent`]s.
//!
//! The checks, in order, refusing the whole batch on the first problem with the event's index:
//! the batch is not empty and has no id twice; each payload is a JSON object; the event type has a
//! schema in the registry (the latest version, or the one the event names); the catalog allows the
//! type on this aggregate type; the payload conforms to the schema. Payloads come out normalised
//! (the schema's defaults filled in) and each event records the schema that validated it.

use std::collections::HashSet;
use std::sync::Arc;

use serde_json::Value;

use super::Refusal;
use crate::catalog::Catalog;
use crate::model::{AggregateType, CheckedEvent, NewEvent, SchemaRef};
use crate::registry::{self, Registry};
use crate::schema;

/// Checks proposed events against the catalog and the schema registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Validator {
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    validate_payloads: bool,
}

/// Why a batch could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The batch breaks a rule; nothing may be written.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The registry could not answer.
    #[error("the schema registry could not be read")]
    Registry(#[from] registry::Error),
}

/// A batch that passed: the events to store, and for each the payload as the client sent it
/// (`None` when it is stored as sent, unvalidated). Recognising a retry after a schema change
/// needs those (see `idempotency`). They are the client's own values, moved, neither copied nor
/// compared on the way.
#[derive(Debug)]
pub(crate) struct CheckedBatch {
    pub(crate) events: Vec<CheckedEvent>,
    pub(crate) sent: Vec<Option<Value>>,
}

impl Validator {
    /// `validate_payloads: false` (the `api.validate_payloads` setting) still checks that each type
    /// is registered and allowed on the aggregate type, but stores payloads as sent, without a
    /// schema; the relay then validates them at publish time.
    pub fn new(catalog: Arc<Catalog>, registry: Arc<Registry>, validate_payloads: bool) -> Self {
        Self {
            catalog,
            registry,
            validate_payloads,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Checks a batch for an aggregate of `aggregate_type`.
    #[tracing::instrument(skip_all, fields(aggregate_type = %aggregate_type, events = events.len()))]
    pub async fn check(
        &self,
        aggregate_type: &AggregateType,
        events: Vec<NewEvent>,
    ) -> Result<Vec<CheckedEvent>, Error> {
        Ok(self.check_batch(aggregate_type, events).await?.events)
    }

    pub(crate) async fn check_batch(
        &self,
        aggregate_type: &AggregateType,
        events: Vec<NewEvent>,
    ) -> Result<CheckedBatch, Error> {
        if events.is_empty() {
            return Err(Refusal::EmptyBatch.into());
        }
        let mut seen = HashSet::with_capacity(events.len());
        let mut batch = CheckedBatch {
            events: Vec::with_capacity(events.len()),
            sent: Vec::with_capacity(events.len()),
        };
        for (index, event) in events.into_iter().enumerate() {
            if !seen.insert(event.id) {
                return Err(Refusal::DuplicateEventId {
                    index,
                    id: event.id,
                }
                .into());
            }
            let (checked, sent) = self.check_one(index, aggregate_type, event).await?;
            batch.events.push(checked);
            batch.sent.push(sent);
        }
        Ok(batch)
    }

    async fn check_one(
        &self,
        index: usize,
        aggregate_type: &AggregateType,
        event: NewEvent,
    ) -> Result<(CheckedEvent, Option<Value>), Error> {
        let NewEvent {
            id,
            event_type,
            payload,
            metadata,
            schema_version,
        } = event;
        if !payload.is_object() {
            return Err(Refusal::InvalidPayload { index }.into());
        }
        let Some(schema) = self
            .registry
            .event_schema(event_type.as_str(), schema_version)
            .await?
        else {
            return Err(match schema_version {
                None => Refusal::UnknownEventType { index, event_type },
                Some(version) => Refusal::UnknownSchemaVersion {
                    index,
                    event_type,
                    version,
                },
            }
            .into());
        };
        if let Some(required) = self
            .catalog
            .get(&event_type)
            .and_then(|e| e.spec.aggregate_type.as_ref())
        {
            if required != aggregate_type {
                return Err(Refusal::AggregateTypeMismatch {
                    index,
                    event_type,
                    required: required.clone(),
                }
                .into());
            }
        }
        if !self.validate_payloads {
            return Ok((
                CheckedEvent::new(id, event_type, payload, metadata, None),
                None,
            ));
        }
        let schema_ref = SchemaRef {
            id: schema.id,
            version: schema.version,
        };
        let normalised = schema::validate(&schema.schema, &payload).map_err(|error| {
            Refusal::SchemaMismatch {
                index,
                event_type: event_type.clone(),
                error,
                schema: schema_ref,
            }
        })?;
        let schema = schema_ref;
        let sent = Some(payload);
        let checked = CheckedEvent::new(id, event_type, normalised, metadata, Some(schema));
        Ok((checked, sent))
    }
}
