//! Registry errors, with the Confluent Schema Registry's error codes.
//!
//! Database failures are the registry's own variants, told apart as the HTTP layers need them:
//! [`Error::Unavailable`] (retry later: 503), [`Error::UnsupportedText`] (bad input: 422) and
//! [`Error::Database`] (a fault: 500). The driver's errors are sorted by the store's one table of
//! SQLSTATEs, so the registry and the store agree on what is transient.

use crate::model::InvalidVersion;
use crate::schema::{Incompatibility, InvalidSchema};
use crate::store;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("subject '{0}' not found")]
    SubjectNotFound(String),
    #[error("version {version} of subject '{subject}' not found")]
    VersionNotFound { subject: String, version: String },
    #[error("schema not found")]
    SchemaNotFound,
    #[error("subject '{0}' was soft deleted; set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("version {version} of subject '{subject}' was soft deleted; set permanent=true to delete permanently")]
    VersionSoftDeleted { subject: String, version: i32 },
    #[error("version {version} of subject '{subject}' was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: i32 },
    #[error("subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("schema being registered is incompatible with an earlier schema for subject '{subject}': {}", .found.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Incompatible {
        subject: String,
        found: Vec<Incompatibility>,
    },
    #[error("{0}")]
    InvalidSchema(String),
    #[error("the specified version '{0}' is not a valid version id: use a positive integer or \"latest\"")]
    InvalidVersion(String),
    #[error("invalid compatibility level '{0}': use one of BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE")]
    InvalidCompatibility(String),
    #[error("unsupported schema type '{0}': keel's registry stores AVRO schemas")]
    UnsupportedSchemaType(String),
    /// The request holds text PostgreSQL cannot store, such as a NUL character.
    #[error("the request holds a character that cannot be stored, such as \\u0000")]
    UnsupportedText,
    /// The database could not be reached in time; the same request may succeed later.
    #[error("the registry's database is unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("registry database error")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        // The store's table sorts driver errors once for the crate; the registry keeps only the
        // distinctions that apply to it (no append conflicts: it never writes events).
        match store::Error::from(err) {
            store::Error::Unavailable(source) => Self::Unavailable(source),
            store::Error::UnsupportedText => Self::UnsupportedText,
            store::Error::Database(source) => Self::Database(source.into()),
            other => Self::Database(other.into()),
        }
    }
}

impl From<InvalidVersion> for Error {
    fn from(err: InvalidVersion) -> Self {
        Self::InvalidVersion(err.0)
    }
}

impl From<InvalidSchema> for Error {
    fn from(err: InvalidSchema) -> Self {
        Self::InvalidSchema(err.to_string())
    }
}

impl Error {
    /// The Confluent error code (`error_code` in REST replies).
    pub fn code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaNotFound => 40403,
            Self::SubjectSoftDeleted(_) => 40404,
            Self::SubjectNotSoftDeleted(_) => 40405,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::VersionNotSoftDeleted { .. } => 40407,
            Self::SubjectConfigNotFound(_) => 40408,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema(_) | Self::UnsupportedSchemaType(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidCompatibility(_) => 42203,
            Self::UnsupportedText => 42201,
            Self::Unavailable(_) | Self::Database(_) => 50001,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn driver_errors_are_sorted_into_transient_bad_text_and_faults() {
        let unavailable = Error::from(sqlx::Error::PoolTimedOut);
        assert!(
            matches!(unavailable, Error::Unavailable(_)),
            "{unavailable:?}"
        );
        assert!(unavailable.is_retriable());
        assert_eq!(unavailable.code(), 50001);

        let fault = Error::from(sqlx::Error::RowNotFound);
        assert!(matches!(fault, Error::Database(_)), "{fault:?}");
        assert!(!fault.is_retriable());
        assert_eq!(fault.code(), 50001);
    }
}
