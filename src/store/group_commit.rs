//! Group commit: appends that arrive together share one transaction and one commit.
//!
//! A durable commit costs a WAL flush, and on a small machine the flush rate, the number of
//! PostgreSQL backends and their context switches bound single-event throughput. A few workers
//! each take whatever appends are queued (natural batching: no timer, so an idle system adds no
//! latency), lock all their aggregates in one statement, run each append, and commit once.
//!
//! Every guarantee of a lone append holds:
//! - Each request is still checked on its own: a wrong expected version refuses that request only
//!   (it writes nothing and does not abort the transaction); requests for the same aggregate run in
//!   arrival order and see each other's effects, as if serial.
//! - The locks are taken before the transaction's first write and in a fixed order, so batches do
//!   not deadlock each other and the transaction-id order still follows version order.
//! - If the shared transaction fails for any reason (a duplicate event id, a lost connection, a
//!   failed commit), every request of the batch is re-run alone. That is safe because every event
//!   already has its id: a request that did commit is recognised as an idempotent replay.

use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::append::{append_locked, lock_aggregates};
use super::{append_alone, resolve_refusal, AppendRequest, Error};
use crate::model::AppendResult;

type Reply = oneshot::Sender<Result<AppendResult, Error>>;

/// The queue in front of the workers. Dropping the last handle stops them.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    queue: mpsc::Sender<(AppendRequest, Reply)>,
}

impl GroupCommit {
    /// Starts `workers` tasks on the current runtime; a transaction takes at most `max_events`
    /// events (a larger single request still goes alone).
    pub(crate) fn start(pool: PgPool, workers: usize, max_events: usize) -> Self {
        let (queue, receiver) = mpsc::channel(workers * 256);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..workers {
            tokio::spawn(worker(pool.clone(), receiver.clone(), max_events));
        }
        Self { queue }
    }

    pub(crate) async fn append(&self, request: AppendRequest) -> Result<AppendResult, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((request, reply))
            .await
            .map_err(|_| Error::Stopped)?;
        answer.await.map_err(|_| Error::Stopped)?
    }
}

async fn worker(
    pool: PgPool,
    receiver: Arc<Mutex<mpsc::Receiver<(AppendRequest, Reply)>>>,
    max_events: usize,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let mut events = first.0.events.len();
            let mut batch = vec![first];
            while events < max_events {
                match receiver.try_recv() {
                    Ok(next) => {
                        events += next.0.events.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        run_batch(&pool, batch).await;
    }
}

#[tracing::instrument(skip_all, fields(requests = batch.len()))]
async fn run_batch(pool: &PgPool, batch: Vec<(AppendRequest, Reply)>) {
    metrics::histogram!(crate::metrics::GROUP_COMMIT_REQUESTS).record(batch.len() as f64);
    let requests: Vec<&AppendRequest> = batch.iter().map(|(r, _)| r).collect();
    match commit_together(pool, &requests).await {
        Ok(outcomes) => {
            for ((request, reply), outcome) in batch.into_iter().zip(outcomes) {
                let result = match outcome {
                    Ok(result) => Ok(result),
                    // Cannot happen with the locks taken first; a lone append retries it anyway.
                    Err(Error::TransactionOrder) => append_alone(pool, &request).await,
                    Err(refusal) => resolve_refusal(pool, &request, refusal).await,
                };
                let _ = reply.send(result); // the caller may have gone; nothing to undo
            }
        }
        Err(err) => {
            tracing::debug!(error = %err, "group commit failed; re-running its appends alone");
            for (request, reply) in batch {
                let _ = reply.send(append_alone(pool, &request).await);
            }
        }
    }
}

/// Runs every request in one transaction. The outer error means the transaction did not commit
/// (or may not have); an inner error is a refusal that wrote nothing.
async fn commit_together(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<AppendResult, Error>>, Error> {
    let mut tx = pool.begin().await?;
    let aggregates: Vec<_> = requests
        .iter()
        .map(|r| (&r.aggregate_type, r.aggregate_id))
        .collect();
    lock_aggregates(&mut tx, &aggregates).await?;
    let mut outcomes = Vec::with_capacity(requests.len());
    for r in requests {
        let outcome = append_locked(
            &mut tx,
            &r.aggregate_type,
            r.aggregate_id,
            r.expected,
            &r.events,
        )
        .await;
        match outcome {
            Err(
                Error::WrongExpectedVersion { .. } | Error::TransactionOrder | Error::EmptyBatch,
            )
            | Ok(_) => outcomes.push(outcome),
            Err(aborting) => return Err(aborting),
        }
    }
    tx.commit().await?;
    Ok(outcomes)
}
