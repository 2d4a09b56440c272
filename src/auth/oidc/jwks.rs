//! [`Jwks`]: the issuer's signing keys, fetched from `auth.oidc.jwks_url` and cached.
//!
//! Invariants:
//! - At most one fetch runs at a time, and fetches start at least `refetch_min` apart, whatever
//!   asks for them (an unknown `kid`, expired keys, [`Jwks::fetch_now`]). Requests that find a
//!   fetch under way, or one made too recently, use the keys at hand: a flood of made-up `kid`s
//!   costs the issuer one request per `refetch_min`.
//! - A known `kid` never waits for the network. Keys older than `cache_for` still verify while a
//!   fetch in the background replaces them; when that fetch fails they stay.
//! - Only a successful fetch replaces the keys; a key the issuer no longer lists stops verifying
//!   once a fetch has replaced the set.
//! - Only signature keys of the asymmetric types are kept: RSA (2048 bits or more), P-256, P-384
//!   and Ed25519, each with a `kid`. `oct` (HMAC) keys and keys marked `"use": "enc"` are
//!   skipped, as are keys keel cannot read.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio::time::Instant;

use crate::auth::Reason;
use crate::config::is_secure_fetch_url;
use crate::store::redact_url;

/// How long one fetch may take, connecting and reading the body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest JWKS body read, in bytes. Real ones are a few kilobytes.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// Smallest RSA modulus kept, in bits.
const MIN_RSA_BITS: usize = 2048;

pub(super) struct Jwks {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as logs show it: without a password.
    shown_url: String,
    cache_for: Duration,
    refetch_min: Duration,
    /// The keys at hand. A std lock: held only to clone or swap the `Arc`, never across an await.
    keys: RwLock<Arc<KeySet>>,
    /// Held while a fetch runs; holds when the last one started.
    fetch: Arc<Mutex<Option<Instant>>>,
}

#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Vec<Key>>,
    /// When the fetch that produced this set succeeded; `None` before the first.
    fetched_at: Option<Instant>,
}

