//! Subscriptions: reading what the relay published.
//!
//! * [`client`]: the one Kafka consumer configuration every reader starts from.
//! * [`record`]: a Kafka record copied out of librdkafka, as every reader here holds it.
//! * [`decode`]: the envelope from keel's headers, the payload from the Confluent-framed Avro
//!   value, resolved to the schema version the subscriber reads.
//! * [`runtime`]: consumer groups with per-partition order, commits after success, retries, and
//!   the dead-letter store ([`dlq`]) that keeps per-key order.
//! * [`tail`]: decoded records as JSON, for `keel consume`; `keel dlq` drives [`dlq`].
//!
//! Projections, which keep their offsets in PostgreSQL instead, are in [`crate::projection`].

pub mod client;
pub mod decode;
pub mod dlq;
pub mod record;
pub mod runtime;
pub mod tail;

pub use runtime::{run, Delivery, Handler, HandlerError, Subscription};
