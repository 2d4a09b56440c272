//! Runs a projection live from Kafka, exactly once.
//!
//! Records are applied in batches (up to `batch_size`, gathered for at most `linger`). Each batch
//! is one PostgreSQL transaction that:
//! 1. takes the projection's `projections` row `FOR SHARE` (a rebuild's swap takes it `FOR
//!    UPDATE`, so a batch never straddles a swap);
//! 2. takes a transaction-scoped advisory lock per partition in the batch and checks that each
//!    still starts where this runner believes it does (its `projection_offsets` row). If another runner moved it (after a
//!    rebalance), those records are dropped and the partition is re-read from the stored offset;
//! 3. applies the events through [`super::apply_once`] (which skips any event at or below its
//!    aggregate's applied version), then stores the next offsets, and commits.
//!
//! Kafka's committed offsets are never used: on assignment the runner seeks to the stored ones.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};

use rdkafka::{ClientContext, Offset};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;

mod offsets;

use super::{apply_once, live_schema, ApplyContext, Projection};
use crate::consumer::client::{self, StartAt};
use crate::consumer::decode::Decoder;
use crate::consumer::record::Record;
use crate::heartbeat::{Beat, Stages};
use crate::model::RecordedEvent;
use crate::registry::Registry;
use crate::retry::RetryPolicy;
use crate::telemetry::{self, messaging};

#[derive(Debug, Clone)]
pub struct RunnerOptions {
    pub batch_size: usize,
    /// How long a batch waits for more records once it has one.
    pub linger: Duration,
    /// Raw librdkafka consumer settings, applied last.
    pub properties: BTreeMap<String, String>,
    /// How often the runner's heartbeat is written (see [`crate::heartbeat`]).
    pub beat_every: Duration,
    /// The process's stages, which the runner joins once its beat starts (for its readiness).
    pub stages: Option<Stages>,
    /// Stop with an error naming the gap when a partition's records between the stored offset
    /// and the first one fetched are gone (retention), instead of going on past them. Sagas stop;
    /// projections go on and say to rebuild.
    pub stop_on_gap: bool,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            batch_size: 5000,
            linger: Duration::from_millis(20),
            properties: BTreeMap::new(),
            beat_every: crate::heartbeat::DEFAULT_EVERY,
            stages: None,
            stop_on_gap: false,
        }
    }
}

/// The consumer group a projection's runners share.
pub fn group_of(projection: &dyn Projection) -> String {
    format!("keel-projection-{}", projection.name())
}

