//! keel: a log-centric event backbone on PostgreSQL and Kafka.
//!
//! How data flows, module by module:
//!
//! 1. [`api`] takes an HTTP request and parses it into the [`model`]'s types.
//! 2. [`append`] is the write path, for HTTP and library callers alike: its validator checks each
//!    event against the [`catalog`] (the `schemas/` folder) and the schema [`registry`], and only it
//!    builds the checked events that [`store`] appends, with their outbox rows, in one PostgreSQL
//!    transaction (optimistic concurrency on the aggregate's version).
//! 3. [`store::log`] is the gap-safe global order: every reader that follows the log (the relay,
//!    replays, rebuilds) filters with its one horizon predicate and never skips a late commit.
//! 4. [`relay`] ships outbox rows to Kafka and Redis, in per-aggregate order, at least once, in
//!    the format [`wire`] defines, through the client layer in [`kafka`].
//! 5. [`consumer`] runs Kafka consumer groups over what the relay published (decoding with
//!    [`wire`]), with a dead-letter store that keeps per-key order; [`projection`] applies events
//!    to read models exactly once; [`saga`] runs process managers whose steps (state, emitted
//!    events, timeouts) commit with their input; [`replay`] reads history back from the store.
//!    [`archive`] writes each type's history to Avro files in object storage, and
//!    [`retention`] purges what is archived and no longer needed; readers below a purge either
//!    read through the archive or are refused, never silently short.
//! 6. Every stage beats in [`heartbeat`]; [`health`] watches the whole pipeline for stalls and
//!    says so on `/v1/health/pipeline`. [`jobs`] runs rebuilds and republishes with a row each
//!    (progress, who started it, cancel, resume), for the API and the command line; [`journey`] follows one event through
//!    every hop; [`ui`] is the web dashboard over all of it, at `/ui`.
//! 7. [`app`] and [`cli`] wire components together from [`config`]; nothing else constructs
//!    them. [`shutdown`] stops every long-running component; [`retry`] is the one backoff.
//!
//! Dependencies point one way, lowest layer first; a module uses only modules of lower layers
//! (`tests/api/architecture.rs` checks this on the source, so the import graph has no circle):
//!
//! ```text
//! model, metrics, retry, shutdown,     domain types and primitives; no IO crate in model;
//! tls                                  TLS's one crypto provider (ring) and PEM files
//! schema, catalog, kafka               Avro rules, the schemas/ folder, the Kafka client layer
//! wire                                 the event on the wire, encode and decode; no IO
//! store, heartbeat                     events, outbox, reads, the gap-safe log; stage heartbeats
//! config, registry                     the typed config tree; schemas in PostgreSQL
//! auth, telemetry                      principals and API keys (uses config); logs, traces and
//!                                      the trace context they carry
//! append, relay, consumer              the write path; the sinks (Kafka and Redis never import
//!                                      each other); consumer groups
//! archive                              events kept in object storage (a directory or S3)
//! replay, then projection, then saga,  history; read models; process managers (sagas, whose
//! then health, jobs, retention         inputs run as projections); then the pipeline monitor,
//!                                      operator jobs and the guarded purge (none uses another)
//! journey                              one event's hops (uses health's Kafka view)
//! api, then ui                         HTTP; the web dashboard at /ui (pages over the API's calls)
//! app, then cli (with its bench)       wiring, and the command line: clap and printing live only here
//! ```

pub mod api;
pub mod app;
pub mod append;
pub mod archive;
pub mod auth;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod consumer;
pub mod health;
pub mod heartbeat;
pub mod jobs;
pub mod journey;
pub mod kafka;
pub mod metrics;
pub mod model;
pub mod projection;
pub mod registry;
pub mod relay;
pub mod replay;
pub mod retention;
pub mod retry;
pub mod saga;
pub mod schema;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod ui;
pub mod wire;
