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

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};

use super::decode::Decoder;
use super::dlq::{self, ParkReason, Record};

use crate::model::{RecordedEvent, VersionSpec};
use crate::registry::Registry;

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
    /// Partitions of a `.dlq` topic keel creates.
    pub dlq_topic_partitions: i32,
    /// Raw librdkafka settings for the consumer, applied last.
    pub properties: BTreeMap<String, String>,
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
            properties: BTreeMap::new(),
        }
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
    let (revoked_tx, mut revoked_rx) = mpsc::unbounded_channel();
    let gates: GateMap = Arc::default();
    let context = GroupContext {
        gates: gates.clone(),
        revoked: revoked_tx,
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", &subscription.group)
        .set("client.id", format!("keel-consumer-{}", subscription.group))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Topics created after the subscription (by the relay) are noticed within seconds.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set(
            "auto.offset.reset",
            if subscription.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        );
    for (k, v) in &subscription.properties {
        config.set(k, v);
    }
    let consumer: Arc<StreamConsumer<GroupContext>> = Arc::new(
        config
            .create_with_context(context)
            .context("creating the Kafka consumer")?,
    );
    let topics: Vec<&str> = subscription.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mirror = match &subscription.dlq_topic_suffix {
        Some(suffix) => Some(Mirror::new(
            brokers,
            suffix,
            subscription.dlq_topic_partitions,
        )?),
        None => None,
    };
    let shared = Arc::new(Shared {
        slots: Semaphore::new(subscription.max_partitions_in_flight.max(1)),
        decoder: Decoder::new(registry),
        pool,
        handler,
        subscription,
        consumer: consumer.clone(),
        mirror,
    });
    tracing::info!(group = %shared.subscription.group, topics = ?shared.subscription.topics, "consumer group started");

    let mut lanes: HashMap<(String, i32), Lane> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut report = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(revoked) = revoked_rx.recv() => {
                for p in revoked {
                    lanes.remove(&p);
                }
            }
            m = consumer.recv() => match m {
                Ok(m) => dispatch(&shared, &gates, &mut lanes, &m),
                Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
            },
            _ = tick.tick() => {
                lanes.retain(|_, lane| !lane.tx.is_closed());
                for ((topic, partition), lane) in lanes.iter_mut() {
                    if lane.paused && lane.queued.load(Ordering::Relaxed) < LOW_WATER {
                        lane.paused = false;
                        let _ = consumer.resume(&one_partition(topic, *partition));
                    }
                }
            }
            _ = report.tick() => report_depth(&shared).await,
        }
    }
    // Stop between records and commit what was handled, as a revocation does.
    let all: Vec<Arc<Gate>> = gates
        .lock()
        .expect("gates")
        .drain()
        .map(|(_, g)| g)
        .collect();
    tokio::task::spawn_blocking(move || all.iter().for_each(|g| g.revoke_and_wait(REVOKE_WAIT)))
        .await?;
    drop(lanes);
    consumer.unsubscribe();
    tracing::info!(group = %shared.subscription.group, "consumer group stopped");
    Ok(())
}

/// A lane's queue length at which its partition is paused, and at which it is resumed.
const HIGH_WATER: usize = 10_000;
const LOW_WATER: usize = 1_000;
/// How long a revocation waits for a partition task to finish its record and commit.
const REVOKE_WAIT: Duration = Duration::from_secs(15);

struct Shared<H> {
    pool: PgPool,
    decoder: Decoder,
    handler: H,
    subscription: Subscription,
    consumer: Arc<StreamConsumer<GroupContext>>,
    mirror: Option<Mirror>,
    slots: Semaphore,
}

/// One assigned partition: its task's queue.
struct Lane {
    tx: mpsc::UnboundedSender<Record>,
    queued: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    paused: bool,
    last_offset: i64,
}

