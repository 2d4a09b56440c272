//! The group loop: one task reads the group's consumer and hands each record to its partition's
//! queue, starting a partition task the first time it sees a partition after an assignment.
//!
//! * **Back-pressure.** A queue that reaches [`HIGH_WATER`] records pauses its partition's fetch;
//!   the loop resumes it once the queue is below [`LOW_WATER`]. A slow handler therefore bounds
//!   the memory of its own partition and holds up no other.
//! * **Re-fetches.** After a pause librdkafka fetches again from the last position it returned,
//!   so records at or before the last one queued are dropped here, not queued twice.
//! * **Stopping.** On shutdown every partition is stopped between records and commits what it
//!   handled, exactly as a revocation does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::TopicPartitionList;
use sqlx::PgPool;
use tokio::sync::{mpsc, Semaphore};

use super::mirror::Mirror;
use super::partition::partition_task;
use super::rebalance::{Gate, GateMap, GroupContext, REVOKE_WAIT};
use super::{Handler, Subscription};
use crate::consumer::client::{self, StartAt};
use crate::consumer::decode::Decoder;
use crate::consumer::dlq;
use crate::consumer::record::Record;
use crate::heartbeat::Beat;
use crate::registry::Registry;

/// A queue length at which its partition is paused, and the one at which it is resumed.
const HIGH_WATER: usize = 10_000;
const LOW_WATER: usize = 1_000;

/// What every partition task of a group shares.
pub(super) struct Shared<H> {
    pub(super) pool: PgPool,
    pub(super) decoder: Decoder,
    pub(super) handler: H,
    pub(super) subscription: Subscription,
    pub(super) consumer: Arc<StreamConsumer<GroupContext>>,
    pub(super) mirror: Option<Mirror>,
    /// Bounds how many partitions handle a batch at once (`max_partitions_in_flight`).
    pub(super) slots: Semaphore,
}

/// A topic and partition.
pub(super) type Place = (String, i32);

/// One assigned partition as the group loop sees it: the sending end of its task's queue.
struct Queue {
    tx: mpsc::UnboundedSender<Record>,
    /// Records sent and not yet taken by the task.
    queued: Arc<AtomicUsize>,
    gate: Arc<Gate>,
    paused: bool,
    /// The offset of the last record queued.
    last_offset: i64,
}

pub(super) async fn run<H: Handler>(
    pool: PgPool,
    registry: Arc<Registry>,
    brokers: &str,
    subscription: Subscription,
    handler: H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let (revoked_tx, mut revoked_rx) = mpsc::unbounded_channel();
    let gates: GateMap = Arc::default();
    let context = GroupContext::new(gates.clone(), revoked_tx);
    let start = StartAt::from_beginning(subscription.from_beginning);
    let config = client::config(
        brokers,
        &subscription.group,
        &format!("keel-consumer-{}", subscription.group),
        start,
        &subscription.properties,
    );
    let consumer: Arc<StreamConsumer<GroupContext>> = Arc::new(
        crate::kafka::create_with_context(&config, context)
            .context("creating the Kafka consumer")?,
    );
    let topics: Vec<&str> = subscription.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mirror = match &subscription.dlq_topic_suffix {
        Some(suffix) => Some(Mirror::new(brokers, suffix, &subscription)?),
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

    let beat = Beat::start(
        shared.pool.clone(),
        format!("group.{}", shared.subscription.group),
        crate::heartbeat::process_name(),
        serde_json::json!({ "topics": shared.subscription.topics }),
        shared.subscription.beat_every,
    );
    let lane = beat.lane();
    let mut queues: HashMap<Place, Queue> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut report = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);
    loop {
        lane.tick();
        tokio::select! {
            _ = &mut shutdown => break,
            Some(revoked) = revoked_rx.recv() => {
                for p in revoked {
                    queues.remove(&p);
                }
            }
            m = consumer.recv() => match m {
                Ok(m) => dispatch(&shared, &gates, &mut queues, &m),
                Err(e) => tracing::warn!(error = %e, "kafka consumer error"),
            },
            _ = tick.tick() => resume_drained(&consumer, &mut queues),
            _ = report.tick() => report_depth(&shared).await,
        }
    }
    // Stop between records and commit what was handled, as a revocation does.
    let all: Vec<Arc<Gate>> = gates
        .lock()
        .expect("the gate map's lock is poisoned only if a rebalance callback panicked")
        .drain()
        .map(|(_, g)| g)
        .collect();
    tokio::task::spawn_blocking(move || all.iter().for_each(|g| g.revoke_and_wait(REVOKE_WAIT)))
        .await?;
    drop(queues);
    drop(beat);
    consumer.unsubscribe();
    tracing::info!(group = %shared.subscription.group, "consumer group stopped");
    Ok(())
}

