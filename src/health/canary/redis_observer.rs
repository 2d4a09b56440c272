//! The canary's Redis observer: subscribes to the canary's pub/sub channel and records each
//! canary it sees. A lost connection (or one that no longer answers a `PING`) is an outage: it
//! reconnects with backoff, and what was published meanwhile is missed, which the next canary
//! repairs.

use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use sqlx::PgPool;
use tokio::time::{timeout, Instant};

use super::{decode, pause, record_seen, Outage, Sink};
use crate::config::Config;
use crate::model::canary::AGGREGATE_TYPE;
use crate::relay;
use crate::retry::Backoff;
use crate::shutdown::Shutdown;

/// Longest wait for Redis to connect or to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

pub(super) struct RedisObserver {
    client: redis::Client,
    channel: String,
    pool: PgPool,
    interval: Duration,
}

impl RedisObserver {
    /// Connects as the relay's Redis sink does (TLS included) when it runs.
    pub fn new(config: &Config, pool: PgPool, interval: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            client: relay::redis::client(&config.redis_url, &config.relay.redis)
                .context("cannot configure the canary's redis observer")?,
            channel: relay::redis::channel(&config.relay.redis, AGGREGATE_TYPE),
            pool,
            interval,
        })
    }

    pub async fn run(self, stop: Shutdown) {
        let mut outage = Outage::new("redis observer");
        let mut backoff = super::reconnect_policy(self.interval).backoff();
        loop {
            match self.watch(&stop, &mut outage, &mut backoff).await {
                Ok(()) => return,
                Err(e) => outage.failed(&e),
            }
            if !pause(backoff.failed(), &stop).await {
                return;
            }
        }
    }

    /// Follows the channel until `stop` (`Ok`) or until the connection is lost (`Err`).
    async fn watch(
        &self,
        stop: &Shutdown,
        outage: &mut Outage,
        backoff: &mut Backoff,
    ) -> anyhow::Result<()> {
        let mut pubsub = timeout(ANSWER_WITHIN, self.client.get_async_pubsub())
            .await
            .context("redis did not answer in time")?
            .context("cannot connect to redis")?;
        timeout(ANSWER_WITHIN, pubsub.subscribe(&self.channel))
            .await
            .context("redis did not answer in time")?
            .context("cannot subscribe to the canary channel")?;
        outage.recovered();
        backoff.succeeded();
        let (mut sink, mut messages) = pubsub.split();
        // Pub/sub gives no sign of a silent connection: after two quiet intervals, a PING says
        // whether it still answers.
        let mut check = tokio::time::interval(self.interval.max(Duration::from_millis(500)));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = Instant::now();
        loop {
            tokio::select! {
                message = messages.next() => {
                    let message = message.context("the redis connection was closed")?;
                    last = Instant::now();
                    let Some((event_id, beat)) = decode(message.get_payload_bytes()) else {
                        tracing::debug!(channel = %self.channel, "ignoring a message on the canary channel that is not a canary");
                        continue;
                    };
                    match record_seen(&self.pool, Sink::Redis, event_id, beat).await {
                        Ok(_) => outage.recovered(),
                        Err(e) => outage.failed(&anyhow::Error::new(e).context("cannot record the canary")),
                    }
                }
                _ = check.tick() => {
                    if last.elapsed() >= self.interval * 2 {
                        timeout(ANSWER_WITHIN, sink.ping::<redis::Value>())
                            .await
                            .context("redis did not answer a ping in time")?
                            .context("redis did not answer a ping")?;
                        last = Instant::now();
                    }
                }
                _ = stop.wait() => return Ok(()),
            }
        }
    }
}
