//! Retrying and skipping parked rows by key sequence, in both stores that park (the outbox's
//! `relay_parked`, a consumer group's `consumer_dlq`): one request shape ([`Request`]), one run
//! ([`run()`]) and one equivalent command line ([`command_line`]), which `dlq` and `outbox` give
//! their store's walk.
//!
//! The contract of a run:
//! - It selects sequences by their head: one row's (`id` / `event_id`), those a filter matches
//!   (`key`, `reason_class`, `event_type`, `older_than`, together), or `all`. Exactly one of the
//!   three, so an empty request changes nothing.
//! - It first counts what it would touch, over the whole selection (not a page), at most
//!   `max_count` rows, whole sequences only, in key order. `dry_run` stops there and answers the
//!   count. A run touches at most the rows it counted.
//! - Above [`CONFIRM_ABOVE`] rows it needs `confirm` set to that count; a `confirm` given must
//!   always equal it. Otherwise 409 `confirmation_required`, with the count in the details. A
//!   dry run's answer and that refusal both carry `run_with`: the command line of the confirmed
//!   run.
//! - A skip needs a `reason` (400 `reason_required`), kept in the audit log.
//! - It changes [`CHUNK`] sequences per transaction, so that no run holds a store in memory or
//!   in one transaction, and it writes one audit row with the count and the rows touched, in the
//!   transaction of its last chunk; a run of many chunks also writes a `started` row in its
//!   first. A run that fails is recorded as `failed`, with the rows touched before.
//! - Order: a change marks whole sequences and the store redelivers each key in order, so no
//!   run, however many keys it spans, reorders a key (see [`crate::model::sequence`]).

mod command;
mod run;

pub use command::command_line;
pub(super) use run::{run, Store, Walker};
pub use run::{Outcome, CHUNK, CONFIRM_ABOVE};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::super::error::ApiError;
use crate::model::sequence::{Change, Filter};
use crate::model::Age;

/// The longest skip reason kept.
const MAX_REASON: usize = 1000;

/// Retry or skip: the route a request came in by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Retry,
    Skip,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Retry => "retry",
            Verb::Skip => "skip",
        }
    }
}

/// A retry or a skip: the body of `POST /v1/dlq/{group}/retry|skip` and `/v1/outbox/retry|skip`,
/// and what the UI hands to the same functions. `id` selects in the dead-letter store, `event_id`
/// and `sink` in the outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// The sequence this parked dead-letter row heads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    /// The sequences this parked event heads (on every sink, or on `sink`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<uuid::Uuid>,
    /// Only this sink's parked rows (`kafka` or `redis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    /// A record key (the outbox: an aggregate id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<Age>,
    /// Every sequence.
    #[serde(default, skip_serializing_if = "is_false")]
    pub all: bool,
    /// Only count what the run would touch.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dry_run: bool,
    /// Touch at most this many rows (whole sequences, in key order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_count: Option<u64>,
    /// The count, typed back: needed above [`CONFIRM_ABOVE`] rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm: Option<u64>,
    /// Why: required to skip, kept in the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Skip: drop every open row of each sequence, not only its head.
    #[serde(default, skip_serializing_if = "is_false")]
    pub whole: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Which sequences a request selects, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection<I> {
    /// The sequence(s) one parked row heads.
    One(I),
    Matching(Filter<String>),
    All,
}

impl Request {
    /// The filter fields, as given.
    pub fn filter(&self) -> Filter<String> {
        Filter {
            key: self.key.clone(),
            reason_class: self.reason_class.clone(),
            event_type: self.event_type.clone(),
            older_than: self.older_than,
        }
    }

    /// Exactly one of `one` (the store's row id), a filter, or `all`.
    pub fn selection<I>(&self, one: Option<I>) -> Result<Selection<I>, ApiError> {
        let filter = self.filter();
        match (one, filter.is_empty(), self.all) {
            (Some(one), true, false) => Ok(Selection::One(one)),
            (None, false, false) => Ok(Selection::Matching(filter)),
            (None, true, true) => Ok(Selection::All),
            _ => Err(ApiError::bad_request(
                "invalid_selection",
                "select by exactly one of: a row's id, a filter (key, reason_class, event_type, \
                 older_than), or all: true",
            )),
        }
    }