/// One usable key of the set.
struct Key {
    kind: KeyType,
    /// The key's own `alg`, when the JWKS names one: then only that algorithm may use it.
    alg: Option<Algorithm>,
    decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyType {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Key {
    /// Whether this key may verify a token signed with `alg`: the algorithm confusion check.
    fn fits(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let type_fits = match self.kind {
            KeyType::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::P256 => alg == ES256,
            KeyType::P384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        };
        type_fits && self.alg.is_none_or(|own| own == alg)
    }
}

impl Jwks {
    pub(super) fn new(
        client: reqwest::Client,
        url: reqwest::Url,
        cache_for: Duration,
        refetch_min: Duration,
    ) -> Self {
        Self {
            client,
            shown_url: redact_url(url.as_str()),
            url,
            cache_for,
            refetch_min,
            keys: RwLock::new(Arc::new(KeySet::default())),
            fetch: Arc::new(Mutex::new(None)),
        }
    }

    /// The key `kid` for a token signed with `alg`.
    pub(super) async fn key(
        self: &Arc<Self>,
        kid: &str,
        alg: Algorithm,
    ) -> Result<DecodingKey, Reason> {
        let set = self.current();
        if let Some(keys) = set.by_kid.get(kid) {
            if set
                .fetched_at
                .is_none_or(|at| at.elapsed() >= self.cache_for)
            {
                self.refresh_in_background();
            }
            return pick(keys, alg);
        }
        drop(set);
        // An unknown kid: perhaps the issuer rotated its keys. Fetch again, if allowed yet.
        let guard = self.fetch.clone().lock_owned().await;
        if self.may_fetch(&guard) {
            let _ = self.fetch_locked(guard).await;
        }
        match self.current().by_kid.get(kid) {
            Some(keys) => pick(keys, alg),
            None => Err(Reason::UnknownKid),
        }
    }

    /// Fetches now unless a fetch is under way (then waits for it) or started less than
    /// `refetch_min` ago. Returns how many keys are at hand.
    pub(super) async fn fetch_now(&self) -> anyhow::Result<usize> {
        let guard = self.fetch.clone().lock_owned().await;
        if self.may_fetch(&guard) {
            self.fetch_locked(guard).await?;
        }
        Ok(self.current().by_kid.values().map(Vec::len).sum())
    }

    fn current(&self) -> Arc<KeySet> {
        // A poisoned lock still holds a whole `Arc`: swapping it cannot be torn.
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn may_fetch(&self, last: &OwnedMutexGuard<Option<Instant>>) -> bool {
        last.is_none_or(|at| at.elapsed() >= self.refetch_min)
    }

    /// Starts a fetch in the background, unless one is under way or too recent.
    fn refresh_in_background(self: &Arc<Self>) {
        let Ok(guard) = self.fetch.clone().try_lock_owned() else {
            return;
        };
        if !self.may_fetch(&guard) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let _ = this.fetch_locked(guard).await;
        });
    }

    /// Fetches the set and, on success, replaces the keys at hand. The caller holds the fetch
    /// lock and has checked [`Jwks::may_fetch`].
    async fn fetch_locked(
        &self,
        mut guard: OwnedMutexGuard<Option<Instant>>,
    ) -> anyhow::Result<()> {
        *guard = Some(Instant::now());
        match self.download().await {
            Ok(by_kid) => {
                let count: usize = by_kid.values().map(Vec::len).sum();
                if count == 0 {
                    tracing::warn!(url = %self.shown_url, "the issuer's JWKS has no usable signature key");
                } else {
                    tracing::debug!(url = %self.shown_url, keys = count, "fetched the issuer's JWKS");
                }
                let set = Arc::new(KeySet {
                    by_kid,
                    fetched_at: Some(Instant::now()),
                });
                *self.keys.write().unwrap_or_else(|e| e.into_inner()) = set;
                Ok(())
            }
            Err(err) => {
                tracing::warn!(url = %self.shown_url, error = format!("{err:#}"), "cannot fetch the issuer's JWKS; the keys fetched before stay in use");
                Err(err)
            }
        }
    }

    #[tracing::instrument(skip_all, fields(http.request.method = "GET", url.full = %self.shown_url))]
    async fn download(&self) -> anyhow::Result<HashMap<String, Vec<Key>>> {
        let mut response = self
            .client
            .get(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(FETCH_TIMEOUT)
            .send()
            .await
            // The URL is in the log line already, without its password.
            .map_err(reqwest::Error::without_url)
            .context("request failed")?;
        // The client may follow redirects: the place they led to must be as safe as the URL.
        if !is_secure_fetch_url(response.url()) {
            bail!("redirected to a URL that is not https");
        }
        let status = response.status();
        if !status.is_success() {
            bail!("the JWKS URL answered {status}");
        }
        if response
            .content_length()
            .is_some_and(|len| len > MAX_BODY_BYTES as u64)
        {
            bail!("the JWKS is larger than {MAX_BODY_BYTES} bytes");
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(reqwest::Error::without_url)
            .context("reading the JWKS failed")?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                bail!("the JWKS is larger than {MAX_BODY_BYTES} bytes");
            }
            body.extend_from_slice(&chunk);
        }
        parse(&body)
    }
}

/// The first key of `keys` that fits `alg`.
fn pick(keys: &[Key], alg: Algorithm) -> Result<DecodingKey, Reason> {
    keys.iter()
        .find(|key| key.fits(alg))
        .map(|key| key.decoding.clone())
        .ok_or(Reason::KeyMismatch)
}

/// A JWK's members that keel reads; all optional, so that one odd key does not spoil the set.
#[derive(Deserialize)]
struct RawKey {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    crv: Option<String>,
    n: Option<String>,
    e: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// The usable keys of a JWKS document, by `kid`.
fn parse(body: &[u8]) -> anyhow::Result<HashMap<String, Vec<Key>>> {
    let set: RawSet = serde_json::from_slice(body).context("the JWKS is not a JSON key set")?;
    let mut by_kid: HashMap<String, Vec<Key>> = HashMap::new();
    for value in set.keys {
        let Ok(raw) = serde_json::from_value::<RawKey>(value) else {
            continue;
        };
        let Some(kid) = raw.kid.clone() else {
            continue;
        };
        match key(&raw) {
            Some(key) => by_kid.entry(kid).or_default().push(key),
            None => {
                tracing::debug!(kid = %kid.chars().take(64).collect::<String>(), "skipping a JWKS key keel cannot use for signatures")
            }
        }
    }
    Ok(by_kid)
}

/// A usable signature key, or `None` for keys of other uses, types or sizes.
fn key(raw: &RawKey) -> Option<Key> {
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => Some(super::asymmetric(name)?),
    };
    let (kind, decoding) = match (raw.kty.as_deref()?, raw.crv.as_deref()) {
        ("RSA", _) => {
            let n = raw.n.as_deref()?;
            let modulus = URL_SAFE_NO_PAD.decode(n).ok()?;
            let bits = modulus.iter().position(|b| *b != 0).map_or(0, |first| {
                (modulus.len() - first) * 8 - modulus[first].leading_zeros() as usize
            });
            if bits < MIN_RSA_BITS {
                return None;
            }
            let key = DecodingKey::from_rsa_components(n, raw.e.as_deref()?).ok()?;
            (KeyType::Rsa, key)
        }
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let key = DecodingKey::from_ec_components(raw.x.as_deref()?, raw.y.as_deref()?).ok()?;
            let kind = if crv == "P-256" {
                KeyType::P256
            } else {
                KeyType::P384
            };
            (kind, key)
        }
        ("OKP", Some("Ed25519")) => {
            let key = DecodingKey::from_ed_components(raw.x.as_deref()?).ok()?;
            (KeyType::Ed25519, key)
        }
        // `oct` (an HMAC secret) above all: keel never verifies with a shared secret.
        _ => return None,
    };
    Some(Key {
        kind,
        alg,
        decoding,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    impl Jwks {
        /// Whether a fetch was ever started (or one is under way).
        pub(in crate::auth::oidc) fn tried_fetching(&self) -> bool {
            self.fetch.try_lock().map_or(true, |last| last.is_some())
        }
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn rsa_jwk(kid: &str, bits: usize, alg: Option<&str>) -> serde_json::Value {
        // The top bit is set, so the modulus has exactly `bits` bits.
        let modulus = vec![0xC5u8; bits / 8];
        let mut jwk = json!({"kty": "RSA", "kid": kid, "n": b64(&modulus), "e": "AQAB"});
        if let Some(alg) = alg {
            jwk["alg"] = json!(alg);
        }
        jwk
    }

    #[test]
    fn only_asymmetric_signature_keys_with_a_kid_are_kept() {
        let body = json!({"keys": [
            rsa_jwk("rsa", 2048, None),
            rsa_jwk("small", 1024, None),
            rsa_jwk("pinned", 2048, Some("PS256")),
            rsa_jwk("hmac-alg", 2048, Some("HS256")),
            {"kty": "oct", "kid": "secret", "k": b64(b"a shared secret")},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": rsa_jwk("x", 2048, None)["n"], "e": "AQAB"},
            {"kty": "EC", "kid": "p256", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "kid": "p521", "crv": "P-521", "x": b64(&[1; 66]), "y": b64(&[2; 66])},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(&[3; 32])},
            {"kty": "OKP", "kid": "x448", "crv": "X448", "x": b64(&[3; 56])},
            {"kty": "RSA", "n": rsa_jwk("x", 2048, None)["n"], "e": "AQAB"},
            {"kty": 5, "kid": "odd"},
            "not even an object",
        ]});
        let keys = parse(body.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, ["ed", "p256", "pinned", "rsa"]);
        assert!(parse(b"[]").is_err());
        assert!(parse(b"{\"keys\": 1}").is_err());
    }

    #[test]
    fn a_key_verifies_only_the_algorithms_of_its_type_and_its_own_alg() {
        use Algorithm::*;
        let body = json!({"keys": [
            rsa_jwk("rsa", 2048, None),
            rsa_jwk("pinned", 2048, Some("PS256")),
            {"kty": "EC", "kid": "p256", "crv": "P-256", "x": b64(&[1; 32]), "y": b64(&[2; 32])},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": b64(&[1; 48]), "y": b64(&[2; 48])},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "x": b64(&[3; 32])},
        ]});
        let keys = parse(body.to_string().as_bytes()).unwrap();
        let fits = |kid: &str, alg| keys[kid][0].fits(alg);
        for alg in [RS256, RS384, RS512, PS256, PS384, PS512] {
            assert!(fits("rsa", alg), "{alg:?}");
        }
        for alg in [HS256, HS384, HS512, ES256, EdDSA] {
            assert!(!fits("rsa", alg), "{alg:?}");
        }
        assert!(fits("pinned", PS256) && !fits("pinned", RS256));
        assert!(fits("p256", ES256) && !fits("p256", ES384) && !fits("p256", HS256));
        assert!(fits("p384", ES384) && !fits("p384", ES256));
        assert!(fits("ed", EdDSA) && !fits("ed", ES256) && !fits("ed", HS512));
        assert_eq!(pick(&keys["rsa"], ES256).err(), Some(Reason::KeyMismatch));
    }
}
