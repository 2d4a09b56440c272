//! The producer keel uses everywhere it produces (the relay, the consumer runtime's `.dlq` mirror,
//! the benchmarks' raw baseline), and the one place that enqueues a record.
//!
//! `enable.idempotence=true` (so `acks=all` and in-order retries), lz4, `linger.ms=1`, and no local
//! message time-out: while a broker is away librdkafka keeps retrying in order rather than failing
//! some messages and delivering later ones. With `enable.gapless.guarantee=true` a message the
//! broker refuses for good fails every message queued after it too, so a later event of its
//! aggregate is never delivered ahead of it. Settings in `properties` are applied last.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

/// The producer settings keel uses, then `properties` (`relay.kafka.properties`).
pub fn producer_config(brokers: &str, properties: &BTreeMap<String, String>) -> ClientConfig {
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
        // At most 16 MiB waiting for the broker (librdkafka's default is 1 GiB); the relay waits
        // for its batches' acknowledgements, so it never comes near this unless the broker
        // stalls, and then a full queue is waited out ([`enqueue`]).
        .set("queue.buffering.max.kbytes", "16384")
        .set("client.id", "keel-relay");
    for (k, v) in properties {
        c.set(k, v);
    }
    c
}

/// Hands one record to librdkafka and returns its delivery future. A full local queue is waited
/// out (deliveries drain it), never reported as an error.
#[tracing::instrument(level = "debug", skip_all, fields(messaging.system = "kafka", messaging.operation.type = "send", messaging.destination.name = %topic))]
pub async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &[u8],
    headers: &[(&str, String)],
) -> Result<DeliveryFuture, KafkaError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_queue_is_bounded_and_the_bound_can_be_raised() {
        let c = producer_config("b:9092", &BTreeMap::new());
        assert_eq!(c.get("queue.buffering.max.kbytes"), Some("16384"));
        let raised =
            BTreeMap::from([("queue.buffering.max.kbytes".to_owned(), "65536".to_owned())]);
        let c = producer_config("b:9092", &raised);
        assert_eq!(c.get("queue.buffering.max.kbytes"), Some("65536"));
    }
}
