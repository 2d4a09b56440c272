//! The store's errors. Driver errors are mapped here, once.

use uuid::Uuid;

use crate::model::ExpectedVersion;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Optimistic concurrency: the aggregate is not at the version the writer expected.
    #[error("wrong expected version: expected {expected:?}, current version is {current}")]
    WrongExpectedVersion {
        expected: ExpectedVersion,
        current: i32,
    },

    /// An event id in the batch is already stored, with other content or in another aggregate,
    /// or the batch only partly matches stored events.
    #[error("event {event_id} is already stored with different content")]
    IdempotencyConflict { event_id: Uuid },

    /// An event id in the batch is already stored. The transaction is aborted; [`super::Store::append`]
    /// turns this into an idempotent replay or an [`Error::IdempotencyConflict`].
    #[error("an event id in the batch is already stored")]
    DuplicateEventId { event_id: Option<Uuid> },

    /// The aggregate was last written by a transaction that started after this one. Appending
    /// would put this event before its predecessor in the log order, so the append is refused.
    /// Retry in a new transaction.
    #[error("the aggregate was written by a newer transaction; retry in a new transaction")]
    TransactionOrder,

    #[error("an append needs at least one event")]
    EmptyBatch,

    /// Text PostgreSQL cannot store, such as a NUL character (`\u0000`) in JSON or a name.
    #[error("the input holds a character PostgreSQL cannot store (such as \\u0000)")]
    UnsupportedText,

    /// The database could not be reached in time. Safe to retry with the same event ids.
    #[error("the database is unavailable")]
    Unavailable(#[source] sqlx::Error),

    /// The store is shutting down and took no more appends.
    #[error("the store is shutting down")]
    Stopped,

    #[error("database error")]
    Database(#[source] sqlx::Error),
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            Self::TransactionOrder | Self::Unavailable(_) | Self::Stopped
        )
    }
}

/// SQLSTATEs after which the same request may well succeed a moment later: connection failures
/// (08), serialization failures and deadlocks (40001, 40P01), insufficient resources (53),
/// statement or lock timeouts and cancellation (57014, 55P03), the server going away (57P01-03),
/// and a read-only server after a failover (25006).
fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "25006"
        )
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
                if db.constraint() == Some("events_pkey") {
                    return Self::DuplicateEventId { event_id: None };
                }
                Self::Database(err)
            }
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_) => Self::Unavailable(err),
            // untranslatable_character, character_not_in_repertoire: bad input, not a fault.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("22P05" | "22021")) =>
            {
                Self::UnsupportedText
            }
            sqlx::Error::Database(db) if db.code().as_deref().is_some_and(is_transient) => {
                Self::Unavailable(err)
            }
            _ => Self::Database(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::is_transient;

    #[test]
    fn transient_sqlstates_are_told_from_faults() {
        for code in [
            "08006", "08001", "40001", "40P01", "53300", "53100", "55P03", "57014", "57P01",
            "25006",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "XX000"] {
            assert!(!is_transient(code), "{code}");
        }
    }
}
