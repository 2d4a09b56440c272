//! Key sequences of parked rows, as operators see and act on them in both stores that park: the
//! relay's `relay_parked` (a sink's rows of one aggregate) and the consumer's `consumer_dlq` (a
//! group's records of one key in one partition).
//!
//! A **sequence** is one key's open rows, in order; its **head** is the oldest, the row that holds
//! the others up (see [`super::ParkState`]). Operators select sequences by their head
//! ([`Filter`]) and [`Change`] them; a store walks the selected sequences in key order, one
//! [`Chunk`] at a time, so that no action ever holds a whole store in memory or in one
//! transaction.
//!
//! Order: a change applies to whole sequences and leaves their rows in place, so the store's own
//! redelivery (in order, stopping at the first row that fails again) keeps each key's order.

use serde::{Deserialize, Serialize};

use super::Age;

/// Which sequences an action covers: those whose head matches every field given. `K` is the
/// store's key: a record key (text) in the dead-letter store, an aggregate id in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter<K> {
    pub key: Option<K>,
    /// The head's reason class (`permanent`, `crash_loop`, `message_too_large`...).
    pub reason_class: Option<String>,
    pub event_type: Option<String>,
    /// Only heads that first failed at least this long ago.
    pub older_than: Option<Age>,
}

impl<K> Default for Filter<K> {
    fn default() -> Self {
        Self {
            key: None,
            reason_class: None,
            event_type: None,
            older_than: None,
        }
    }
}

impl<K> Filter<K> {
    /// Whether no field is given: the filter matches every sequence.
    pub fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.reason_class.is_none()
            && self.event_type.is_none()
            && self.older_than.is_none()
    }
}

/// What an action does to each selected sequence whose head is parked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Releases the head and the rows held behind it for redelivery, in order.
    Retry,
    /// Drops the head; the rows held behind it flow again, in order.
    SkipHead,
    /// Drops every open row of the sequence.
    SkipSequence,
}

impl Change {
    pub fn is_skip(self) -> bool {
        !matches!(self, Change::Retry)
    }
}

/// One chunk of a walk over selected sequences (or, in a dry run, what it would do).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<C> {
    /// Sequences changed.
    pub sequences: u64,
    /// Rows changed: released for redelivery, or dropped.
    pub touched: u64,
    /// Held rows that flow again behind the heads a [`Change::SkipHead`] dropped.
    pub released: u64,
    /// Where the next chunk starts: the last sequence of this one. `None` when the walk is
    /// done: no sequence is left, or the next one does not fit the budget.
    pub next: Option<C>,
}
