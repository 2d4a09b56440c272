//! Latency histograms and the comparison table.

use std::time::Duration;

use hdrhistogram::Histogram;

/// One measured run: how many events in how long, and each request's latency.
pub struct Sample {
    pub events: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
}

impl Sample {
    pub fn new_histogram() -> Histogram<u64> {
        Histogram::new_with_bounds(1, 60_000_000, 3).expect("static histogram bounds are valid")
    }

    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    fn ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// `p50/p99/p999` in milliseconds.
    pub fn percentiles(&self) -> String {
        format!(
            "{:.2}/{:.2}/{:.2}",
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999)
        )
    }
}

pub fn header() -> String {
    format!(
        "{:<10} {:>5} {:>12} {:>12} {:>6}   {:<22} {:<22}",
        "producers",
        "batch",
        "keel ev/s",
        "raw ev/s",
        "ratio",
        "keel p50/p99/p999 ms",
        "raw p50/p99/p999 ms"
    )
}

pub fn row(producers: usize, batch: usize, keel: &Sample, raw: &Sample) -> String {
    format!(
        "{:<10} {:>5} {:>12.0} {:>12.0} {:>6.2}   {:<22} {:<22}",
        producers,
        batch,
        keel.events_per_sec(),
        raw.events_per_sec(),
        keel.events_per_sec() / raw.events_per_sec(),
        keel.percentiles(),
        raw.percentiles()
    )
}
