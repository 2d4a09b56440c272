//! The registry's two in-memory caches.
//!
//! * Parsed schemas by global id, kept forever: an id means one schema for good, so an entry never
//!   goes stale.
//! * The schema an append validates with, per `(subject, version)` (`None` = latest), trusted for
//!   [`LATEST_TTL`]. When an entry expires, one caller refreshes it and the others keep the previous
//!   answer meanwhile, so a busy server asks the database once per subject per interval, not once
//!   per request. This process's own registrations and deletions [`Cache::forget`] a subject at
//!   once; another process's are seen within the TTL (a little longer while a refresh is in flight).
//!
//! The locks are never held across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

// tokio's clock, so the tests can run it paused.
use tokio::time::Instant;

use super::{Error, EventSchema};
use crate::schema::ParsedSchema;

/// How long a subject's latest version is trusted before it is read again.
pub const LATEST_TTL: Duration = Duration::from_secs(1);

/// Per subject, per version (`None` meaning the latest): nested, so that a hit is looked up by
/// the borrowed subject without building a key.
type Latest = HashMap<String, HashMap<Option<i32>, Cached>>;

#[derive(Debug, Default)]
pub(super) struct Cache {
    by_id: RwLock<HashMap<i32, Arc<ParsedSchema>>>,
    latest: RwLock<Latest>,
}

/// A cached answer of [`Cache::event_schema`].
#[derive(Debug)]
struct Cached {
    fetched: Instant,
    value: Option<EventSchema>,
    /// One caller is fetching a fresh answer; the others use this one meanwhile.
    refreshing: bool,
}

impl Cached {
    /// Fresh, or being refreshed by another caller meanwhile.
    fn usable(&self) -> bool {
        self.fetched.elapsed() < LATEST_TTL || self.refreshing
    }
}

impl Cache {
    /// Schema `id`, if it was parsed before.
    pub fn parsed_by_id(&self, id: i32) -> Option<Arc<ParsedSchema>> {
        self.by_id
            .read()
            .expect("registry cache lock")
            .get(&id)
            .cloned()
    }

    /// Schema `id`, parsed from its stored `text` on first use and kept.
    pub fn parsed(&self, id: i32, text: &str) -> Result<Arc<ParsedSchema>, Error> {
        if let Some(found) = self.parsed_by_id(id) {
            return Ok(found);
        }
        let parsed = Arc::new(ParsedSchema::parse_stored(text)?);
        self.by_id
            .write()
            .expect("registry cache lock")
            .insert(id, parsed.clone());
        Ok(parsed)
    }

    /// Drops every cached answer about `subject`, after this process changed it.
    pub fn forget(&self, subject: &str) {
        self.latest
            .write()
            .expect("registry cache lock")
            .remove(subject);
    }

    /// The cached answer for `(subject, version)`, or the one `fetch` gives when there is none or
    /// it is older than [`LATEST_TTL`] and nobody else is refreshing it. A failed fetch leaves the
    /// previous answer in place for the next caller to retry.
    pub async fn event_schema<F>(
        &self,
        subject: &str,
        version: Option<i32>,
        fetch: F,
    ) -> Result<Option<EventSchema>, Error>
    where
        F: Future<Output = Result<Option<EventSchema>, Error>>,
    {
        // The common case, a fresh answer, under the shared lock.
        {
            let cache = self.latest.read().expect("registry cache lock");
            if let Some(entry) = cache.get(subject).and_then(|s| s.get(&version)) {
                if entry.usable() {
                    return Ok(entry.value.clone());
                }
            }
        }
        {
            let mut cache = self.latest.write().expect("registry cache lock");
            if let Some(entry) = cache.get_mut(subject).and_then(|s| s.get_mut(&version)) {
                if entry.usable() {
                    return Ok(entry.value.clone());
                }
                entry.refreshing = true;
            }
        }
        // Whatever ends this call (an error, or the caller dropping it mid-fetch, as a request
        // timeout or a client that disconnects does), the entry must not stay marked as being
        // refreshed, or it would serve its old answer forever.
        let refresh = Refreshing {
            latest: &self.latest,
            subject,
            version,
        };
        let found = fetch.await;
        drop(refresh);
        if let Ok(value) = &found {
            let entry = Cached {
                fetched: Instant::now(),
                value: value.clone(),
                refreshing: false,
            };
            self.latest
                .write()
                .expect("registry cache lock")
                .entry(subject.to_owned())
                .or_default()
                .insert(version, entry);
        }
        found
    }
}

