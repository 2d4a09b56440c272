//! The partition task: one per assigned partition, handling its records one at a time in offset
//! order, in batches of up to `batch_size`.
//!
//! For each batch the task enters its [`Gate`], writes the crash marker ([`super::marker`]),
//! handles the records, commits the offset after the last one handled (synchronously), and
//! leaves the gate. Between batches it redelivers the dead-letter rows an operator released.
//! A record whose key is blocked (an earlier record of it is parked) is parked as **held**.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::delivery::{deliver, open_keys, park, redrive_open, with_db_retry, Failure, Fate};
use super::group::{Place, Shared};
use super::marker::{DeliveryMarker, Plan};
use super::rebalance::{Gate, GroupContext};
use super::{Handler, Subscription};
use crate::consumer::dlq::ParkReason;
use crate::consumer::record::Record;

/// What a partition task remembers between batches.
#[derive(Default)]
pub(super) struct PartitionState {
    /// The crash marker as last written; `None` until the first batch loads it.
    marker: Option<DeliveryMarker>,
    /// Records up to this offset are handled one at a time: a batch was interrupted there.
    careful_until: Option<i64>,
    /// Keys with an open dead-letter row in this partition.
    pub(super) blocked: HashSet<String>,
    /// Records taken from the queue but not handled yet, in order.
    pending: VecDeque<Record>,
}

pub(super) async fn partition_task<H: Handler>(
    shared: Arc<Shared<H>>,
    (topic, partition): Place,
    mut rx: mpsc::UnboundedReceiver<Record>,
    queued: Arc<AtomicUsize>,
    gate: Arc<Gate>,
) {
    let mut state = PartitionState::default();
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

/// Handles a batch in order and returns the offset to commit (the first record not handled);
/// `None` when the partition was revoked while the database was unreachable.
#[tracing::instrument(skip_all, fields(
    messaging.system = "kafka",
    messaging.operation.name = "process",
    messaging.consumer.group.name = %shared.subscription.group,
    messaging.destination.name = %batch[0].topic,
    messaging.destination.partition.id = batch[0].partition,
    messaging.batch.message_count = batch.len(),
    messaging.kafka.offset.first = batch[0].offset,
    messaging.kafka.offset.last = batch[batch.len() - 1].offset,
))]
async fn handle_batch<H: Handler>(
    shared: &Shared<H>,
    state: &mut PartitionState,
    mut batch: Vec<Record>,
    gate: &Gate,
) -> Option<i64> {
    let group = &shared.subscription.group;
    let (topic, partition) = (batch[0].topic.clone(), batch[0].partition);
    let marker = match state.marker {
        Some(marker) => marker,
        None => {
            let marker = with_db_retry(gate, || {
                DeliveryMarker::load(&shared.pool, group, &topic, partition)
            })
            .await?;
            state.blocked = open_keys(shared, &topic, partition, gate).await?;
            marker
        }
    };
    let first = batch[0].offset;
    let plan = Plan::new(
        marker,
        state.careful_until,
        first,
        batch[batch.len() - 1].offset,
    );
    state.careful_until = plan.careful_until;
    if plan.last < batch[batch.len() - 1].offset {
        // Being careful: the batch is cut to its first record; the rest waits for the next ones.
        for r in batch.drain(1..).rev() {
            state.pending.push_front(r);
        }
    }
    with_db_retry(gate, || {
        plan.marker.store(&shared.pool, group, &topic, partition)
    })
    .await?;
    state.marker = Some(plan.marker);

    for record in &batch {
        let abandoned = gate.is_revoked()
            || matches!(
                handle_record(shared, state, &plan, record, gate).await?,
                Fate::Abandoned
            );
        if abandoned {
            // Stopping on purpose (revocation, shutdown) before `offset` is not a crash there.
            let stopped = plan.marker.stopped_at(record.offset);
            if let Err(e) = stopped.store(&shared.pool, group, &topic, partition).await {
                tracing::warn!(error = %e, topic = %topic, partition, "cannot mark a clean stop; the next start counts it as an interruption");
            }
            return Some(record.offset);
        }
    }
    Some(plan.last + 1)
}

/// What the partition task does with one record of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Not one of the event types the subscription handles: committed without being decoded.
    Skip,
    /// An earlier record of its key is parked: held behind it.
    Hold,
    /// Started too many times without finishing: parked instead of handled again.
    CrashLoop,
    /// Decoded and handed to the handler.
    Deliver,
}

/// Decides what happens to `record` before it is decoded.
fn triage(
    subscription: &Subscription,
    blocked: &HashSet<String>,
    plan: &Plan,
    record: &Record,
) -> Step {
    if !subscription.wants(record) {
        Step::Skip
    } else if blocked.contains(&record.key) {
        Step::Hold
    } else if plan.crash_looped(record.offset, subscription.crash_attempts) {
        Step::CrashLoop
    } else {
        Step::Deliver
    }
}

