//! The Redis sink: for each event, `PUBLISH` the JSON envelope on the aggregate type's channel
//! (live fan-out; a subscriber that is away misses it) and `XADD` it to the aggregate type's
//! stream, trimmed to about `relay.redis.stream_maxlen` entries (short-lived durable reads with
//! Redis consumer groups).
//!
//! A batch goes out as one Lua script run (`EVALSHA`), so Redis applies it atomically and in
//! order; after an event of an aggregate fails, the script skips that aggregate's later events.
//! Stream entries have the fields `id` (the event id, for deduplication), `type`, `aggregate_id`,
//! `version` and `event` (the envelope). The channel carries the envelope alone, published after
//! the stream entry was added.
//!
//! TLS: a `rediss://` `redis_url`, verified against the system's roots or, with
//! `relay.redis.tls_ca_file`, against that CA alone. [`RedisSink::check_tls`] connects once at the
//! relay's start so that a certificate that does not verify stops it there, with a clear error,
//! rather than failing every batch; keel never falls back to plaintext.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, RedisResult, TlsCertificates};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::sink::{Outcome, SinkError};
use crate::config::RedisSinkConfig;
use crate::model::RecordedEvent;
use crate::telemetry::{self, messaging, messaging::Destination};
use crate::wire;

/// A client for `url` as the sink connects, not yet connected: with `config.tls_ca_file` (for a
/// `rediss://` URL), the server's certificate must chain to that CA. Whoever reads what the sink
/// publishes (the canary's observer) connects the same way.
pub fn client(url: &str, config: &RedisSinkConfig) -> anyhow::Result<redis::Client> {
    let Some(ca_file) = &config.tls_ca_file else {
        return redis::Client::open(url).context("invalid redis url");
    };
    // Read and checked here, so that a bad file is named; the client parses it again.
    crate::tls::read_certificates("relay.redis.tls_ca_file", ca_file)?;
    let root_cert = std::fs::read(ca_file)
        .with_context(|| format!("relay.redis.tls_ca_file = {}", ca_file.display()))?;
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(root_cert),
    };
    redis::Client::build_with_tls(url, certificates)
        .context("invalid redis url for relay.redis.tls_ca_file (it needs rediss://)")
}

/// The pub/sub channel the sink publishes `aggregate_type`'s events on.
pub fn channel(config: &RedisSinkConfig, aggregate_type: &str) -> String {
    format!("{}{aggregate_type}", config.channel_prefix)
}

/// The stream the sink adds `aggregate_type`'s events to.
pub fn stream(config: &RedisSinkConfig, aggregate_type: &str) -> String {
    format!("{}{aggregate_type}", config.stream_prefix)
}

pub struct RedisSink {
    client: redis::Client,
    config: RedisSinkConfig,
    connection: Mutex<Option<ConnectionManager>>,
    script: redis::Script,
}

impl RedisSink {
    /// A sink for `url`, not yet connected. With `config.tls_ca_file` (for a `rediss://` URL),
    /// the server's certificate must chain to that CA.
    pub fn new(url: &str, config: RedisSinkConfig) -> anyhow::Result<Self> {
        Ok(Self {
            client: client(url, &config)?,
            config,
            connection: Mutex::new(None),
            script: redis::Script::new(PUBLISH_SCRIPT),
        })
    }

    /// The pub/sub channel of `aggregate_type`'s events.
    pub fn channel(&self, aggregate_type: &str) -> String {
        channel(&self.config, aggregate_type)
    }

    pub fn stream(&self, aggregate_type: &str) -> String {
        stream(&self.config, aggregate_type)
    }

