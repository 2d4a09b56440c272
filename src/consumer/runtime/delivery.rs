//! One record through the handler: retries of retriable errors with backoff, parking what cannot
//! be handled (in the dead-letter store and its `.dlq` mirror), and redelivering the rows an
//! operator released (`keel dlq retry|skip`), each key's in offset order.
//!
//! Every database call here is retried until it succeeds or the partition is revoked: a record
//! is never committed past before its dead-letter row is written.

use std::collections::HashSet;
use std::future::Future;
use std::ops::ControlFlow;
use std::time::Duration;

use tracing::Instrument;

use super::group::Shared;
use super::partition::PartitionState;
use super::rebalance::Gate;
use super::{Delivery, Handler, HandlerError};
use crate::consumer::dlq::{self, ParkReason};
use crate::consumer::record::Record;
use crate::model::{ParkState, RecordedEvent};
use crate::retry::RetryPolicy;
use crate::telemetry::messaging;

/// What became of a record handed to the handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fate {
    Handled,
    /// It cannot be handled: it goes to the dead-letter store.
    Park(Failure),
    /// The partition was revoked while the record was being retried.
    Abandoned,
}

/// Why a record is parked, and after how many tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Failure {
    pub(super) reason: ParkReason,
    pub(super) detail: String,
    /// Tries of the handler (or interrupted starts) it took.
    pub(super) attempts: i32,
}

impl Failure {
    pub(super) fn new(reason: ParkReason, detail: impl Into<String>, attempts: i32) -> Self {
        Self {
            reason,
            detail: detail.into(),
            attempts,
        }
    }
}

/// Hands `event` to the handler, retrying retriable errors, and gives the event back. With
/// trace export on, all of it is one `process <topic>` span (kind consumer), a child of the
/// record's `traceparent` header, or a new trace's root without one.
pub(super) async fn deliver<H: Handler>(
    shared: &Shared<H>,
    record: &Record,
    event: RecordedEvent,
    redelivery: bool,
    gate: &Gate,
) -> (Fate, RecordedEvent) {
    let span = messaging::process(
        messaging::Received {
            topic: &record.topic,
            partition: record.partition,
            offset: record.offset,
            key: &record.key,
            headers: &record.headers,
            group: &shared.subscription.group,
        },
        messaging::Untraced::Root,
    );
    let (fate, event) = attempts(shared, record, event, redelivery, gate)
        .instrument(span.clone())
        .await;
    match &fate {
        Fate::Handled => {}
        Fate::Park(failure) => messaging::failed(&span, failure.reason.as_str()),
        Fate::Abandoned => messaging::failed(&span, "abandoned"),
    }
    (fate, event)
}

/// [`deliver`]'s tries of the handler.
async fn attempts<H: Handler>(
    shared: &Shared<H>,
    record: &Record,
    event: RecordedEvent,
    redelivery: bool,
    gate: &Gate,
) -> (Fate, RecordedEvent) {
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
    let count = |outcome: &'static str| {
        ::metrics::counter!(crate::metrics::CONSUMER_HANDLED, "group" => sub.group.clone(), "outcome" => outcome).increment(1);
    };
    let policy = sub.retry_policy();
    loop {
        let error = match shared.handler.handle(&delivery).await {
            Ok(()) => {
                count("handled");
                return (Fate::Handled, delivery.event);
            }
            Err(HandlerError::Permanent(e)) => {
                count("permanent");
                let failure = Failure::new(
                    ParkReason::Permanent,
                    format!("{e:#}"),
                    delivery.attempt as i32,
                );
                return (Fate::Park(failure), delivery.event);
            }
            Err(HandlerError::Retriable(e)) => e,
        };
        count("retriable");
        if !policy.retries_after(delivery.attempt) {
            let failure = Failure::new(
                ParkReason::RetriesExhausted,
                format!("{error:#}"),
                delivery.attempt as i32,
            );
            return (Fate::Park(failure), delivery.event);
        }
        tracing::debug!(error = %error, attempt = delivery.attempt, "handler failed; retrying");
        // Listen before checking: a revocation between the check and the sleep still wakes it.
        let revoked = gate.revoked_signal.notified();
        if gate.is_revoked() {
            return (Fate::Abandoned, delivery.event);
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.delay(delivery.attempt)) => {}
            _ = revoked => return (Fate::Abandoned, delivery.event),
        }
        delivery.attempt += 1;
    }
}

