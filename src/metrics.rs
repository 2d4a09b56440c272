//! Metrics: every name keel exports, in one place, and the Prometheus exporter behind
//! `GET /metrics`. Label values are bounded sets, never ids.
//!
//! Every name is also in [`DESCRIPTIONS`] with its kind, unit and help text; [`describe`] hands
//! those to the installed recorder (a test checks that no name is left out).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Append requests by `outcome`: `created`, `replayed`, `conflict`, `rejected` (other 4xx),
/// `unavailable` (503), `error` (500).
pub const APPEND_REQUESTS: &str = "keel_append_requests_total";
/// Events written by appends (replays and refusals not counted).
pub const APPEND_EVENTS: &str = "keel_append_events_total";
/// Time from receiving an append to replying, whatever the outcome.
pub const APPEND_SECONDS: &str = "keel_append_duration_seconds";
/// Requests refused with 429 by `limit`: `requests` and `events` (per principal), `failed_auth`
/// (per peer address). Each process counts its own refusals against its own buckets.
pub const RATE_LIMITED: &str = "keel_rate_limited_total";
/// HTTP connections open on this process's listeners. At `api.max_connections` a listener stops
/// accepting and new connections wait, so a value pinned at the limit means clients are queueing.
pub const HTTP_CONNECTIONS: &str = "keel_http_connections_open";
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
/// Requests whose credential was refused, by `reason` (`missing`, `malformed`, `unknown_key`,
/// `wrong_secret`, `revoked`, `expired`, `principal_disabled`, `token_*`), and requests an
/// authenticated caller was not allowed to make (`reason="forbidden"`). Counted, never one log
/// row each: failed logins are not audited one by one.
pub const AUTH_REFUSED: &str = "keel_auth_refused_total";

// The pipeline monitor's readings (src/health/): every keel process samples the whole pipeline
// from PostgreSQL and exports what it saw, so these are the same on every process (take `max`).

