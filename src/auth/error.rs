//! The key store's errors. A refused credential is one error, [`Error::Unauthenticated`], whose
//! message and code are the same whatever the [`Reason`]: a caller learns nothing about whether a
//! key id exists. The reason is for metrics and logs only (its labels are a bounded set).

use super::key::{InvalidKey, KeyId};
use super::principal::{InvalidName, InvalidRole, PrincipalName};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The credential is not a valid, current key of an enabled principal.
    #[error("invalid api key")]
    Unauthenticated(Reason),
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
        }
    }
}

impl Error {
    /// The stable machine-readable code; every refused credential is `unauthenticated`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
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
            Self::Unauthenticated(reason) => Some(*reason),
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
}
