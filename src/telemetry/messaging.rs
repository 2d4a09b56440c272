//! The spans of an event's trip through a broker, with OpenTelemetry's messaging attribute names
//! (semantic conventions 1.28 and later: `messaging.operation.type` is `send` or `process`,
//! `messaging.operation.name` is the operation's own name, and the span is named
//! `{operation.name} {destination}`).
//!
//! - [`publish`]: `publish <topic>`, kind PRODUCER, a child of the trace context stored in the
//!   event's metadata (the append's span).
//! - [`process`]: `process <topic>`, kind CONSUMER, a child of the record's `traceparent` header
//!   (which carries that same stored context), or a new trace's root when the record has none.
//!
//! Each returns [`tracing::Span::none`] when traces are not exported, so the paths that call
//! them cost nothing then.

use std::collections::HashMap;

use tracing::field::Empty;
use tracing::Span;

use super::context::{self, TRACEPARENT, TRACESTATE};
use crate::model::RecordedEvent;

/// Where an event is published.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// `messaging.system`: `kafka`, `redis`.
    pub system: &'static str,
    /// The topic (Kafka) or stream (Redis).
    pub name: &'a str,
    /// The record key (`messaging.kafka.message.key`); Kafka only.
    pub key: Option<&'a str>,
}

/// The `publish <destination>` span for one event, when traces are exported and the event's
/// metadata holds a valid `traceparent`; [`Span::none`] otherwise (an event appended while
/// export was off gets no publish span of its own).
pub fn publish(event: &RecordedEvent, to: Destination<'_>) -> Span {
    if !super::enabled() {
        return Span::none();
    }
    let stored = |key| event.metadata.get(key).and_then(serde_json::Value::as_str);
    let Some(parent) = stored(TRACEPARENT).and_then(|tp| context::remote(tp, stored(TRACESTATE)))
    else {
        return Span::none();
    };
    let span = tracing::info_span!(
        "publish",
        otel.name = %format!("publish {}", to.name),
        otel.kind = "producer",
        otel.status_code = Empty,
        messaging.system = to.system,
        messaging.destination.name = to.name,
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.message.id = %event.id,
        messaging.kafka.message.key = to.key,
        error.type = Empty,
    );
    context::set_parent(&span, Some(parent));
    span
}

/// A record as a consumer received it, for [`process`].
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: &'a str,
    pub headers: &'a HashMap<String, String>,
    /// `messaging.consumer.group.name`.
    pub group: &'a str,
}

/// Whether a record without trace context gets a span of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untraced {
    /// A new trace's root: one record, one handler call (the consumer runtime).
    Root,
    /// No span (a projection's batch, whose own span covers it).
    Skip,
}

/// The `process <topic>` span for one record, when traces are exported: a child of the
/// record's `traceparent` header when that is valid, else as `untraced` says.
pub fn process(record: Received<'_>, untraced: Untraced) -> Span {
    if !super::enabled() {
        return Span::none();
    }
    let header = |name| record.headers.get(name).map(String::as_str);
    let parent = header(TRACEPARENT).and_then(|tp| context::remote(tp, header(TRACESTATE)));
    if parent.is_none() && untraced == Untraced::Skip {
        return Span::none();
    }
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {}", record.topic),
        otel.kind = "consumer",
        otel.status_code = Empty,
        messaging.system = "kafka",
        messaging.destination.name = record.topic,
        messaging.destination.partition.id = %record.partition,
        messaging.kafka.offset = record.offset,
        messaging.kafka.message.key = record.key,
        messaging.message.id = header(crate::wire::header::EVENT_ID),
        messaging.consumer.group.name = record.group,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        error.type = Empty,
    );
    context::set_parent(&span, parent);
    span
}

/// Marks `span` failed, with a short error class (`error.type`).
pub fn failed(span: &Span, kind: &str) {
    span.record("otel.status_code", "error");
    span.record("error.type", kind);
}
