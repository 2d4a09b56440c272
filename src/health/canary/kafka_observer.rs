//! The canary's Kafka observer: reads the canary topic from its end without a consumer group
//! (its partitions are assigned, nothing is ever committed, so no group is left behind on the
//! brokers) and records each canary it sees.
//!
//! Until the relay has created the topic the observer waits for it. A consumer error counts as
//! an outage until the next record arrives; librdkafka reconnects by itself. After a long silence
//! the consumer is made again, so that a topic created again or given more partitions is found.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::PgPool;
use tokio::time::Instant;
use uuid::Uuid;

use super::{decode, pause, record_seen, Outage, Sink};
use crate::config::Config;
use crate::consumer::client::{self, StartAt};
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

pub(super) struct KafkaObserver {
    brokers: String,
    topic: String,
    /// The relay's connection and authentication settings: the observer reads as it writes.
    properties: BTreeMap<String, String>,
    pool: PgPool,
    interval: Duration,
}

/// Why [`KafkaObserver::watch`] returned without an error.
enum Ended {
    Stopped,
    /// Nothing arrived for a long while: make the consumer again.
    Quiet,
}

impl KafkaObserver {
    pub fn new(config: &Config, pool: PgPool, interval: Duration) -> Self {
        Self {
            brokers: config.kafka_brokers.clone(),
            topic: crate::relay::kafka::canary_topic(&config.relay.kafka),
            properties: crate::kafka::connection_settings(&config.relay.kafka.properties),
            pool,
            interval,
        }
    }

    pub async fn run(self, stop: Shutdown) {
        let mut outage = Outage::new("kafka observer");
        let mut backoff = super::reconnect_policy(self.interval).backoff();
        loop {
            match self.watch(&stop, &mut outage, &mut backoff).await {
                Ok(Ended::Stopped) => return,
                Ok(Ended::Quiet) => {
                    tracing::debug!(topic = %self.topic, "no canary on kafka for a while; reading the topic afresh");
                    continue;
                }
                Err(e) => outage.failed(&e),
            }
            if !pause(backoff.failed(), &stop).await {
                return;
            }
        }
    }

    async fn watch(
        &self,
        stop: &Shutdown,
        outage: &mut Outage,
        backoff: &mut Backoff,
    ) -> anyhow::Result<Ended> {
        let group = format!("keel-canary-{}", Uuid::new_v4().simple());
        let config = client::config(
            &self.brokers,
            &group,
            "keel-canary",
            StartAt::End,
            &self.properties,
        );
        let consumer: Arc<StreamConsumer<Quiet>> = Arc::new(
            crate::kafka::create_with_context(&config, Quiet)
                .context("cannot create the kafka consumer")?,
        );
        let partitions = loop {
            if let Some(partitions) = self.partitions(&consumer).await? {
                break partitions;
            }
            // The brokers answered: the topic is not there yet (the relay creates it).
            outage.recovered();
            tracing::debug!(topic = %self.topic, "waiting for the canary topic");
            if !pause(self.interval, stop).await {
                return Ok(Ended::Stopped);
            }
        };
        let mut assignment = TopicPartitionList::new();
        for p in &partitions {
            assignment.add_partition_offset(&self.topic, *p, Offset::End)?;
        }
        consumer
            .assign(&assignment)
            .context("cannot assign the canary topic's partitions")?;
        outage.recovered();
        backoff.succeeded();
        let quiet_after = (self.interval * 10).max(Duration::from_secs(5));
        let mut last = Instant::now();
        loop {
            let received = tokio::select! {
                m = consumer.recv() => m.map(|m| m.payload().and_then(decode)),
                _ = tokio::time::sleep_until(last + quiet_after) => return Ok(Ended::Quiet),
                _ = stop.wait() => return Ok(Ended::Stopped),
            };
            match received {
                Ok(Some((event_id, beat))) => {
                    last = Instant::now();
                    match record_seen(&self.pool, Sink::Kafka, event_id, beat).await {
                        Ok(_) => outage.recovered(),
                        Err(e) => outage
                            .failed(&anyhow::Error::new(e).context("cannot record the canary")),
                    }
                }
                Ok(None) => {
                    last = Instant::now();
                    tracing::debug!(topic = %self.topic, "ignoring a record on the canary topic that is not a canary");
                }
                Err(e) => {
                    outage.failed(&anyhow::Error::new(e).context("kafka consumer error"));
                    if !pause(Duration::from_millis(200), stop).await {
                        return Ok(Ended::Stopped);
                    }
                }
            }
        }
    }

    /// The canary topic's partitions, or `None` while it does not exist.
    async fn partitions(
        &self,
        consumer: &Arc<StreamConsumer<Quiet>>,
    ) -> anyhow::Result<Option<Vec<i32>>> {
        let (c, topic) = (consumer.clone(), self.topic.clone());
        // librdkafka's metadata call blocks.
        let metadata = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&topic), Duration::from_secs(5))
        })
        .await
        .context("the kafka metadata call panicked")?
        .context("cannot read the canary topic's metadata")?;
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == self.topic) else {
            return Ok(None);
        };
        match topic.error().map(RDKafkaErrorCode::from) {
            None => {}
            Some(RDKafkaErrorCode::UnknownTopicOrPartition) => return Ok(None),
            Some(code) => {
                anyhow::bail!("the brokers refuse the canary topic {}: {code}", self.topic)
            }
        }
        let partitions: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        Ok((!partitions.is_empty()).then_some(partitions))
    }
}

/// The observer's librdkafka context: librdkafka's own log lines and global errors go to debug,
/// since the observer reports an outage once itself and the relay's producer, which connects with
/// the same brokers and settings, already logs the details.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(?level, facility, message, "librdkafka (canary observer)");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "librdkafka error (canary observer)");
    }
}

impl ConsumerContext for Quiet {}