/// Handles one record: delivers it, or parks it (blocking its key). `None` when the partition
/// was revoked while the database was unreachable.
async fn handle_record<H: Handler>(
    shared: &Shared<H>,
    state: &mut PartitionState,
    plan: &Plan,
    record: &Record,
    gate: &Gate,
) -> Option<Fate> {
    let sub = &shared.subscription;
    let failure = match triage(sub, &state.blocked, plan, record) {
        Step::Skip => return Some(Fate::Handled),
        Step::Hold => {
            let held = Failure::new(
                ParkReason::Held,
                "an earlier record of this key is parked",
                0,
            );
            park(shared, record, &held, None, gate).await?;
            return Some(Fate::Handled);
        }
        Step::CrashLoop => {
            let starts = plan.attempts - 1;
            let why = format!("the consumer was interrupted {starts} times handling this record");
            Failure::new(ParkReason::CrashLoop, why, starts)
        }
        Step::Deliver => match shared
            .decoder
            .decode(&record.headers, &record.value, sub.reader)
            .await
        {
            Err(e) => Failure::new(ParkReason::Undecodable, e.to_string(), 0),
            Ok(event) => match deliver(shared, record, event, false, gate).await {
                (Fate::Park(failure), event) => {
                    park(shared, record, &failure, Some(&event), gate).await?;
                    state.blocked.insert(record.key.clone());
                    return Some(Fate::Park(failure));
                }
                (fate, _) => return Some(fate),
            },
        },
    };
    park(shared, record, &failure, None, gate).await?;
    state.blocked.insert(record.key.clone());
    Some(Fate::Park(failure))
}

/// Commits `next` as the partition's offset, synchronously, off the runtime's threads. A failed
/// commit is logged: the records after the last commit are redelivered.
async fn commit(
    consumer: &Arc<StreamConsumer<GroupContext>>,
    topic: &str,
    partition: i32,
    next: i64,
) {
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, partition, Offset::Offset(next)) {
        // Only an invalid offset fails here, which `next` (one past a record's) never is.
        tracing::warn!(error = %e, topic, partition, next, "cannot build an offset commit");
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::wire::header;

    fn record(offset: i64, key: &str, event_type: &str) -> Record {
        Record {
            topic: "keel.agent".into(),
            partition: 0,
            offset,
            key: key.into(),
            headers: HashMap::from([(header::EVENT_TYPE.to_owned(), event_type.to_owned())]),
            value: Vec::new(),
        }
    }

    fn first_try(first: i64) -> Plan {
        Plan::new(DeliveryMarker::NONE, None, first, first + 10)
    }

    /// The plan of a batch at `first` started for the `attempts`th time.
    fn restarted(first: i64, attempts: i32) -> Plan {
        Plan::new(
            DeliveryMarker {
                first,
                last: first + 10,
                attempts: attempts - 1,
            },
            None,
            first,
            first + 10,
        )
    }

    #[test]
    fn a_record_of_a_fresh_key_is_delivered() {
        let sub = Subscription::new("g", &["keel.agent"]);
        let step = triage(&sub, &HashSet::new(), &first_try(5), &record(5, "a", "X"));
        assert_eq!(step, Step::Deliver);
    }

    #[test]
    fn a_record_of_a_blocked_key_is_held_and_other_keys_flow() {
        let sub = Subscription::new("g", &["keel.agent"]);
        let blocked = HashSet::from(["a".to_owned()]);
        let plan = first_try(5);
        assert_eq!(
            triage(&sub, &blocked, &plan, &record(6, "a", "X")),
            Step::Hold
        );
        assert_eq!(
            triage(&sub, &blocked, &plan, &record(7, "b", "X")),
            Step::Deliver
        );
    }

    #[test]
    fn event_types_the_subscription_does_not_want_are_skipped_even_when_blocked() {
        let mut sub = Subscription::new("g", &["keel.agent"]);
        sub.event_types = vec!["Wanted".into()];
        let blocked = HashSet::from(["a".to_owned()]);
        let plan = first_try(5);
        assert_eq!(
            triage(&sub, &blocked, &plan, &record(5, "a", "Other")),
            Step::Skip
        );
        assert_eq!(
            triage(&sub, &blocked, &plan, &record(6, "b", "Wanted")),
            Step::Deliver
        );
    }

    #[test]
    fn the_record_a_consumer_keeps_dying_on_is_parked_once_past_crash_attempts() {
        let sub = Subscription::new("g", &["keel.agent"]); // crash_attempts: 3
        let none = HashSet::new();
        let at_limit = restarted(5, sub.crash_attempts);
        assert_eq!(
            triage(&sub, &none, &at_limit, &record(5, "a", "X")),
            Step::Deliver
        );
        let past = restarted(5, sub.crash_attempts + 1);
        assert_eq!(
            triage(&sub, &none, &past, &record(5, "a", "X")),
            Step::CrashLoop
        );
    }

    #[test]
    fn a_held_key_is_held_rather_than_counted_as_a_crash_loop() {
        let sub = Subscription::new("g", &["keel.agent"]);
        let blocked = HashSet::from(["a".to_owned()]);
        let past = restarted(5, sub.crash_attempts + 1);
        assert_eq!(
            triage(&sub, &blocked, &past, &record(5, "a", "X")),
            Step::Hold
        );
    }
}