    /// For a `rediss://` URL: connects once and fails if TLS does, naming what to check. A server
    /// that cannot be reached only gets a warning: the sink retries as it does without TLS.
    pub async fn check_tls(&self) -> anyhow::Result<()> {
        if !matches!(
            self.client.get_connection_info().addr(),
            redis::ConnectionAddr::TcpTls { .. }
        ) {
            return Ok(());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let Err(e) = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
        else {
            return Ok(());
        };
        let Some(tls) = crate::tls::tls_error(&e) else {
            tracing::warn!(error = %e, "cannot reach redis over tls at start; the redis sink retries");
            return Ok(());
        };
        let what = match tls {
            rustls::Error::InvalidCertificate(_) => {
                "the redis server's certificate does not verify: check that relay.redis.tls_ca_file \
                 is the CA that signed it (or, without it, that the system trusts that CA) and that \
                 redis_url's host is a name in the certificate"
            }
            _ => "the tls handshake with redis failed: check that the server speaks tls on redis_url's port",
        };
        // The client's message already holds its source's, which a chain would show twice.
        Err(anyhow::anyhow!("{what}: {e}"))
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

    /// Publishes `events` with one script run: Redis runs it atomically and in order, and the
    /// script skips the rest of an aggregate's events after one of them fails, so a later event
    /// never reaches the stream or the channel ahead of an earlier one. An event whose envelope
    /// cannot be serialised fails for good, and its aggregate's later events are not sent.
    #[tracing::instrument(skip_all, fields(messaging.system = "redis", messaging.batch.message_count = events.len()))]
    pub async fn publish(&self, events: &[&RecordedEvent]) -> Vec<Outcome> {
        // With trace export on, a `publish <stream>` span per event with trace context, ended
        // when the script has answered.
        let spans: Vec<tracing::Span> = if telemetry::enabled() {
            events
                .iter()
                .map(|e| {
                    let to = Destination {
                        system: "redis",
                        name: &self.stream(&e.aggregate_type),
                        key: None,
                    };
                    messaging::publish(e, to)
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        let mut unserialisable: HashSet<(&str, Uuid)> = HashSet::new();
        let mut call = self.script.prepare_invoke();
        call.arg(self.config.stream_maxlen);
        let mut in_script = 0;
        for (e, outcome) in events.iter().zip(&mut outcomes) {
            let aggregate = (e.aggregate_type.as_str(), e.aggregate_id);
            if unserialisable.contains(&aggregate) {
                *outcome = Some(Outcome::NotSent);
                continue;
            }
            // The JSON envelope: the event as keel's read API returns it.
            let envelope = match wire::json::encode(e) {
                Ok(bytes) => bytes,
                Err(err) => {
                    unserialisable.insert(aggregate);
                    *outcome = Some(Outcome::Failed(SinkError::permanent(
                        "serialization",
                        err.to_string(),
                    )));
                    continue;
                }
            };
            in_script += 1;
            call.key(self.stream(&e.aggregate_type))
                .arg(format!("{}/{}", e.aggregate_type, e.aggregate_id))
                .arg(self.channel(&e.aggregate_type))
                .arg(e.id.to_string())
                .arg(&e.event_type)
                .arg(e.aggregate_id.to_string())
                .arg(e.version)
                .arg(envelope);
        }
        let replies: Vec<Outcome> = if in_script == 0 {
            Vec::new()
        } else {
            self.run(call, in_script).await
        };
        let mut replies = replies.into_iter();
        let outcomes: Vec<Outcome> = outcomes
            .into_iter()
            .map(|o| {
                o.or_else(|| replies.next()).unwrap_or_else(|| {
                    Outcome::Failed(SinkError::retriable("protocol", "missing reply"))
                })
            })
            .collect();
        for (span, outcome) in spans.iter().zip(&outcomes) {
            match outcome {
                Outcome::Delivered => {}
                Outcome::NotSent => messaging::failed(span, "not_sent"),
                Outcome::Failed(e) => messaging::failed(span, e.kind),
            }
        }
        outcomes
    }

    /// Runs the script for `count` events: one outcome per event, in order.
    async fn run(&self, call: redis::ScriptInvocation<'_>, count: usize) -> Vec<Outcome> {
        let replies: RedisResult<Vec<String>> = match self.connection().await {
            Ok(mut c) => call.invoke_async(&mut c).await,
            Err(e) => Err(e),
        };
        match replies {
            Ok(replies) if replies.len() == count => replies
                .iter()
                .map(|r| match r.as_str() {
                    "ok" => Outcome::Delivered,
                    "skip" => Outcome::NotSent,
                    error => Outcome::Failed(classify_reply(error)),
                })
                .collect(),
            Ok(replies) => {
                let e = SinkError::retriable(
                    "protocol",
                    format!("{} replies for {} events", replies.len(), count),
                );
                vec![Outcome::Failed(e); count]
            }
            Err(e) => vec![Outcome::Failed(classify(&e)); count],
        }
    }
}

/// KEYS: each event's stream. ARGV: the stream length, then per event its aggregate, channel, id,
/// type, aggregate id, version and envelope. Returns per event `ok`, `skip` (an earlier event of
/// its aggregate failed) or the error.
const PUBLISH_SCRIPT: &str = r#"
local maxlen = ARGV[1]
local failed = {}
local out = {}
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 7
  local aggregate = ARGV[a]
  if failed[aggregate] then
    out[i] = 'skip'
  else
    local r = redis.pcall('XADD', KEYS[i], 'MAXLEN', '~', maxlen, '*',
      'id', ARGV[a + 2], 'type', ARGV[a + 3], 'aggregate_id', ARGV[a + 4],
      'version', ARGV[a + 5], 'event', ARGV[a + 6])
    if type(r) == 'table' and r.err then
      failed[aggregate] = true
      out[i] = r.err
    else
      redis.call('PUBLISH', ARGV[a + 1], ARGV[a + 6])
      out[i] = 'ok'
    end
  end
end
return out
"#;

/// The error table for an error the script caught: a key of the wrong type is permanent; anything
/// else (out of memory, loading, busy) is retriable.
fn classify_reply(error: &str) -> SinkError {
    if error.starts_with("WRONGTYPE") {
        SinkError::permanent("wrong_type", error)
    } else {
        SinkError::retriable("redis_error", error)
    }
}

/// An error of the whole call (connection refused or dropped, time-out, scripting refused): never
/// an event's fault, so always retriable. Errors of single events come back in the script's reply
/// ([`classify_reply`]).
pub fn classify(e: &RedisError) -> SinkError {
    let kind = if e.is_connection_refusal() || e.is_connection_dropped() || e.is_io_error() {
        "unavailable"
    } else if e.is_timeout() {
        "timeout"
    } else {
        "redis_error"
    };
    SinkError::retriable(kind, e.to_string())
}
