//! The Kafka sink (rdkafka): routing, encoding, the idempotent producer, and the error table.
//!
//! * Topic: the event type's `topic` in the catalog, else `relay.kafka.topic_prefix` + the
//!   aggregate type (always the latter for keel's canary, [`canary_topic`]). Missing topics are created through the admin API unless
//!   `relay.kafka.create_topics` is off.
//! * Key: the aggregate id, so an aggregate's events share a partition and keep their order.
//! * Value: Confluent-framed Avro with the registry's schema id, or the JSON envelope on the topics
//!   listed in `relay.kafka.json_topics` and for keel's own canary events
//!   ([`crate::model::canary`]), which have no schema. Headers: see [`crate::wire`].
//! * Tracing: with trace export on, each event with trace context gets a `publish <topic>` span
//!   (kind producer, a child of the event's stored context) from queueing to acknowledgement.
//! * Producer: [`crate::kafka::producer`]'s idempotent, gapless settings. A message the broker
//!   refuses for good (too large for the topic, not authorised) fails every message queued after
//!   it too, so a later event of its aggregate is never delivered ahead of it; the producer is
//!   then replaced and the round re-sent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::util::Timeout;
use uuid::Uuid;

#[cfg(test)]
use super::sink::ErrorClass;
use super::sink::{Outcome, SinkError};
use crate::catalog::Catalog;
use crate::config::KafkaSinkConfig;
use crate::kafka::{enqueue, producer_config, Topics};
use crate::model::{canary, RecordedEvent};
use crate::registry::Registry;
use crate::schema::{self, ParsedSchema};
use crate::telemetry::messaging::{self, Destination};
use crate::wire::{self, CONTENT_AVRO, CONTENT_JSON};

/// The topic of keel's own canary events: `relay.kafka.topic_prefix` + the canary's aggregate
/// type (`keel.keel.canary` by default), whatever the catalog holds, so that the canary's observer
/// knows where to look.
pub fn canary_topic(config: &KafkaSinkConfig) -> String {
    format!("{}{}", config.topic_prefix, canary::AGGREGATE_TYPE)
}

/// The topic the sink sends an event of `event_type` on `aggregate_type` to (see the module
/// docs), for the sink and for whoever looks for the record afterwards.
pub fn topic(
    catalog: &Catalog,
    config: &KafkaSinkConfig,
    event_type: &str,
    aggregate_type: &str,
) -> String {
    if canary::is_canary(aggregate_type, event_type) {
        return canary_topic(config);
    }
    catalog.topic(event_type, aggregate_type, &config.topic_prefix)
}

pub struct KafkaSink {
    config: KafkaSinkConfig,
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    producer: Arc<ProducerSlot>,
    topics: Topics,
    /// Every event goes to this topic instead (for `keel replay republish`).
    only_topic: Option<String>,
}

impl KafkaSink {
    pub fn new(
        brokers: &str,
        config: KafkaSinkConfig,
        catalog: Arc<Catalog>,
        registry: Arc<Registry>,
    ) -> anyhow::Result<Self> {
        let producer = Arc::new(ProducerSlot::new(brokers, &config.properties)?);
        let topics = Topics::new(
            brokers,
            &config.properties,
            config.partitions,
            config.replication,
        )?;
        Ok(Self {
            producer,
            topics,
            config,
            catalog,
            registry,
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
        topic(&self.catalog, &self.config, event_type, aggregate_type)
    }

    /// [`KafkaSink::topic_for`] for each event, worked out once per (event type, aggregate type).
    fn topics<'e>(&self, events: &[&'e RecordedEvent]) -> Vec<Arc<str>> {
        let mut seen: HashMap<(&'e str, &'e str), Arc<str>> = HashMap::new();
        events
            .iter()
            .map(|e| {
                let key = (e.event_type.as_str(), e.aggregate_type.as_str());
                seen.entry(key)
                    .or_insert_with(|| self.topic_for(key.0, key.1).into())
                    .clone()
            })
            .collect()
    }

