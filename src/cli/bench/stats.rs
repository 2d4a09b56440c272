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

/// Columns: keel (validating payloads), keel with trace export on, keel without
/// authentication, also without validation, the raw baseline; keel/raw, then the prices of
/// tracing (traced/keel), authentication (keel/no-auth) and validation (no-auth/no-val); then
/// latencies.
pub fn header() -> String {
    format!(
        "{:<9} {:>5} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9}   {:<22} {:<22} {:<22} {:<22} {:<22}",
        "producers",
        "batch",
        "keel ev/s",
        "traced",
        "no-auth",
        "no-val",
        "raw ev/s",
        "keel/raw",
        "trace/off",
        "auth/off",
        "val cost",
        "keel p50/p99/p999 ms",
        "traced p50/p99/p999",
        "no-auth p50/p99/p999",
        "no-val p50/p99/p999",
        "raw p50/p99/p999 ms"
    )
}

/// One result line. `keel` authenticates with an API key; `traced` is the same keel with trace
/// export on (every trace sampled); `open` is keel with authentication off; `unvalidated` also
/// skips payload validation.
pub struct Row {
    pub keel: Sample,
    pub traced: Sample,
    pub open: Sample,
    pub unvalidated: Sample,
    pub raw: Sample,
}

impl Row {
    /// `trace/off` is the traced rate over keel's (the price of tracing), `auth/off` keel's over
    /// `open`'s (the price of authentication), `val cost` `open`'s over `unvalidated`'s.
    pub fn show(&self, producers: usize, batch: usize) -> String {
        let Row {
            keel,
            traced,
            open,
            unvalidated,
            raw,
        } = self;
        format!(
            "{:<9} {:>5} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>8.2} {:>9.2} {:>9.2} {:>9.2}   {:<22} {:<22} {:<22} {:<22} {:<22}",
            producers,
            batch,
            keel.events_per_sec(),
            traced.events_per_sec(),
            open.events_per_sec(),
            unvalidated.events_per_sec(),
            raw.events_per_sec(),
            keel.events_per_sec() / raw.events_per_sec(),
            traced.events_per_sec() / keel.events_per_sec(),
            keel.events_per_sec() / open.events_per_sec(),
            open.events_per_sec() / unvalidated.events_per_sec(),
            keel.percentiles(),
            traced.percentiles(),
            open.percentiles(),
            unvalidated.percentiles(),
            raw.percentiles()
        )
    }
}