/// Clears an entry's `refreshing` mark when the refresh ends, however it ends.
struct Refreshing<'c> {
    latest: &'c RwLock<Latest>,
    subject: &'c str,
    version: Option<i32>,
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        // A poisoned lock means a panic elsewhere already; there is nothing left to clear.
        if let Ok(mut cache) = self.latest.write() {
            if let Some(entry) = cache
                .get_mut(self.subject)
                .and_then(|s| s.get_mut(&self.version))
            {
                entry.refreshing = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(id: i32) -> Option<EventSchema> {
        let text = r#"{"type":"record","name":"r","fields":[]}"#;
        Some(EventSchema {
            id,
            version: id,
            schema: Arc::new(ParsedSchema::parse(text).expect("valid schema")),
        })
    }

    fn id(found: &Option<EventSchema>) -> Option<i32> {
        found.as_ref().map(|s| s.id)
    }

    #[tokio::test]
    async fn a_fresh_answer_is_served_without_fetching_again() {
        let cache = Cache::default();
        let first = cache.event_schema("s", None, async { Ok(schema(1)) }).await;
        let second = cache
            .event_schema("s", None, async { panic!("fetched a fresh entry again") })
            .await;
        assert_eq!(id(&first.expect("first")), Some(1));
        assert_eq!(id(&second.expect("second")), Some(1));
    }

    #[tokio::test]
    async fn forgetting_a_subject_makes_the_next_call_fetch() {
        let cache = Cache::default();
        cache
            .event_schema("s", Some(1), async { Ok(schema(1)) })
            .await
            .expect("first");
        cache.forget("s");
        let found = cache
            .event_schema("s", Some(1), async { Ok(schema(2)) })
            .await;
        assert_eq!(id(&found.expect("after forget")), Some(2));
    }

    #[tokio::test]
    async fn a_failed_fetch_is_not_cached() {
        let cache = Cache::default();
        let failed = cache
            .event_schema("s", None, async { Err(Error::SchemaNotFound) })
            .await;
        assert!(matches!(failed, Err(Error::SchemaNotFound)));
        let found = cache.event_schema("s", None, async { Ok(schema(3)) }).await;
        assert_eq!(id(&found.expect("retry")), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_dropped_mid_fetch_lets_the_next_call_refresh() {
        let cache = Cache::default();
        cache
            .event_schema("s", None, async { Ok(schema(1)) })
            .await
            .expect("first");
        tokio::time::advance(LATEST_TTL).await;
        // The caller goes away while the refresh waits on the database.
        let dropped = tokio::time::timeout(
            Duration::from_millis(10),
            cache.event_schema("s", None, std::future::pending()),
        )
        .await;
        assert!(dropped.is_err(), "the pending fetch cannot have finished");
        let found = cache.event_schema("s", None, async { Ok(schema(2)) }).await;
        assert_eq!(
            id(&found.expect("refreshed")),
            Some(2),
            "the entry stayed marked as refreshing and served its stale answer"
        );
    }

    #[test]
    fn a_schema_is_parsed_once_per_id() {
        let cache = Cache::default();
        let text = r#"{"type":"record","name":"r","fields":[]}"#;
        let first = cache.parsed(7, text).expect("parses");
        // The id means this schema forever: the text is not even looked at again.
        let again = cache.parsed(7, "not a schema").expect("from memory");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(matches!(
            cache.parsed(8, "not a schema"),
            Err(Error::InvalidSchema(_))
        ));
    }
}
