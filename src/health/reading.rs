//! What one sample of the monitor saw, in numbers: the store's head, each relay sink's backlog,
//! each follower's lag in messages and in seconds, and the verdict. The monitor keeps the last
//! [`HISTORY`] of them in a ring ([`History`]) and sends each new one to subscribers, so that a
//! dashboard draws charts that survive a reload without reading anything itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

use super::Verdict;

/// How far back the ring reaches.
pub const HISTORY: Duration = Duration::from_secs(15 * 60);

/// One relay sink in a reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SinkReading {
    pub sink: String,
    /// Outbox rows past the sink's cursors; at least this many when `capped`.
    pub waiting: i64,
    pub capped: bool,
    /// Age of the oldest of them, in seconds.
    pub oldest_s: f64,
    /// Rows parked or held for this sink.
    pub parked: i64,
    /// Rows the sink's cursors have passed since the cursors were created (a counter: rates
    /// come from two readings).
    pub passed: i64,
}

/// A consumer group or projection in a reading.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FollowerReading {
    /// `group.<id>` or `projection.<name>`.
    pub component: String,
    /// Messages behind the ends of its partitions.
    pub lag: i64,
    /// How long ago the partitions' ends were where it is now (the worst partition).
    pub lag_s: f64,
    /// Its committed offsets added up over its partitions (a counter: rates come from two
    /// readings).
    pub position: i64,
}

/// One sample.
#[derive(Debug, Clone, Serialize)]
pub struct Reading {
    pub at: DateTime<Utc>,
    /// The store's highest global position.
    pub head: i64,
    pub sinks: Vec<SinkReading>,
    pub followers: Vec<FollowerReading>,
    /// Open consumer dead letters per group (at most [`super::monitor::DLQ_CAP`] each).
    pub dead_letters: BTreeMap<String, i64>,
    pub verdict: Verdict,
}

impl Reading {
    pub fn sink(&self, name: &str) -> Option<&SinkReading> {
        self.sinks.iter().find(|s| s.sink == name)
    }

    pub fn follower(&self, component: &str) -> Option<&FollowerReading> {
        self.followers.iter().find(|f| f.component == component)
    }
}

/// The ring of recent readings and the channel each new one goes out on. Cheap to clone.
#[derive(Clone)]
pub struct History {
    ring: Arc<RwLock<VecDeque<Arc<Reading>>>>,
    sender: broadcast::Sender<Arc<Reading>>,
}

impl Default for History {
    fn default() -> Self {
        Self {
            ring: Arc::default(),
            sender: broadcast::Sender::new(16),
        }
    }
}

impl History {
    pub(super) fn push(&self, reading: Reading) {
        let reading = Arc::new(reading);
        {
            let mut ring = self.ring.write().expect("history lock");
            let horizon = reading.at - chrono::Duration::from_std(HISTORY).expect("fits");
            while ring.front().is_some_and(|r| r.at < horizon) {
                ring.pop_front();
            }
            ring.push_back(reading.clone());
        }
        // No subscriber is fine: nobody is looking.
        let _ = self.sender.send(reading);
    }

    /// The readings of the last [`HISTORY`], oldest first.
    pub fn readings(&self) -> Vec<Arc<Reading>> {
        self.ring
            .read()
            .expect("history lock")
            .iter()
            .cloned()
            .collect()
    }

    pub fn latest(&self) -> Option<Arc<Reading>> {
        self.ring.read().expect("history lock").back().cloned()
    }

    /// Every reading from now on. A receiver that falls behind skips readings (it is told so).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Reading>> {
        self.sender.subscribe()
    }
}

/// The rate of a counter between two readings, per second (0 when the clock did not move or the
/// counter went back, as after a cursor reset).
pub fn rate(earlier: (DateTime<Utc>, i64), later: (DateTime<Utc>, i64)) -> f64 {
    let seconds = (later.0 - earlier.0).num_milliseconds() as f64 / 1000.0;
    if seconds <= 0.0 || later.1 < earlier.1 {
        return 0.0;
    }
    (later.1 - earlier.1) as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(at: DateTime<Utc>, head: i64) -> Reading {
        Reading {
            at,
            head,
            sinks: vec![],
            followers: vec![],
            dead_letters: BTreeMap::new(),
            verdict: Verdict::new(BTreeMap::new()),
        }
    }

    #[test]
    fn the_ring_keeps_only_the_last_fifteen_minutes() {
        let history = History::default();
        let start = Utc::now();
        for minute in 0..20 {
            history.push(reading(start + chrono::Duration::minutes(minute), minute));
        }
        let kept: Vec<i64> = history.readings().iter().map(|r| r.head).collect();
        assert_eq!(kept, (4..20).collect::<Vec<_>>());
        assert_eq!(history.latest().unwrap().head, 19);
    }

    #[tokio::test]
    async fn subscribers_get_each_new_reading() {
        let history = History::default();
        let mut rx = history.subscribe();
        history.push(reading(Utc::now(), 7));
        assert_eq!(rx.recv().await.unwrap().head, 7);
    }

    #[test]
    fn a_rate_is_per_second_and_never_negative() {
        let t = Utc::now();
        let later = t + chrono::Duration::milliseconds(2_000);
        assert_eq!(rate((t, 10), (later, 30)), 10.0);
        assert_eq!(rate((t, 30), (later, 10)), 0.0);
        assert_eq!(rate((t, 10), (t, 30)), 0.0);
    }
}
