//! The `.dlq` mirror: parked and held records are also produced to `<topic><suffix>`, for
//! Kafka-native tools. Best effort: the dead-letter store in PostgreSQL is the record of truth, so
//! a mirror that cannot be written is counted and logged, and holds nothing back.

use rdkafka::producer::FutureProducer;

use super::Subscription;
use crate::consumer::dlq::ParkReason;
use crate::consumer::record::Record;
use crate::kafka::{self, Topics};

pub(super) struct Mirror {
    producer: FutureProducer,
    topics: Topics,
    suffix: String,
    /// `.dlq` topics already asked for.
    asked: tokio::sync::Mutex<std::collections::HashSet<String>>,
}

impl Mirror {
    pub(super) fn new(
        brokers: &str,
        suffix: &str,
        subscription: &Subscription,
    ) -> anyhow::Result<Self> {
        // The relay's producer settings (idempotent, acks=all), connecting as the consumer does
        // (its security settings), with a finite time-out: a mirror that cannot be written must
        // not hold the partition back.
        let connection = kafka::connection_settings(&subscription.properties);
        let mut config = kafka::producer_config(brokers, &connection);
        config
            .set("message.timeout.ms", "10000")
            .set("client.id", "keel-dlq-mirror");
        Ok(Self {
            producer: kafka::create(&config)?,
            topics: Topics::new(
                brokers,
                &subscription.properties,
                subscription.dlq_topic_partitions,
                subscription.dlq_topic_replication,
            )?,
            suffix: suffix.to_owned(),
            asked: Default::default(),
        })
    }

    /// Produces `record` to its `.dlq` topic with why it was parked, and waits for the broker.
    pub(super) async fn send(
        &self,
        group: &str,
        record: &Record,
        reason: ParkReason,
        detail: &str,
    ) {
        let topic = format!("{}{}", record.topic, self.suffix);
        self.ensure(&topic).await;
        let mut headers: Vec<(&str, String)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        headers.extend([
            ("keel-dlq-group", group.to_owned()),
            ("keel-dlq-reason", reason.as_str().to_owned()),
            ("keel-dlq-detail", detail.to_owned()),
            ("keel-dlq-topic", record.topic.clone()),
            ("keel-dlq-partition", record.partition.to_string()),
            ("keel-dlq-offset", record.offset.to_string()),
        ]);
        let sent =
            kafka::enqueue(&self.producer, &topic, &record.key, &record.value, &headers).await;
        let delivered = match sent {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("the producer was dropped".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = delivered {
            tracing::warn!(error = %e, topic, "could not mirror a parked record to the .dlq topic");
            ::metrics::counter!(crate::metrics::DLQ_MIRROR_ERRORS).increment(1);
        }
    }

    /// Asks for the `.dlq` topic once per process (with the one topic creator, [`Topics`]),
    /// whatever the answer: a refusal (ACLs, a broker policy) is logged once and leaves creation
    /// to the broker's auto-creation, and shows up as failed sends, which are counted. Asking
    /// again for every parked record would cost each one an admin round trip.
    async fn ensure(&self, topic: &str) {
        if !self.asked.lock().await.insert(topic.to_owned()) {
            return;
        }
        if let Err(e) = self.topics.ensure([topic]).await {
            tracing::warn!(error = %e, topic, "cannot create the .dlq topic");
        }
    }
}