/// Stores a record in the dead-letter store and mirrors it to the `.dlq` topic. `None` when the
/// partition was revoked while the database was unreachable.
pub(super) async fn park<H: Handler>(
    shared: &Shared<H>,
    record: &Record,
    failure: &Failure,
    event: Option<&RecordedEvent>,
    gate: &Gate,
) -> Option<()> {
    let group = &shared.subscription.group;
    let Failure {
        reason,
        detail,
        attempts,
    } = failure;
    let written = with_db_retry(gate, || {
        dlq::park(
            &shared.pool,
            group,
            record,
            *reason,
            detail,
            *attempts,
            event,
        )
    })
    .await?;
    if written {
        tracing::warn!(group, topic = %record.topic, partition = record.partition, offset = record.offset,
            key = %record.key, reason = reason.as_str(), detail, "record parked in the dead-letter store");
        if let Some(mirror) = &shared.mirror {
            mirror.send(group, record, *reason, detail).await;
        }
    }
    Some(())
}

/// Redelivers the partition's rows marked `retry`, each key's in offset order, stopping a key at
/// its first row that fails again; then refreshes which keys are blocked.
///
/// A debug span: it runs every second per partition, mostly finding nothing, and an info span
/// would be an exported trace each time (each redelivered record has its own process span).
#[tracing::instrument(level = "debug", skip_all, fields(
    messaging.system = "kafka",
    messaging.consumer.group.name = %shared.subscription.group,
    messaging.destination.name = topic,
    messaging.destination.partition.id = partition,
    db.system = "postgresql",
))]
pub(super) async fn redrive_open<H: Handler>(
    shared: &Shared<H>,
    topic: &str,
    partition: i32,
    state: &mut PartitionState,
    gate: &Gate,
) {
    let group = &shared.subscription.group;
    let rows = match dlq::open(&shared.pool, group, topic, partition).await {
        Ok(rows) => rows,
        Err(e) => {
            // The next redrive, a second from now, reads them again.
            tracing::debug!(error = %e, group, topic, partition, "cannot read the open dead-letter rows");
            return;
        }
    };
    let mut stuck: HashSet<&str> = HashSet::new();
    let mut delivered: HashSet<i64> = HashSet::new();
    for row in &rows {
        if stuck.contains(row.record_key.as_str()) {
            continue;
        }
        // Rows are in offset order: a held row with nothing parked before it lost its blocker
        // (delivered or skipped meanwhile) and is due, like a retry row.
        if row.state == ParkState::Parked {
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
                stuck.insert(&row.record_key);
                let why = e.to_string();
                let again = dlq::failed_again(&shared.pool, row, ParkReason::Undecodable, &why, 0);
                if let Err(e) = again.await {
                    // The row stays as it was and is tried again at the next redrive.
                    tracing::warn!(error = %e, "could not record a failed redelivery");
                }
                continue;
            }
        };
        let fate = deliver(shared, &record, event, true, gate).await.0;
        let result = match fate {
            Fate::Handled => {
                delivered.insert(row.id);
                dlq::delivered(&shared.pool, row.id).await
            }
            Fate::Park(failure) => {
                stuck.insert(&row.record_key);
                let Failure {
                    reason,
                    detail,
                    attempts,
                } = failure;
                dlq::failed_again(&shared.pool, row, reason, &detail, attempts).await
            }
            Fate::Abandoned => return,
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

/// The keys with an open dead-letter row in a partition.
pub(super) async fn open_keys<H: Handler>(
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

/// How the consumer's database calls are retried: until they succeed or the partition is revoked.
const DB_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(5));

/// Runs a database call until it succeeds, backing off; `None` if the partition is revoked first.
pub(super) async fn with_db_retry<T, F, Fut>(gate: &Gate, call: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let stop_when_revoked = |e: &sqlx::Error, _attempt| {
        tracing::warn!(error = %e, "consumer database call failed; retrying");
        if gate.is_revoked() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    // The error was logged above; the caller only needs to know the partition is gone.
    DB_RETRY.retry(call, stop_when_revoked).await.ok()
}
