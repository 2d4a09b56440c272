//! What a sink reports for each row it was given, and how failures are sorted.

use std::fmt;

/// How the relay treats a failed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The sink is unavailable or busy (broker down, timeout, leader moving). Retried with
    /// back-off for as long as it takes; the row is never parked for it.
    Retriable,
    /// The row itself cannot be published (too large, cannot be encoded, not authorised). Retried
    /// `relay.max_attempts` times, then parked.
    Permanent,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retriable => "retriable",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A failed publish of one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkError {
    pub class: ErrorClass,
    /// A short, stable name for metrics and `keel outbox parked`, such as `message_too_large`.
    pub kind: &'static str,
    pub message: String,
}

impl SinkError {
    pub fn retriable(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Retriable,
            kind,
            message: message.into(),
        }
    }

    pub fn permanent(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind,
            self.class.as_str(),
            self.message
        )
    }
}

/// What happened to one row of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink acknowledged it.
    Delivered,
    Failed(SinkError),
    /// Not sent, because an earlier row of the same aggregate in this batch failed before it was
    /// sent. Sending it would have put it ahead of that row.
    NotSent,
}

/// Which sink a cursor or parked row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SinkKind {
    Kafka,
    Redis,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Kafka => "kafka",
            SinkKind::Redis => "redis",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "kafka" => Some(SinkKind::Kafka),
            "redis" => Some(SinkKind::Redis),
            _ => None,
        }
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
