//! A running job's progress between its work and its writer: the work's progress view
//! ([`Meter::view`]) stores the figures, the writer reads them once a second ([`Meter::read`])
//! and measures the rate over the last few reads ([`Rate`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::replay::progress::{Snapshot, View};
use crate::store::LogCursor;

/// The work's progress, as the writer reads it.
#[derive(Default)]
pub(super) struct Meter {
    done: AtomicU64,
    total: Mutex<Option<u64>>,
    cursor: Mutex<Option<LogCursor>>,
}

impl Meter {
    /// The view of a new [`crate::replay::progress::Progress`] of the work, expecting `total`:
    /// its count starts again from 0.
    pub(super) fn view(self: &Arc<Self>, total: Option<u64>) -> Box<dyn View> {
        self.done.store(0, Ordering::Relaxed);
        // Poisoned only by a panic mid-store of a Copy value: still valid.
        *self.total.lock().unwrap_or_else(|e| e.into_inner()) = total;
        Box::new(Gauge(self.clone()))
    }

    pub(super) fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// The figures for a write of the row, with `rate`.
    pub(super) fn read(&self, rate: Option<f64>) -> Reading {
        Reading {
            done: self.done.load(Ordering::Relaxed),
            total: *self.total.lock().unwrap_or_else(|e| e.into_inner()),
            rate,
            cursor: *self.cursor.lock().unwrap_or_else(|e| e.into_inner()),
        }
    }
}

/// The figures one write of the row carries.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reading {
    pub done: u64,
    pub total: Option<u64>,
    pub rate: Option<f64>,
    pub cursor: Option<LogCursor>,
}

/// The view a job's progress goes to: the meter, and the log for the service's operators.
struct Gauge(Arc<Meter>);

impl Gauge {
    fn record(&self, at: &Snapshot<'_>) {
        self.0.done.store(at.done, Ordering::Relaxed);
        if at.cursor.is_some() {
            *self.0.cursor.lock().unwrap_or_else(|e| e.into_inner()) = at.cursor;
        }
    }
}

impl View for Gauge {
    fn advanced(&self, at: &Snapshot<'_>) {
        self.record(at);
    }

    fn note(&self, at: &Snapshot<'_>, message: &str) {
        tracing::info!("{}: {message}", at.label);
    }

    fn finished(&self, at: &Snapshot<'_>, message: &str) {
        self.record(at);
        tracing::info!(done = at.done, total = at.total, "{}; {message}", at.line());
    }
}

/// Events per second over the last [`Rate::WINDOW`] samples, one sample per write.
pub(super) struct Rate(VecDeque<(Instant, u64)>);

impl Rate {
    const WINDOW: usize = 10;

    pub(super) fn new() -> Self {
        Self(VecDeque::from([(Instant::now(), 0)]))
    }

    /// The rate with `done` counted at `at`.
    pub(super) fn sample(&mut self, at: Instant, done: u64) -> Option<f64> {
        // A new count (a second phase of the work) starts the window over.
        if self.0.back().is_some_and(|(_, d)| done < *d) {
            self.0.clear();
        }
        self.0.push_back((at, done));
        if self.0.len() > Self::WINDOW {
            self.0.pop_front();
        }
        let (&(t0, d0), &(t1, d1)) = (self.0.front()?, self.0.back()?);
        let seconds = t1.duration_since(t0).as_secs_f64();
        (seconds > 0.0).then(|| (d1 - d0) as f64 / seconds)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_rate_is_over_the_last_ten_writes_and_a_new_count_starts_it_over() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut rate = Rate(VecDeque::from([(t0, 0)]));
        assert_eq!(rate.sample(t0, 0), None);
        assert_eq!(rate.sample(at(1), 100), Some(100.0));
        for s in 2..=20 {
            rate.sample(at(s), 100 + (s - 1) * 10);
        }
        // The fast first second has left the window: 10 a second since.
        assert_eq!(rate.sample(at(21), 300), Some(10.0));
        assert_eq!(rate.sample(at(22), 5), None);
        assert_eq!(rate.sample(at(24), 45), Some(20.0));
    }
}