/// Each pipeline component's verdict, by `component` (`relay.kafka`, `projection.<name>`,
/// `group.<id>`, `canary.redis`, ...): 0 ok, 1 degraded, 2 unhealthy.
pub const PIPELINE_STATUS: &str = "keel_pipeline_status";
/// The newest position in the event store (the head every stage downstream follows).
pub const STORE_HEAD: &str = "keel_store_head_position";
/// The furthest log position a relay sink has passed, by `sink`.
pub const RELAY_POSITION: &str = "keel_relay_position";
/// Age of the oldest outbox row a sink has not passed, over all partitions, by `sink`.
pub const UNDELIVERED_AGE: &str = "keel_outbox_undelivered_age_seconds";
/// Age of a stage's freshest loop heartbeat, by `component`: how long since any process running
/// it last showed its loop turning (it beats even when idle).
pub const HEARTBEAT_AGE: &str = "keel_stage_heartbeat_age_seconds";
/// Messages a consumer group (or a projection's group) has yet to commit, by `group`, `topic`
/// and `partition`.
pub const CONSUMER_LAG: &str = "keel_consumer_lag_messages";
/// How long since a group's committed offset last reached the partition's end, by `group`,
/// `topic` and `partition` (0 while caught up).
pub const CONSUMER_LAG_SECONDS: &str = "keel_consumer_lag_seconds";
/// A projection's stored checkpoint (next offset), by `projection`, `topic` and `partition`.
pub const PROJECTION_CHECKPOINT: &str = "keel_projection_checkpoint";
/// Time since the newest canary seen on a sink was written, by `sink`.
pub const CANARY_AGE: &str = "keel_canary_age_seconds";
/// Time from writing the newest canary to seeing it on the sink, by `sink`.
pub const CANARY_LATENCY: &str = "keel_canary_latency_seconds";
/// Spans the trace exporter dropped (queue full or export failed).
pub const OTEL_DROPPED_SPANS: &str = "keel_otel_dropped_spans_total";
/// Incoming `traceparent`/`tracestate` request headers ignored as invalid, by `header`.
pub const TRACE_CONTEXT_INVALID: &str = "keel_trace_context_invalid_total";
/// Events written to archive segments, by `event_type`.
pub const ARCHIVED_EVENTS: &str = "keel_archive_events_total";
/// Archive segments that failed a check (`keel archive verify`, or the purge's own).
pub const ARCHIVE_VERIFY_FAILURES: &str = "keel_archive_verify_failures_total";
/// Events deleted from the store by the guarded purge, by `event_type`.
pub const PURGED_EVENTS: &str = "keel_retention_purged_total";
/// The position of a type's retention horizon, by `event_type`: below it, events may be only in
/// the archive.
pub const RETENTION_HORIZON: &str = "keel_retention_horizon_position";
/// Reads refused because they started below a retention horizon (HTTP 410), by `event_type`.
pub const READS_ARCHIVED: &str = "keel_reads_position_archived_total";
/// Saga steps by `saga`, `input` (`event`, `timeout`, `redrive`) and `outcome` (`stepped`,
/// `held`, `parked`, `unmatched`, `after_end`, `before_start`: created before the saga was first
/// deployed).
pub const SAGA_STEPS: &str = "keel_saga_steps_total";
/// Time to decide and write one saga step, in its transaction.
pub const SAGA_STEP_SECONDS: &str = "keel_saga_step_duration_seconds";
/// Saga instances by `saga` and `status` (`parked` ones wait for `keel saga retry|skip`).
pub const SAGA_INSTANCES: &str = "keel_saga_instances";
/// Pending saga timeouts, by `saga`.
pub const SAGA_TIMEOUTS_PENDING: &str = "keel_saga_timeouts_pending";
/// Saga timeouts past their due time and not yet fired, by `saga`: non-zero for long means no
/// runner is firing them.
pub const SAGA_TIMEOUTS_OVERDUE: &str = "keel_saga_timeouts_overdue";
/// How late each saga timeout fired after its due time (PostgreSQL's clock), by `saga`.
pub const SAGA_TIMEOUT_LATENESS: &str = "keel_saga_timeout_lateness_seconds";
/// Saga inputs that found no instance and could not start one, by `saga` and `event_type`.
pub const SAGA_UNMATCHED: &str = "keel_saga_unmatched_total";

/// What a metric is, for [`describe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metric's kind, unit and the help text exporters show.
#[derive(Debug, Clone, Copy)]
pub struct Description {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Unit,
    pub help: &'static str,
}

const fn counter(name: &'static str, unit: Unit, help: &'static str) -> Description {
    let kind = Kind::Counter;
    Description {
        name,
        kind,
        unit,
        help,
    }
}

const fn gauge(name: &'static str, unit: Unit, help: &'static str) -> Description {
    let kind = Kind::Gauge;
    Description {
        name,
        kind,
        unit,
        help,
    }
}

const fn histogram(name: &'static str, unit: Unit, help: &'static str) -> Description {
    let kind = Kind::Histogram;
    Description {
        name,
        kind,
        unit,
        help,
    }
}