    /// Creates the topics in `topics` that keel has not seen yet. A failure is logged and the
    /// round goes on: sending to a missing topic fails as `unknown_topic`, which the error table
    /// handles.
    async fn ensure_topics(&self, topics: &HashSet<&str>) {
        if !self.config.create_topics {
            return;
        }
        if let Err(e) = self.topics.ensure(topics.iter().copied()).await {
            tracing::warn!(error = %e, "cannot create kafka topics");
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
        event: &RecordedEvent,
        topic: &str,
    ) -> Result<(Vec<u8>, &'static str, Option<(i32, i32)>), SinkError> {
        // keel's own canary has no schema in the registry (it bypasses the catalog), so it always
        // travels as the JSON envelope, whatever its topic.
        let canary = canary::is_canary(event.aggregate_type.as_str(), event.event_type.as_str());
        if canary || self.config.json_topics.iter().any(|t| t == topic) {
            let body = wire::json::encode(event)
                .map_err(|e| SinkError::permanent("serialization", e.to_string()))?;
            let schema = event.schema_id.zip(event.schema_version);
            return Ok((body, CONTENT_JSON, schema));
        }
        let (id, version, schema, payload) = match (event.schema_id, event.schema_version) {
            (Some(id), Some(version)) => (
                id,
                version,
                self.schema(id).await?,
                std::borrow::Cow::Borrowed(&event.payload),
            ),
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
                (
                    latest.id,
                    latest.version,
                    latest.schema,
                    std::borrow::Cow::Owned(payload),
                )
            }
        };
        let bytes = wire::frame::encode(id, &schema, &payload)
            .map_err(|e| SinkError::permanent("serialization", e.to_string()))?;
        Ok((bytes, CONTENT_AVRO, Some((id, version))))
    }

    /// Sends `events` in order and waits for every acknowledgement. An event whose aggregate
    /// already failed earlier in the batch is not sent ([`Outcome::NotSent`]).
    pub async fn publish(&self, events: &[&RecordedEvent]) -> Vec<Outcome> {
        self.send(events).await.wait().await
    }

    /// Queues `events` in order without waiting for acknowledgements; [`KafkaSent::wait`]
    /// collects them. `KafkaSent::clean` tells whether every event was queued.
    #[tracing::instrument(skip_all, fields(messaging.system = "kafka", messaging.operation.type = "send", messaging.batch.message_count = events.len()))]
    pub async fn send(&self, events: &[&RecordedEvent]) -> KafkaSent {
        let topics = self.topics(events);
        self.ensure_topics(&topics.iter().map(|t| &**t).collect())
            .await;
        let producer = self.producer.current();
        let mut failed: HashSet<(&str, Uuid)> = HashSet::new();
        let mut pending = Vec::with_capacity(events.len());
        for (event, topic) in events.iter().zip(&topics) {
            let aggregate = (event.aggregate_type.as_str(), event.aggregate_id);
            if failed.contains(&aggregate) {
                pending.push(Pending::Done(Outcome::NotSent));
                continue;
            }
            let key = event.aggregate_id.to_string();
            let span = messaging::publish(
                event,
                Destination {
                    system: "kafka",
                    name: topic,
                    key: Some(&key),
                },
            );
            let sent = match self.value(event, topic).await {
                Ok((value, content_type, schema)) => {
                    send(&producer, event, topic, &key, &value, content_type, schema).await
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(delivery) => pending.push(Pending::Sent(delivery, span)),
                Err(e) => {
                    messaging::failed(&span, e.kind);
                    failed.insert(aggregate);
                    pending.push(Pending::Done(Outcome::Failed(e)));
                }
            }
        }
        KafkaSent {
            clean: failed.is_empty(),
            pending,
            fatal: false,
            producer,
            slot: self.producer.clone(),
        }
    }

    /// Waits up to `timeout` for queued messages to be acknowledged (on shutdown).
    /// librdkafka's flush blocks, so it runs off the runtime's threads.
    pub async fn flush(&self, timeout: Duration) {
        let producer = self.producer.current();
        let flushed =
            tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout))).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "kafka producer did not flush before shutdown");
        }
    }
}

/// The sink's producer, replaceable after a fatal error. Unacknowledged events are simply read
/// again from the outbox and re-sent by the new producer.
struct ProducerSlot {
    producer: Mutex<FutureProducer>,
    config: rdkafka::ClientConfig,
}

impl ProducerSlot {
    fn new(
        brokers: &str,
        properties: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, KafkaError> {
        let config = producer_config(brokers, properties);
        Ok(Self {
            producer: Mutex::new(crate::kafka::create(&config)?),
            config,
        })
    }

    fn current(&self) -> FutureProducer {
        self.producer
            .lock()
            .expect("producer lock poisoned by a panic")
            .clone()
    }

    fn renew(&self) {
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!("kafka producer hit a fatal error; replaced it");
                *self
                    .producer
                    .lock()
                    .expect("producer lock poisoned by a panic") = fresh;
            }
            Err(e) => tracing::error!(error = %e, "cannot create a new kafka producer"),
        }
    }
}

