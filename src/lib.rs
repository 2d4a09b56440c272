//! keel: a log-centric event backbone on PostgreSQL and Kafka.
//!
//! How data flows, module by module:
//!
//! 1. [`api`] takes an HTTP request, and [`model`] validates it into domain types, checking event
//!    types against the [`catalog`] (the `schemas/` folder).
//! 2. [`store`] appends the events and their outbox rows in one PostgreSQL transaction, checking
//!    the aggregate's version (optimistic concurrency). Services that share the database call
//!    [`store::append`] inside their own transaction instead.
//! 3. [`store::log`] is the gap-safe global order: every reader that follows the log (the relay,
//!    replays, projections) reads through it and never skips a late-committing event.
//! 4. [`relay`] ships outbox rows to Kafka and Redis, in per-aggregate order, at least once.
//! 5. [`consumer`] decodes what the relay published, for subscribers (`keel consume`).
//! 6. [`replay`] reads history back from the store (`keel replay aggregate`).
//! 7. [`app`] wires the API to the store; [`cli`] and [`config`] are how operators run it;
//!    [`bench`] measures it against raw SQL in the same run.

pub mod api;
pub mod app;
pub mod append;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod projection;
pub mod registry;
pub mod relay;
pub mod replay;
pub mod retry;
pub mod schema;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod wire;
