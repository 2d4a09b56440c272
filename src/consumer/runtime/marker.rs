//! The crash marker: how a partition task notices that it died, or was stopped, in the middle of
//! a batch, and pins the crash down to one record.
//!
//! Before handling a batch, the task writes its first and last offsets to `consumer_deliveries`.
//! A batch that starts at the marker's first offset again means the previous one was interrupted
//! there (a crash, a kill, a rebalance): its attempt count goes up, and every record up to the
//! interrupted batch's last offset is handled one at a time. A task that stops on purpose writes
//! the offset it stopped at with 0 attempts, so a clean stop is not counted as a crash.

use sqlx::PgPool;

/// A partition's row of `consumer_deliveries`: the batch its task last started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DeliveryMarker {
    /// The batch's first offset.
    pub(super) first: i64,
    /// How far the batch reached: its last offset, or an interrupted batch's if that was further.
    pub(super) last: i64,
    /// How many times in a row a batch was started at `first` (0 after a clean stop there).
    pub(super) attempts: i32,
}

impl DeliveryMarker {
    /// A partition with no marker yet.
    pub(super) const NONE: Self = Self {
        first: -1,
        last: -1,
        attempts: 0,
    };

    pub(super) async fn load(
        pool: &PgPool,
        group: &str,
        topic: &str,
        partition: i32,
    ) -> Result<Self, sqlx::Error> {
        let row: Option<(i64, i64, i32)> = sqlx::query_as(
            "SELECT first_offset, last_offset, attempts FROM consumer_deliveries
              WHERE group_id = $1 AND topic = $2 AND partition = $3",
        )
        .bind(group)
        .bind(topic)
        .bind(partition)
        .fetch_optional(pool)
        .await?;
        Ok(row.map_or(Self::NONE, |(first, last, attempts)| Self {
            first,
            last,
            attempts,
        }))
    }

    pub(super) async fn store(
        self,
        pool: &PgPool,
        group: &str,
        topic: &str,
        partition: i32,
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
        .bind(self.first)
        .bind(self.last)
        .bind(self.attempts)
        .execute(pool)
        .await?;
        Ok(())
    }

    /// The marker of a task that stops on purpose before `offset`: not a crash there.
    pub(super) fn stopped_at(self, offset: i64) -> Self {
        Self {
            first: offset,
            last: self.last,
            attempts: 0,
        }
    }
}

/// How a batch is handled, decided from the marker before any of it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    /// Starts of the batch's first record, this one included: above 1 after an interruption.
    pub(super) attempts: i32,
    /// Records up to this offset are handled one at a time: a batch was interrupted there.
    pub(super) careful_until: Option<i64>,
    /// The last offset handled in this batch: its first one while being careful.
    pub(super) last: i64,
    /// The marker to write before handling the batch.
    pub(super) marker: DeliveryMarker,
}

impl Plan {
    /// Plans a batch of offsets `first..=last` (the records waiting), after `marker` was
    /// written and with the task being careful up to `careful_until`.
    pub(super) fn new(
        marker: DeliveryMarker,
        careful_until: Option<i64>,
        first: i64,
        last: i64,
    ) -> Self {
        let attempts = if marker.first == first {
            marker.attempts + 1
        } else {
            1
        };
        let mut careful_until = careful_until;
        if attempts > 1 {
            careful_until = Some(marker.last.max(careful_until.unwrap_or(-1)));
        }
        if careful_until.is_some_and(|until| first > until) {
            careful_until = None;
        }
        let last = if careful_until.is_some() { first } else { last };
        // The marker remembers how far the interrupted batch reached, beyond this (shortened) one.
        let reach = if attempts > 1 {
            last.max(marker.last)
        } else {
            last
        };
        Self {
            attempts,
            careful_until,
            last,
            marker: DeliveryMarker {
                first,
                last: reach,
                attempts,
            },
        }
    }

    /// Whether `offset`, in this batch, is a record that has now been started more than
    /// `crash_attempts` times without finishing.
    pub(super) fn crash_looped(&self, offset: i64, crash_attempts: i32) -> bool {
        self.attempts > crash_attempts && offset == self.marker.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(first: i64, last: i64, attempts: i32) -> DeliveryMarker {
        DeliveryMarker {
            first,
            last,
            attempts,
        }
    }

    #[test]
    fn a_first_batch_is_handled_whole_and_marked_as_a_first_attempt() {
        let plan = Plan::new(DeliveryMarker::NONE, None, 10, 20);
        assert_eq!(plan.attempts, 1);
        assert_eq!(plan.careful_until, None);
        assert_eq!(plan.last, 20);
        assert_eq!(plan.marker, marker(10, 20, 1));
    }

    #[test]
    fn a_batch_after_a_finished_one_is_a_first_attempt() {
        let plan = Plan::new(marker(10, 20, 1), None, 21, 30);
        assert_eq!(plan.attempts, 1);
        assert_eq!(plan.last, 30);
        assert_eq!(plan.marker, marker(21, 30, 1));
    }

    #[test]
    fn a_restart_at_the_same_first_offset_counts_an_attempt_and_handles_one_record() {
        let plan = Plan::new(marker(10, 20, 1), None, 10, 25);
        assert_eq!(plan.attempts, 2);
        assert_eq!(plan.careful_until, Some(20));
        assert_eq!(plan.last, 10, "only the first record");
        assert_eq!(
            plan.marker,
            marker(10, 20, 2),
            "the marker keeps the interrupted batch's reach"
        );
    }

    #[test]
    fn records_up_to_the_interrupted_reach_are_handled_one_at_a_time() {
        let plan = Plan::new(marker(10, 20, 2), Some(20), 11, 25);
        assert_eq!(plan.attempts, 1);
        assert_eq!(plan.careful_until, Some(20));
        assert_eq!(plan.last, 11);
        assert_eq!(plan.marker, marker(11, 11, 1));
    }

    #[test]
    fn past_the_interrupted_reach_batches_are_whole_again() {
        let plan = Plan::new(marker(20, 20, 1), Some(20), 21, 30);
        assert_eq!(plan.careful_until, None);
        assert_eq!(plan.last, 30);
        assert_eq!(plan.marker, marker(21, 30, 1));
    }

    #[test]
    fn a_clean_stop_is_not_counted_as_a_crash() {
        let stopped = marker(10, 20, 1).stopped_at(15);
        assert_eq!(stopped, marker(15, 20, 0));
        let plan = Plan::new(stopped, None, 15, 20);
        assert_eq!(plan.attempts, 1);
        assert_eq!(plan.careful_until, None, "handled as a whole batch");
        assert_eq!(plan.last, 20);
    }

    #[test]
    fn only_the_first_record_is_a_crash_loop_and_only_past_the_limit() {
        let plan = Plan::new(marker(10, 20, 3), None, 10, 20);
        assert_eq!(plan.attempts, 4);
        assert!(plan.crash_looped(10, 3));
        assert!(!plan.crash_looped(11, 3), "only the record it stopped on");
        assert!(!plan.crash_looped(10, 4), "not before the limit is passed");
    }
}
