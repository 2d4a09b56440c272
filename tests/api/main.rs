//! Integration tests against real PostgreSQL: the HTTP API and the store's guarantees.

mod append;
mod architecture;
mod audit;
mod authz;
mod bad_input;
mod cli;
mod concurrency;
mod consume;
mod consumer;
mod hardening;
mod helpers;
mod keys;
mod library;
mod log;
mod metrics;
mod oidc;
mod operator_cli;
mod projections;
mod reads;
mod registry;
mod relay;
mod relay_support;
mod replay;
mod schemas;
mod unvalidated;
