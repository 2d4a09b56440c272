//! Tailing topics as decoded JSON, one value per record, for debugging (`keel consume`). Like
//! kcat, but it reads keel's headers and decodes Avro through keel's registry.
//!
//! Without a group the reader joins a throwaway one and commits nothing; with a group it commits
//! what it handed on (auto-commit), so a later tail of that group starts after it.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{json, Value};
use uuid::Uuid;

use super::client::{self, StartAt};
use super::decode::Decoder;
use super::record::Record;
use crate::model::VersionSpec;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// What to tail.
#[derive(Debug, Clone, Default)]
pub struct TailOptions {
    pub topics: Vec<String>,
    /// Join this consumer group and commit; `None` for a throwaway group that commits nothing.
    pub group: Option<String>,
    /// Where the group has no offset, start at the beginning of the topics, not the end.
    pub from_beginning: bool,
    /// Resolve payloads to this version of their type's schema; `None` for as written.
    pub schema_version: Option<VersionSpec>,
    /// Stop after this many records.
    pub max_messages: Option<u64>,
    /// Raw librdkafka settings (security, say), applied last.
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Reads `options.topics` from the brokers at `brokers` until `shutdown`, or until
/// `max_messages`, handing `each` one JSON value per record: `{"record": {topic, partition,
/// offset, key}, "event": ...}`, or `"error"` instead of `"event"` where it cannot be decoded.
/// Returns how many records were handed on.
#[tracing::instrument(skip_all, fields(messaging.system = "kafka", messaging.consumer.group.name))]
pub async fn tail(
    brokers: &str,
    registry: Arc<Registry>,
    options: &TailOptions,
    shutdown: &Shutdown,
    mut each: impl FnMut(Value) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let decoder = Decoder::new(registry);
    let group = options
        .group
        .clone()
        .unwrap_or_else(|| format!("keel-consume-{}", Uuid::new_v4().simple()));
    tracing::Span::current().record("messaging.consumer.group.name", group.as_str());
    // A named group commits what was handed on: librdkafka stores each offset as it is read and
    // commits in the background. The caller's properties still come last.
    let mut properties = std::collections::BTreeMap::new();
    if options.group.is_some() {
        for key in ["enable.auto.commit", "enable.auto.offset.store"] {
            properties.insert(key.to_owned(), "true".to_owned());
        }
    }
    properties.extend(options.properties.clone());
    let start = StartAt::from_beginning(options.from_beginning);
    let config = client::config(brokers, &group, "keel-consume", start, &properties);
    let consumer: StreamConsumer = crate::kafka::create(&config)?;
    let topics: Vec<&str> = options.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut handed = 0u64;
    while options.max_messages.is_none_or(|max| handed < max) {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = shutdown.wait() => break,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "kafka consumer error");
                continue;
            }
        };
        let record = Record::from_message(&m);
        let place = json!({
            "topic": m.topic(),
            "partition": m.partition(),
            "offset": m.offset(),
            "key": m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        });
        let decoded = decoder
            .decode(&record.headers, &record.value, options.schema_version)
            .await;
        each(match decoded {
            Ok(event) => json!({"record": place, "event": event}),
            Err(e) => json!({"record": place, "error": e.to_string()}),
        })?;
        handed += 1;
    }
    Ok(handed)
}
