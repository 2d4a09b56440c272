//! The Kafka sink (rdkafka): routing, encoding, the idempotent producer, and the error table.
//!
//! * Topic: the event type's `topic` in the catalog, else `relay.kafka.topic_prefix` + the
//!   aggregate type. Missing topics are created through the admin API unless
//!   `relay.kafka.create_topics` is off.
//! * Key: the aggregate id, so an aggregate's events share a partition and keep their order.
//! * Value: Confluent-framed Avro with the registry's schema id, or the JSON envelope on the topics
//!   listed in `relay.kafka.json_topics`. Headers: see [`super::envelope`].
//! * Producer: `enable.idempotence=true` (so `acks=all` and in-order retries), lz4 compression,
//!   `linger.ms=1`, and no local message time-out: while a broker is away, librdkafka keeps
//!   retrying in order rather than failing some messages and delivering later ones. With
//!   `enable.gapless.guarantee=true` a message the broker refuses for good (too large for the
//!   topic, not authorised) fails every message queued after it too, so a later event of its
//!   aggregate is never delivered ahead of it; the producer is then replaced and the round
//!   re-sent. Settings in `relay.kafka.properties` are applied last.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use uuid::Uuid;

use super::envelope::{self, CONTENT_AVRO, CONTENT_JSON};
use super::outbox::OutboxRow;
#[cfg(test)]
use super::sink::ErrorClass;
use super::sink::{Outcome, SinkError};
use crate::catalog::Catalog;
use crate::config::KafkaSinkConfig;
use crate::registry::Registry;
use crate::schema::{self, ParsedSchema};

pub struct KafkaSink {
    brokers: String,
    config: KafkaSinkConfig,
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    producer: Mutex<FutureProducer>,
    admin: AdminClient<DefaultClientContext>,
    topics: Mutex<HashSet<String>>,
    /// Every event goes to this topic instead (for `keel replay republish`).
    only_topic: Option<String>,
}

