//! What the monitor (and an event's journey, [`crate::journey`]) asks Kafka: is it there, where
//! each partition of a topic ends, and where a consumer group has committed. rdkafka's calls
//! block, so each runs on the blocking pool, with a time-out; clients are made on first use and
//! kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// A partition's start and end (the offset the next message gets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ends {
    pub low: i64,
    pub high: i64,
}

/// (topic, partition) -> its ends.
pub type Partitions = BTreeMap<(String, i32), Ends>;

pub struct KafkaView {
    brokers: String,
    properties: BTreeMap<String, String>,
    timeout: Duration,
    plain: Mutex<Option<Arc<BaseConsumer>>>,
    groups: Mutex<HashMap<String, Arc<BaseConsumer>>>,
}

impl KafkaView {
    pub fn new(brokers: &str, properties: &BTreeMap<String, String>, timeout: Duration) -> Self {
        Self {
            brokers: brokers.to_owned(),
            properties: crate::kafka::connection_settings(properties),
            timeout,
            plain: Mutex::new(None),
            groups: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, group: Option<&str>) -> anyhow::Result<Arc<BaseConsumer>> {
        let make = |group: &str| -> anyhow::Result<Arc<BaseConsumer>> {
            let mut c = crate::kafka::connection_config(&self.brokers, &self.properties);
            c.set("group.id", group)
                .set("client.id", "keel-health")
                .set("enable.auto.commit", "false");
            Ok(Arc::new(crate::kafka::create(&c)?))
        };
        match group {
            None => {
                let mut plain = self.plain.lock().expect("kafka view lock");
                if plain.is_none() {
                    *plain = Some(make("keel-health")?);
                }
                Ok(plain.clone().expect("made above"))
            }
            Some(g) => {
                let mut groups = self.groups.lock().expect("kafka view lock");
                if let Some(c) = groups.get(g) {
                    return Ok(c.clone());
                }
                let c = make(g)?;
                groups.insert(g.to_owned(), c.clone());
                Ok(c)
            }
        }
    }

    /// How many brokers answer a metadata request.
    pub async fn probe(&self) -> anyhow::Result<usize> {
        let client = self.client(None)?;
        let timeout = self.timeout;
        blocking(move || Ok(client.fetch_metadata(None, timeout)?.brokers().len())).await
    }

    /// The ends of every partition of `topics`. A topic that does not exist yet has none.
    pub async fn ends(&self, topics: Vec<String>) -> anyhow::Result<Partitions> {
        let client = self.client(None)?;
        let timeout = self.timeout;
        blocking(move || {
            let mut out = Partitions::new();
            for topic in topics {
                let meta = client.fetch_metadata(Some(&topic), timeout)?;
                for t in meta.topics().iter().filter(|t| t.error().is_none()) {
                    for p in t.partitions() {
                        let (low, high) = client.fetch_watermarks(&topic, p.id(), timeout)?;
                        out.insert((topic.clone(), p.id()), Ends { low, high });
                    }
                }
            }
            Ok(out)
        })
        .await
    }

    /// Where `group` has committed on each of `partitions`; `None` where it never has.
    pub async fn committed(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> anyhow::Result<BTreeMap<(String, i32), Option<i64>>> {
        let client = self.client(Some(group))?;
        let timeout = self.timeout;
        blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &partitions {
                tpl.add_partition(t, *p);
            }
            let got = client.committed_offsets(tpl, timeout)?;
            Ok(got
                .elements()
                .iter()
                .map(|e| {
                    let at = match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    };
                    ((e.topic().to_owned(), e.partition()), at)
                })
                .collect())
        })
        .await
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("kafka check panicked: {e}"))?
}