/// Every metric keel exports (the constants above say more).
pub const DESCRIPTIONS: &[Description] = &[
    counter(
        SAGA_STEPS,
        Unit::Count,
        "saga steps by saga, input and outcome",
    ),
    histogram(
        SAGA_STEP_SECONDS,
        Unit::Seconds,
        "time to decide and write one saga step",
    ),
    gauge(SAGA_INSTANCES, Unit::Count, "saga instances by status"),
    gauge(SAGA_TIMEOUTS_PENDING, Unit::Count, "pending saga timeouts"),
    gauge(
        SAGA_TIMEOUTS_OVERDUE,
        Unit::Count,
        "saga timeouts past due and not yet fired",
    ),
    histogram(
        SAGA_TIMEOUT_LATENESS,
        Unit::Seconds,
        "how late saga timeouts fired after their due time",
    ),
    counter(
        SAGA_UNMATCHED,
        Unit::Count,
        "saga inputs that found no instance and could not start one",
    ),
    counter(APPEND_REQUESTS, Unit::Count, "append requests by outcome"),
    counter(APPEND_EVENTS, Unit::Count, "events written by appends"),
    histogram(
        APPEND_SECONDS,
        Unit::Seconds,
        "time from receiving an append to replying",
    ),
    counter(
        RATE_LIMITED,
        Unit::Count,
        "requests refused over a rate limit, by limit",
    ),
    gauge(
        HTTP_CONNECTIONS,
        Unit::Count,
        "HTTP connections open on this process's listeners",
    ),
    histogram(
        GROUP_COMMIT_REQUESTS,
        Unit::Count,
        "appends that shared one commit",
    ),
    gauge(
        LOG_HORIZON_AGE,
        Unit::Seconds,
        "age of the oldest open write transaction",
    ),
    gauge(
        OUTBOX_BACKLOG,
        Unit::Count,
        "outbox rows a sink has not passed yet",
    ),
    gauge(
        OUTBOX_OLDEST_AGE,
        Unit::Seconds,
        "age of the oldest row a sink has not passed",
    ),
    gauge(
        OUTBOX_PARKED,
        Unit::Count,
        "outbox rows parked or held behind them",
    ),
    counter(
        RELAY_PUBLISHED,
        Unit::Count,
        "outbox rows a sink acknowledged, by sink",
    ),
    counter(
        RELAY_ERRORS,
        Unit::Count,
        "failed publishes by sink, class and kind",
    ),
    gauge(
        RELAY_LAG,
        Unit::Seconds,
        "time from commit to acknowledgement",
    ),
    gauge(
        RELAY_PARTITIONS,
        Unit::Count,
        "relay partitions this process leases",
    ),
    counter(
        CONSUMER_HANDLED,
        Unit::Count,
        "records a handler saw, by group and outcome",
    ),
    gauge(DLQ_DEPTH, Unit::Count, "a group's open dead-letter rows"),
    gauge(
        DLQ_OLDEST_AGE,
        Unit::Seconds,
        "age of a group's oldest open dead-letter row",
    ),
    counter(
        DLQ_MIRROR_ERRORS,
        Unit::Count,
        "parked records not mirrored to .dlq",
    ),
    counter(
        AUTH_REFUSED,
        Unit::Count,
        "requests refused for their credential or grants",
    ),
    gauge(
        PIPELINE_STATUS,
        Unit::Count,
        "pipeline component verdict: 0 ok, 1 degraded, 2 unhealthy",
    ),
    gauge(
        STORE_HEAD,
        Unit::Count,
        "newest position in the event store",
    ),
    gauge(
        RELAY_POSITION,
        Unit::Count,
        "furthest log position a sink has passed",
    ),
    gauge(
        UNDELIVERED_AGE,
        Unit::Seconds,
        "age of the oldest outbox row a sink has not passed, all partitions",
    ),
    gauge(
        HEARTBEAT_AGE,
        Unit::Seconds,
        "age of a stage's freshest loop heartbeat",
    ),
    gauge(
        CONSUMER_LAG,
        Unit::Count,
        "messages a group has yet to commit, by partition",
    ),
    gauge(
        CONSUMER_LAG_SECONDS,
        Unit::Seconds,
        "time since a group's committed offset last reached the partition end",
    ),
    gauge(
        PROJECTION_CHECKPOINT,
        Unit::Count,
        "a projection's stored next offset, by partition",
    ),
    gauge(
        CANARY_AGE,
        Unit::Seconds,
        "time since the newest canary seen on a sink was written",
    ),
    gauge(
        CANARY_LATENCY,
        Unit::Seconds,
        "time from writing a canary to seeing it on a sink",
    ),
    counter(
        OTEL_DROPPED_SPANS,
        Unit::Count,
        "spans the trace exporter dropped",
    ),
    counter(
        TRACE_CONTEXT_INVALID,
        Unit::Count,
        "invalid trace context request headers ignored",
    ),
    counter(
        ARCHIVED_EVENTS,
        Unit::Count,
        "events written to archive segments",
    ),
    counter(
        ARCHIVE_VERIFY_FAILURES,
        Unit::Count,
        "archive segments that failed a check",
    ),
    counter(
        PURGED_EVENTS,
        Unit::Count,
        "events deleted by the guarded purge",
    ),
    gauge(
        RETENTION_HORIZON,
        Unit::Count,
        "position of a type's retention horizon",
    ),
    counter(
        READS_ARCHIVED,
        Unit::Count,
        "reads refused below a retention horizon",
    ),
];

