//! One sink lane's loop: read the next rows of the partitions this lane holds, publish them, and
//! move each partition's cursor past the rows the sink acknowledged, or parked.
//!
//! The loop is a pipeline: it reads and sends the next batch (after the last batch sent) as soon as
//! new rows are committed, without waiting for earlier batches' acknowledgements, and settles the
//! batches in flight in the order they were sent, each as its acknowledgements come in. At most
//! [`MAX_BATCHES_IN_FLIGHT`] batches, and two full batches' rows, are in flight; past that it waits
//! for the oldest. It carries on this way only while every row sent so far was queued; after any
//! failure (or a lost lease) it drops what is in flight and reads again from the stored cursors,
//! so a row that failed is never overtaken by a later row of its aggregate from a batch sent after
//! the failure was known.
//!
//! How far a batch moves each cursor, and what it parks, is decided without IO in [`settle`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sqlx::PgPool;
use tokio::sync::{watch, RwLock};
use uuid::Uuid;

mod settle;

use self::settle::Settled;
use super::lease::Owned;
use super::outbox::{self, Commit, OutboxRow};
use super::sink::{Outcome, SinkError, SinkKind};
use super::sink::{Sent, Sink};
use crate::config::RelayConfig;
use crate::heartbeat::Lane;
use crate::metrics;
use crate::retry::RetryPolicy;
use crate::shutdown::Shutdown;
use crate::store::log::LogCursor;

/// How often parked rows released by an operator (or freed by a skip) are looked for.
const REDRIVE_EVERY: Duration = Duration::from_millis(500);

/// Longest a settled batch's cursor move waits to be written, so that a steady trickle of small
/// batches costs a cursor write every so often, not one per batch. A crash re-sends at most the
/// rows acknowledged in this window (and those in flight).
pub(crate) const CURSOR_COMMIT_EVERY: Duration = Duration::from_millis(100);

/// Most batches a lane has sent and not settled. Under a steady trickle each commit makes a small
/// batch; this many can wait for their acknowledgements while the next rows go out. (Under a
/// backlog the row bound, two full batches, is reached first: memory stays as it was.)
pub(crate) const MAX_BATCHES_IN_FLIGHT: usize = 4;

pub(crate) struct SinkLoop {
    pub sink: Arc<Sink>,
    pub pool: PgPool,
    pub owner: Uuid,
    pub owned: watch::Receiver<Owned>,
    pub gate: Arc<RwLock<()>>,
    pub wake: watch::Receiver<u64>,
    pub config: RelayConfig,
    /// Failed attempts so far at rows not yet parked, by position.
    pub attempts: HashMap<i64, i32>,
    /// This loop handles the held partitions `p` with `p % lanes.1 == lanes.0`; the other lanes
    /// of the sink handle the rest, concurrently. Partitions never share a lane, so each keeps
    /// its order.
    pub lane: (i16, i16),
    /// Batches sent and not yet settled, oldest first.
    pub inflight: VecDeque<InFlight>,
    /// Settled batches' cursor moves and parked rows, not yet written.
    pub pending: Pending,
    /// Ticked each time the loop turns, busy or idle (see [`crate::heartbeat`]).
    pub beat: Lane,
}

/// A batch sent and not yet settled.
pub(crate) struct InFlight {
    parts: Vec<i16>,
    rows: Vec<OutboxRow>,
    sent: Sent,
    /// Where each partition's next read starts: after this batch's rows.
    ends: Vec<(i16, LogCursor)>,
}

/// Cursor moves decided and not yet written (see [`SinkLoop::finish`]).
#[derive(Debug, Default)]
pub(crate) struct Pending {
    commit: Commit,
    /// Rows the commit passes.
    rows: usize,
    /// When the first of them was settled.
    since: Option<Instant>,
}

/// What a round found.
#[derive(Debug, Default)]
struct Round {
    /// Some partition had more rows than one round reads: go again at once.
    full: bool,
    /// Some row failed: back off before the next round.
    failed: bool,
}

impl SinkLoop {
    fn kind(&self) -> SinkKind {
        self.sink.kind()
    }

