//! What a sink reports for each row it was given, and how failures are sorted.

use std::fmt;
use std::time::Duration;

use super::kafka::{KafkaSent, KafkaSink};
use super::redis::RedisSink;
use crate::model::RecordedEvent;

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

/// A sink the relay publishes to.
pub enum Sink {
    Kafka(KafkaSink),
    Redis(RedisSink),
}

impl Sink {
    pub fn kind(&self) -> SinkKind {
        match self {
            Sink::Kafka(_) => SinkKind::Kafka,
            Sink::Redis(_) => SinkKind::Redis,
        }
    }

    /// Publishes `events` in order; one outcome per event.
    pub async fn publish(&self, events: &[&RecordedEvent]) -> Vec<Outcome> {
        match self {
            Sink::Kafka(k) => k.publish(events).await,
            Sink::Redis(r) => r.publish(events).await,
        }
    }

    /// Waits (a bounded time) for what was queued to be acknowledged.
    pub(crate) async fn shutdown(&self) {
        if let Sink::Kafka(k) = self {
            k.flush(Duration::from_secs(5)).await;
        }
    }

    /// Starts publishing `events`: Kafka queues them and returns at once; Redis finishes.
    pub(crate) async fn send(&self, events: &[&RecordedEvent]) -> Sent {
        match self {
            Sink::Kafka(k) => Sent::Kafka(k.send(events).await),
            Sink::Redis(r) => Sent::Ready(r.publish(events).await),
        }
    }
}

/// A batch handed to a sink, whose outcomes may still be on their way.
pub(crate) enum Sent {
    Kafka(KafkaSent),
    Ready(Vec<Outcome>),
}

impl Sent {
    /// Every row reached the sink or its queue: none failed before it was sent.
    pub(crate) fn clean(&self) -> bool {
        match self {
            Sent::Kafka(k) => k.clean,
            Sent::Ready(outcomes) => outcomes.iter().all(|o| *o == Outcome::Delivered),
        }
    }

    /// Completes when no acknowledgement is still on its way (at once for Redis). Cancel-safe.
    pub(crate) async fn landed(&mut self) {
        if let Sent::Kafka(k) = self {
            k.landed().await;
        }
    }

    /// Waits for the acknowledgements still on their way; one outcome per event, in order.
    pub(crate) async fn outcomes(self) -> Vec<Outcome> {
        match self {
            Sent::Kafka(k) => k.wait().await,
            Sent::Ready(outcomes) => outcomes,
        }
    }
}