/// Describes every metric to the installed recorder: keel's ([`install`]) or the embedding
/// program's. Call it once, after the recorder is installed; descriptions given before are lost.
pub fn describe() {
    for d in DESCRIPTIONS {
        match d.kind {
            Kind::Counter => metrics::describe_counter!(d.name, d.unit, d.help),
            Kind::Gauge => metrics::describe_gauge!(d.name, d.unit, d.help),
            Kind::Histogram => metrics::describe_histogram!(d.name, d.unit, d.help),
        }
    }
}

/// Installs the process-wide recorder once and returns its handle; later calls return the same
/// handle (several keel instances in one process, as in tests, share it). `None` when the
/// embedding program installed a recorder of its own: keel's metrics then go to that one.
pub fn install() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
            let batch = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
            let lateness = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0];
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(APPEND_SECONDS.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(GROUP_COMMIT_REQUESTS.into()), &batch))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SAGA_STEP_SECONDS.into()), &latency))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(SAGA_TIMEOUT_LATENESS.into()), &lateness))
                .expect("static, non-empty buckets")
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "another metrics recorder is installed; /metrics is off"))
                .ok()
                // Descriptions reach only a recorder that is already installed.
                .inspect(|handle| {
                    describe();
                    spawn_upkeep(handle.clone());
                })
        })
        .clone()
}

/// How often keel's recorder folds the histogram samples recorded since into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Name of the thread that does it ([`UPKEEP_EVERY`]).
const UPKEEP_THREAD: &str = "keel-metrics";

/// The exporter holds every histogram sample (a value and its `Instant`, 24 bytes) until a scrape
/// of `/metrics` or an upkeep folds it into its buckets, and `install_recorder` starts no upkeep
/// of its own. With nobody scraping, every append kept two samples forever (its duration and its
/// group commit's size): `keel bench soak --minutes 30 --rate 500` grew by ~30 MiB. A thread
/// rather than a task, so that the recorder needs no runtime and outlives any one of them.
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name(UPKEEP_THREAD.to_owned())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the metrics upkeep thread: histograms grow until /metrics is scraped");
    }
}

#[cfg(test)]
mod tests {
    use super::DESCRIPTIONS;

    /// Without the upkeep thread, histogram samples pile up until someone scrapes `/metrics`
    /// (see [`super::spawn_upkeep`]); the soak benchmark measures what that costs.
    #[test]
    fn installing_the_recorder_starts_the_thread_that_drains_histograms() {
        let upkeeps = || {
            std::fs::read_dir("/proc/self/task")
                .expect("/proc/self/task")
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
                .filter(|name| name.trim() == super::UPKEEP_THREAD)
                .count()
        };
        assert!(
            super::install().is_some(),
            "keel's recorder was not installed"
        );
        // A spawned thread names itself once it runs.
        let named = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while upkeeps() == 0 && std::time::Instant::now() < named {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(upkeeps(), 1, "no upkeep thread after the first install");
        assert!(super::install().is_some());
        assert_eq!(
            upkeeps(),
            1,
            "a second install started a second upkeep thread"
        );
    }

    /// Reads this file's own `pub const NAME: &str = "..."` lines, so a metric added without a
    /// description fails here.
    #[test]
    fn every_metric_name_is_described_once() {
        let names: Vec<&str> = include_str!("metrics.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \""))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        assert!(names.len() >= 16, "found only {names:?}");
        for name in &names {
            let described = DESCRIPTIONS.iter().filter(|d| d.name == *name).count();
            assert_eq!(described, 1, "{name} is described {described} times");
        }
        assert_eq!(
            DESCRIPTIONS.len(),
            names.len(),
            "a description names no constant"
        );
    }
}