/// Queues a record for its partition's task, starting the task if the partition has none (new,
/// or assigned again after a revocation).
fn dispatch<H: Handler>(
    shared: &Arc<Shared<H>>,
    gates: &GateMap,
    queues: &mut HashMap<Place, Queue>,
    m: &BorrowedMessage<'_>,
) {
    let record = Record::from_message(m);
    let place = (record.topic.clone(), record.partition);
    let stale = queues
        .get(&place)
        .is_none_or(|q| q.gate.is_revoked() || q.tx.is_closed());
    if stale {
        queues.insert(place.clone(), start_partition(shared, gates, &place));
    }
    let queue = queues.get_mut(&place).expect("ensured above");
    if record.offset <= queue.last_offset {
        // A re-fetch after a pause: already queued.
        return;
    }
    queue.last_offset = record.offset;
    if queue.queued.fetch_add(1, Ordering::Relaxed) + 1 >= HIGH_WATER && !queue.paused {
        queue.paused = true;
        if let Err(e) = shared.consumer.pause(&one_partition(&place.0, place.1)) {
            tracing::warn!(error = %e, topic = %place.0, partition = place.1, "cannot pause a partition; its queue keeps growing");
        }
    }
    if queue.tx.send(record).is_err() {
        // The task stopped since the check above, which it does only when its partition is
        // revoked: the partition's next owner reads this record again from the committed offset.
        tracing::debug!(topic = %place.0, partition = place.1, "record for a stopped partition task dropped");
    }
}

fn start_partition<H: Handler>(shared: &Arc<Shared<H>>, gates: &GateMap, place: &Place) -> Queue {
    let gate = Arc::new(Gate::default());
    gates
        .lock()
        .expect("the gate map's lock is poisoned only if a rebalance callback panicked")
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
    Queue {
        tx,
        queued,
        gate,
        paused: false,
        last_offset: -1,
    }
}

/// Forgets the queues of finished tasks and resumes the partitions whose queue has drained.
fn resume_drained(consumer: &StreamConsumer<GroupContext>, queues: &mut HashMap<Place, Queue>) {
    queues.retain(|_, queue| !queue.tx.is_closed());
    for ((topic, partition), queue) in queues.iter_mut() {
        if queue.paused && queue.queued.load(Ordering::Relaxed) < LOW_WATER {
            queue.paused = false;
            if let Err(e) = consumer.resume(&one_partition(topic, *partition)) {
                // Not paused any more as far as this loop knows; a partition that stays paused
                // is re-fetched after its next assignment.
                tracing::warn!(error = %e, topic, partition, "cannot resume a partition");
            }
        }
    }
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Publishes the group's dead-letter depth and the age of its oldest open row.
async fn report_depth<H: Handler>(shared: &Shared<H>) {
    let group = shared.subscription.group.clone();
    match dlq::depth(&shared.pool, &group).await {
        Ok((depth, age)) => {
            ::metrics::gauge!(crate::metrics::DLQ_DEPTH, "group" => group.clone())
                .set(depth as f64);
            ::metrics::gauge!(crate::metrics::DLQ_OLDEST_AGE, "group" => group).set(age);
        }
        // The gauges keep their last values; the next report tries again.
        Err(e) => tracing::debug!(error = %e, group, "cannot read the dead-letter depth"),
    }
}
