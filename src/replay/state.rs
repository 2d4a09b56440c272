//! The aggregate types keel has an [`Aggregate`] model for, each with its fold to JSON, so that
//! a caller that knows only a type's name (the API, a UI) can ask whether there is a model and
//! what an aggregate's state was at some version.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::agent::{self, AgentState};
use super::{history, Aggregate, AsOf};
use crate::model::{AggregateType, RecordedEvent};
use crate::registry::Registry;
use crate::store::{self, Store};

/// Folds an aggregate's events, oldest first, into its state as JSON.
pub type Fold = fn(&[RecordedEvent]) -> Value;

/// Every model: the aggregate type and the fold of its state.
const MODELS: &[(&str, Fold)] = &[(agent::AGGREGATE_TYPE, fold::<AgentState>)];

/// The fold of `aggregate_type`'s model, if keel has one.
pub fn state_of(aggregate_type: &str) -> Option<Fold> {
    MODELS
        .iter()
        .find(|(t, _)| *t == aggregate_type)
        .map(|(_, f)| *f)
}

/// The aggregate types keel has a model for.
pub fn modelled() -> impl Iterator<Item = &'static str> {
    MODELS.iter().map(|(t, _)| *t)
}

fn fold<A: Aggregate + Serialize>(events: &[RecordedEvent]) -> Value {
    let mut state = A::default();
    for event in events {
        state.apply(event);
    }
    // A state is plain data with string keys, which always serialises.
    serde_json::to_value(state).expect("an aggregate state serialises to JSON")
}

/// An aggregate's state as its model folds it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct State {
    pub aggregate_type: String,
    pub aggregate_id: Uuid,
    /// The version of the last event folded in.
    pub version: i32,
    pub state: Value,
}

/// Why there is no state to show.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("keel has no aggregate model for {0}")]
    NoModel(String),
    #[error("aggregate {0} has no events")]
    NoEvents(Uuid),
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// The state of the aggregate as of `as_of` (its whole history without), folded by its type's
/// model.
pub async fn state_at(
    store: &Store,
    registry: &Registry,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    as_of: Option<AsOf>,
) -> Result<State, Error> {
    let fold = state_of(aggregate_type.as_str())
        .ok_or_else(|| Error::NoModel(aggregate_type.as_str().to_owned()))?;
    let events = history(store, registry, aggregate_type, aggregate_id, as_of).await?;
    let version = events
        .last()
        .map(|e| e.version)
        .ok_or(Error::NoEvents(aggregate_id))?;
    Ok(State {
        aggregate_type: aggregate_type.as_str().to_owned(),
        aggregate_id,
        version,
        state: fold(&events),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_type_has_a_model_and_others_have_none() {
        assert!(state_of("agent").is_some());
        assert!(state_of("service").is_none());
        assert_eq!(modelled().collect::<Vec<_>>(), ["agent"]);
        let empty = state_of("agent").unwrap()(&[]);
        assert_eq!(empty["version"], 0);
        assert_eq!(empty["state"], Value::Null);
    }
}
