//! Settling a batch: walking its rows in log order with the sink's outcomes and deciding how far
//! each partition's cursor moves and which rows are parked or held. No IO: the worker counts,
//! logs and commits what these functions decide.
//!
//! * A partition's cursor moves past a row once the sink acknowledged it, or it was parked or
//!   held; it stops at the first row that failed otherwise (or was not sent), and the rest of the
//!   partition is read again next round, in order.
//! * A permanent failure is retried `max_attempts` times in all, then the row is parked, and the
//!   later rows of its aggregate are held behind it.
//! * A retriable failure never parks a row.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use crate::model::ParkState;
use crate::relay::outbox::{Commit, OutboxRow, Park};
use crate::relay::sink::{ErrorClass, Outcome, SinkError};

/// What settling decided besides the commit: for the worker's metrics and logs.
#[derive(Debug, Default)]
pub(super) struct Settled<'a> {
    /// Some row failed: the pipeline starts again from the stored cursors, after a backoff.
    pub(super) failed: bool,
    /// Every failure looked at, in row order.
    pub(super) errors: Vec<&'a SinkError>,
    /// Rows parked for good by this batch, with the error that parked them.
    pub(super) parked: Vec<(&'a OutboxRow, &'a SinkError)>,
}

/// Settles a batch read from the outbox, in its read order (by partition, then log order).
/// `outcomes[i]` is the outcome of `rows[i]`, `None` for a row that was not sent (blocked). `attempts` counts the failed attempts of rows not parked yet,
/// by position, across rounds.
pub(super) fn settle<'a>(
    rows: &'a [OutboxRow],
    outcomes: &'a [Option<Outcome>],
    attempts: &mut HashMap<i64, i32>,
    max_attempts: i32,
    commit: &mut Commit,
) -> Settled<'a> {
    let mut settled = Settled::default();
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
            commit.park.push(Park::of(row, ParkState::Held));
            true
        } else {
            match outcome {
                Some(Outcome::Delivered) => true,
                Some(Outcome::Failed(e)) => {
                    settled.failed = true;
                    settled.errors.push(e);
                    match e.class {
                        ErrorClass::Retriable => false,
                        ErrorClass::Permanent => {
                            let n = attempts.entry(row.event.position).or_default();
                            *n += 1;
                            if *n >= max_attempts {
                                commit
                                    .park
                                    .push(failed_for_good(row, ParkState::Parked, *n, e));
                                settled.parked.push((row, e));
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
            attempts.remove(&row.event.position);
            *commit.passed.entry(row.partition).or_default() += 1;
            match commit.advance.last_mut() {
                Some((p, c)) if *p == row.partition => *c = row.cursor(),
                _ => commit.advance.push((row.partition, row.cursor())),
            }
        } else {
            stopped.insert(row.partition);
        }
    }
    settled
}

/// Settles rows re-sent from the parked table: delivered rows leave it; a row that fails again
/// stops its aggregate there, and a permanent failure counts an attempt, parking the row again
/// once it reaches `max_attempts`.
pub(super) fn settle_redrive<'a>(
    rows: &'a [OutboxRow],
    outcomes: &'a [Outcome],
    max_attempts: i32,
    commit: &mut Commit,
) -> Settled<'a> {
    let mut settled = Settled::default();
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
                settled.failed = true;
                settled.errors.push(e);
                stopped.insert(row.aggregate());
                if e.class == ErrorClass::Permanent {
                    let attempts = row.attempts + 1;
                    let state = if attempts >= max_attempts {
                        ParkState::Parked
                    } else {
                        ParkState::Retry
                    };
                    commit.park.push(failed_for_good(row, state, attempts, e));
                }
            }
        }
    }
    settled
}

