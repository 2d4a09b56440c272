//! `keel consume`: tail topics as JSON lines, one decoded event per record, for debugging. Like
//! kcat, but it reads keel's headers and decodes Avro through keel's registry.

use std::sync::Arc;

use clap::Args;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::json;
use uuid::Uuid;

use super::decode::Decoder;
use super::dlq::Record;
use crate::config::Config;
use crate::model::VersionSpec;
use crate::registry::Registry;
use crate::store::Store;

#[derive(Debug, Clone, Args)]
pub struct ConsumeArgs {
    /// A topic to read; repeat for several.
    #[arg(long, required = true)]
    pub topic: Vec<String>,
    /// Join this consumer group and commit what was printed; without it, a throwaway group that
    /// commits nothing.
    #[arg(long)]
    pub group: Option<String>,
    /// Start where the group has no offset from the beginning of the topics, not the end.
    #[arg(long)]
    pub from_beginning: bool,
    /// Resolve payloads to this version of their type's schema (`latest` or a number), as a
    /// subscriber declaring it would get them; by default, as written.
    #[arg(long)]
    pub schema_version: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
}

pub async fn run(config: &Config, args: ConsumeArgs) -> anyhow::Result<()> {
    let reader = args
        .schema_version
        .as_deref()
        .map(VersionSpec::parse)
        .transpose()
        .map_err(|_| anyhow::anyhow!("--schema-version takes `latest` or a positive number"))?;
    let store = Store::connect(&config.database()).await?;
    let decoder = Decoder::new(Arc::new(Registry::new(store.pool().clone())));
    let group = args
        .group
        .clone()
        .unwrap_or_else(|| format!("keel-consume-{}", Uuid::new_v4().simple()));
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.kafka_brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", args.group.is_some().to_string())
        .set(
            "auto.offset.reset",
            if args.from_beginning {
                "earliest"
            } else {
                "latest"
            },
        )
        .create()?;
    let topics: Vec<&str> = args.topic.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let mut printed = 0u64;
    while args.max_messages.is_none_or(|max| printed < max) {
        let m = tokio::select! {
            m = consumer.recv() => m,
            _ = tokio::signal::ctrl_c() => break,
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
        let line = match decoder.decode(&record.headers, &record.value, reader).await {
            Ok(event) => json!({"record": place, "event": event}),
            Err(e) => json!({"record": place, "error": e.to_string()}),
        };
        println!("{line}");
        printed += 1;
    }
    Ok(())
}
