//! [`Oidc`]: JWT bearer tokens from an OpenID Connect issuer, verified against the keys it
//! publishes (its JWKS, `auth.oidc.jwks_url`).
//!
//! The contract of [`Oidc::verify`]:
//! - The token is a JWS in compact form whose header names an `alg` from
//!   `auth.oidc.algorithms` (never `none`, never HMAC: the config refuses them and so does this
//!   code) and a `kid`. The key is the JWKS key with that `kid`, and it must be of the type the
//!   algorithm needs (an RSA key for RS256, a P-256 key for ES256, an Ed25519 key for EdDSA),
//!   so a token "signed" with HS256 and the RSA public key's bytes is refused however it was
//!   made. The `jku`, `x5u`, `x5c` and embedded `jwk` headers are never read, let alone fetched.
//!   A `crit` header is refused: keel understands no extension.
//! - The claims `exp`, `iss`, `aud` and `sub` are required; `iss` must equal
//!   `auth.oidc.issuer`, `aud` must contain `auth.oidc.audience`; `exp` and `nbf` (when
//!   present) are checked with `auth.oidc.leeway_s` of clock skew.
//! - Roles come from `auth.oidc.roles_claim` (see [`claims`]); values that are not built-in role
//!   names grant nothing.
//! - Every refusal is [`Error::TokenExpired`] or [`Error::TokenInvalid`] with a [`Reason`] for
//!   metrics and logs; no message repeats the token.
//!
//! Keys are cached ([`jwks`]): fetched at most once per `auth.oidc.jwks_refetch_min_s`, again
//! after `auth.oidc.jwks_cache_s` or on an unknown `kid`; while the JWKS cannot be fetched the
//! cached keys keep verifying and an unknown `kid` fails closed.

mod claims;
mod jwks;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::principal::Role;
use super::{Error, Reason};
use crate::config::OidcConfig;
use jwks::Jwks;

/// Longest token accepted, in bytes; longer ones are refused before any decoding.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Longest `kid` accepted, in bytes.
const MAX_KID_BYTES: usize = 256;

/// Longest `sub` accepted, in bytes (OpenID Connect Core §2 allows 255 ASCII characters).
const MAX_SUBJECT_BYTES: usize = 255;

/// Who a verified bearer token stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIdentity {
    /// The `sub` claim: unique within the issuer.
    pub subject: String,
    /// The `iss` claim, which is `auth.oidc.issuer`.
    pub issuer: String,
    /// The built-in roles the roles claim names, sorted, without repeats.
    pub roles: Vec<Role>,
    /// The `exp` claim: the token is refused from then on (plus the leeway).
    pub expires_at: DateTime<Utc>,
}