/// The producer settings keel uses, before `relay.kafka.properties`.
pub fn producer_config(
    brokers: &str,
    properties: &std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("enable.gapless.guarantee", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "0")
        .set("retry.backoff.ms", "100")
        .set("retry.backoff.max.ms", "5000")
        .set("client.id", "keel-relay");
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

impl KafkaSink {
    pub fn new(
        brokers: &str,
        config: KafkaSinkConfig,
        catalog: Arc<Catalog>,
        registry: Arc<Registry>,
    ) -> anyhow::Result<Self> {
        let producer = producer_config(brokers, &config.properties).create()?;
        let mut admin_config = ClientConfig::new();
        admin_config.set("bootstrap.servers", brokers);
        for (k, v) in &config.properties {
            if k.starts_with("security.") || k.starts_with("ssl.") || k.starts_with("sasl.") {
                admin_config.set(k, v);
            }
        }
        Ok(Self {
            brokers: brokers.to_owned(),
            admin: admin_config.create()?,
            producer: Mutex::new(producer),
            config,
            catalog,
            registry,
            topics: Mutex::new(HashSet::new()),
            only_topic: None,
        })
    }

    /// Sends every event to `topic`, whatever the catalog says.
    pub fn to_topic(mut self, topic: &str) -> Self {
        self.only_topic = Some(topic.to_owned());
        self
    }

    /// The topic an event goes to.
    pub fn topic_for(&self, event_type: &str, aggregate_type: &str) -> String {
        if let Some(topic) = &self.only_topic {
            return topic.clone();
        }
        self.catalog
            .topic(event_type, aggregate_type, &self.config.topic_prefix)
    }

    /// [`KafkaSink::topic_for`] for each row, worked out once per (event type, aggregate type).
    fn topics<'r>(&self, rows: &[&'r OutboxRow]) -> Vec<Arc<str>> {
        let mut seen: HashMap<(&'r str, &'r str), Arc<str>> = HashMap::new();
        rows.iter()
            .map(|r| {
                let key = (r.event.event_type.as_str(), r.event.aggregate_type.as_str());
                seen.entry(key)
                    .or_insert_with(|| self.topic_for(key.0, key.1).into())
                    .clone()
            })
            .collect()
    }

    fn producer(&self) -> FutureProducer {
        self.producer.lock().expect("producer lock").clone()
    }

    /// Replaces a producer that hit a fatal error (an idempotence violation, say). Unacknowledged
    /// rows are simply read again from the outbox and re-sent by the new producer.
    fn renew_producer(&self) {
        match producer_config(&self.brokers, &self.config.properties).create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!("kafka producer hit a fatal error; replaced it");
                *self.producer.lock().expect("producer lock") = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new kafka producer"),
        }
    }

    /// Creates the topics in `topics` that keel has not seen yet.
    async fn ensure_topics(&self, topics: &HashSet<&str>) {
        if !self.config.create_topics {
            return;
        }
        let missing: Vec<String> = {
            let known = self.topics.lock().expect("topics lock");
            topics
                .iter()
                .filter(|t| !known.contains(**t))
                .map(|t| t.to_string())
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        match self.admin.create_topics(new.iter(), &opts).await {
            Ok(results) => {
                let mut known = self.topics.lock().expect("topics lock");
                for result in results {
                    match result {
                        Ok(name) => {
                            tracing::info!(topic = %name, "created kafka topic");
                            known.insert(name);
                        }
                        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            known.insert(name);
                        }
                        Err((name, code)) => {
                            tracing::warn!(topic = %name, error = %code, "cannot create kafka topic")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot create kafka topics"),
        }
    }

    async fn schema(&self, id: i32) -> Result<Arc<ParsedSchema>, SinkError> {
        self.registry.parsed_by_id(id).await.map_err(|e| {
            SinkError::retriable("registry", format!("cannot read schema id {id}: {e}"))
        })
    }

    /// The record value and its content type. An event stored without a schema (validation was
    /// off) is validated against its type's latest schema first.
    async fn value(
        &self,
        row: &OutboxRow,
        topic: &str,
    ) -> Result<(Vec<u8>, &'static str, Option<(i32, i32)>), SinkError> {
        let event = &row.event;
        if self.config.json_topics.iter().any(|t| t == topic) {
            let body = serde_json::to_vec(event)
                .map_err(|e| SinkError::permanent("serialization", e.to_string()))?;
            let schema = event.schema_id.zip(event.schema_version);
            return Ok((body, CONTENT_JSON, schema));
        }
        let (id, version, schema, payload) = match (event.schema_id, event.schema_version) {
            (Some(id), Some(version)) => {
                (id, version, self.schema(id).await?, event.payload.clone())
            }
            _ => {
                let latest = self
                    .registry
                    .event_schema(&event.event_type, None)
                    .await
                    .map_err(|e| SinkError::retriable("registry", e.to_string()))?
                    .ok_or_else(|| {
                        SinkError::permanent(
                            "serialization",
                            format!("no schema is registered for {}", event.event_type),
                        )
                    })?;
                let payload = schema::validate(&latest.schema, &event.payload).map_err(|e| {
                    SinkError::permanent(
                        "serialization",
                        format!("payload does not fit the latest schema: {e}"),
                    )
                })?;
                (latest.id, latest.version, latest.schema, payload)
            }
        };
        let bytes = envelope::confluent_avro(id, &schema, &payload)
            .map_err(|e| SinkError::permanent("serialization", e))?;
        Ok((bytes, CONTENT_AVRO, Some((id, version))))
    }

    /// Sends `rows` in order and waits for every acknowledgement. A row whose aggregate already
    /// failed earlier in the batch is not sent ([`Outcome::NotSent`]).
    pub async fn publish(&self, rows: &[&OutboxRow]) -> Vec<Outcome> {
        self.send(rows).await.wait(self).await
    }

    /// Queues `rows` in order without waiting for acknowledgements; [`KafkaSent::wait`] collects
    /// them. `KafkaSent::clean` tells whether every row was queued.
    pub async fn send(&self, rows: &[&OutboxRow]) -> KafkaSent {
        let topics = self.topics(rows);
        self.ensure_topics(&topics.iter().map(|t| &**t).collect())
            .await;
        let producer = self.producer();
        let mut failed: HashSet<(&str, Uuid)> = HashSet::new();
        let mut pending = Vec::with_capacity(rows.len());
        for (row, topic) in rows.iter().zip(&topics) {
            if failed.contains(&row.aggregate()) {
                pending.push(Pending::Done(Outcome::NotSent));
                continue;
            }
            let sent = match self.value(row, topic).await {
                Ok((value, content_type, schema)) => {
                    send(&producer, row, topic, &value, content_type, schema).await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(delivery) => pending.push(Pending::Sent(delivery)),
                Err(e) => {
                    failed.insert(row.aggregate());
                    pending.push(Pending::Done(Outcome::Failed(e)));
                }
            }
        }
        KafkaSent {
            clean: failed.is_empty(),
            pending,
            producer,
        }
    }

    /// Waits up to `timeout` for queued messages to be acknowledged (on shutdown).
    /// librdkafka's flush blocks, so it runs off the runtime's threads.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "kafka producer did not flush before shutdown");
        }
    }
}

enum Pending {
    Sent(rdkafka::producer::DeliveryFuture),
    Done(Outcome),
}

/// A batch queued by [`KafkaSink::send`], waiting for its acknowledgements.
pub struct KafkaSent {
    /// Every row was queued: none failed before it was sent.
    pub clean: bool,
    pending: Vec<Pending>,
    producer: FutureProducer,
}

impl KafkaSent {
    /// Waits for every acknowledgement; one outcome per row, in order.
    pub async fn wait(self, sink: &KafkaSink) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(self.pending.len());
        let mut fatal = false;
        for p in self.pending {
            outcomes.push(match p {
                Pending::Done(outcome) => outcome,
                Pending::Sent(delivery) => match delivery.await {
                    Ok(Ok(_)) => Outcome::Delivered,
                    Ok(Err((e, _))) => {
                        fatal |= is_fatal(&e);
                        Outcome::Failed(classify(&e))
                    }
                    Err(_) => Outcome::Failed(SinkError::retriable(
                        "canceled",
                        "the producer was dropped before it acknowledged",
                    )),
                },
            });
        }
        if fatal || self.producer.client().fatal_error().is_some() {
            sink.renew_producer();
        }
        outcomes
    }
}

async fn send(
    producer: &FutureProducer,
    row: &OutboxRow,
    topic: &str,
    value: &[u8],
    content_type: &str,
    schema: Option<(i32, i32)>,
) -> Result<rdkafka::producer::DeliveryFuture, SinkError> {
    let key = row.event.aggregate_id.to_string();
    let headers = envelope::headers(&row.event, content_type, schema);
    enqueue(producer, topic, &key, value, &headers)
        .await
        .map_err(|e| classify(&e))
}

/// Hands one record to librdkafka and returns its delivery future. A full local queue is waited
/// out (deliveries drain it), never reported as an error.
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    headers: &[(&str, String)],
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
    let mut owned = OwnedHeaders::new_with_capacity(headers.len());
    for (name, v) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(v.as_bytes()),
        });
    }
    let mut record = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(owned);
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

