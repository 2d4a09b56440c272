//! The rebalance protocol: a revocation stops each revoked partition's task between records and
//! waits until it has committed what it handled, so a rebalance redelivers at most the record in
//! flight.
//!
//! Each partition task has a [`Gate`]. The task enters it for each batch and leaves it after the
//! commit; the rebalance callback ([`GroupContext`]) closes the gate and blocks until the task is
//! out, for at most [`REVOKE_WAIT`]. librdkafka runs the callback inside `recv`, on a runtime
//! thread, hence `block_in_place` and the multi-threaded runtime the runtime asks for.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::group::Place;

/// How long a revocation waits for a partition task to finish its record and commit.
pub(super) const REVOKE_WAIT: Duration = Duration::from_secs(15);

/// The gates of the partitions that have a task, by partition.
pub(super) type GateMap = Arc<Mutex<HashMap<Place, Arc<Gate>>>>;

/// Lets a revocation stop a partition task between records and wait until it has committed.
#[derive(Default)]
pub(super) struct Gate {
    revoked: AtomicBool,
    /// Wakes a partition task sleeping between retries when its partition is revoked.
    pub(super) revoked_signal: tokio::sync::Notify,
    busy: Mutex<bool>,
    idle: Condvar,
}

/// The gate's lock guards one `bool` and no code that can panic while holding it.
const UNPOISONED: &str = "a gate's lock is never held across a panic";

impl Gate {
    /// Marks the task busy; `false` once the partition is revoked.
    pub(super) fn enter(&self) -> bool {
        let mut busy = self.busy.lock().expect(UNPOISONED);
        if self.revoked.load(Ordering::SeqCst) {
            return false;
        }
        *busy = true;
        true
    }

    pub(super) fn leave(&self) {
        *self.busy.lock().expect(UNPOISONED) = false;
        self.idle.notify_all();
    }

    pub(super) fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::SeqCst)
    }

    /// Blocks the calling thread until the task is between batches (or `wait` passes).
    pub(super) fn revoke_and_wait(&self, wait: Duration) {
        let busy = self.busy.lock().expect(UNPOISONED);
        self.revoked.store(true, Ordering::SeqCst);
        self.revoked_signal.notify_waiters();
        let wait_idle = || match self.idle.wait_timeout_while(busy, wait, |busy| *busy) {
            Ok((_, waited)) if waited.timed_out() => {
                // The task is still in its batch; the partition's next owner redelivers what it
                // had not committed.
                tracing::warn!(
                    ?wait,
                    "a partition task did not finish its batch in time; revoking it anyway"
                );
            }
            Ok(_) => {}
            // Poisoned: the task panicked, so it is not busy any more.
            Err(_) => {}
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

/// The group consumer's context: closes the gates of revoked partitions and tells the group loop
/// which partitions to forget.
pub(super) struct GroupContext {
    gates: GateMap,
    revoked: mpsc::UnboundedSender<Vec<Place>>,
}

impl GroupContext {
    pub(super) fn new(gates: GateMap, revoked: mpsc::UnboundedSender<Vec<Place>>) -> Self {
        Self { gates, revoked }
    }
}

impl ClientContext for GroupContext {}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let parts: Vec<Place> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        tracing::debug!(partitions = ?parts, "revocation: waiting for partition tasks to finish their batch");
        let gates: Vec<Arc<Gate>> = {
            let mut map = self
                .gates
                .lock()
                .expect("the gate map's lock is never held across a panic");
            parts.iter().filter_map(|p| map.remove(p)).collect()
        };
        for gate in gates {
            gate.revoke_and_wait(REVOKE_WAIT);
        }
        tracing::info!(partitions = ?parts, "partitions revoked");
        // Fails only once the group loop has ended (the consumer is being closed): then there is
        // nothing left to forget.
        let _ = self.revoked.send(parts);
    }
}
