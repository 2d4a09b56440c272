//! One sink's loop: read the next rows of the partitions this relay holds, publish them, and move
//! each partition's cursor past the rows the sink acknowledged, or parked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{watch, RwLock};
use uuid::Uuid;

use super::lease::Owned;
use super::outbox::{self, Commit, OutboxRow, Park};
use super::sink::{ErrorClass, Outcome, SinkError, SinkKind};
use super::Sink;
use crate::config::RelayConfig;
use crate::metrics;

/// How often parked rows released by an operator (or freed by a skip) are looked for.
const REDRIVE_EVERY: Duration = Duration::from_millis(500);

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

    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        let mut backoff: Option<Duration> = None;
        let mut again = false;
        let mut last_redrive = Instant::now() - REDRIVE_EVERY;
        let mut wake = self.wake.clone();
        loop {
            if !again {
                let wait = backoff.unwrap_or(poll);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    _ = tokio::time::sleep(wait) => {}
                    changed = wake.changed(), if backoff.is_none() => {
                        if changed.is_err() {
                            // No in-process signal any more: polling alone from now on.
                            wake = watch::Sender::new(0).subscribe();
                        }
                    }
                }
            }
            let guard = self.gate.clone().read_owned().await;
            let (lane, lanes) = self.lane;
            let parts: Vec<i16> = (self.owned.borrow().current().iter())
                .copied()
                .filter(|p| p % lanes == lane)
                .collect();
            if parts.is_empty() {
                again = false;
                continue;
            }
            let redrive = last_redrive.elapsed() >= REDRIVE_EVERY;
            if redrive {
                last_redrive = Instant::now();
            }
            let mut owned = self.owned.clone();
            let result = tokio::select! {
                r = self.round(&parts, redrive) => Some(r),
                _ = lost(&mut owned, &parts) => None,
                _ = stop.wait_for(|s| *s) => None,
            };
            drop(guard);
            match result {
                Some(Ok(round)) => {
                    again = round.full && !round.failed;
                    backoff = round.failed.then(|| self.next_backoff(backoff));
                }
                Some(Err(e)) => {
                    tracing::warn!(sink = %self.kind(), error = %e, "relay round failed");
                    again = false;
                    backoff = Some(self.next_backoff(backoff));
                }
                None => {
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

    fn next_backoff(&self, last: Option<Duration>) -> Duration {
        let max = Duration::from_millis(self.config.backoff_max_ms);
        match last {
            None => Duration::from_millis(self.config.backoff_initial_ms),
            Some(d) => (d * 2).min(max),
        }
    }

    async fn round(&mut self, parts: &[i16], redrive: bool) -> Result<Round, sqlx::Error> {
        let kind = self.kind();
        let batch = self.config.batch_size;
        let mut commit = Commit::default();
        let mut round = Round::default();
        if redrive {
            let rows = outbox::read_redrive(&self.pool, kind, parts, batch).await?;
            if !rows.is_empty() {
                let outcomes = self.sink.publish(&rows.iter().collect::<Vec<_>>()).await;
                round.failed |= self.settle_redrive(&rows, &outcomes, &mut commit);
                round.full |= rows.len() as i64 == batch;
            }
        }
        let started = Instant::now();
        let rows = outbox::read_batch(&self.pool, kind, parts, batch).await?;
        let read = started.elapsed();
        let mut per_partition: HashMap<i16, i64> = HashMap::new();
        for r in &rows {
            *per_partition.entry(r.partition).or_default() += 1;
        }
        round.full |= per_partition.values().any(|n| *n == batch);
        let send: Vec<&OutboxRow> = rows.iter().filter(|r| !r.blocked).collect();
        let mut outcomes = if send.is_empty() {
            Vec::new()
        } else {
            self.sink.publish(&send).await
        }
        .into_iter();
        let aligned: Vec<Option<Outcome>> = rows
            .iter()
            .map(|r| if r.blocked { None } else { outcomes.next() })
            .collect();
        let published = started.elapsed();
        round.failed |= self.settle(&rows, &aligned, &mut commit);
        let delivered = commit.delivered.len()
            + aligned
                .iter()
                .filter(|o| matches!(o, Some(Outcome::Delivered)))
                .count();
        if !outbox::commit(&self.pool, self.owner, kind, &commit).await? {
            tracing::warn!(sink = %kind, "lost a partition lease mid-round; its rows will be re-sent by the new owner");
            return Ok(round);
        }
        if !rows.is_empty() {
            tracing::debug!(sink = %kind, rows = rows.len(), ?read, publish = ?(published - read),
                commit = ?(started.elapsed() - published), "relay round");
        }
        if delivered > 0 {
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
        Ok(round)
    }

    fn record_error(&self, e: &SinkError) {
        ::metrics::counter!(metrics::RELAY_ERRORS, "sink" => self.kind().as_str(),
            "class" => e.class.as_str(), "kind" => e.kind)
        .increment(1);
    }

    /// Walks each partition's rows in log order and decides how far its cursor moves. Returns
    /// whether some row failed.
    fn settle(
        &mut self,
        rows: &[OutboxRow],
        outcomes: &[Option<Outcome>],
        commit: &mut Commit,
    ) -> bool {
        let mut failed = false;
        let mut stopped: HashSet<i16> = HashSet::new();
        let mut parked_now: HashSet<(&str, Uuid)> = HashSet::new();
        for (row, outcome) in rows.iter().zip(outcomes) {
            if stopped.contains(&row.partition) {
                continue;
            }
            let aggregate = row.aggregate();
            let advance = if row.blocked || parked_now.contains(&aggregate) {
                // Held behind a parked row of its aggregate. A row sent in the same batch as the
                // row that failed was acknowledged before it failed for good: the producer is
                // gapless (see `kafka.rs`), so this row was not sent after it.
                commit.park.push(Park::of(row, "held"));
                true
            } else {
                match outcome {
                    Some(Outcome::Delivered) => true,
                    Some(Outcome::Failed(e)) => {
                        failed = true;
                        self.record_error(e);
                        match e.class {
                            ErrorClass::Retriable => false,
                            ErrorClass::Permanent => {
                                let n = self.attempts.entry(row.event.position).or_default();
                                *n += 1;
                                if *n >= self.config.max_attempts {
                                    let mut park = Park::of(row, "parked");
                                    park.attempts = *n;
                                    park.error_class = Some(e.kind);
                                    park.error = Some(e.message.clone());
                                    tracing::warn!(sink = %self.kind(), event_id = %row.event.id,
                                        error = %e, "parked an event that cannot be published");
                                    commit.park.push(park);
                                    parked_now.insert(aggregate);
                                    true
                                } else {
                                    false
                                }
                            }
                        }
                    }
                    Some(Outcome::NotSent) | None => false,
                }
            };
            if advance {
                self.attempts.remove(&row.event.position);
                match commit.advance.last_mut() {
                    Some((p, c)) if *p == row.partition => *c = row.cursor(),
                    _ => commit.advance.push((row.partition, row.cursor())),
                }
            } else {
                stopped.insert(row.partition);
            }
        }
        failed
    }

    /// The same for rows re-sent from the parked table: delivered rows leave it; a row that fails
    /// again stops its aggregate there, and is parked again after `max_attempts`.
    fn settle_redrive(
        &mut self,
        rows: &[OutboxRow],
        outcomes: &[Outcome],
        commit: &mut Commit,
    ) -> bool {
        let mut failed = false;
        let mut stopped: HashSet<(&str, Uuid)> = HashSet::new();
        for (row, outcome) in rows.iter().zip(outcomes) {
            if stopped.contains(&row.aggregate()) {
                continue;
            }
            match outcome {
                Outcome::Delivered => commit.delivered.push((row.partition, row.event.position)),
                Outcome::NotSent => {
                    stopped.insert(row.aggregate());
                }
                Outcome::Failed(e) => {
                    failed = true;
                    self.record_error(e);
                    stopped.insert(row.aggregate());
                    if e.class == ErrorClass::Permanent {
                        let attempts = row.attempts + 1;
                        let state = if attempts >= self.config.max_attempts {
                            "parked"
                        } else {
                            "retry"
                        };
                        let mut park = Park::of(row, state);
                        park.attempts = attempts;
                        park.error_class = Some(e.kind);
                        park.error = Some(e.message.clone());
                        commit.park.push(park);
                    }
                }
            }
        }
        failed
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