/// The parked-table row of `row` after a permanent failure.
fn failed_for_good(row: &OutboxRow, state: ParkState, attempts: i32, e: &SinkError) -> Park {
    let mut park = Park::of(row, state);
    park.attempts = attempts;
    park.error_class = Some(e.kind);
    park.error = Some(e.message.clone());
    park
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::RecordedEvent;
    use crate::store::log::LogCursor;

    const MAX: i32 = 3;

    /// A row of `partition` at log place `tx`/`position`, of the aggregate numbered `aggregate`.
    fn row(partition: i16, tx: i64, position: i64, aggregate: u128) -> OutboxRow {
        OutboxRow {
            partition,
            tx_id: tx,
            event: RecordedEvent {
                id: Uuid::from_u128(position as u128),
                position,
                aggregate_type: "agent".into(),
                aggregate_id: Uuid::from_u128(aggregate),
                version: 1,
                event_type: "AgentStateChanged".into(),
                schema_id: None,
                schema_version: None,
                payload: json!({}),
                metadata: json!({}),
                created_at: chrono::Utc::now(),
            },
            blocked: false,
            attempts: 0,
        }
    }

    fn cursor(tx: i64, position: i64) -> LogCursor {
        LogCursor {
            tx_id: tx,
            position,
        }
    }

    fn ok() -> Option<Outcome> {
        Some(Outcome::Delivered)
    }

    fn permanent() -> Outcome {
        Outcome::Failed(SinkError::permanent("message_too_large", "too large"))
    }

    fn retriable() -> Outcome {
        Outcome::Failed(SinkError::retriable("timeout", "broker timed out"))
    }

    fn states(commit: &Commit) -> Vec<(i64, ParkState)> {
        commit
            .park
            .iter()
            .map(|p| (p.row_position, p.state))
            .collect()
    }

    #[test]
    fn commits_of_later_batches_absorbed_move_each_cursor_to_the_latest_and_sum_what_passed() {
        let mut attempts = HashMap::new();
        let first = [row(0, 1, 1, 1), row(1, 1, 2, 2)];
        let second = [row(0, 2, 3, 1), row(2, 2, 4, 3)];
        let mut pending = Commit::default();
        let mut one = Commit::default();
        settle(&first, &[ok(), ok()], &mut attempts, MAX, &mut one);
        pending.absorb(one);
        let mut two = Commit::default();
        settle(&second, &[ok(), ok()], &mut attempts, MAX, &mut two);
        pending.absorb(two);
        assert_eq!(
            pending.advance,
            vec![(0, cursor(2, 3)), (1, cursor(1, 2)), (2, cursor(2, 4))]
        );
        assert_eq!(
            pending.passed.into_iter().collect::<Vec<_>>(),
            vec![(0, 2), (1, 1), (2, 1)]
        );
    }

    #[test]
    fn delivered_rows_move_each_partition_to_its_last_row() {
        // In the outbox's read order: by partition, then log order.
        let rows = [row(0, 1, 10, 1), row(0, 2, 12, 1), row(1, 1, 11, 2)];
        let mut commit = Commit::default();
        let outcomes = [ok(), ok(), ok()];
        let settled = settle(&rows, &outcomes, &mut HashMap::new(), MAX, &mut commit);
        assert!(!settled.failed);
        assert_eq!(commit.advance, [(0, cursor(2, 12)), (1, cursor(1, 11))]);
        assert!(commit.park.is_empty());
    }

    #[test]
    fn a_retriable_failure_stops_its_partition_there_and_parks_nothing() {
        let rows = [
            row(0, 1, 10, 1),
            row(0, 2, 11, 2),
            row(0, 3, 12, 3),
            row(1, 1, 13, 4),
        ];
        let outcomes = [ok(), Some(retriable()), ok(), ok()];
        let mut attempts = HashMap::new();
        let mut commit = Commit::default();
        let settled = settle(&rows, &outcomes, &mut attempts, MAX, &mut commit);
        assert!(settled.failed);
        assert_eq!(settled.errors.len(), 1);
        assert_eq!(
            commit.advance,
            [(0, cursor(1, 10)), (1, cursor(1, 13))],
            "partition 0 stops before the failed row; partition 1 goes on"
        );
        assert!(commit.park.is_empty());
        assert!(attempts.is_empty(), "retriable failures are not counted");
    }

    #[test]
    fn a_permanent_failure_is_counted_and_retried_before_max_attempts() {
        let rows = [row(0, 1, 10, 1)];
        let mut attempts = HashMap::new();
        for n in 1..MAX {
            let mut commit = Commit::default();
            let outcomes = [Some(permanent())];
            let settled = settle(&rows, &outcomes, &mut attempts, MAX, &mut commit);
            assert!(settled.failed);
            assert!(commit.advance.is_empty() && commit.park.is_empty());
            assert_eq!(attempts.get(&10), Some(&n));
        }
    }

    #[test]
    fn at_max_attempts_the_row_is_parked_and_its_aggregates_later_rows_are_held() {
        let rows = [row(0, 1, 10, 1), row(0, 2, 11, 2), row(0, 3, 12, 1)];
        let mut attempts = HashMap::from([(10, MAX - 1)]);
        let mut commit = Commit::default();
        let outcomes = [Some(permanent()), ok(), ok()];
        let settled = settle(&rows, &outcomes, &mut attempts, MAX, &mut commit);
        assert!(settled.failed);
        assert_eq!(settled.parked.len(), 1);
        assert_eq!(settled.parked[0].0.event.position, 10);
        assert_eq!(
            states(&commit),
            [(10, ParkState::Parked), (12, ParkState::Held)]
        );
        let parked = &commit.park[0];
        assert_eq!(parked.attempts, MAX);
        assert_eq!(parked.error_class, Some("message_too_large"));
        assert_eq!(parked.error.as_deref(), Some("too large"));
        assert_eq!(
            commit.advance,
            [(0, cursor(3, 12))],
            "the cursor moves past parked and held rows"
        );
        assert!(attempts.is_empty(), "a parked row's count is dropped");
    }

    #[test]
    fn a_row_blocked_by_an_earlier_parked_row_is_held_and_passed() {
        let mut blocked = row(0, 1, 10, 1);
        blocked.blocked = true;
        let rows = [blocked, row(0, 2, 11, 2)];
        let mut commit = Commit::default();
        let outcomes = [None, ok()];
        let settled = settle(&rows, &outcomes, &mut HashMap::new(), MAX, &mut commit);
        assert!(!settled.failed);
        assert_eq!(states(&commit), [(10, ParkState::Held)]);
        assert_eq!(commit.advance, [(0, cursor(2, 11))]);
    }

    #[test]
    fn a_row_not_sent_stops_its_partition_without_a_failure() {
        let rows = [row(0, 1, 10, 1), row(0, 2, 11, 1)];
        let outcomes = [ok(), Some(Outcome::NotSent)];
        let mut commit = Commit::default();
        let settled = settle(&rows, &outcomes, &mut HashMap::new(), MAX, &mut commit);
        assert!(!settled.failed);
        assert_eq!(commit.advance, [(0, cursor(1, 10))]);
    }

    #[test]
    fn a_redriven_row_that_is_delivered_leaves_the_parked_table() {
        let rows = [row(3, 1, 10, 1), row(3, 2, 11, 1)];
        let mut commit = Commit::default();
        let outcomes = [Outcome::Delivered, Outcome::Delivered];
        let settled = settle_redrive(&rows, &outcomes, MAX, &mut commit);
        assert!(!settled.failed);
        assert_eq!(commit.delivered, [(3, 10), (3, 11)]);
        assert!(commit.park.is_empty() && commit.advance.is_empty());
    }

    #[test]
    fn a_redriven_row_that_fails_again_stops_its_aggregate_and_counts_an_attempt() {
        let mut first = row(0, 1, 10, 1);
        first.attempts = 0;
        let rows = [first, row(0, 2, 11, 1), row(0, 3, 12, 2)];
        let outcomes = [permanent(), Outcome::Delivered, Outcome::Delivered];
        let mut commit = Commit::default();
        let settled = settle_redrive(&rows, &outcomes, MAX, &mut commit);
        assert!(settled.failed);
        assert_eq!(states(&commit), [(10, ParkState::Retry)]);
        assert_eq!(commit.park[0].attempts, 1);
        assert_eq!(
            commit.delivered,
            [(0, 12)],
            "the failed aggregate's later row stays; other aggregates go on"
        );
    }

    #[test]
    fn a_redriven_row_is_parked_again_at_max_attempts() {
        let mut again = row(0, 1, 10, 1);
        again.attempts = MAX - 1;
        let mut commit = Commit::default();
        settle_redrive(&[again], &[permanent()], MAX, &mut commit);
        assert_eq!(states(&commit), [(10, ParkState::Parked)]);
        assert_eq!(commit.park[0].attempts, MAX);
    }

    #[test]
    fn a_redriven_row_with_a_retriable_failure_waits_without_an_attempt() {
        let rows = [row(0, 1, 10, 1), row(0, 2, 11, 1)];
        let mut commit = Commit::default();
        let outcomes = [retriable(), Outcome::Delivered];
        let settled = settle_redrive(&rows, &outcomes, MAX, &mut commit);
        assert!(settled.failed);
        assert!(commit.park.is_empty() && commit.delivered.is_empty());
    }
}