fn is_fatal(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal)
}

/// The error table: which rdkafka errors mean "this row can never be published as it is" (parked
/// after `relay.max_attempts`), and which mean "the broker is unavailable or busy" (retried until it
/// is back). Anything not listed is retriable: keel would rather wait than park by mistake.
pub fn classify(e: &KafkaError) -> SinkError {
    use RDKafkaErrorCode as C;
    let Some(code) = e.rdkafka_error_code() else {
        return SinkError::retriable("client", e.to_string());
    };
    let permanent = match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            Some("message_too_large")
        }
        C::InvalidMessage | C::InvalidRecord | C::BadMessage | C::InvalidTimestamp => {
            Some("invalid_record")
        }
        C::TopicAuthorizationFailed | C::ClusterAuthorizationFailed => Some("not_authorized"),
        C::InvalidTopic | C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition => {
            Some("unknown_topic")
        }
        C::PolicyViolation => Some("policy_violation"),
        C::UnsupportedForMessageFormat | C::UnsupportedCompressionType => Some("unsupported"),
        C::KeySerialization | C::ValueSerialization | C::InvalidArgument => Some("serialization"),
        _ => None,
    };
    match permanent {
        Some(kind) => SinkError::permanent(kind, e.to_string()),
        None => {
            let kind = match code {
                C::Fatal => "fatal",
                C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut => "timeout",
                C::AllBrokersDown | C::BrokerTransportFailure | C::BrokerNotAvailable => {
                    "broker_unavailable"
                }
                C::QueueFull => "queue_full",
                C::PurgeQueue | C::PurgeInflight => "purged",
                _ => "broker_error",
            };
            SinkError::retriable(kind, e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_table_parks_bad_rows_and_waits_out_outages() {
        let e = |c| KafkaError::MessageProduction(c);
        for code in [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidRecord,
            RDKafkaErrorCode::UnknownTopicOrPartition,
        ] {
            assert_eq!(classify(&e(code)).class, ErrorClass::Permanent, "{code:?}");
        }
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::QueueFull,
        ] {
            assert_eq!(classify(&e(code)).class, ErrorClass::Retriable, "{code:?}");
        }
        assert_eq!(
            classify(&e(RDKafkaErrorCode::MessageSizeTooLarge)).kind,
            "message_too_large"
        );
    }
}