fn dispatch<H: Handler>(
    shared: &Arc<Shared<H>>,
    gates: &GateMap,
    lanes: &mut HashMap<(String, i32), Lane>,
    m: &BorrowedMessage<'_>,
) {
    let record = Record::from_message(m);
    let place = (record.topic.clone(), record.partition);
    let stale = lanes
        .get(&place)
        .is_none_or(|l| l.gate.is_revoked() || l.tx.is_closed());
    if stale {
        let gate = Arc::new(Gate::default());
        gates
            .lock()
            .expect("gates")
            .insert(place.clone(), gate.clone());
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        tokio::spawn(partition_task(
            shared.clone(),
            place.clone(),
            rx,
            queued.clone(),
            gate.clone(),
        ));
        lanes.insert(
            place.clone(),
            Lane {
                tx,
                queued,
                gate,
                paused: false,
                last_offset: -1,
            },
        );
    }
    let lane = lanes.get_mut(&place).expect("lane just ensured");
    // A record at or before one already queued is a re-fetch (after a pause): already queued.
    if record.offset <= lane.last_offset {
        return;
    }
    lane.last_offset = record.offset;
    if lane.queued.fetch_add(1, Ordering::Relaxed) + 1 >= HIGH_WATER && !lane.paused {
        lane.paused = true;
        let _ = shared.consumer.pause(&one_partition(&place.0, place.1));
    }
    let _ = lane.tx.send(record);
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// What a partition task remembers between batches.
#[derive(Default)]
struct LaneState {
    /// The delivery marker as last written (first offset, last offset, attempts).
    marker: Option<(i64, i64, i32)>,
    /// Records up to this offset are handled one at a time: a batch was interrupted there.
    careful_until: Option<i64>,
    /// Keys with an open dead-letter row in this partition.
    blocked: HashSet<String>,
    /// Records taken from the queue but not handled yet, in order.
    pending: VecDeque<Record>,
}

async fn partition_task<H: Handler>(
    shared: Arc<Shared<H>>,
    (topic, partition): (String, i32),
    mut rx: mpsc::UnboundedReceiver<Record>,
    queued: Arc<AtomicUsize>,
    gate: Arc<Gate>,
) {
    let mut state = LaneState::default();
    let mut redrive = tokio::time::interval(Duration::from_secs(1));
    loop {
        let first = match state.pending.pop_front() {
            Some(r) => r,
            None => tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => { queued.fetch_sub(1, Ordering::Relaxed); r }
                    None => break,
                },
                _ = redrive.tick() => {
                    if !gate.enter() { break; }
                    redrive_open(&shared, &topic, partition, &mut state, &gate).await;
                    gate.leave();
                    continue;
                }
            },
        };
        let mut batch = vec![first];
        while batch.len() < shared.subscription.batch_size {
            if let Some(r) = state.pending.pop_front() {
                batch.push(r);
            } else if let Ok(r) = rx.try_recv() {
                queued.fetch_sub(1, Ordering::Relaxed);
                batch.push(r);
            } else {
                break;
            }
        }
        if !gate.enter() {
            break;
        }
        let _slot = shared.slots.acquire().await;
        if let Some(next) = handle_batch(&shared, &mut state, batch, &gate).await {
            commit(&shared.consumer, &topic, partition, next).await;
        }
        gate.leave();
    }
}

/// Handles a batch in order and returns the offset to commit (the first record not handled).
async fn handle_batch<H: Handler>(
    shared: &Shared<H>,
    state: &mut LaneState,
    mut batch: Vec<Record>,
    gate: &Gate,
) -> Option<i64> {
    let sub = &shared.subscription;
    let (topic, partition) = (batch[0].topic.clone(), batch[0].partition);
    if state.marker.is_none() {
        state.marker = Some(
            with_db_retry(gate, || marker(&shared.pool, &sub.group, &topic, partition)).await?,
        );
        state.blocked = open_keys(shared, &topic, partition, gate).await?;
    }
    let (m_first, m_last, m_attempts) = state.marker.expect("loaded above");
    let first = batch[0].offset;
    let attempts = if m_first == first { m_attempts + 1 } else { 1 };
    if attempts > 1 {
        state.careful_until = Some(m_last.max(state.careful_until.unwrap_or(-1)));
    }
    if state.careful_until.is_some_and(|until| first > until) {
        state.careful_until = None;
    }
    if state.careful_until.is_some() && batch.len() > 1 {
        for r in batch.drain(1..).rev() {
            state.pending.push_front(r);
        }
    }
    let last = batch.last().expect("non-empty").offset;
    // The marker remembers how far the interrupted batch reached, beyond this (shortened) one.
    let reach = if attempts > 1 { last.max(m_last) } else { last };
    with_db_retry(gate, || {
        write_marker(
            &shared.pool,
            &sub.group,
            &topic,
            partition,
            (first, reach, attempts),
        )
    })
    .await?;
    state.marker = Some((first, reach, attempts));

    // Stopping on purpose (revocation, shutdown) before `offset` is not a crash there.
    let stopped_at = |offset: i64| async move {
        let _ = write_marker(
            &shared.pool,
            &sub.group,
            &topic,
            partition,
            (offset, reach, 0),
        )
        .await;
        Some(offset)
    };
    for record in &batch {
        if gate.is_revoked() {
            return stopped_at(record.offset).await;
        }
        if !sub.wants(record) {
            continue;
        }
        if state.blocked.contains(&record.key) {
            park(
                shared,
                record,
                ParkReason::Held,
                "an earlier record of this key is parked",
                0,
                None,
                gate,
            )
            .await?;
            continue;
        }
        if attempts > sub.crash_attempts && record.offset == first {
            let why = format!(
                "the consumer was interrupted {} times handling this record",
                attempts - 1
            );
            park(
                shared,
                record,
                ParkReason::CrashLoop,
                &why,
                attempts - 1,
                None,
                gate,
            )
            .await?;
            state.blocked.insert(record.key.clone());
            continue;
        }
        let event = match shared
            .decoder
            .decode(&record.headers, &record.value, sub.reader)
            .await
        {
            Ok(event) => event,
            Err(e) => {
                park(
                    shared,
                    record,
                    ParkReason::Undecodable,
                    &e.to_string(),
                    0,
                    None,
                    gate,
                )
                .await?;
                state.blocked.insert(record.key.clone());
                continue;
            }
        };
        let (outcome, event) = deliver(shared, record, event, false, gate).await;
        match outcome {
            Outcome::Handled => {}
            Outcome::Park(reason, detail, tries) => {
                park(shared, record, reason, &detail, tries, Some(&event), gate).await?;
                state.blocked.insert(record.key.clone());
            }
            Outcome::Abandoned => return stopped_at(record.offset).await,
        }
    }
    Some(last + 1)
}

