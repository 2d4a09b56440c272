//! Who a request is from: the credential in `Authorization` becomes an [`auth::Caller`] in the
//! request's extensions, before any route runs. What the caller may do is decided per route
//! ([`super::routes`]); a request without a credential reaches only the routes anyone may use.
//!
//! Credentials: `Authorization: Bearer <api key or OIDC token>` everywhere (a token from
//! `auth.oidc.issuer` gets 401 `token_expired` or `token_invalid` when refused); under `/registry` also HTTP Basic
//! with the key id as user and the secret as password, so Confluent clients work with
//! `basic.auth.user.info`. Every refused credential gets the same 401 `unauthenticated`, whatever
//! the cause (the cause is counted in `keel_auth_refused_total`). With
//! `auth.certificate_principals`, a request without `Authorization` over a verified TLS client
//! certificate acts as the enabled principal its subject common name names.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use sqlx::PgPool;

use super::error::ApiError;
use super::rate::RateLimits;
use super::server::PeerCertificate;
use crate::auth::{self, looks_like_jwt, Caller, Keys, Oidc};
use crate::config::{AuthConfig, AuthMode};
use crate::registry;

/// What the authentication layer needs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Authn {
    /// Where refused operator actions are recorded.
    audit: Option<PgPool>,
    mode: AuthMode,
    /// `None` only when `mode` is `none`.
    keys: Option<Keys>,
    /// Bearer tokens from `auth.oidc.issuer`, when configured.
    oidc: Option<Oidc>,
    /// Requests per principal, checked once the caller is known.
    rate: Option<RateLimits>,
    /// `auth.certificate_principals`.
    certificates: bool,
    anonymous_metrics: bool,
}

impl Authn {
    /// The layer for `config`; with authentication required, `keys` must be there.
    pub fn new(
        config: &AuthConfig,
        keys: Option<Keys>,
        oidc: Option<Oidc>,
        audit: PgPool,
    ) -> anyhow::Result<Self> {
        if config.mode == AuthMode::Required && keys.is_none() {
            anyhow::bail!("authentication is required, but no key store is configured");
        }
        Ok(Self {
            audit: Some(audit),
            oidc,
            rate: None,
            certificates: config.certificate_principals,
            mode: config.mode,
            keys,
            anonymous_metrics: config.anonymous_metrics,
        })
    }

    /// Limits each authenticated principal's requests per second (keyed by principal, so a
    /// client cannot reset its bucket by rotating keys).
    pub fn with_rate_limits(mut self, rate: RateLimits) -> Self {
        self.rate = Some(rate);
        self
    }

    pub fn anonymous_metrics(&self) -> bool {
        self.anonymous_metrics
    }
}

/// A request's id: the client's `x-request-id` when it is short and printable, otherwise a
/// fresh one. It goes into audit rows and back in the response's `x-request-id`.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

impl RequestId {
    fn of(headers: &HeaderMap) -> Self {
        let given = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
        Self(match given {
            Some(id) => id.to_owned(),
            None => uuid::Uuid::new_v4().to_string(),
        })
    }
}

/// The database refused operator actions are recorded in, for the route guards.
#[derive(Debug, Clone)]
pub struct AuditLog(pub PgPool);

/// The credential a request carries.
enum Credential {
    None,
    /// A header that is there but not one keel reads (another scheme, not UTF-8, bad base64).
    Unreadable,
    Key(String),
}

fn credential(headers: &HeaderMap, basic_allowed: bool) -> Credential {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Credential::None;
    };
    let Ok(value) = value.to_str() else {
        return Credential::Unreadable;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Credential::Key(rest.to_owned());
    }
    if basic_allowed && scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok());
        return match decoded.as_deref().and_then(|d| d.split_once(':')) {
            Some((key_id, secret)) => Credential::Key(format!("keel_{key_id}_{secret}")),
            None => Credential::Unreadable,
        };
    }
    Credential::Unreadable
}