/// Runs `projection` from `topics` until `shutdown` resolves. Several runners of one projection
/// (in one process or many) share its partitions through the consumer group.
pub async fn run(
    pool: PgPool,
    registry: Arc<Registry>,
    brokers: &str,
    topics: &[String],
    projection: Arc<dyn Projection>,
    options: RunnerOptions,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    super::ensure(&pool, projection.as_ref()).await?;
    let (resets_tx, mut resets) = mpsc::unbounded_channel();
    let group = group_of(projection.as_ref());
    let config = client::config(
        brokers,
        &group,
        &group,
        StartAt::Beginning,
        &options.properties,
    );
    let consumer: StreamConsumer<Resets> =
        crate::kafka::create_with_context(&config, Resets(resets_tx))
            .context("creating the projection's Kafka consumer")?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let beat = Beat::start(
        pool.clone(),
        format!("projection.{}", projection.name()),
        crate::heartbeat::process_name(),
        serde_json::json!({ "topics": topics }),
        options.beat_every,
    );
    if let Some(stages) = &options.stages {
        stages.join(&beat);
    }
    let lane = beat.lane();
    let mut beating = tokio::time::interval(options.beat_every);
    let mut runner = Runner {
        pool,
        decoder: Decoder::new(registry),
        schema: live_schema(projection.name()),
        projection,
        consumer: Arc::new(consumer),
        parts: HashMap::new(),
        stop_on_gap: options.stop_on_gap,
    };
    tracing::info!(
        projection = runner.projection.name(),
        ?topics,
        "projection runner started"
    );
    tokio::pin!(shutdown);
    let mut report = tokio::time::interval(Duration::from_secs(5));
    loop {
        lane.tick();
        let mut batch = Vec::new();
        tokio::select! {
            _ = &mut shutdown => break,
            _ = beating.tick() => continue,
            _ = report.tick() => { runner.report_lag().await; continue; }
            m = runner.consumer.recv() => match m {
                Ok(m) => { let r = Record::from_message(&m); drop(m); runner.take(r, &mut resets, &mut batch).await? }
                Err(e) => { tracing::warn!(error = %e, "kafka consumer error"); continue; }
            },
        }
        let deadline = Instant::now() + options.linger;
        while batch.len() < options.batch_size {
            match tokio::time::timeout_at(deadline, runner.consumer.recv()).await {
                Ok(Ok(m)) => {
                    let r = Record::from_message(&m);
                    drop(m);
                    runner.take(r, &mut resets, &mut batch).await?;
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "kafka consumer error"),
                Err(_) => break,
            }
        }
        let mut failures = BATCH_RETRY.backoff();
        let busy = lane.busy();
        while !batch.is_empty() {
            match runner.apply(&mut batch).await {
                Ok(()) => failures.succeeded(),
                Err(e) => {
                    tracing::warn!(projection = runner.projection.name(), error = %format!("{e:#}"), "projection batch failed; retrying");
                    runner.mark_failing(&e).await;
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(failures.failed()) => {}
                    }
                }
            }
        }
        drop(busy);
    }
    runner.consumer.unsubscribe();
    drop(beat);
    tracing::info!(
        projection = runner.projection.name(),
        "projection runner stopped"
    );
    Ok(())
}

/// How a failed batch is retried: until it succeeds or the runner stops. Every failure is
/// shown as the projection's `failing` state.
const BATCH_RETRY: RetryPolicy =
    RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(30));
/// How reading a partition's stored offset is retried: until it succeeds.
const OFFSET_RETRY: RetryPolicy = BATCH_RETRY;

/// A topic and partition.
type Place = (String, i32);

/// What the runner knows of one partition.
struct Part {
    /// The next offset stored in PostgreSQL (`None`: no row yet).
    stored: Option<i64>,
    /// The next offset expected from the fetch; earlier records are stale (before a seek).
    next: i64,
}

struct Runner {
    pool: PgPool,
    decoder: Decoder,
    projection: Arc<dyn Projection>,
    consumer: Arc<StreamConsumer<Resets>>,
    parts: HashMap<Place, Part>,
    schema: String,
    stop_on_gap: bool,
}

impl Runner {
    /// Adds a record to the batch, unless it is before the partition's stored offset (then the
    /// fetch is moved there).
    async fn take(
        &mut self,
        r: Record,
        resets: &mut mpsc::UnboundedReceiver<Vec<(String, i32)>>,
        batch: &mut Vec<Record>,
    ) -> anyhow::Result<()> {
        while let Ok(list) = resets.try_recv() {
            for p in list {
                self.parts.remove(&p);
            }
        }
        let key = (r.topic.clone(), r.partition);
        if !self.parts.contains_key(&key) {
            let stored = OFFSET_RETRY
                .retry(
                    || offsets::stored(&self.pool, self.projection.name(), &r.topic, r.partition),
                    |e, _| {
                        tracing::warn!(error = %format!("{e:#}"), "cannot read a projection offset; retrying");
                        ControlFlow::Continue(())
                    },
                )
                .await?;
            let next = match stored {
                Some(s) if r.offset < s => {
                    self.seek(&r.topic, r.partition, Offset::Offset(s)).await;
                    s
                }
                Some(s) if r.offset > s && self.stop_on_gap => {
                    anyhow::bail!(
                        "{} partition {}: records {s} to {} are gone from Kafka (retention?) and were never applied; {} stops rather than skip them",
                        r.topic, r.partition, r.offset - 1, self.projection.name()
                    );
                }
                Some(s) if r.offset > s => {
                    tracing::warn!(topic = %r.topic, partition = r.partition, stored = s, first = r.offset,
                        "records between the stored offset and the first one fetched are gone (retention?); rebuild the projection from the store");
                    r.offset
                }
                _ => r.offset,
            };
            self.parts.insert(key.clone(), Part { stored, next });
        }
        let part = self.parts.get_mut(&key).expect("inserted above");
        if r.offset < part.next {
            return Ok(());
        }
        part.next = r.offset + 1;
        batch.push(r);
        Ok(())
    }

