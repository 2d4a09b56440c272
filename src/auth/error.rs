//! The errors of authentication. A refused API key is one error, [`Error::Unauthenticated`],
//! whose message and code are the same whatever the [`Reason`]: a caller learns nothing about
//! whether a key id exists. A refused bearer token is [`Error::TokenExpired`] or, whatever else
//! is wrong with it, [`Error::TokenInvalid`]. The reason is for metrics and logs only (its labels
//! are a bounded set); no message repeats the credential.

use super::key::{InvalidKey, KeyId};
use super::principal::{InvalidName, InvalidRole, PrincipalName};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credential is not a valid, current key of an enabled principal.
    #[error("invalid api key")]
    Unauthenticated(Reason),
    /// A bearer token that was valid once: its `exp` (plus the leeway) has passed.
    #[error("the bearer token has expired")]
    TokenExpired,
    /// A bearer token that is not, or not yet, valid here: malformed, badly signed, for another
    /// issuer or audience, with an algorithm or key keel does not accept. The reason says which.
    #[error("invalid bearer token")]
    TokenInvalid(Reason),
    #[error("principal '{0}' already exists")]
    PrincipalExists(PrincipalName),
    #[error("principal '{0}' not found")]
    PrincipalNotFound(PrincipalName),
    #[error("api key {0} not found")]
    KeyNotFound(KeyId),
    /// A key with this id is stored already (adding a given key twice, or a generated id that
    /// collided: 1 in 2^64 per pair).
    #[error("api key {0} already exists")]
    KeyExists(KeyId),
    #[error(transparent)]
    InvalidName(#[from] InvalidName),
    #[error(transparent)]
    InvalidRole(#[from] InvalidRole),
    /// The operating system's random number generator failed.
    #[error("cannot generate an api key: {0}")]
    Random(getrandom::Error),
    /// The database could not be reached in time; the same request may succeed later.
    #[error("the key store's database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("key store database error")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Why a credential was refused. Never shown to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Not of the form `keel_<key id>_<secret>`.
    Malformed(InvalidKey),
    /// No key has this id.
    UnknownKey,
    /// The key id exists, the secret does not match.
    WrongSecret,
    Revoked,
    Expired,
    PrincipalDisabled,
    /// A bearer token that is not a JWS of three base64url parts with JSON header and claims, or
    /// that is too long, or has a `crit` header.
    TokenMalformed,
    /// The token's `alg` is not in `auth.oidc.algorithms` (`none` and HMAC never are).
    AlgNotAllowed,
    /// The token's header has no `kid`.
    MissingKid,
    /// No key of the issuer's JWKS has the token's `kid`, even after fetching it again (or a
    /// fetch was not allowed yet).
    UnknownKid,
    /// The key named by `kid` is not of the type the token's `alg` needs (an RSA key for ES256,
    /// say), or its own `alg` differs.
    KeyMismatch,
    /// The signature does not verify.
    BadSignature,
    /// The token has expired.
    TokenExpired,
    /// The token's `nbf` is in the future.
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    /// A required claim (`exp`, `iss`, `aud`, `sub`) is missing or not of its type.
    BadClaim,
}

impl Reason {
    /// A stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::UnknownKey => "unknown_key",
            Self::WrongSecret => "wrong_secret",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
            Self::PrincipalDisabled => "principal_disabled",
            Self::TokenMalformed => "token_malformed",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::MissingKid => "missing_kid",
            Self::UnknownKid => "unknown_kid",
            Self::KeyMismatch => "key_mismatch",
            Self::BadSignature => "bad_signature",
            Self::TokenExpired => "token_expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::BadClaim => "bad_claim",
        }
    }
}

impl Error {
    /// The stable machine-readable code: a refused API key is `unauthenticated`, a refused
    /// bearer token `token_expired` or `token_invalid`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::TokenExpired => "token_expired",
            Self::TokenInvalid(_) => "token_invalid",
            Self::PrincipalExists(_) | Self::KeyExists(_) => "conflict",
            Self::PrincipalNotFound(_) | Self::KeyNotFound(_) => "not_found",
            Self::InvalidName(_) | Self::InvalidRole(_) => "invalid_input",
            Self::Unavailable(_) => "unavailable",
            Self::Random(_) | Self::Database(_) => "internal",
        }
    }

    /// Why a credential was refused, for metrics and logs; `None` for other errors.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            Self::Unauthenticated(reason) | Self::TokenInvalid(reason) => Some(*reason),
            Self::TokenExpired => Some(Reason::TokenExpired),
            _ => None,
        }
    }

    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        // The store's one table of SQLSTATEs decides what is transient.
        match store::Error::from(err) {
            store::Error::Unavailable(source) => Self::Unavailable(source),
            store::Error::Database(source) => Self::Database(source.into()),
            other => Self::Database(other.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_looks_the_same_from_outside() {
        let reasons = [
            Reason::Malformed(InvalidKey::Empty),
            Reason::UnknownKey,
            Reason::WrongSecret,
            Reason::Revoked,
            Reason::Expired,
            Reason::PrincipalDisabled,
        ];
        let outside: Vec<_> = reasons
            .iter()
            .map(|r| {
                let err = Error::Unauthenticated(*r);
                (err.to_string(), err.code())
            })
            .collect();
        assert!(outside.windows(2).all(|w| w[0] == w[1]), "{outside:?}");
        let labels: std::collections::BTreeSet<_> = reasons.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), reasons.len(), "each reason has its own label");
    }

    #[test]
    fn every_invalid_token_looks_the_same_from_outside_and_each_reason_has_a_label() {
        let reasons = [
            Reason::TokenMalformed,
            Reason::AlgNotAllowed,
            Reason::MissingKid,
            Reason::UnknownKid,
            Reason::KeyMismatch,
            Reason::BadSignature,
            Reason::NotYetValid,
            Reason::WrongIssuer,
            Reason::WrongAudience,
            Reason::BadClaim,
        ];
        let outside: std::collections::BTreeSet<_> = reasons
            .iter()
            .map(|r| {
                let err = Error::TokenInvalid(*r);
                assert_eq!(err.reason(), Some(*r));
                (err.to_string(), err.code())
            })
            .collect();
        assert_eq!(outside.len(), 1, "{outside:?}");
        assert_eq!(
            outside.first().unwrap().1,
            "token_invalid",
            "the issue's name"
        );
        assert_eq!(Error::TokenExpired.code(), "token_expired");
        assert_eq!(Error::TokenExpired.reason(), Some(Reason::TokenExpired));
        let labels: std::collections::BTreeSet<_> = reasons
            .iter()
            .chain([&Reason::TokenExpired, &Reason::UnknownKey, &Reason::Expired])
            .map(|r| r.as_str())
            .collect();
        assert_eq!(labels.len(), reasons.len() + 3, "no label is shared");
    }
}