/// The global layer: puts the [`RequestId`] and, for a valid credential, the [`Caller`] into the
/// request. A request with an invalid credential is refused here, whatever its route.
pub async fn authenticate(
    State(authn): State<Arc<Authn>>,
    mut req: Request,
    next: Next,
) -> Response {
    let request_id = RequestId::of(req.headers());
    req.extensions_mut().insert(request_id.clone());
    if let Some(pool) = &authn.audit {
        req.extensions_mut().insert(AuditLog(pool.clone()));
    }
    let registry = registry::api::owns(req.uri().path());
    let outcome = match (&authn.mode, &authn.keys) {
        (AuthMode::None, _) => Ok(Some(Caller::open())),
        (AuthMode::Required, None) => Err(Refused::Unavailable),
        (AuthMode::Required, Some(keys)) => match credential(req.headers(), registry) {
            Credential::None => match req.extensions().get::<PeerCertificate>() {
                Some(cert) if authn.certificates => certificate_caller(keys, cert).await,
                _ => Ok(None),
            },
            Credential::Unreadable => Err(Refused::Credential("malformed")),
            Credential::Key(text) => authn.bearer(keys, &text).await.map(Some),
        },
    };
    let mut response = match outcome {
        Ok(caller) => {
            let limited = match (&caller, &authn.rate) {
                (Some(c), Some(rate)) if c.method != auth::Method::Open => {
                    rate.check_request(&c.name).err()
                }
                _ => None,
            };
            match limited {
                Some(limited) => limited.response(req.uri().path()),
                None => {
                    if let Some(caller) = caller {
                        req.extensions_mut().insert(caller);
                    }
                    next.run(req).await
                }
            }
        }
        Err(refused) => refused.into_response(registry),
    };
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

impl Authn {
    /// The caller an API key or an OIDC token stands for (the credential without `Bearer `).
    async fn bearer(&self, keys: &Keys, text: &str) -> Result<Caller, Refused> {
        self.bearer_identity(keys, text)
            .await
            .map(|(caller, _)| caller)
    }

    async fn bearer_identity(
        &self,
        keys: &Keys,
        text: &str,
    ) -> Result<(Caller, Option<auth::TokenIdentity>), Refused> {
        if !text.starts_with("keel_") && looks_like_jwt(text) {
            // No issuer configured: a token is just a credential keel does not know.
            let Some(oidc) = &self.oidc else {
                return Err(Refused::Credential("token_without_issuer"));
            };
            return match oidc.verify(text).await {
                Ok(identity) => Ok((Caller::with_token(&identity), Some(identity))),
                Err(e @ (auth::Error::TokenExpired | auth::Error::TokenInvalid(_))) => {
                    Err(Refused::Token(e))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot check a bearer token");
                    Err(Refused::Internal)
                }
            };
        }
        match keys.authenticate(text).await {
            Ok(principal) => {
                let key_id = auth::ApiKey::parse(text)
                    .map(|k| k.id())
                    .expect("an authenticated key parses");
                Ok((Caller::with_key(&principal, key_id), None))
            }
            Err(auth::Error::Unauthenticated(reason)) => Err(Refused::Credential(reason.as_str())),
            Err(e) if e.is_retriable() => Err(Refused::Unavailable),
            Err(e) => {
                tracing::error!(error = %e, "cannot check an api key");
                Err(Refused::Internal)
            }
        }
    }

    /// A credential typed into a login form (an API key or an OIDC token): who it is, and for a
    /// token its identity (a session keeps its roles until it expires). Refusals are counted as
    /// the API counts them.
    pub async fn login(&self, credential: &str) -> Result<Login, LoginRefused> {
        let Some(keys) = &self.keys else {
            return match self.mode {
                AuthMode::None => Ok(Login {
                    caller: Caller::open(),
                    token: None,
                }),
                AuthMode::Required => Err(LoginRefused::Unavailable),
            };
        };
        match self.bearer_identity(keys, credential.trim()).await {
            Ok((caller, token)) => Ok(Login { caller, token }),
            Err(refused) => Err(refused.count()),
        }
    }

    /// The caller a session opened with key `key_id` acts as now: refused once the key is
    /// revoked or expired or its principal disabled, so a session never outlives its key.
    pub async fn key_session(&self, key_id: &auth::KeyId) -> Result<Caller, LoginRefused> {
        let Some(keys) = &self.keys else {
            return Err(LoginRefused::Invalid);
        };
        match keys.session_principal(key_id).await {
            Ok(principal) => Ok(Caller::with_key(&principal, *key_id)),
            Err(auth::Error::Unauthenticated(_)) => Err(LoginRefused::Invalid),
            Err(e) if e.is_retriable() => Err(LoginRefused::Unavailable),
            Err(e) => {
                tracing::error!(error = %e, "cannot check a session's api key");
                Err(LoginRefused::Unavailable)
            }
        }
    }

    /// Whether anyone may act without a credential (`auth.mode = "none"`).
    pub fn is_open(&self) -> bool {
        self.mode == AuthMode::None
    }
}

/// A login that succeeded.
#[derive(Debug, Clone)]
pub struct Login {
    pub caller: Caller,
    /// For an OIDC token: its identity, whose roles and expiry a session keeps.
    pub token: Option<auth::TokenIdentity>,
}

/// Why a login or a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginRefused {
    /// The credential is not valid (unknown, wrong, revoked, expired, disabled).
    Invalid,
    /// keel cannot check it now (its database is unavailable); retry later.
    Unavailable,
}

