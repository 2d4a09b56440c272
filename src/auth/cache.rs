//! Verified keys by key id, trusted for a fixed time so that a busy client costs one database
//! query per key per TTL, not one per request.
//!
//! Only keys that verified go in, so an attacker cannot grow the cache: its size is bounded by
//! the number of valid keys in use. An entry keeps the stored digest, and every hit verifies the
//! presented secret against it again (in constant time), so a cached key id with a wrong secret
//! is refused. A key's expiry is checked on every hit; a revocation or a disabled principal is
//! seen once the entry is older than the TTL (at once for revocations made through this process).
//!
//! Time is `tokio::time::Instant`, so tests move it with `tokio::time::pause`. The lock is never
//! held across an `.await`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::key::KeyId;
use super::principal::Principal;
use super::secret::DIGEST_BYTES;

/// Above this many entries, an insert first drops the stale ones.
const SWEEP_ABOVE: usize = 1024;

/// A key that verified, and whom it stands for.
#[derive(Debug, Clone)]
pub(super) struct Verified {
    pub digest: [u8; DIGEST_BYTES],
    pub expires_at: Option<DateTime<Utc>>,
    pub principal: Arc<Principal>,
}

pub(super) struct Cache {
    ttl: Duration,
    entries: Mutex<HashMap<KeyId, (Instant, Verified)>>,
    /// Keys and principals this process revoked or disabled in the last TTL. The change commits
    /// with the caller's transaction, after `forget`; a request that verified against the row as
    /// it stood before could otherwise cache the key again in between. Nothing barred is cached.
    barred: Mutex<HashMap<Barred, Instant>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Barred {
    Key(KeyId),
    Principal(String),
}

impl std::fmt::Debug for Cache {
    /// The TTL only: entries hold digests, which have no business in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// A cache whose entries are trusted for `ttl`; zero turns caching off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::default(),
            barred: Mutex::default(),
        }
    }

    /// The entry for `id` if it is younger than the TTL.
    pub fn get(&self, id: &KeyId) -> Option<Verified> {
        let entries = self.entries.lock().expect("key cache lock");
        let (stored, verified) = entries.get(id)?;
        (stored.elapsed() < self.ttl).then(|| verified.clone())
    }

    pub fn insert(&self, id: KeyId, verified: Verified) {
        if self.ttl.is_zero() || self.is_barred(&id, &verified) {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= SWEEP_ABOVE {
            entries.retain(|_, (stored, _)| stored.elapsed() < self.ttl);
        }
        entries.insert(id, (Instant::now(), verified));
    }

    /// Drops `id`, after this process revoked it, and caches it no more for a TTL.
    pub fn forget(&self, id: &KeyId) {
        self.bar(Barred::Key(*id));
        self.entries.lock().expect("key cache lock").remove(id);
    }

    /// Drops every key of the principal `name`, after this process disabled it, and caches none
    /// of them for a TTL.
    pub fn forget_principal(&self, name: &str) {
        self.bar(Barred::Principal(name.to_owned()));
        self.entries
            .lock()
            .expect("key cache lock")
            .retain(|_, (_, v)| v.principal.name.as_str() != name);
    }

    fn bar(&self, what: Barred) {
        let mut barred = self.barred.lock().expect("key cache lock");
        barred.retain(|_, since| since.elapsed() < self.ttl);
        barred.insert(what, Instant::now());
    }

    fn is_barred(&self, id: &KeyId, verified: &Verified) -> bool {
        let barred = self.barred.lock().expect("key cache lock");
        [
            Barred::Key(*id),
            Barred::Principal(verified.principal.name.as_str().to_owned()),
        ]
        .iter()
        .any(|b| {
            barred
                .get(b)
                .is_some_and(|since| since.elapsed() < self.ttl)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::principal::{Kind, PrincipalName};

    fn verified() -> Verified {
        Verified {
            digest: [0; DIGEST_BYTES],
            expires_at: None,
            principal: Arc::new(Principal {
                id: uuid::Uuid::new_v4(),
                name: PrincipalName::parse("svc").unwrap(),
                kind: Kind::Service,
                roles: vec![],
                created_at: Utc::now(),
                disabled_at: None,
                grants: vec![],
            }),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_is_trusted_for_the_ttl_and_not_a_moment_longer() {
        let cache = Cache::new(Duration::from_secs(5));
        let id = KeyId::parse("0123456789abcdef").unwrap();
        cache.insert(id, verified());
        tokio::time::advance(Duration::from_millis(4_999)).await;
        assert!(cache.get(&id).is_some(), "fresh within the ttl");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(cache.get(&id).is_none(), "stale at the ttl");
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_key_is_not_cached_again_for_a_ttl() {
        let cache = Cache::new(Duration::from_secs(5));
        let id = KeyId::parse("0123456789abcdef").unwrap();
        cache.insert(id, verified());
        cache.forget(&id);
        // A request that verified against the row before the revocation committed.
        cache.insert(id, verified());
        assert!(cache.get(&id).is_none(), "a revoked key was cached again");
        tokio::time::advance(Duration::from_secs(5)).await;
        cache.insert(id, verified());
        assert!(cache.get(&id).is_some(), "the bar outlived its TTL");

        let other = KeyId::parse("fedcba9876543210").unwrap();
        cache.forget_principal("svc");
        cache.insert(other, verified());
        assert!(
            cache.get(&other).is_none(),
            "a disabled principal's key was cached"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forgetting_takes_effect_at_once_and_a_zero_ttl_caches_nothing() {
        let cache = Cache::new(Duration::from_secs(5));
        let id = KeyId::parse("0123456789abcdef").unwrap();
        cache.insert(id, verified());
        cache.forget(&id);
        assert!(cache.get(&id).is_none());
        cache.insert(id, verified());
        cache.forget_principal("svc");
        assert!(cache.get(&id).is_none());

        let off = Cache::new(Duration::ZERO);
        off.insert(id, verified());
        assert!(off.get(&id).is_none());
    }
}
