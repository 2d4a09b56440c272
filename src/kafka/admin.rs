//! Creating topics: the one helper the relay, the consumer runtime's `.dlq` mirror and the
//! benchmarks use, with the partition count and replication factor the operator configured
//! (`relay.kafka.partitions`, `relay.kafka.replication`).

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// Creates missing topics, remembering the ones known to exist so each is asked for once.
pub struct Topics {
    admin: AdminClient<DefaultClientContext>,
    partitions: i32,
    replication: i32,
    known: Mutex<HashSet<String>>,
}

/// Why a topic could not be created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the admin request failed: {0}")]
    Request(#[from] KafkaError),
    #[error("cannot create topic {topic}: {code}")]
    Refused {
        topic: String,
        code: RDKafkaErrorCode,
    },
}

impl Topics {
    /// An admin client that connects as `properties` say (see [`super::connection_config`]).
    pub fn new(
        brokers: &str,
        properties: &BTreeMap<String, String>,
        partitions: i32,
        replication: i32,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            admin: super::create(&super::connection_config(brokers, properties))?,
            partitions,
            replication,
            known: Mutex::new(HashSet::new()),
        })
    }

    /// Creates those of `topics` not known to exist; a topic that already exists counts as
    /// created. Reports the first failure, after trying every topic.
    #[tracing::instrument(skip_all, fields(messaging.system = "kafka"))]
    pub async fn ensure<'t>(&self, topics: impl IntoIterator<Item = &'t str>) -> Result<(), Error> {
        let missing: Vec<String> = {
            let known = self
                .known
                .lock()
                .expect("topic set lock poisoned by a panic");
            let mut missing: Vec<String> = topics
                .into_iter()
                .filter(|t| !known.contains(*t))
                .map(str::to_owned)
                .collect();
            missing.sort();
            missing.dedup();
            missing
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let results = self.admin.create_topics(new.iter(), &opts).await?;
        let mut known = self
            .known
            .lock()
            .expect("topic set lock poisoned by a panic");
        let mut first_failure = None;
        for result in results {
            match result {
                Ok(name) => {
                    tracing::info!(topic = %name, "created kafka topic");
                    known.insert(name);
                }
                Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    known.insert(name);
                }
                Err((topic, code)) => {
                    first_failure.get_or_insert(Error::Refused { topic, code });
                }
            }
        }
        first_failure.map_or(Ok(()), Err)
    }
}
