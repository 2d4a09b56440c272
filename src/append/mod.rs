//! The write path: every append, over HTTP or through the library, goes through here.
//!
//! 1. [`Validator`] checks the proposed events ([`NewEvent`]) against the catalog and the schema
//!    registry and normalises their payloads; it alone builds the [`CheckedEvent`]s the store
//!    writes, so no path can store a payload its schema refuses.
//! 2. The store appends them with optimistic concurrency, each event with its outbox row, in one
//!    transaction: the caller's ([`append`]) or one of the store's own ([`Appender::append`],
//!    which also retries transaction-order conflicts and answers idempotent retries).
//!
//! A refusal ([`Refusal`]) writes nothing and has the same code and details on every path.
//!
//! Grants come first: every event's aggregate type and event type must be allowed to the caller
//! ([`Access::allows_append`]), checked before any lookup, so a forbidden batch learns nothing
//! about the registry and writes nothing. Library callers that act as the service itself pass
//! [`Access::everything`].

mod idempotency;
mod refusal;
mod validate;

use std::sync::Arc;

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

pub use refusal::Refusal;
pub use validate::{Error as ValidationError, Validator};

use crate::auth::Access;
use crate::model::{
    AggregateType, AppendResult, CheckedEvent, EventType, ExpectedVersion, NewEvent,
};
use crate::{registry, store};

/// Why an append did not happen. Nothing was written in any case.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The events failed a check, or the registry could not be read to check them.
    #[error(transparent)]
    Check(#[from] validate::Error),
    /// The store refused the batch (a version mismatch, an id conflict) or failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The caller may not append the event at `index` (its type) to this aggregate type.
    #[error("not allowed to append events of type {event_type} to {aggregate_type} aggregates")]
    Forbidden {
        index: usize,
        aggregate_type: AggregateType,
        event_type: EventType,
    },
}

impl Error {
    /// The refusal, when the events themselves were at fault.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Check(validate::Error::Refused(r)) => Some(r),
            _ => None,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Store(e) => e.is_retriable(),
            Self::Check(validate::Error::Registry(_)) => true,
            Self::Check(validate::Error::Refused(_)) | Self::Forbidden { .. } => false,
        }
    }
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Self::Check(r.into())
    }
}

impl From<registry::Error> for Error {
    fn from(e: registry::Error) -> Self {
        Self::Check(e.into())
    }
}

/// Validates `events` and appends them to the aggregate inside the caller's transaction, which
/// decides when they commit: a service's own writes and its events become visible together, or not
/// at all.
///
/// After [`store::Error::WrongExpectedVersion`] and [`store::Error::TransactionOrder`] the
/// transaction is still usable; after other store errors it is aborted. A refused batch never
/// touches the transaction. Retries of the transaction-order conflict and idempotent replays are
/// the caller's here; [`Appender::append`] does both for callers without a transaction of their
/// own.
#[tracing::instrument(skip_all, fields(db.system = "postgresql", aggregate_type = %aggregate_type, %aggregate_id, events = events.len()))]
pub async fn append(
    tx: &mut Transaction<'_, Postgres>,
    validator: &Validator,
    access: &Access,
    aggregate_type: &AggregateType,
    aggregate_id: Uuid,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult, Error> {
    authorize(access, aggregate_type, &events)?;
    let checked = validator.check(aggregate_type, events).await?;
    Ok(store::append(tx, aggregate_type, aggregate_id, expected, &checked).await?)
}

/// Refuses the batch unless `access` allows every event's type on `aggregate_type`.
fn authorize(
    access: &Access,
    aggregate_type: &AggregateType,
    events: &[NewEvent],
) -> Result<(), Error> {
    match events
        .iter()
        .position(|e| !access.allows_append(aggregate_type.as_str(), e.event_type.as_str()))
    {
        None => Ok(()),
        Some(index) => Err(Error::Forbidden {
            index,
            aggregate_type: aggregate_type.clone(),
            event_type: events[index].event_type.clone(),
        }),
    }
}

/// Appends in transactions of the store's own (shared with concurrent appends under group
/// commit). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Appender {
    store: store::Store,
    validator: Validator,
}

impl Appender {
    pub fn new(store: store::Store, validator: Validator) -> Self {
        Self { store, validator }
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Validates `events` and appends them to one aggregate, committing before it returns.
    ///
    /// A batch already stored (a retry after a lost reply) returns the original result with
    /// `idempotent_replay` set and writes nothing, also when a schema version registered between
    /// the attempts normalises the payloads differently.
    #[tracing::instrument(skip_all, fields(aggregate_type = %aggregate_type, %aggregate_id, events = events.len()))]
    pub async fn append(
        &self,
        access: &Access,
        aggregate_type: &AggregateType,
        aggregate_id: Uuid,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, Error> {
        authorize(access, aggregate_type, &events)?;
        let batch = self.validator.check_batch(aggregate_type, events).await?;
        // Shared with the store rather than moved, so that a conflict can still be compared with
        // what was sent without copying every payload up front.
        let checked: Arc<[CheckedEvent]> = batch.events.into();
        let appended = self
            .store
            .append(aggregate_type, aggregate_id, expected, checked.clone())
            .await;
        match appended {
            Err(conflict @ store::Error::IdempotencyConflict { .. }) => {
                idempotency::replay_as_sent(
                    &self.store,
                    self.validator.registry(),
                    aggregate_type,
                    aggregate_id,
                    &checked,
                    &batch.sent,
                )
                .await?
                .ok_or(Error::Store(conflict))
            }
            other => Ok(other?),
        }
    }
}
