//! Subscriptions: reading what the relay published.
//!
//! So far this holds the decoding every subscriber needs ([`decode`]): the envelope from keel's
//! headers, the payload from the Confluent-framed Avro value, resolved to the schema version the
//! subscriber reads. `keel consume` tails a topic with it. The consumer runtime (groups, retries,
//! the dead-letter queue, projections) builds on it.

pub mod decode;
pub mod tail;