enum Outcome {
    Handled,
    Park(ParkReason, String, i32),
    /// The partition was revoked while the record was being retried.
    Abandoned,
}

async fn deliver<H: Handler>(
    shared: &Shared<H>,
    record: &Record,
    event: RecordedEvent,
    redelivery: bool,
    gate: &Gate,
) -> (Outcome, RecordedEvent) {
    let sub = &shared.subscription;
    let mut delivery = Delivery {
        event,
        topic: record.topic.clone(),
        partition: record.partition,
        offset: record.offset,
        key: record.key.clone(),
        attempt: 1,
        redelivery,
    };
    let mut backoff = sub.backoff_initial;
    loop {
        let outcome = match shared.handler.handle(&delivery).await {
            Ok(()) => "handled",
            Err(HandlerError::Permanent(e)) => {
                ::metrics::counter!(crate::metrics::CONSUMER_HANDLED, "group" => sub.group.clone(), "outcome" => "permanent").increment(1);
                let attempts = delivery.attempt as i32;
                return (
                    Outcome::Park(ParkReason::Permanent, format!("{e:#}"), attempts),
                    delivery.event,
                );
            }
            Err(HandlerError::Retriable(e)) => {
                ::metrics::counter!(crate::metrics::CONSUMER_HANDLED, "group" => sub.group.clone(), "outcome" => "retriable").increment(1);
                if delivery.attempt > sub.max_retries {
                    let attempts = delivery.attempt as i32;
                    return (
                        Outcome::Park(ParkReason::RetriesExhausted, format!("{e:#}"), attempts),
                        delivery.event,
                    );
                }
                tracing::debug!(error = %e, attempt = delivery.attempt, "handler failed; retrying");
                "retry"
            }
        };
        if outcome == "handled" {
            ::metrics::counter!(crate::metrics::CONSUMER_HANDLED, "group" => sub.group.clone(), "outcome" => "handled").increment(1);
            return (Outcome::Handled, delivery.event);
        }
        let revoked = gate.revoked_signal.notified();
        if gate.is_revoked() {
            return (Outcome::Abandoned, delivery.event);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = revoked => return (Outcome::Abandoned, delivery.event),
        }
        backoff = (backoff * 2).min(sub.backoff_max);
        delivery.attempt += 1;
    }
}

/// Stores a record in the dead-letter store and mirrors it to the `.dlq` topic. `None` when the
/// partition was revoked while the database was unreachable.
async fn park<H: Handler>(
    shared: &Shared<H>,
    record: &Record,
    reason: ParkReason,
    detail: &str,
    attempts: i32,
    event: Option<&RecordedEvent>,
    gate: &Gate,
) -> Option<()> {
    let group = &shared.subscription.group;
    let written = with_db_retry(gate, || {
        dlq::park(&shared.pool, group, record, reason, detail, attempts, event)
    })
    .await?;
    if written {
        tracing::warn!(group, topic = %record.topic, partition = record.partition, offset = record.offset,
            key = %record.key, reason = reason.as_str(), detail, "record parked in the dead-letter store");
        if let Some(mirror) = &shared.mirror {
            mirror.send(group, record, reason, detail).await;
        }
    }
    Some(())
}

