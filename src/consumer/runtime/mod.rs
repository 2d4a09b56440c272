//! The consumer runtime: a Kafka consumer group that hands decoded events to a [`Handler`].
//!
//! * **Order.** Each assigned partition has its own task, which handles its records one at a time,
//!   in offset order. Partitions run in parallel, up to `max_partitions_in_flight` at once.
//! * **Commits.** A partition task takes the records that are waiting (up to `batch_size`),
//!   handles them, then commits the offset after the last one, synchronously. On revocation the
//!   rebalance callback stops each task between records and waits for it to commit what it has
//!   handled, so a rebalance redelivers at most the record in flight.
//! * **Failures.** A [`HandlerError::Retriable`] error is retried with exponential backoff, up to
//!   `max_retries`. A permanent error, running out of retries, or a record that does not decode
//!   **parks** the record in the dead-letter store ([`super::dlq`]), mirrored to `<topic>.dlq`.
//!   The group's later records with the same key are then **held** behind it, in order, while
//!   other keys keep flowing. `keel dlq retry` asks the partition's consumer to redeliver a chain.
//! * **Crash loops.** Before handling a batch, the task writes its first and last offsets to
//!   `consumer_deliveries`. A task that starts again at the same first offset was interrupted
//!   there (a crash, a kill, a rebalance): it then handles that range one record at a time,
//!   committing each, and once one record has been started more than `crash_attempts` times it is
//!   parked instead of handled. A consumer that dies on an event therefore ends up parking it.
//!
//! Needs tokio's multi-threaded runtime: the rebalance callback blocks its thread while partition
//! tasks finish.
//!
//! The parts, one job each:
//! * `group`: the group loop, which hands each record to its partition's queue and pauses a
//!   partition whose queue is too long;
//! * `partition`: the partition task, which takes batches from the queue, handles them and
//!   commits; `marker`: its crash marker;
//! * `delivery`: one record through the handler, with retries, parking and redelivery;
//! * `rebalance`: the gate a revocation closes, and the rebalance callback;
//! * `mirror`: the best-effort copy of parked records on `<topic>.dlq`.

mod delivery;
mod group;
mod marker;
mod mirror;
mod partition;
mod rebalance;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use sqlx::PgPool;

use super::record::Record;
use crate::model::RecordedEvent;
use crate::model::VersionSpec;
use crate::registry::Registry;
use crate::retry::RetryPolicy;

/// What a consumer group reads and how it treats failures.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub group: String,
    pub topics: Vec<String>,
    /// Handle only these event types (the `keel-event-type` header); empty for all. Other records
    /// are committed without being decoded.
    pub event_types: Vec<String>,
    /// The schema version payloads are resolved to (upcasting); `None` for as written.
    pub reader: Option<VersionSpec>,
    /// Retries of a retriable error before the record is parked.
    pub max_retries: u32,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Starts of one record that did not finish (crashes) before it is parked.
    pub crash_attempts: i32,
    pub max_partitions_in_flight: usize,
    pub batch_size: usize,
    /// Where a group with no committed offset starts: the beginning (default) or the end.
    pub from_beginning: bool,
    /// Parked and held records are also produced to `<topic><suffix>`; `None` turns this off.
    pub dlq_topic_suffix: Option<String>,
    /// Partitions and replication factor of a `.dlq` topic keel creates (as
    /// `relay.kafka.partitions` and `relay.kafka.replication` are for the relay's topics).
    pub dlq_topic_partitions: i32,
    pub dlq_topic_replication: i32,
    /// Raw librdkafka settings for the consumer, applied last.
    pub properties: BTreeMap<String, String>,
    /// How often this member's heartbeat is written (see [`crate::heartbeat`]); the pipeline
    /// monitor reports the group as `group.<group>`. Set it to `observability.sample_every()`.
    pub beat_every: Duration,
}

impl Subscription {
    pub fn new(group: impl Into<String>, topics: &[&str]) -> Self {
        Self {
            group: group.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            event_types: Vec::new(),
            reader: None,
            max_retries: 5,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            crash_attempts: 3,
            max_partitions_in_flight: 16,
            batch_size: 500,
            from_beginning: true,
            dlq_topic_suffix: Some(".dlq".to_owned()),
            dlq_topic_partitions: 6,
            dlq_topic_replication: 1,
            properties: BTreeMap::new(),
            beat_every: crate::heartbeat::DEFAULT_EVERY,
        }
    }

    /// How a retriable handler error is retried: `max_retries` retries, waits doubling from
    /// `backoff_initial` to `backoff_max`.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(self.backoff_initial, self.backoff_max)
            .with_max_attempts(self.max_retries.saturating_add(1))
    }

    fn wants(&self, record: &Record) -> bool {
        self.event_types.is_empty()
            || record
                .event_type()
                .is_some_and(|t| self.event_types.iter().any(|w| w == t))
    }
}

/// An event handed to a handler, with where it came from.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub event: RecordedEvent,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    /// 1 on the first try; retries of a retriable error count up.
    pub attempt: u32,
    /// Redelivered from the dead-letter store by `keel dlq retry|skip`.
    pub redelivery: bool,
}

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth trying again (a timeout, a dependency that is down): retried with backoff.
    #[error("{0:#}")]
    Retriable(anyhow::Error),
    /// Will fail again however often it is tried: the record is parked at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

/// Application code that handles a group's events. Called for one partition's records one at a
/// time, in order; at least once per record (a crash or a rebalance can redeliver), so it should
/// be idempotent, for example by recording `delivery.event.id`.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, delivery: &Delivery) -> impl Future<Output = Result<(), HandlerError>> + Send;
}

/// Runs a consumer group until `shutdown` resolves, then stops each partition between records
/// and commits what was handled.
pub async fn run<H: Handler>(
    pool: PgPool,
    registry: Arc<Registry>,
    brokers: &str,
    subscription: Subscription,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::CurrentThread
    {
        bail!("the consumer runtime needs tokio's multi-threaded runtime");
    }
    if subscription.topics.is_empty() {
        bail!("a subscription needs at least one topic");
    }
    group::run(pool, registry, brokers, subscription, handler, shutdown).await
}
