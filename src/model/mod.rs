//! The vocabulary of the write path, validated once at the edge.
//!
//! Everything past the API layer takes these types, so the store and the relay never re-check a
//! string. Each constructor states the rule it enforces in its error.

mod age;
pub mod canary;
mod event;
mod expected_version;
mod names;
mod park;
mod pattern;
pub mod sequence;
mod version_spec;

pub use age::{Age, InvalidAge};
pub use event::{
    is_traceparent, is_tracestate, AppendResult, AppendedEvent, CheckedEvent, Metadata, NewEvent,
    RecordedEvent, SchemaRef,
};
pub use expected_version::ExpectedVersion;
pub use names::{AggregateType, EventType, InvalidName};
pub use park::{ParkState, UnknownParkState};
pub use pattern::{InvalidPattern, Pattern, Scope};
pub use version_spec::{InvalidVersion, VersionSpec};
