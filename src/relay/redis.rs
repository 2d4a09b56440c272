//! The Redis sink: for each event, `PUBLISH` the JSON envelope on the aggregate type's channel
//! (live fan-out; a subscriber that is away misses it) and `XADD` it to the aggregate type's
//! stream, trimmed to about `relay.redis.stream_maxlen` entries (short-lived durable reads with
//! Redis consumer groups).
//!
//! A batch goes out as one pipeline on one connection, so Redis applies it in order. Stream
//! entries have the fields `id` (the event id, for deduplication), `type`, `aggregate_id`,
//! `version` and `event` (the envelope). The channel carries the envelope alone.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, Value};
use tokio::sync::Mutex;

use super::envelope::json_envelope;
use super::outbox::OutboxRow;
use super::sink::{Outcome, SinkError};
use crate::config::RedisSinkConfig;

pub struct RedisSink {
    client: redis::Client,
    config: RedisSinkConfig,
    connection: Mutex<Option<ConnectionManager>>,
}

impl RedisSink {
    pub fn new(url: &str, config: RedisSinkConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            config,
            connection: Mutex::new(None),
        })
    }

    pub fn channel(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}", self.config.channel_prefix)
    }

    pub fn stream(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}", self.config.stream_prefix)
    }

    /// The shared connection, opened on first use; it reconnects by itself after a failure.
    async fn connection(&self) -> RedisResult<ConnectionManager> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        let c = ConnectionManager::new_with_config(self.client.clone(), config).await?;
        *slot = Some(c.clone());
        Ok(c)
    }

    pub async fn publish(&self, rows: &[&OutboxRow]) -> Vec<Outcome> {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for row in rows {
            let e = &row.event;
            let body = json_envelope(e).to_string();
            pipe.cmd("PUBLISH")
                .arg(self.channel(&e.aggregate_type))
                .arg(&body);
            pipe.cmd("XADD")
                .arg(self.stream(&e.aggregate_type))
                .arg("MAXLEN")
                .arg("~")
                .arg(self.config.stream_maxlen)
                .arg("*")
                .arg("id")
                .arg(e.id.to_string())
                .arg("type")
                .arg(&e.event_type)
                .arg("aggregate_id")
                .arg(e.aggregate_id.to_string())
                .arg("version")
                .arg(e.version)
                .arg("event")
                .arg(&body);
        }
        let results: RedisResult<Vec<RedisResult<Value>>> = match self.connection().await {
            Ok(mut c) => pipe.query_async(&mut c).await,
            Err(e) => Err(e),
        };
        match results {
            Ok(results) if results.len() == rows.len() * 2 => results
                .chunks(2)
                .map(|pair| match pair.iter().find_map(|r| r.as_ref().err()) {
                    None => Outcome::Delivered,
                    Some(e) => Outcome::Failed(classify(e)),
                })
                .collect(),
            Ok(results) => {
                let e = SinkError::retriable(
                    "protocol",
                    format!("{} replies for {} commands", results.len(), rows.len() * 2),
                );
                vec![Outcome::Failed(e); rows.len()]
            }
            Err(e) => vec![Outcome::Failed(classify(&e)); rows.len()],
        }
    }
}

/// Redis's error table: a key of the wrong type or a command Redis refuses for this data is
/// permanent; everything else (connection refused or dropped, time-outs, loading, read-only
/// replica, out of memory) is retriable.
pub fn classify(e: &RedisError) -> SinkError {
    match e.code() {
        Some("WRONGTYPE") => SinkError::permanent("wrong_type", e.to_string()),
        Some("ERR") if !e.is_io_error() => SinkError::permanent("refused", e.to_string()),
        _ if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() => {
            SinkError::retriable("unavailable", e.to_string())
        }
        _ if e.is_timeout() => SinkError::retriable("timeout", e.to_string()),
        _ => SinkError::retriable("redis_error", e.to_string()),
    }
}
