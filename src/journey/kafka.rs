//! The Kafka hop: the topic, the partition and the offset of the event's record.
//!
//! keel stores no per-event offsets (that would slow the relay): the offset is found on demand.
//! The record's timestamp is its producer's create time, taken when the relay queued it, after
//! the event committed, so the record is at or after the first offset whose timestamp is at or
//! after `created_at` (less [`CLOCK_SKEW`] between the database's clock and the relay's). From
//! there a short-lived consumer, assigned to the one partition (no group, no commit), reads
//! forward at most [`SCAN_LIMIT`] records for the one whose `keel-event-id` header is the event's.
//! A duplicate (at-least-once) is found at its first copy after that time.
//!
//! The partition is the one keel's producer gives the key (the aggregate id), computed with
//! [`crate::kafka::partitioner`] from the topic's partition count.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use super::outbox::{Event, SinkState};
use super::{left, Sources};
use crate::kafka::partitioner::Partitioner;
use crate::wire::header;

/// Most records read past the record's earliest possible offset.
pub const SCAN_LIMIT: usize = 2_000;

/// How far the relay's clock may be behind the database's.
pub const CLOCK_SKEW: Duration = Duration::from_secs(2);

/// Where the event's record is in Kafka.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Kafka {
    pub topic: String,
    /// The partition keel's producer gives the event's key; `null` when Kafka cannot be asked
    /// how many partitions the topic has.
    pub partition: Option<i32>,
    /// The record's offset; `null` when it was not found, with [`Kafka::offset_note`] saying why.
    pub offset: Option<i64>,
    /// The record's timestamp, when it was found.
    pub timestamp: Option<DateTime<Utc>>,
    pub offset_note: Option<String>,
    /// The Kafka sink delivered the event: a group or projection may have seen it.
    #[serde(skip)]
    pub published: bool,
    /// Kafka answered: the consumer groups' offsets are worth asking for.
    #[serde(skip)]
    pub reachable: bool,
}

impl Kafka {
    fn note(mut self, note: impl Into<String>) -> Self {
        self.offset_note = Some(note.into());
        self
    }
}

/// Finds the event's record, if the Kafka sink's `state` says it was sent, within `deadline`.
pub async fn locate(
    sources: &Sources,
    event: &Event,
    state: SinkState,
    deadline: Instant,
) -> Kafka {
    let config = &sources.relay.kafka;
    let topic = crate::relay::kafka::topic(
        &sources.catalog,
        config,
        &event.event_type,
        &event.aggregate_type,
    );
    let found = Kafka {
        topic,
        partition: None,
        offset: None,
        timestamp: None,
        offset_note: None,
        published: state == SinkState::Delivered,
        reachable: false,
    };
    if !config.enabled {
        return found.note("the kafka sink is not enabled");
    }
    let mut client = crate::kafka::connection_config(&sources.kafka_brokers, &config.properties);
    client
        .set("group.id", "keel-journey")
        .set("client.id", "keel-journey")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "50");
    let search = Search {
        key: event.aggregate_id.to_string(),
        id: event.id.to_string(),
        since: event.created_at - CLOCK_SKEW,
        partitioner: Partitioner::of(&config.properties).map_err(|e| e.to_string()),
        state,
        deadline,
    };
    let fallback = found.clone();
    let searched =
        tokio::task::spawn_blocking(
            move || match crate::kafka::create::<BaseConsumer>(&client) {
                Ok(consumer) => search.run(&consumer, found),
                Err(e) => found.note(format!("cannot make a kafka client: {e}")),
            },
        )
        .await;
    searched.unwrap_or_else(|e| fallback.note(format!("the kafka lookup failed: {e}")))
}

struct Search {
    key: String,
    id: String,
    since: DateTime<Utc>,
    partitioner: Result<Partitioner, String>,
    /// The Kafka sink's state: only a delivered record is looked for, the others get their
    /// partition.
    state: SinkState,
    deadline: Instant,
}

impl Search {
    /// Blocks (librdkafka's calls do), never past the deadline.
    fn run(self, consumer: &BaseConsumer, mut found: Kafka) -> Kafka {
        let topic = found.topic.clone();
        let meta = match consumer.fetch_metadata(Some(&topic), left(self.deadline)) {
            Ok(meta) => meta,
            Err(e) => return found.note(format!("kafka unavailable: {e}")),
        };
        found.reachable = true;
        let partitions = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map_or(0, |t| t.partitions().len() as i32);
        if partitions == 0 && self.state == SinkState::Delivered {
            return found.note(format!("topic {topic} does not exist"));
        }
        if partitions == 0 {
            return found.note(not_delivered("kafka", self.state));
        }
        let partition = match &self.partitioner {
            Ok(p) => p.partition(self.key.as_bytes(), partitions),
            Err(e) => return found.note(e.clone()),
        };
        found.partition = Some(partition);
        if self.state != SinkState::Delivered {
            return found.note(not_delivered("kafka", self.state));
        }
        match self.scan(consumer, &topic, partition) {
            Ok((offset, timestamp)) => {
                found.offset = Some(offset);
                found.timestamp = timestamp;
                found
            }
            Err(note) => found.note(note),
        }
    }

    /// The record's offset and timestamp, or why it was not found.
    fn scan(
        &self,
        consumer: &BaseConsumer,
        topic: &str,
        partition: i32,
    ) -> Result<(i64, Option<DateTime<Utc>>), String> {
        let unavailable = |e: rdkafka::error::KafkaError| format!("kafka unavailable: {e}");
        let mut at = TopicPartitionList::new();
        at.add_partition_offset(
            topic,
            partition,
            Offset::Offset(self.since.timestamp_millis()),
        )
        .map_err(unavailable)?;
        let start = consumer
            .offsets_for_times(at, left(self.deadline))
            .map_err(unavailable)?
            .find_partition(topic, partition)
            .map(|e| e.offset());
        let start = match start {
            Some(Offset::Offset(o)) => o,
            _ => return Err(format!("no record at or after {}", self.since.to_rfc3339())),
        };
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, left(self.deadline))
            .map_err(unavailable)?;
        let mut from = TopicPartitionList::new();
        from.add_partition_offset(topic, partition, Offset::Offset(start))
            .map_err(unavailable)?;
        consumer.assign(&from).map_err(unavailable)?;
        let mut scanned = 0;
        let mut next = start;
        while scanned < SCAN_LIMIT && next < high {
            let wait = left(self.deadline).min(Duration::from_millis(200));
            if wait.is_zero() {
                return Err(format!(
                    "not found within the time budget ({scanned} records read from offset {start})"
                ));
            }
            let message = match consumer.poll(wait) {
                None => continue,
                Some(Err(e)) => return Err(unavailable(e)),
                Some(Ok(m)) => m,
            };
            scanned += 1;
            next = message.offset() + 1;
            let is_it = message.headers().is_some_and(|h| {
                h.iter()
                    .any(|h| h.key == header::EVENT_ID && h.value == Some(self.id.as_bytes()))
            });
            if is_it {
                let timestamp = message
                    .timestamp()
                    .to_millis()
                    .and_then(DateTime::from_timestamp_millis);
                return Ok((message.offset(), timestamp));
            }
        }
        if next >= high {
            return Err(format!(
                "not found: the partition ends after {scanned} records read from offset {start}"
            ));
        }
        Err(format!(
            "not found within {SCAN_LIMIT} records from offset {start}"
        ))
    }
}

/// The note of a hop whose sink has not delivered the event.
pub(super) fn not_delivered(sink: &str, state: SinkState) -> String {
    format!(
        "not published: the {sink} sink's state is {}",
        state.as_str()
    )
}