/// The enabled principal a verified client certificate names by its subject common name.
async fn certificate_caller(
    keys: &Keys,
    cert: &PeerCertificate,
) -> Result<Option<Caller>, Refused> {
    let Ok(name) = auth::PrincipalName::parse(&cert.subject) else {
        return Err(Refused::Credential("certificate_unknown"));
    };
    match keys.enabled_principal(&name).await {
        Ok(Some(principal)) => Ok(Some(Caller::with_certificate(&principal))),
        Ok(None) => Err(Refused::Credential("certificate_unknown")),
        Err(e) if e.is_retriable() => Err(Refused::Unavailable),
        Err(e) => {
            tracing::error!(error = %e, "cannot look up a certificate's principal");
            Err(Refused::Internal)
        }
    }
}

enum Refused {
    Credential(&'static str),
    /// An OIDC token refused: `token_expired` or `token_invalid`.
    Token(auth::Error),
    Unavailable,
    Internal,
}

impl Refused {
    /// Counts a refused credential as the API does, in a login form's words.
    fn count(self) -> LoginRefused {
        match self {
            Self::Credential(reason) => {
                metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => reason).increment(1);
                LoginRefused::Invalid
            }
            Self::Token(e) => {
                let reason = e.reason().map_or("token_invalid", |r| r.as_str());
                metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => reason).increment(1);
                LoginRefused::Invalid
            }
            Self::Unavailable | Self::Internal => LoginRefused::Unavailable,
        }
    }

    fn into_response(self, registry: bool) -> Response {
        match self {
            Self::Credential(reason) => {
                metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => reason).increment(1);
                unauthenticated(registry)
            }
            Self::Token(e) => {
                let reason = e.reason().map_or("token_invalid", |r| r.as_str());
                metrics::counter!(crate::metrics::AUTH_REFUSED, "reason" => reason).increment(1);
                let mut response = if registry {
                    registry::api::Refusal::unauthenticated(e.to_string()).into_response()
                } else {
                    ApiError::from(e).into_response()
                };
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keel\", error=\"invalid_token\""),
                );
                response
            }
            Self::Unavailable => ApiError::unavailable(
                "unavailable",
                "the key store's database is unavailable; retry later",
            )
            .into_response(),
            Self::Internal => ApiError::internal().into_response(),
        }
    }
}

/// 401 `unauthenticated`, with the challenge the route's clients understand.
pub fn unauthenticated(registry: bool) -> Response {
    let challenge = if registry {
        "Basic realm=\"keel registry\", Bearer realm=\"keel\""
    } else {
        "Bearer realm=\"keel\""
    };
    let message = "a valid credential is required: send Authorization: Bearer <api key>";
    let mut response = if registry {
        registry::api::Refusal::unauthenticated(message).into_response()
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message).into_response()
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// 403 `forbidden`: the same whether or not the resource exists.
/// [`ApiError::forbidden`], in the dialect of the route (Confluent's under `/registry`).
pub fn forbidden(registry: bool, action: auth::Action) -> Response {
    let error = ApiError::forbidden(action);
    if registry {
        registry::api::Refusal::forbidden(error.message, error.details).into_response()
    } else {
        error.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_everywhere_basic_only_on_the_registry() {
        let key = |c: Credential| match c {
            Credential::Key(k) => Some(k),
            _ => None,
        };
        assert_eq!(
            key(credential(&headers("Bearer keel_a_b"), false)).as_deref(),
            Some("keel_a_b")
        );
        assert_eq!(
            key(credential(&headers("bearer  keel_a_b "), false)).as_deref(),
            Some("keel_a_b")
        );
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("0123:abcd")
        );
        assert_eq!(
            key(credential(&headers(&basic), true)).as_deref(),
            Some("keel_0123_abcd")
        );
        assert!(matches!(
            credential(&headers(&basic), false),
            Credential::Unreadable
        ));
        assert!(matches!(
            credential(&headers("Basic !!!"), true),
            Credential::Unreadable
        ));
        assert!(matches!(
            credential(&headers("Digest x"), true),
            Credential::Unreadable
        ));
        assert!(matches!(
            credential(&HeaderMap::new(), true),
            Credential::None
        ));
    }

    #[test]
    fn request_ids_are_taken_only_when_short_and_printable() {
        let mut h = HeaderMap::new();
        h.insert("x-request-id", HeaderValue::from_static("abc-123"));
        assert_eq!(RequestId::of(&h).0, "abc-123");
        h.insert(
            "x-request-id",
            HeaderValue::from_str(&"a".repeat(200)).unwrap(),
        );
        assert_eq!(RequestId::of(&h).0.len(), 36);
    }
}