    /// Shows a failed batch as the projection's state. Best effort: the batch is retried either
    /// way, and the next success sets the state back to `running`.
    async fn mark_failing(&self, error: &anyhow::Error) {
        let name = self.projection.name();
        if let Err(e) = offsets::mark_failing(&self.pool, name, &format!("{error:#}")).await {
            tracing::debug!(error = %e, "cannot mark the projection failing");
        }
    }

    /// Moves a partition's fetch position. librdkafka's seek blocks for up to its time-out, so it
    /// runs off the runtime's threads, as the watermark lookups do; the runner waits for it
    /// before taking the next record, as before.
    async fn seek(&self, topic: &str, partition: i32, offset: Offset) {
        let consumer = self.consumer.clone();
        let owned = topic.to_owned();
        let sought = tokio::task::spawn_blocking(move || {
            consumer.seek(&owned, partition, offset, Duration::from_secs(10))
        })
        .await;
        match sought {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, topic, partition, "seek failed"),
            Err(e) => tracing::warn!(error = %e, topic, partition, "seek task failed"),
        }
    }

    /// Applies a batch in one transaction (see the module docs). Records of partitions another
    /// runner has moved on are removed from `batch` and the rest is left for another call; after
    /// success `batch` is empty; on error `batch` is kept for a retry.
    #[tracing::instrument(skip_all, fields(
        keel.projection = self.projection.name(),
        messaging.system = "kafka",
        messaging.operation.name = "process",
        messaging.batch.message_count = batch.len(),
        db.system = "postgresql",
    ))]
    async fn apply(&mut self, batch: &mut Vec<Record>) -> anyhow::Result<()> {
        // With trace export on, each record with trace context gets a `process <topic>` span
        // in its event's trace, for this attempt at the batch; the batch's own span covers the rest.
        let spans: Vec<tracing::Span> = if telemetry::enabled() {
            let group = group_of(self.projection.as_ref());
            batch
                .iter()
                .map(|r| {
                    let received = messaging::Received {
                        topic: &r.topic,
                        partition: r.partition,
                        offset: r.offset,
                        key: &r.key,
                        headers: &r.headers,
                        group: &group,
                    };
                    messaging::process(received, messaging::Untraced::Skip)
                })
                .collect()
        } else {
            Vec::new()
        };
        let applied = self.apply_batch(batch).await;
        if let Err(e) = &applied {
            let kind = if e.is::<sqlx::Error>() {
                "database"
            } else {
                "apply"
            };
            for span in &spans {
                messaging::failed(span, kind);
            }
        }
        applied
    }

    /// [`Runner::apply`]'s transaction.
    async fn apply_batch(&mut self, batch: &mut Vec<Record>) -> anyhow::Result<()> {
        let name = self.projection.name();
        let events = self.decode(batch).await?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM projections WHERE name = $1 FOR SHARE")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let mut last: BTreeMap<Place, i64> = BTreeMap::new();
        for r in batch.iter() {
            last.insert((r.topic.clone(), r.partition), r.offset);
        }
        let stored = offsets::lock(&mut tx, name, &last).await?;
        let fenced: Vec<Place> = last
            .keys()
            .filter(|k| stored.get(*k).copied() != self.parts.get(*k).and_then(|p| p.stored))
            .cloned()
            .collect();
        if !fenced.is_empty() {
            tx.rollback().await?;
            tracing::info!(projection = name, partitions = ?fenced, "another runner moved these partitions; re-reading them from the stored offsets");
            for k in &fenced {
                self.parts.remove(k);
                let to = stored
                    .get(k)
                    .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                self.seek(&k.0, k.1, to).await;
            }
            batch.retain(|r| !fenced.contains(&(r.topic.clone(), r.partition)));
            return Ok(());
        }
        // The read model and its offsets commit together: a commit lost to a server crash loses
        // both, and the records are applied again. So the commit need not wait for the flush.
        super::run_script(
            &mut tx,
            format!(
                "SET LOCAL search_path TO {}, public; SET LOCAL synchronous_commit = off",
                self.schema
            ),
        )
        .await?;
        let applied = apply_once(
            &mut tx,
            self.projection.as_ref(),
            &events,
            ApplyContext::default(),
        )
        .await?;
        let next: Vec<(Place, i64)> = last.into_iter().map(|(k, o)| (k, o + 1)).collect();
        offsets::store(&mut tx, name, &next, applied, &events).await?;
        tx.commit().await?;
        for (k, next) in next {
            if let Some(part) = self.parts.get_mut(&k) {
                part.stored = Some(next);
            }
        }
        batch.clear();
        Ok(())
    }

    /// The batch's events of the types the projection reads, decoded as the version it reads.
    async fn decode(&self, batch: &[Record]) -> anyhow::Result<Vec<RecordedEvent>> {
        let wanted = self.projection.event_types();
        let mut events: Vec<RecordedEvent> = Vec::new();
        let mut upcaster = self.decoder.upcaster(self.projection.reader());
        for r in batch {
            if r.event_type().is_some_and(|t| wanted.contains(&t)) {
                let event = self
                    .decoder
                    .decode_as(&r.headers, &r.value, Some(&mut upcaster))
                    .await
                    .with_context(|| {
                        format!(
                            "{}/{} offset {} does not decode",
                            r.topic, r.partition, r.offset
                        )
                    })?;
                events.push(event);
            }
        }
        Ok(events)
    }

    /// Stores how many records the runner's partitions are behind their high watermarks.
    async fn report_lag(&self) {
        let stored: Vec<(String, i32, i64)> = self
            .parts
            .iter()
            .map(|((t, p), part)| (t.clone(), *p, part.stored.unwrap_or(0)))
            .collect();
        // Watermark lookups block: keep them off the runtime's threads.
        let consumer = self.consumer.clone();
        let lag = tokio::task::spawn_blocking(move || {
            stored
                .iter()
                .filter_map(|(topic, partition, next)| {
                    let (_, high) = consumer
                        .fetch_watermarks(topic, *partition, Duration::from_secs(2))
                        .ok()?;
                    Some((high - next).max(0))
                })
                .sum::<i64>()
        })
        .await
        // Only a panicked lookup fails here: no lag is reported this time.
        .unwrap_or(0);
        let stored = offsets::store_lag(&self.pool, self.projection.name(), lag).await;
        if let Err(e) = stored {
            // The shown lag stays as it was until the next report.
            tracing::debug!(error = %e, "cannot store the projection's lag");
        }
    }
}

/// Forgets what the runner knew of partitions on every assignment change, so that a partition
/// assigned again is read from its stored offset.
struct Resets(mpsc::UnboundedSender<Vec<(String, i32)>>);

impl ClientContext for Resets {}

impl ConsumerContext for Resets {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let tpl = match rebalance {
            Rebalance::Assign(tpl) | Rebalance::Revoke(tpl) => tpl,
            Rebalance::Error(_) => return,
        };
        let parts = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        // Fails only once the runner has stopped: then there is nothing left to forget.
        let _ = self.0.send(parts);
    }
}