/// Redelivers the partition's rows marked `retry`, each key's in offset order, stopping a key at
/// its first row that fails again; then refreshes which keys are blocked.
async fn redrive_open<H: Handler>(
    shared: &Shared<H>,
    topic: &str,
    partition: i32,
    state: &mut LaneState,
    gate: &Gate,
) {
    let group = &shared.subscription.group;
    let Ok(rows) = dlq::open(&shared.pool, group, topic, partition).await else {
        return;
    };
    let mut stuck: HashSet<&str> = HashSet::new();
    let mut delivered: HashSet<i64> = HashSet::new();
    for row in &rows {
        if stuck.contains(row.record_key.as_str()) {
            continue;
        }
        // Rows are in offset order: a held row with nothing parked before it lost its blocker
        // (delivered or skipped meanwhile) and is due, like a retry row.
        if row.state == "parked" {
            stuck.insert(&row.record_key);
            continue;
        }
        let record = row.record();
        let event = match shared
            .decoder
            .decode(&record.headers, &record.value, shared.subscription.reader)
            .await
        {
            Ok(event) => event,
            Err(e) => {
                let _ = dlq::failed_again(
                    &shared.pool,
                    row,
                    ParkReason::Undecodable,
                    &e.to_string(),
                    0,
                )
                .await;
                stuck.insert(&row.record_key);
                continue;
            }
        };
        let result = match deliver(shared, &record, event, true, gate).await.0 {
            Outcome::Handled => {
                delivered.insert(row.id);
                dlq::delivered(&shared.pool, row.id).await
            }
            Outcome::Park(reason, detail, tries) => {
                stuck.insert(&row.record_key);
                dlq::failed_again(&shared.pool, row, reason, &detail, tries).await
            }
            Outcome::Abandoned => return,
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not record a redelivery; it will be redelivered again");
            return;
        }
    }
    // A key stays blocked while any of its rows is still open.
    state.blocked = rows
        .iter()
        .filter(|r| !delivered.contains(&r.id))
        .map(|r| r.record_key.clone())
        .collect();
}

async fn open_keys<H: Handler>(
    shared: &Shared<H>,
    topic: &str,
    partition: i32,
    gate: &Gate,
) -> Option<HashSet<String>> {
    let rows = with_db_retry(gate, || {
        dlq::open(&shared.pool, &shared.subscription.group, topic, partition)
    })
    .await?;
    Some(rows.into_iter().map(|r| r.record_key).collect())
}

/// Runs a database call until it succeeds, backing off; `None` if the partition is revoked first.
async fn with_db_retry<T, F, Fut>(gate: &Gate, mut call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match call().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, "consumer database call failed; retrying"),
        }
        if gate.is_revoked() {
            return None;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn marker(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
) -> Result<(i64, i64, i32), sqlx::Error> {
    Ok(sqlx::query_as(
        "SELECT first_offset, last_offset, attempts FROM consumer_deliveries
          WHERE group_id = $1 AND topic = $2 AND partition = $3",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .fetch_optional(pool)
    .await?
    .unwrap_or((-1, -1, 0)))
}

async fn write_marker(
    pool: &PgPool,
    group: &str,
    topic: &str,
    partition: i32,
    (first, last, attempts): (i64, i64, i32),
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO consumer_deliveries (group_id, topic, partition, first_offset, last_offset, attempts)
         VALUES ($1, $2, $3, $4, $5, $6)
         ON CONFLICT (group_id, topic, partition) DO UPDATE
            SET first_offset = $4, last_offset = $5, attempts = $6, updated_at = now()",
    )
    .bind(group)
    .bind(topic)
    .bind(partition)
    .bind(first)
    .bind(last)
    .bind(attempts)
    .execute(pool)
    .await?;
    Ok(())
}

async fn commit(
    consumer: &Arc<StreamConsumer<GroupContext>>,
    topic: &str,
    partition: i32,
    next: i64,
) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(topic, partition, Offset::Offset(next))
        .is_err()
    {
        return;
    }
    let consumer = consumer.clone();
    match tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, topic, partition, next, "offset commit failed; the records after the last commit will be redelivered")
        }
        Err(e) => tracing::warn!(error = %e, "offset commit task failed"),
    }
}

async fn report_depth<H: Handler>(shared: &Shared<H>) {
    let group = shared.subscription.group.clone();
    if let Ok((depth, age)) = dlq::depth(&shared.pool, &group).await {
        ::metrics::gauge!(crate::metrics::DLQ_DEPTH, "group" => group.clone()).set(depth as f64);
        ::metrics::gauge!(crate::metrics::DLQ_OLDEST_AGE, "group" => group).set(age);
    }
}

