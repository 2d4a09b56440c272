//! Metrics: every name keel exports, in one place, and the Prometheus exporter behind
//! `GET /metrics`. Label values are bounded sets, never ids.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Append requests by `outcome`: `created`, `replayed`, `conflict`, `rejected` (other 4xx),
/// `unavailable` (503), `error` (500).
pub const APPEND_REQUESTS: &str = "keel_append_requests_total";
/// Events written by appends (replays and refusals not counted).
pub const APPEND_EVENTS: &str = "keel_append_events_total";
/// Time from receiving an append to replying, whatever the outcome.
pub const APPEND_SECONDS: &str = "keel_append_duration_seconds";
/// Appends that shared one transaction and commit (group commit).
pub const GROUP_COMMIT_REQUESTS: &str = "keel_group_commit_batch_requests";
/// Age of the oldest write transaction open anywhere on keel's PostgreSQL server. The log (and
/// every reader that follows it) waits for it: when this grows, delivery is delayed by that much.
/// Needs the `pg_read_all_stats` role to see other users' transactions.
pub const LOG_HORIZON_AGE: &str = "keel_log_horizon_age_seconds";
/// Outbox rows a sink has not passed yet, over the partitions this relay holds (sum over relays).
pub const OUTBOX_BACKLOG: &str = "keel_outbox_backlog";
/// Age of the oldest of those rows: how far behind the sink is.
pub const OUTBOX_OLDEST_AGE: &str = "keel_outbox_oldest_age_seconds";
/// Rows parked (waiting for `keel outbox retry|skip`) or held behind them.
pub const OUTBOX_PARKED: &str = "keel_outbox_parked";
/// Rows a sink acknowledged, by `sink`.
pub const RELAY_PUBLISHED: &str = "keel_relay_published_total";
/// Failed publishes by `sink`, `class` (`retriable`, `permanent`) and `kind` (see the error tables).
pub const RELAY_ERRORS: &str = "keel_relay_errors_total";
/// Time from commit to the sink's acknowledgement, for the newest row of the last round.
pub const RELAY_LAG: &str = "keel_relay_lag_seconds";
/// Relay partitions this process holds a lease on.
pub const RELAY_PARTITIONS: &str = "keel_relay_partitions_owned";

/// Records a consumer group's handler saw, by `group` and `outcome` (`handled`, `retriable`,
/// `permanent`).
pub const CONSUMER_HANDLED: &str = "keel_consumer_handled_total";
/// A consumer group's open dead-letter rows (parked, held or waiting for redelivery), by `group`.
pub const DLQ_DEPTH: &str = "keel_dlq_depth";
/// Age of the group's oldest open dead-letter row, by `group`.
pub const DLQ_OLDEST_AGE: &str = "keel_dlq_oldest_age_seconds";
/// Parked records that could not be mirrored to their `.dlq` topic.
pub const DLQ_MIRROR_ERRORS: &str = "keel_dlq_mirror_errors_total";

/// Installs the process-wide recorder once and returns its handle; later calls return the same
/// handle (several keel instances in one process, as in tests, share it). `None` when the
/// embedding program installed a recorder of its own: keel's metrics then go to that one.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(APPEND_SECONDS.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(GROUP_COMMIT_REQUESTS.into()), &batch))
                .expect("static, non-empty buckets")
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "another metrics recorder is installed; /metrics is off"))
                .ok()
        })
        .clone()
}