    /// What the request does to each selected sequence; checks the options.
    pub fn change(&self, verb: Verb) -> Result<Change, ApiError> {
        if self.max_count == Some(0) {
            return Err(ApiError::bad_request(
                "invalid_max_count",
                "max_count must be at least 1",
            ));
        }
        let reason = self.reason.as_deref().map(str::trim).unwrap_or_default();
        if reason.chars().count() > MAX_REASON {
            return Err(ApiError::bad_request(
                "invalid_reason",
                format!("a reason may be at most {MAX_REASON} characters"),
            ));
        }
        match verb {
            Verb::Retry if self.whole => Err(ApiError::bad_request(
                "invalid_selection",
                "whole is for skip: a retry always releases whole sequences",
            )),
            Verb::Retry => Ok(Change::Retry),
            Verb::Skip if reason.is_empty() => Err(ApiError::bad_request(
                "reason_required",
                "a skip drops rows for good: say why in reason",
            )),
            Verb::Skip if self.whole => Ok(Change::SkipSequence),
            Verb::Skip => Ok(Change::SkipHead),
        }
    }

    /// What the audit row's target names: the selection.
    pub fn target(&self, mut target: serde_json::Map<String, Value>) -> Value {
        let selection = json!({
            "id": self.id, "event_id": self.event_id, "sink": self.sink, "key": self.key,
            "reason_class": self.reason_class, "event_type": self.event_type,
            "older_than": self.older_than, "all": self.all.then_some(true),
        });
        for (k, v) in selection.as_object().into_iter().flatten() {
            if !v.is_null() {
                target.insert(k.clone(), v.clone());
            }
        }
        Value::Object(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Age;
    use serde_json::json;

    #[test]
    fn a_request_selects_by_exactly_one_of_an_id_a_filter_or_all() {
        let request = |v: Value| serde_json::from_value::<Request>(v).unwrap();
        assert_eq!(
            request(json!({"id": 4})).selection(Some(4)).unwrap(),
            Selection::One(4)
        );
        assert_eq!(
            request(json!({"all": true}))
                .selection(None::<i64>)
                .unwrap(),
            Selection::All
        );
        let matching = request(json!({"reason_class": "permanent", "older_than": "2h"}));
        assert!(matches!(
            matching.selection(None::<i64>).unwrap(),
            Selection::Matching(f) if f.reason_class.as_deref() == Some("permanent")
                && f.older_than.map(Age::seconds) == Some(7200)
        ));
        for bad in [
            json!({}),
            json!({"id": 4, "all": true}),
            json!({"id": 4, "key": "k"}),
            json!({"all": true, "key": "k"}),
        ] {
            let one = bad["id"].as_i64();
            let err = request(bad.clone()).selection(one).unwrap_err();
            assert_eq!(err.code, "invalid_selection", "{bad}");
        }
        assert!(serde_json::from_value::<Request>(json!({"dryrun": true})).is_err());
    }

    #[test]
    fn a_skip_needs_a_reason_and_whole_is_for_skips_only() {
        let skip = |v: Value| {
            serde_json::from_value::<Request>(v)
                .unwrap()
                .change(Verb::Skip)
        };
        assert_eq!(skip(json!({})).unwrap_err().code, "reason_required");
        assert_eq!(
            skip(json!({"reason": "  "})).unwrap_err().code,
            "reason_required"
        );
        assert_eq!(
            skip(json!({"reason": "bad data"})).unwrap(),
            Change::SkipHead
        );
        assert_eq!(
            skip(json!({"reason": "bad data", "whole": true})).unwrap(),
            Change::SkipSequence
        );
        let retry = |v: Value| {
            serde_json::from_value::<Request>(v)
                .unwrap()
                .change(Verb::Retry)
        };
        assert_eq!(retry(json!({})).unwrap(), Change::Retry);
        assert_eq!(
            retry(json!({"whole": true})).unwrap_err().code,
            "invalid_selection"
        );
        assert_eq!(
            retry(json!({"max_count": 0})).unwrap_err().code,
            "invalid_max_count"
        );
    }
}
