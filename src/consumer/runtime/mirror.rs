//! The `.dlq` mirror: parked and held records are also produced to `<topic><suffix>`, for
//! Kafka-native tools. Best effort: the dead-letter store in PostgreSQL is the record of truth, so
//! a mirror that cannot be written is counted and logged, and holds nothing back.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::FutureProducer;

use crate::consumer::dlq::ParkReason;
use crate::consumer::record::Record;

pub(super) struct Mirror {
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    suffix: String,
    partitions: i32,
    /// Topics this mirror has created (or found), so each is created once per process.
    created: tokio::sync::Mutex<HashSet<String>>,
}

impl Mirror {
    pub(super) fn new(brokers: &str, suffix: &str, partitions: i32) -> anyhow::Result<Self> {
        // The relay's producer settings (idempotent, acks=all), with a finite time-out: a mirror
        // that cannot be written must not hold the partition back.
        let mut config = crate::kafka::producer_config(brokers, &BTreeMap::new());
        config
            .set("message.timeout.ms", "10000")
            .set("client.id", "keel-dlq-mirror");
        Ok(Self {
            producer: config.create()?,
            admin: config.create()?,
            suffix: suffix.to_owned(),
            partitions,
            created: Default::default(),
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
        let sent = crate::kafka::enqueue(
            &self.producer,
            &topic,
            &record.key,
            &record.value,
            &headers,
        )
        .await;
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

    /// Creates the `.dlq` topic once per process. This is the second of keel's two topic
    /// creators (the relay's is in `relay/kafka.rs`); it hard-codes replication 1 until both use
    /// one helper.
    async fn ensure(&self, topic: &str) {
        let mut created = self.created.lock().await;
        if created.contains(topic) {
            return;
        }
        let new = NewTopic::new(topic, self.partitions, TopicReplication::Fixed(1));
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        // An existing topic is fine; any other failure leaves creation to the broker (topic
        // auto-creation) and shows up as a failed send, which is counted.
        let _ = self.admin.create_topics([&new], &opts).await;
        created.insert(topic.to_owned());
    }
}