/// Produces parked records to `<topic><suffix>`, for Kafka-native tools. Best effort: the
/// dead-letter store in PostgreSQL is the record of truth.
struct Mirror {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    suffix: String,
    partitions: i32,
    created: tokio::sync::Mutex<HashSet<String>>,
}

impl Mirror {
    fn new(brokers: &str, suffix: &str, partitions: i32) -> anyhow::Result<Self> {
        // The relay's producer settings (idempotent, acks=all), with a finite time-out: a mirror
        // that cannot be written must not hold the partition back.
        let mut config = crate::relay::kafka::producer_config(brokers, &BTreeMap::new());
        config
            .set("message.timeout.ms", "10000")
            .set("client.id", "keel-dlq-mirror");
        Ok(Self {
            producer: config.create()?,
            admin: config.create()?,
            suffix: suffix.to_owned(),
            partitions,
            created: Default::default(),
        })
    }

    async fn send(&self, group: &str, record: &Record, reason: ParkReason, detail: &str) {
        let topic = format!("{}{}", record.topic, self.suffix);
        self.ensure(&topic).await;
        let mut headers: Vec<(&str, String)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        headers.extend([
            ("keel-dlq-group", group.to_owned()),
            ("keel-dlq-reason", reason.as_str().to_owned()),
            ("keel-dlq-detail", detail.to_owned()),
            ("keel-dlq-topic", record.topic.clone()),
            ("keel-dlq-partition", record.partition.to_string()),
            ("keel-dlq-offset", record.offset.to_string()),
        ]);
        let sent = crate::relay::kafka::enqueue(
            &self.producer,
            &topic,
            &record.key,
            &record.value,
            &headers,
        )
        .await;
        let delivered = match sent {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("the producer was dropped".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = delivered {
            tracing::warn!(error = %e, topic, "could not mirror a parked record to the .dlq topic");
            ::metrics::counter!(crate::metrics::DLQ_MIRROR_ERRORS).increment(1);
        }
    }

    async fn ensure(&self, topic: &str) {
        let mut created = self.created.lock().await;
        if created.contains(topic) {
            return;
        }
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        // An existing topic is fine; any other failure leaves creation to the broker.
        let _ = self.admin.create_topics([&new], &opts).await;
        created.insert(topic.to_owned());
    }
}

type GateMap = Arc<Mutex<HashMap<(String, i32), Arc<Gate>>>>;

/// Lets a revocation stop a partition task between records and wait until it has committed.
#[derive(Default)]
struct Gate {
    revoked: AtomicBool,
    /// Wakes a partition task sleeping between retries when its partition is revoked.
    revoked_signal: tokio::sync::Notify,
    busy: Mutex<bool>,
    idle: Condvar,
}

impl Gate {
    /// Marks the task busy; `false` once the partition is revoked.
    fn enter(&self) -> bool {
        let mut busy = self.busy.lock().expect("gate");
        if self.revoked.load(Ordering::SeqCst) {
            return false;
        }
        *busy = true;
        true
    }

    fn leave(&self) {
        *self.busy.lock().expect("gate") = false;
        self.idle.notify_all();
    }

    fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Blocks the calling thread until the task is between batches (or `wait` passes).
    fn revoke_and_wait(&self, wait: Duration) {
        let busy = self.busy.lock().expect("gate");
        self.revoked.store(true, Ordering::SeqCst);
        self.revoked_signal.notify_waiters();
        let wait_idle = || {
            let _ = self.idle.wait_timeout_while(busy, wait, |busy| *busy);
        };
        // The rebalance callback runs on a runtime thread: let the runtime move other tasks
        // (the partition tasks it waits for) off it meanwhile.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait_idle)
            }
            _ => wait_idle(),
        }
    }
}

struct GroupContext {
    gates: GateMap,
    revoked: mpsc::UnboundedSender<Vec<(String, i32)>>,
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        tracing::debug!(partitions = ?parts, "revocation: waiting for partition tasks to finish their batch");
        let gates: Vec<Arc<Gate>> = {
            let mut map = self.gates.lock().expect("gates");
            parts.iter().filter_map(|p| map.remove(p)).collect()
        };
        for gate in gates {
            gate.revoke_and_wait(REVOKE_WAIT);
        }
        tracing::info!(partitions = ?parts, "partitions revoked");
        let _ = self.revoked.send(parts);
    }
}
