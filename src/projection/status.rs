//! What a projection's runner last recorded about itself: its row in `projections` (state, counts,
//! the last error) and its position in `projection_offsets`. Read-only; the runner and the rebuild
//! write these rows.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgConnection;

/// A projection's recorded state. `None` from [`of`] means it has never run.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Status {
    /// `running`, `stopped` or `failing` (with [`Status::error`]), as the runner wrote it.
    pub state: String,
    pub events_applied: i64,
    /// When the newest applied event was written to the log.
    pub last_event_at: Option<DateTime<Utc>>,
    /// When the runner last applied a batch.
    pub last_applied_at: Option<DateTime<Utc>>,
    /// Records waiting on its topics at the last batch.
    pub lag_records: Option<i64>,
    pub error: Option<String>,
    pub rebuilt_at: Option<DateTime<Utc>>,
}

impl Status {
    /// How far behind it runs, in seconds: the age of the newest applied event while records are
    /// waiting, else 0.
    pub fn lag_seconds(&self, now: DateTime<Utc>) -> f64 {
        match (self.lag_records, self.last_event_at) {
            (Some(n), Some(at)) if n > 0 => {
                ((now - at).num_milliseconds() as f64 / 1000.0).max(0.0)
            }
            _ => 0.0,
        }
    }
}

/// The next offset a projection reads on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub next_offset: i64,
}

/// The recorded state of projection `name`, or `None` if it has never run.
pub async fn of(conn: &mut PgConnection, name: &str) -> sqlx::Result<Option<Status>> {
    sqlx::query_as(
        "SELECT state, events_applied, last_event_at, last_applied_at, lag_records, error, rebuilt_at
           FROM projections WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await
}

/// Where projection `name` stands on each partition, by topic and partition.
pub async fn positions(conn: &mut PgConnection, name: &str) -> sqlx::Result<Vec<Position>> {
    sqlx::query_as(
        "SELECT topic, partition, next_offset FROM projection_offsets
          WHERE projection = $1 ORDER BY topic, partition",
    )
    .bind(name)
    .fetch_all(conn)
    .await
}

/// Whether projection `name` has run once, so that its tables exist.
pub async fn started(conn: &mut PgConnection, name: &str) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM projections WHERE name = $1)")
        .bind(name)
        .fetch_one(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(lag_records: Option<i64>, last_event_at: Option<DateTime<Utc>>) -> Status {
        Status {
            state: "running".into(),
            events_applied: 1,
            last_event_at,
            last_applied_at: None,
            lag_records,
            error: None,
            rebuilt_at: None,
        }
    }

    #[test]
    fn lag_is_the_newest_applied_events_age_only_while_records_wait() {
        let now = Utc::now();
        let at = now - chrono::Duration::milliseconds(2500);
        assert_eq!(status(Some(3), Some(at)).lag_seconds(now), 2.5);
        assert_eq!(status(Some(0), Some(at)).lag_seconds(now), 0.0);
        assert_eq!(status(None, Some(at)).lag_seconds(now), 0.0);
        assert_eq!(status(Some(3), None).lag_seconds(now), 0.0);
        // A clock a little behind the database's never shows a negative lag.
        let ahead = now + chrono::Duration::seconds(1);
        assert_eq!(status(Some(3), Some(ahead)).lag_seconds(now), 0.0);
    }
}