/// The bearer-token verifier. Cheap to clone: clones share the key cache.
#[derive(Clone)]
pub struct Oidc {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    roles_claim: String,
    /// One validation per allowed algorithm, each allowing that algorithm alone (jsonwebtoken
    /// wants every allowed algorithm to fit the key).
    validations: Vec<(Algorithm, Validation)>,
    jwks: Arc<Jwks>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.inner.issuer)
            .field(
                "algorithms",
                &self
                    .inner
                    .validations
                    .iter()
                    .map(|(alg, _)| alg)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// The header fields keel reads; everything else (`jku`, `x5u`, `jwk`, ...) is left unread.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

impl Oidc {
    /// The verifier `config` describes, or `None` when `auth.oidc.issuer` is unset. Keys are
    /// fetched with `client` on first use (or by [`Oidc::fetch_keys`]), each fetch with its own
    /// 5 s timeout. `client` needs TLS support for an `https` JWKS URL; a redirect to a URL
    /// that is not `https` (or loopback `http`) is refused.
    pub fn from_config(
        config: &OidcConfig,
        client: reqwest::Client,
    ) -> anyhow::Result<Option<Self>> {
        config.validate()?;
        let (Some(issuer), Some(audience), Some(jwks_url)) =
            (&config.issuer, &config.audience, &config.jwks_url)
        else {
            return Ok(None);
        };
        let url = reqwest::Url::parse(jwks_url).context("auth.oidc.jwks_url")?;
        let validations = config
            .algorithms
            .iter()
            .map(|name| {
                let alg = asymmetric(name)
                    .with_context(|| format!("auth.oidc.algorithms: {name} is not allowed"))?;
                let mut validation = Validation::new(alg);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                validation.set_issuer(&[issuer]);
                validation.set_audience(&[audience]);
                validation.leeway = config.leeway_s;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = true;
                Ok((alg, validation))
            })
            .collect::<anyhow::Result<_>>()?;
        let jwks = Jwks::new(
            client,
            url,
            Duration::from_secs(config.jwks_cache_s),
            Duration::from_secs(config.jwks_refetch_min_s),
        );
        Ok(Some(Self {
            inner: Arc::new(Inner {
                issuer: issuer.clone(),
                roles_claim: config.roles_claim.clone(),
                validations,
                jwks: Arc::new(jwks),
            }),
        }))
    }

    /// Fetches the JWKS now (at start-up, say, to learn early whether the issuer is reachable),
    /// unless a fetch happened less than `auth.oidc.jwks_refetch_min_s` ago. Returns how many
    /// usable keys the cache holds.
    pub async fn fetch_keys(&self) -> anyhow::Result<usize> {
        self.inner.jwks.fetch_now().await
    }

    /// Who `token` (a compact JWS, without the `Bearer ` prefix) stands for, if it is valid.
    #[tracing::instrument(skip_all)]
    pub async fn verify(&self, token: &str) -> Result<TokenIdentity, Error> {
        match self.check(token).await {
            Ok(identity) => Ok(identity),
            Err(reason) => {
                tracing::debug!(reason = reason.as_str(), "bearer token refused");
                Err(match reason {
                    Reason::TokenExpired => Error::TokenExpired,
                    other => Error::TokenInvalid(other),
                })
            }
        }
    }

    async fn check(&self, token: &str) -> Result<TokenIdentity, Reason> {
        if token.len() > MAX_TOKEN_BYTES || !looks_like_jwt(token) {
            return Err(Reason::TokenMalformed);
        }
        let header = header(token)?;
        if header.crit.is_some() {
            return Err(Reason::TokenMalformed);
        }
        let (alg, validation) = self
            .inner
            .validations
            .iter()
            .find(|(alg, _)| alg_name(*alg) == header.alg)
            .ok_or(Reason::AlgNotAllowed)?;
        let kid = header.kid.ok_or(Reason::MissingKid)?;
        if kid.len() > MAX_KID_BYTES {
            return Err(Reason::UnknownKid);
        }
        let key = self.inner.jwks.key(&kid, *alg).await?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, &key, validation,
        )
        .map_err(|err| refusal(err.kind()))?;
        let claims = data.claims;
        let subject = claims::string(&claims, "sub")
            .filter(|sub| !sub.is_empty() && sub.len() <= MAX_SUBJECT_BYTES)
            .ok_or(Reason::BadClaim)?;
        // jsonwebtoken also accepts an array `iss` that contains the issuer; a token has one.
        let issuer = claims::string(&claims, "iss")
            .filter(|iss| *iss == self.inner.issuer)
            .ok_or(Reason::WrongIssuer)?;
        let expires_at = claims::timestamp(&claims, "exp").ok_or(Reason::BadClaim)?;
        Ok(TokenIdentity {
            subject: subject.to_owned(),
            issuer: issuer.to_owned(),
            roles: claims::roles(&claims, &self.inner.roles_claim),
            expires_at,
        })
    }
}

/// Whether `token` has the shape of a compact JWS: three dot-separated base64url parts, the
/// first two not empty (the signature may be, as in an `alg: none` token, which [`Oidc::verify`]
/// then refuses). API keys (`keel_<key id>_<secret>`) never have this shape.
pub fn looks_like_jwt(token: &str) -> bool {
    let base64url = |part: &str| {
        part.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty()
                && !payload.is_empty()
                && base64url(header)
                && base64url(payload)
                && base64url(signature)
        }
        _ => false,
    }
}

/// The token's header, read without trusting anything in it.
fn header(token: &str) -> Result<Header, Reason> {
    let encoded = token.split('.').next().unwrap_or_default();
    let json = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| Reason::TokenMalformed)?;
    serde_json::from_slice(&json).map_err(|_| Reason::TokenMalformed)
}

/// The asymmetric algorithm `name` (JOSE spelling); `None` for `none`, HMAC and unknown names.
fn asymmetric(name: &str) -> Option<Algorithm> {
    let alg = match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    };
    Some(alg)
}

/// The JOSE name of an algorithm [`asymmetric`] returns.
fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::EdDSA => "EdDSA",
        // Never in a validation: `asymmetric` does not return them.
        _ => "HMAC",
    }
}

/// Why jsonwebtoken refused a token.
fn refusal(kind: &ErrorKind) -> Reason {
    match kind {
        ErrorKind::InvalidSignature => Reason::BadSignature,
        ErrorKind::ExpiredSignature => Reason::TokenExpired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidIssuer => Reason::WrongIssuer,
        ErrorKind::InvalidAudience => Reason::WrongAudience,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => Reason::BadClaim,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Reason::AlgNotAllowed,
        ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidKeyFormat => Reason::KeyMismatch,
        _ => Reason::TokenMalformed,
    }
}

#[cfg(test)]
mod tests;
