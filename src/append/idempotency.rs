//! Recognising a retry whose payloads were normalised against a newer schema than the original.
//!
//! A schema version registered between two attempts can add a field with a default, so the
//! payload stored by the first attempt and the one the retry normalises to differ although the
//! client sent the same thing; the store then sees an idempotency conflict. Each sent payload is
//! normalised again against the schema its stored event was validated with, and compared.

use serde_json::Value;
use uuid::Uuid;

use super::validate::Error;
use crate::model::{AggregateType, AppendResult, AppendedEvent, CheckedEvent};
use crate::registry::Registry;
use crate::schema;
use crate::store::{self, Store};

/// The original result if every event of the batch (`checked`, with `sent` as the validator left
/// it) is stored, contiguously, in this aggregate, with
/// the same type and a payload equal to what the sent one normalises to under the stored event's
/// schema; `None` otherwise.
pub(crate) async fn replay_as_sent(
    store: &Store,
    registry: &Registry,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    checked: &[CheckedEvent],
    sent: &[Option<Value>],
) -> Result<Option<AppendResult>, ReplayError> {
    let mut events: Vec<AppendedEvent> = Vec::with_capacity(checked.len());
    for (checked, sent) in checked.iter().zip(sent) {
        let Some(stored) = store::get_event(store.pool(), checked.id()).await? else {
            return Ok(None);
        };
        let same_place = stored.aggregate_type == aggregate_type.as_str()
            && stored.aggregate_id == aggregate_id
            && stored.event_type == checked.event_type().as_str();
        let sent = sent.as_ref().unwrap_or(checked.payload());
        let as_stored = match stored.schema_id {
            Some(schema_id) => {
                let schema = registry.parsed_by_id(schema_id).await?;
                schema::validate(&schema, sent).ok()
            }
            None => Some(sent.clone()),
        };
        let contiguous = events
            .last()
            .is_none_or(|last| stored.version == last.version + 1);
        if !same_place || as_stored.as_ref() != Some(&stored.payload) || !contiguous {
            return Ok(None);
        }
        events.push(AppendedEvent {
            id: stored.id,
            version: stored.version,
            position: stored.position,
        });
    }
    let Some(version) = events.last().map(|e| e.version) else {
        return Ok(None);
    };
    Ok(Some(AppendResult {
        aggregate_type: aggregate_type.clone(),
        aggregate_id,
        version,
        events,
        idempotent_replay: true,
    }))
}

/// Reading the stored events or their schemas failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReplayError {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
}

impl From<ReplayError> for super::Error {
    fn from(err: ReplayError) -> Self {
        match err {
            ReplayError::Store(e) => Self::Store(e),
            ReplayError::Registry(e) => Self::Check(Error::Registry(e)),
        }
    }
}
