//! One event's journey through the pipeline, hop by hop, read on demand: what
//! `GET /v1/events/{id}/journey` answers.
//!
//! * [`outbox`]: the event as stored, whether its outbox row is still there (the relay deletes
//!   rows every sink has passed), and each relay sink's state on it: `delivered` once the sink's
//!   cursor for the event's relay partition is at or past the event's `(tx_id, position)` (the
//!   gap-safe order of [`crate::store::log`]), `parked` / `held` / `retry` while it has a
//!   `relay_parked` row, `pending` otherwise.
//! * [`kafka`]: the topic the Kafka sink chose, the partition keel's producer gave the key, and
//!   the record's offset. keel stores no offsets (the relay stays as fast as it is): the offset is
//!   looked up in Kafka, from the record's timestamp, within a bounded number of records and a
//!   time budget.
//! * [`redis`]: the stream and channel the Redis sink writes to, and the stream entry id when a
//!   bounded `XRANGE` finds the event's id in it.
//! * [`groups`]: each consumer group keel knows on the topic, handled / parked / pending, from
//!   the dead-letter store and the group's committed offset.
//! * [`projections`]: each projection on the topic, whether its checkpoint passed the record.
//!
//! Contracts: every query is a key lookup or bounded by the deployment (sinks, groups,
//! projections), never by the size of the store; Kafka and Redis are asked within
//! [`BUDGET`] in all, and a hop they cannot answer says why in its `note` instead of failing the
//! journey. Nothing here writes anything or commits a Kafka offset.

pub mod groups;
pub mod kafka;
pub mod outbox;
pub mod projections;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use crate::catalog::Catalog;
use crate::config::{Config, RelayConfig};
use crate::projection::Projection as ReadModel;
use crate::relay::sink::SinkKind;

/// How long a journey may spend asking Kafka and Redis, in all.
pub const BUDGET: Duration = Duration::from_secs(3);

/// How much of [`BUDGET`] looking for the record (in Kafka, and in Redis meanwhile) may take:
/// the rest is kept for the consumer groups' offsets.
pub const SEARCH_BUDGET: Duration = Duration::from_secs(2);

/// Where a journey looks: what the relay was configured with, and the projections this process
/// knows. Built once per process; cheap to share.
pub struct Sources {
    pub catalog: Arc<Catalog>,
    pub relay: Arc<RelayConfig>,
    pub kafka_brokers: String,
    /// `None` when `redis_url` does not make a client.
    pub redis: Option<::redis::Client>,
    /// Each known projection's name and the event types it applies.
    pub projections: Vec<(String, Vec<String>)>,
}

impl Sources {
    pub fn new(config: &Config, catalog: Arc<Catalog>, projections: &[Arc<dyn ReadModel>]) -> Self {
        let redis = crate::relay::redis::client(&config.redis_url, &config.relay.redis)
            .map_err(|e| {
                tracing::warn!(error = %format!("{e:#}"), "event journeys cannot use redis_url")
            })
            .ok();
        Self {
            catalog,
            relay: Arc::new(config.relay.clone()),
            kafka_brokers: config.kafka_brokers.clone(),
            redis,
            projections: projections
                .iter()
                .map(|p| {
                    let types = p.event_types().iter().map(|t| (*t).to_owned()).collect();
                    (p.name().to_owned(), types)
                })
                .collect(),
        }
    }
}

/// One event's journey. The shape `GET /v1/events/{id}/journey` answers.
#[derive(Debug, Clone, Serialize)]
pub struct Journey {
    pub event: outbox::Event,
    pub outbox: outbox::Outbox,
    pub kafka: kafka::Kafka,
    pub redis: redis::Redis,
    pub consumers: Vec<groups::Group>,
    pub projections: Vec<projections::Projection>,
}

/// The journey of event `id`, or `None` when the store has no such event. Fails only when
/// PostgreSQL does; Kafka and Redis being away shows in the hops' notes.
pub async fn journey(pool: &PgPool, sources: &Sources, id: Uuid) -> sqlx::Result<Option<Journey>> {
    match outbox::event(pool, id).await? {
        Some(event) => follow(pool, sources, event).await.map(Some),
        None => Ok(None),
    }
}

/// The journey of `event`, read by [`outbox::event`]: for a caller that checks the event
/// before anything else is asked.
#[tracing::instrument(skip_all, fields(event_id = %event.id))]
pub async fn follow(
    pool: &PgPool,
    sources: &Sources,
    event: outbox::Event,
) -> sqlx::Result<Journey> {
    let outbox = outbox::outbox(pool, &event, &sources.relay).await?;
    let started = Instant::now();
    let (deadline, searched) = (started + BUDGET, started + SEARCH_BUDGET);
    let (kafka, redis) = tokio::join!(
        kafka::locate(sources, &event, outbox.state(SinkKind::Kafka), searched),
        redis::locate(sources, &event, outbox.state(SinkKind::Redis), searched),
    );
    let consumers = groups::groups(pool, sources, &event, &kafka, deadline).await?;
    let projections = projections::projections(pool, sources, &event, &kafka).await?;
    Ok(Journey {
        event,
        outbox,
        kafka,
        redis,
        consumers,
        projections,
    })
}

/// What is left of the budget that ends at `deadline`.
fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
