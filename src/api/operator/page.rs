//! Pages of key sequences (`GET /v1/dlq/{group}/sequences`, `GET /v1/outbox/parked/sequences`):
//! the query both take, and the opaque `next` token that continues a page where it stopped.
//!
//! A token is the last sequence's id as JSON in unpadded base64url: opaque to clients, checked
//! on the way back in (400 `invalid_cursor`), and never an offset, so pages stay correct while
//! rows come and go.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::error::ApiError;
use crate::model::sequence::Filter;
use crate::model::Age;

/// Which sequences a page lists: those whose head matches every field given, after `after`.
/// `sink` is the outbox's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequencesQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than: Option<Age>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// The `next` token of the page before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl SequencesQuery {
    pub fn filter(&self) -> Filter<String> {
        Filter {
            key: self.key.clone(),
            reason_class: self.reason_class.clone(),
            event_type: self.event_type.clone(),
            older_than: self.older_than,
        }
    }

    /// The sequence the page starts after.
    pub fn after<T: DeserializeOwned>(&self) -> Result<Option<T>, ApiError> {
        self.after.as_deref().map(decode).transpose()
    }
}

/// A page: its sequences and, when more may follow, the token of the next page.
#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub sequences: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// `sequences` read with `limit`; `id` names a sequence for the next page's token.
    pub fn of<I: Serialize>(sequences: Vec<T>, limit: i64, id: impl Fn(&T) -> I) -> Self {
        let full = i64::try_from(sequences.len()).is_ok_and(|n| n == limit);
        let next = sequences.last().filter(|_| full).map(|s| encode(&id(s)));
        Self { sequences, next }
    }
}

fn encode<T: Serialize>(id: &T) -> String {
    // A sequence id is strings and numbers: it always serialises.
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(id).unwrap_or_default())
}

fn decode<T: DeserializeOwned>(token: &str) -> Result<T, ApiError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "after must be the next token of an earlier page",
            )
        })
}

/// The outbox's filter: its key is an aggregate id.
pub fn aggregate_filter(filter: Filter<String>) -> Result<Filter<Uuid>, ApiError> {
    let key = filter
        .key
        .as_deref()
        .map(|k| {
            k.parse::<Uuid>().map_err(|_| {
                ApiError::bad_request("invalid_key", "an outbox key is an aggregate id (a UUID)")
            })
        })
        .transpose()?;
    Ok(Filter {
        key,
        reason_class: filter.reason_class,
        event_type: filter.event_type,
        older_than: filter.older_than,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_next_token_reads_back_as_the_sequence_and_anything_else_is_refused() {
        let token = encode(&("k", "keel.agent", 3));
        let query = SequencesQuery {
            after: Some(token),
            ..Default::default()
        };
        assert_eq!(
            query.after::<(String, String, i32)>().unwrap(),
            Some(("k".into(), "keel.agent".into(), 3))
        );
        let bad = SequencesQuery {
            after: Some("not a token".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.after::<(String, String, i32)>().unwrap_err().code,
            "invalid_cursor"
        );
    }

    #[test]
    fn only_a_full_page_has_a_next_token() {
        assert!(Page::of(vec![1, 2], 2, |n| *n).next.is_some());
        assert!(Page::of(vec![1], 2, |n| *n).next.is_none());
        assert!(Page::of(Vec::<i32>::new(), 2, |n| *n).next.is_none());
    }
}
