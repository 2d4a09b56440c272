//! The one Kafka consumer configuration keel's readers start from: the consumer runtime, the
//! projection runner, `keel consume` and the benchmarks.
//!
//! keel decides when offsets move (after a handler succeeded, or never, for projections that keep
//! theirs in PostgreSQL), so automatic commits and offset stores are off. The caller's raw
//! librdkafka properties are applied last and override anything here.

use std::collections::BTreeMap;

use rdkafka::config::ClientConfig;

/// Where a group with no committed offset starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    Beginning,
    End,
}

impl StartAt {
    /// `from_beginning` as the settings spell it (`--from-beginning`, `Subscription`).
    pub fn from_beginning(yes: bool) -> Self {
        if yes {
            StartAt::Beginning
        } else {
            StartAt::End
        }
    }

    fn as_reset(self) -> &'static str {
        match self {
            StartAt::Beginning => "earliest",
            StartAt::End => "latest",
        }
    }
}

/// How much a consumer fetches ahead of the records it has handed out: at most 2 MiB queued
/// locally (librdkafka's default is 64 MiB per consumer) and 2 MiB per fetch (default 50 MiB).
/// Catching up on a long topic then costs a few MiB per reader, not a few hundred, at the same
/// speed. The record count bound (`queued.min.messages`, 100,000 per partition) is left alone:
/// lowered to 2,000 it stopped fetching so often that catch-up fell to a third. Raise the bytes
/// in the reader's `properties` for a network where a fetch's round trip, not decoding, limits.
pub const PREFETCH: &[(&str, &str)] = &[
    ("queued.max.messages.kbytes", "2048"),
    ("fetch.max.bytes", "2097152"),
];

/// A consumer of `group` on `brokers`, identified to the brokers as `client_id`, with
/// `properties` applied last.
pub fn config(
    brokers: &str,
    group: &str,
    client_id: &str,
    start: StartAt,
    properties: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("client.id", client_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        // Topics created after the subscription (by the relay) are noticed within seconds.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("auto.offset.reset", start.as_reset());
    for (k, v) in PREFETCH {
        config.set(*k, *v);
    }
    for (k, v) in properties {
        config.set(k, v);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_only_when_keel_commits_them() {
        let c = config("b:9092", "g", "c", StartAt::Beginning, &BTreeMap::new());
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("client.id"), Some("c"));
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("2048"));
    }

    #[test]
    fn the_callers_properties_override_keels_settings() {
        let props = BTreeMap::from([
            ("auto.offset.reset".to_owned(), "earliest".to_owned()),
            ("fetch.wait.max.ms".to_owned(), "5".to_owned()),
        ]);
        let c = config("b:9092", "g", "c", StartAt::End, &props);
        assert_eq!(c.get("auto.offset.reset"), Some("earliest"));
        assert_eq!(c.get("fetch.wait.max.ms"), Some("5"));
    }
}