enum Pending {
    /// Queued; the event's publish span ends with the acknowledgement.
    Sent(rdkafka::producer::DeliveryFuture, tracing::Span),
    Done(Outcome),
}

/// A batch queued by [`KafkaSink::send`], waiting for its acknowledgements.
pub struct KafkaSent {
    /// Every row was queued: none failed before it was sent.
    pub clean: bool,
    pending: Vec<Pending>,
    /// An acknowledgement so far was a fatal producer error: renew the producer.
    fatal: bool,
    producer: FutureProducer,
    slot: Arc<ProducerSlot>,
}

impl KafkaSent {
    /// Completes when every acknowledgement is in, keeping them for [`KafkaSent::wait`].
    /// Cancel-safe: dropped halfway, it keeps the ones that came.
    pub async fn landed(&mut self) {
        for p in &mut self.pending {
            if let Pending::Sent(delivery, span) = p {
                let outcome = match delivery.await {
                    Ok(Ok(_)) => Outcome::Delivered,
                    Ok(Err((e, _))) => {
                        self.fatal |= is_fatal(&e);
                        Outcome::Failed(classify(&e))
                    }
                    Err(_) => Outcome::Failed(SinkError::retriable(
                        "canceled",
                        "the producer was dropped before it acknowledged",
                    )),
                };
                if let Outcome::Failed(e) = &outcome {
                    messaging::failed(span, e.kind);
                }
                // Replacing the entry ends the publish span: the acknowledgement is in.
                *p = Pending::Done(outcome);
            }
        }
    }

    /// Waits for every acknowledgement; one outcome per row, in order.
    pub async fn wait(mut self) -> Vec<Outcome> {
        self.landed().await;
        if self.fatal || self.producer.client().fatal_error().is_some() {
            self.slot.renew();
        }
        self.pending
            .into_iter()
            .map(|p| match p {
                Pending::Done(outcome) => outcome,
                // Not reached: landed() left none. Were it, the row is simply sent again.
                Pending::Sent(..) => Outcome::Failed(SinkError::retriable(
                    "unacknowledged",
                    "no acknowledgement was collected",
                )),
            })
            .collect()
    }
}

async fn send(
    producer: &FutureProducer,
    event: &RecordedEvent,
    topic: &str,
    key: &str,
    value: &[u8],
    content_type: &str,
    schema: Option<(i32, i32)>,
) -> Result<rdkafka::producer::DeliveryFuture, SinkError> {
    let headers = wire::header::encode(event, content_type, schema);
    enqueue(producer, topic, key, value, &headers)
        .await
        .map_err(|e| classify(&e))
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
    use crate::model::canary::{AGGREGATE_ID, AGGREGATE_TYPE, EVENT_TYPE};

    /// A sink whose registry's database cannot be reached: anything that needs a schema fails.
    fn sink_without_registry() -> KafkaSink {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        KafkaSink::new(
            "127.0.0.1:1",
            KafkaSinkConfig::default(),
            Arc::new(Catalog::default()),
            Arc::new(Registry::new(pool)),
        )
        .expect("a sink")
    }

    fn event(aggregate_type: &str, event_type: &str) -> RecordedEvent {
        RecordedEvent {
            id: Uuid::now_v7(),
            position: 7,
            aggregate_type: aggregate_type.into(),
            aggregate_id: AGGREGATE_ID,
            version: 3,
            event_type: event_type.into(),
            schema_id: None,
            schema_version: None,
            payload: serde_json::json!({"seq": 3, "sent_at": "2026-01-01T00:00:00Z"}),
            metadata: serde_json::json!({}),
            created_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_canary_goes_to_its_own_topic_as_the_json_envelope_without_a_schema() {
        let sink = sink_without_registry();
        let canary = event(AGGREGATE_TYPE, EVENT_TYPE);
        let topic = sink.topic_for(EVENT_TYPE, AGGREGATE_TYPE);
        assert_eq!(topic, "keel.keel.canary");
        assert_eq!(topic, canary_topic(&KafkaSinkConfig::default()));

        let (value, content_type, schema) = sink
            .value(&canary, &topic)
            .await
            .expect("a canary encodes without the registry");
        assert_eq!(content_type, CONTENT_JSON);
        assert_eq!(schema, None);
        assert_eq!(wire::json::decode(&value).expect("the envelope"), canary);

        // The special case is narrow: another type on the canary's aggregate needs its schema.
        let other = event(AGGREGATE_TYPE, "agent.state.changed");
        let refused = sink.value(&other, &topic).await.expect_err("no schema");
        assert_eq!(refused.kind, "registry", "{refused:?}");
    }

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