    pub async fn run(mut self, stop: Shutdown) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut failures = self.retry_policy().backoff();
        // Some while backing off after a failed round: then only the timer ends the wait.
        let mut backoff: Option<Duration> = None;
        let mut again = false;
        let mut last_redrive = Instant::now() - REDRIVE_EVERY;
        let mut wake = self.wake.clone();
        loop {
            self.beat.tick();
            // Whether to read new rows this round, or only settle batches whose
            // acknowledgements came in.
            let mut read = true;
            if !again {
                let wait = backoff.unwrap_or(poll);
                let waiting = backoff.is_none() && !self.inflight.is_empty();
                let flush_at = self.flush_at().filter(|_| backoff.is_none());
                tokio::select! {
                    _ = stop.wait() => break,
                    _ = tokio::time::sleep(wait) => {}
                    changed = wake.changed(), if backoff.is_none() => {
                        if changed.is_err() {
                            // No in-process signal any more: polling alone from now on.
                            wake = watch::Sender::new(0).subscribe();
                        }
                    }
                    _ = oldest_landed(&mut self.inflight), if waiting => read = false,
                    _ = sleep_until(flush_at), if flush_at.is_some() => read = false,
                }
            }
            let guard = self.gate.clone().read_owned().await;
            let (lane, lanes) = self.lane;
            let parts: Vec<i16> = (self.owned.borrow().current().iter())
                .copied()
                .filter(|p| p % lanes == lane)
                .collect();
            if parts.is_empty() {
                self.inflight.clear();
                again = false;
                continue;
            }
            let redrive = last_redrive.elapsed() >= REDRIVE_EVERY;
            if redrive {
                last_redrive = Instant::now();
            }
            let mut owned = self.owned.clone();
            let busy = self.beat.busy();
            let result = tokio::select! {
                r = self.round(&parts, redrive, read || redrive) => Some(r),
                _ = lost(&mut owned, &parts) => None,
                _ = stop.wait() => None,
            };
            if result.is_none() && stop.is_triggered() {
                // Stopping: settle the batches in flight while the lease is still held, so that
                // a clean shutdown leaves nothing to send twice.
                let settle = self.settle_all();
                if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(5), settle).await {
                    tracing::warn!(sink = %self.kind(), error = %e, "cannot settle the last batches");
                }
            }
            drop(guard);
            drop(busy);
            match result {
                Some(Ok(round)) => {
                    again = round.full && !round.failed;
                    backoff = if round.failed {
                        Some(failures.failed())
                    } else {
                        failures.succeeded();
                        None
                    };
                }
                Some(Err(e)) => {
                    self.inflight.clear();
                    self.pending = Pending::default();
                    tracing::warn!(sink = %self.kind(), error = %e, "relay round failed");
                    again = false;
                    backoff = Some(failures.failed());
                }
                None => {
                    self.inflight.clear();
                    self.pending = Pending::default();
                    // Lease lost or stopping mid-round: nothing was committed, so the next owner
                    // (or this relay, later) re-sends from the stored cursor. Messages already
                    // queued in the producer are left to go out: they are earlier events the next
                    // owner re-sends too, so first sights stay in order. (Purging the producer's
                    // queue would also drop other lanes' messages and let their later ones pass.)
                    again = false;
                }
            }
        }
    }

    /// How failed rounds back off: doubling waits from `backoff_initial_ms` to `backoff_max_ms`.
    fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::exponential(
            Duration::from_millis(self.config.backoff_initial_ms),
            Duration::from_millis(self.config.backoff_max_ms),
        )
    }

    /// One step of the pipeline: with `read`, read the next batch (after the batches in flight,
    /// or from the stored cursors) and send it; then settle, oldest first, the batches whose
    /// acknowledgements are all in, and the oldest ones while more than the bounds are in flight.
    /// A failure anywhere drops what is in flight; its rows are read again from the stored
    /// cursors, after the failed row.
    ///
    /// A debug span (as are the steps of every round, idle or not): a relay polls several times
    /// a second even when idle, and an info span per round would be an exported trace per poll
    /// (the events' own publish spans carry their trace).
    #[tracing::instrument(level = "debug", skip_all, fields(
        keel.sink = %self.kind(),
        keel.relay.partitions = ?parts,
        keel.relay.redrive = redrive,
        keel.relay.read = read,
    ))]
    async fn round(
        &mut self,
        parts: &[i16],
        redrive: bool,
        read: bool,
    ) -> Result<Round, sqlx::Error> {
        let kind = self.kind();
        let batch = self.config.batch_size;
        let mut round = Round::default();
        // Carry on after the batches in flight only if they cover the same partitions and every
        // row sent was queued (each batch was sent only after the one before it checked out
        // clean, so the newest tells); otherwise, and before a redrive, settle them all first.
        let from = match self.inflight.back() {
            Some(f) if !redrive && f.parts == parts && f.sent.clean() => Some(f.ends.clone()),
            _ => None,
        };
        if from.is_none() && self.settle_all().await? {
            round.failed = true;
            return Ok(round);
        }
        if read {
            if redrive {
                let rows = outbox::read_redrive(&self.pool, kind, parts, batch).await?;
                if !rows.is_empty() {
                    let mut commit = Commit::default();
                    let events: Vec<_> = rows.iter().map(|r| &r.event).collect();
                    let outcomes = self.sink.publish(&events).await;
                    round.failed |= self.settle_redrive(&rows, &outcomes, &mut commit);
                    round.full |= rows.len() as i64 == batch;
                    outbox::commit(&self.pool, self.owner, kind, &commit).await?;
                    self.count_delivered(commit.delivered.len(), &rows);
                }
            }
            let from = match from {
                Some(ends) => ends,
                None => outbox::cursors(&self.pool, kind, parts).await?,
            };
            let rows = outbox::read_batch_from(&self.pool, kind, &from, batch).await?;
            let mut per_partition: HashMap<i16, i64> = HashMap::new();
            for r in &rows {
                *per_partition.entry(r.partition).or_default() += 1;
            }
            // A partition had more rows than one read takes: read again at once.
            round.full |= per_partition.values().any(|n| *n == batch);
            if !rows.is_empty() {
                let ends = from
                    .iter()
                    .map(|(p, c)| {
                        let last = rows.iter().rev().find(|r| r.partition == *p);
                        (*p, last.map_or(*c, |r| r.cursor()))
                    })
                    .collect();
                let send: Vec<_> = rows
                    .iter()
                    .filter(|r| !r.blocked)
                    .map(|r| &r.event)
                    .collect();
                let sent = if send.is_empty() {
                    Sent::Ready(Vec::new())
                } else {
                    self.sink.send(&send).await
                };
                self.inflight.push_back(InFlight {
                    parts: parts.to_vec(),
                    rows,
                    sent,
                    ends,
                });
            }
        }
        // Rows held: at most one full read's worth waits while the next read goes out, as many
        // as two full reads' in all, whatever the number of batches.
        let max_rows = batch as usize * parts.len();
        loop {
            let rows: usize = self.inflight.iter().map(|f| f.rows.len()).sum();
            let over = self.inflight.len() >= MAX_BATCHES_IN_FLIGHT || rows > max_rows;
            let Some(oldest) = self.inflight.front_mut() else {
                break;
            };
            if !over && oldest.sent.landed().now_or_never().is_none() {
                break;
            }
            let Some(oldest) = self.inflight.pop_front() else {
                break;
            };
            if self.finish(oldest).await? {
                // Later batches went out behind a failure: drop them (what they queued may
                // still arrive, as duplicates of rows re-sent in order) and start again from
                // the cursors.
                self.inflight.clear();
                round.failed = true;
                return Ok(round);
            }
        }
        let due = self.flush_at().is_some_and(|t| t <= Instant::now());
        if (due || self.pending.rows >= 2 * max_rows) && !self.flush().await? {
            self.inflight.clear();
            round.failed = true;
        }
        Ok(round)
    }

    /// Settles every batch in flight, oldest first. Returns whether the pipeline must start again
    /// from the stored cursors (see [`SinkLoop::finish`]).
    async fn settle_all(&mut self) -> Result<bool, sqlx::Error> {
        while let Some(batch) = self.inflight.pop_front() {
            if self.finish(batch).await? {
                self.inflight.clear();
                return Ok(true);
            }
        }
        if self.pending.since.is_some() && !self.flush().await? {
            return Ok(true);
        }
        Ok(false)
    }

    /// Waits for a batch's outcomes and decides how far each partition's cursor moves, adding
    /// that to the pending commit. A batch with a failed row is written at once, since the
    /// pipeline then starts again from the stored cursors; otherwise [`SinkLoop::round`] writes
    /// the pending commit every [`CURSOR_COMMIT_EVERY`] or two full reads' rows. Returns whether
    /// the pipeline must start again from the stored cursors (a row failed, or a lease was lost).
    #[tracing::instrument(level = "debug", skip_all, fields(
        keel.sink = %self.kind(),
        messaging.batch.message_count = batch.rows.len(),
    ))]
    async fn finish(&mut self, batch: InFlight) -> Result<bool, sqlx::Error> {
        let kind = self.kind();
        let mut outcomes = batch.sent.outcomes().await.into_iter();
        let aligned: Vec<Option<Outcome>> = batch
            .rows
            .iter()
            .map(|r| if r.blocked { None } else { outcomes.next() })
            .collect();
        let mut commit = Commit::default();
        let failed = self.settle(&batch.rows, &aligned, &mut commit);
        self.pending.commit.absorb(commit);
        self.pending.rows += batch.rows.len();
        self.pending.since.get_or_insert_with(Instant::now);
        let delivered = aligned
            .iter()
            .filter(|o| matches!(o, Some(Outcome::Delivered)))
            .count();
        if !batch.rows.is_empty() {
            tracing::debug!(sink = %kind, rows = batch.rows.len(), delivered, "relay batch settled");
        }
        self.count_delivered(delivered, &batch.rows);
        if failed {
            self.flush().await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Writes the pending commit. Returns `false` if a lease was lost meanwhile: then nothing is
    /// written, and the new owner sends those rows again.
    async fn flush(&mut self) -> Result<bool, sqlx::Error> {
        let pending = std::mem::take(&mut self.pending);
        if !outbox::commit(&self.pool, self.owner, self.kind(), &pending.commit).await? {
            tracing::warn!(sink = %self.kind(), "lost a partition lease mid-round; its rows will be re-sent by the new owner");
            return Ok(false);
        }
        Ok(true)
    }

    /// When the pending commit is next due by time, if there is one.
    fn flush_at(&self) -> Option<Instant> {
        self.pending.since.map(|t| t + CURSOR_COMMIT_EVERY)
    }

    fn count_delivered(&self, delivered: usize, rows: &[OutboxRow]) {
        if delivered == 0 {
            return;
        }
        let kind = self.kind();
        ::metrics::counter!(metrics::RELAY_PUBLISHED, "sink" => kind.as_str())
            .increment(delivered as u64);
        if let Some(newest) = rows.iter().map(|r| r.event.created_at).max() {
            let lag = (chrono::Utc::now() - newest)
                .num_microseconds()
                .unwrap_or(0);
            ::metrics::gauge!(metrics::RELAY_LAG, "sink" => kind.as_str())
                .set(lag.max(0) as f64 / 1e6);
        }
    }

    fn record_error(&self, e: &SinkError) {
        ::metrics::counter!(metrics::RELAY_ERRORS, "sink" => self.kind().as_str(),
            "class" => e.class.as_str(), "kind" => e.kind)
        .increment(1);
    }

    /// Decides how far each partition's cursor moves (see [`settle`]), counting the failures and
    /// logging the rows parked. Returns whether some row failed.
    fn settle(
        &mut self,
        rows: &[OutboxRow],
        outcomes: &[Option<Outcome>],
        commit: &mut Commit,
    ) -> bool {
        let max_attempts = self.config.max_attempts;
        let settled = settle::settle(rows, outcomes, &mut self.attempts, max_attempts, commit);
        self.report(&settled);
        for (row, e) in &settled.parked {
            tracing::warn!(sink = %self.kind(), event_id = %row.event.id,
                error = %e, "parked an event that cannot be published");
        }
        settled.failed
    }

    /// The same for rows re-sent from the parked table (see [`settle::settle_redrive`]).
    fn settle_redrive(
        &mut self,
        rows: &[OutboxRow],
        outcomes: &[Outcome],
        commit: &mut Commit,
    ) -> bool {
        let settled = settle::settle_redrive(rows, outcomes, self.config.max_attempts, commit);
        self.report(&settled);
        settled.failed
    }

    fn report(&self, settled: &Settled<'_>) {
        for e in &settled.errors {
            self.record_error(e);
        }
        // Retried failures are counted, not logged one by one; the first of a round says why.
        if let Some(e) = settled.errors.first() {
            tracing::debug!(sink = %self.kind(), errors = settled.errors.len(), error = %e,
                "publishes failed this round");
        }
    }
}

/// Completes at `at`; never if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Completes when every acknowledgement of the oldest batch in flight is in; never if none is.
async fn oldest_landed(inflight: &mut VecDeque<InFlight>) {
    match inflight.front_mut() {
        Some(batch) => batch.sent.landed().await,
        None => std::future::pending().await,
    }
}

/// Completes when any of `parts` leaves this relay's leases, or the leases run out.
async fn lost(owned: &mut watch::Receiver<Owned>, parts: &[i16]) {
    loop {
        let (held, until) = {
            let o = owned.borrow_and_update();
            (
                parts.iter().all(|p| o.partitions.contains(p)),
                o.valid_until,
            )
        };
        let Some(until) = until.filter(|_| held) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until.into()) => {
                if owned.borrow().valid_until == Some(until) {
                    return;
                }
            }
            changed = owned.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}
