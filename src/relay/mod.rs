//! The relay: ships outbox rows to Kafka and to Redis.
//!
//! # Guarantees (each has a named test; see docs/guarantees.md)
//! * **At-least-once.** A sink's cursor moves past a row only after that sink acknowledged it (or
//!   the row was parked). A crash at any point loses nothing; at worst the batches in flight, and
//!   those acknowledged in the last [`worker::CURSOR_COMMIT_EVERY`] whose cursor move was not
//!   written yet, are sent again. Every message carries its event id, so consumers can
//!   deduplicate.
//! * **Per-aggregate order.** An aggregate's rows are all in one relay partition; one relay at a
//!   time holds that partition ([`lease`]) and sends its rows in log order, which is version order
//!   (see [`crate::store::log`]). Kafka gets the aggregate id as key (one Kafka partition) from an
//!   idempotent, gapless producer with no local time-out; Redis gets one ordered script run per
//!   round that skips an aggregate's later rows after one fails. A row that
//!   fails stops its partition's cursor there, so later rows are re-sent after it, never instead
//!   of it. After a takeover or a retry a consumer may see an event again (same id), but the first
//!   time it sees each event is in version order.
//! * **No silent skip.** Rows are read below the transaction horizon of [`crate::store::log`].
//! * **Independent sinks.** Kafka and Redis each have their own cursors and loop: an outage of one
//!   builds that sink's backlog only.
//! * **Parking.** A row that fails permanently `relay.max_attempts` times is parked with its error;
//!   its aggregate's later rows are held behind it, in order, while other aggregates flow.
//!   `keel outbox retry|skip` releases them.
//! * **Bounded outbox.** Rows every sink has passed are deleted every second.

pub mod admin;
pub mod kafka;
pub mod lease;
pub mod outbox;
pub mod redis;
pub mod sink;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::kafka::KafkaSink;
use self::lease::Leases;
use self::outbox::{PARTITIONS, WAKE_CHANNEL};
use self::redis::RedisSink;
pub use self::sink::Sink;
use self::sink::SinkKind;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::heartbeat::Beat;
use crate::metrics;
use crate::registry::Registry;
use crate::shutdown::Shutdown;

/// A running relay. [`RelayHandle::shutdown`] stops it and frees its leases at once.
pub struct RelayHandle {
    stop: Shutdown,
    tasks: JoinSet<()>,
    sinks: Vec<Arc<Sink>>,
    beats: Vec<Beat>,
}

impl RelayHandle {
    /// Each sink's heartbeat (`relay.kafka`, `relay.redis`), for this process's readiness.
    pub fn beats(&self) -> &[Beat] {
        &self.beats
    }

    pub async fn shutdown(mut self) {
        self.stop.trigger();
        while self.tasks.join_next().await.is_some() {}
        for sink in &self.sinks {
            sink.shutdown().await;
        }
    }
}

/// Starts the relay's tasks: leases, one loop per enabled sink, clean-up, status metrics, and a
/// listener for wake-ups. `commits` is an in-process "something was committed" signal (from
/// [`crate::store::Store::commits`]) when the relay runs inside `keel serve`.
pub async fn start(
    config: &Config,
    pool: PgPool,
    catalog: Arc<Catalog>,
    registry: Arc<Registry>,
    commits: Option<watch::Receiver<u64>>,
) -> anyhow::Result<RelayHandle> {
    let relay = &config.relay;
    crate::tls::install_provider();
    let pool = relay_pool(&pool, relay).await?;
    let mut sinks: Vec<Arc<Sink>> = Vec::new();
    if relay.kafka.enabled {
        let k = KafkaSink::new(
            &config.kafka_brokers,
            relay.kafka.clone(),
            catalog,
            registry,
        )
        .context("cannot configure the kafka producer")?;
        sinks.push(Arc::new(Sink::Kafka(k)));
    }
    if relay.redis.enabled {
        let r = RedisSink::new(&config.redis_url, relay.redis.clone())
            .context("cannot configure the redis sink")?;
        r.check_tls()
            .await
            .context("cannot start the redis sink over tls")?;
        sinks.push(Arc::new(Sink::Redis(r)));
    }
    let name = relay
        .name
        .clone()
        .unwrap_or_else(crate::heartbeat::process_name);
    let leases = Arc::new(Leases::new(
        pool.clone(),
        name.clone(),
        Duration::from_millis(relay.lease_ttl_ms),
        Duration::from_millis(relay.heartbeat_ms),
        relay.lanes,
    ));
    let stop = Shutdown::new();
    let (wake_tx, wake_rx) = watch::channel(0u64);
    let wake_tx = Arc::new(wake_tx);
    let mut tasks = JoinSet::new();

    if let Some(mut commits) = commits {
        let wake = wake_tx.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    changed = commits.changed() => if changed.is_err() { break },
                    _ = stop.wait() => break,
                }
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
    }
    tasks.spawn(listen(pool.clone(), wake_tx.clone(), stop.clone()));
    {
        let leases = leases.clone();
        let stop = stop.clone();
        tasks.spawn(async move { leases.run(stop).await });
    }
    let every = config.observability.sample_every();
    let mut beats = Vec::new();
    for sink in &sinks {
        // One heartbeat per sink and process; each lane ticks its own part of it.
        let beat = Beat::start(
            pool.clone(),
            format!("relay.{}", sink.kind()),
            name.clone(),
            serde_json::json!({"lanes": relay.lanes}),
            every,
        );
        for lane in 0..relay.lanes {
            let worker = worker::SinkLoop {
                sink: sink.clone(),
                pool: pool.clone(),
                owner: leases.owner,
                owned: leases.subscribe(),
                gate: leases.gate(lane),
                wake: wake_rx.clone(),
                config: relay.clone(),
                attempts: Default::default(),
                lane: (lane, relay.lanes),
                inflight: Default::default(),
                pending: Default::default(),
                beat: beat.lane(),
            };
            tasks.spawn(worker.run(stop.clone()));
        }
        beats.push(beat);
    }
    let kinds: Vec<SinkKind> = sinks.iter().map(|s| s.kind()).collect();
    tasks.spawn(housekeeping(pool, leases.subscribe(), kinds, stop.clone()));
    tracing::info!(relay = %name, owner = %leases.owner, sinks = sinks.len(), "relay started");
    Ok(RelayHandle {
        stop,
        tasks,
        sinks,
        beats,
    })
}

/// The relay's own connections, apart from the API's: every sink lane and the lease, listener and
/// housekeeping tasks get one, so a busy API never starves the relay (nor the reverse). Bitmap
/// scans are off on them: see [`outbox::read_batch`].
async fn relay_pool(pool: &PgPool, relay: &crate::config::RelayConfig) -> anyhow::Result<PgPool> {
    let options = (*pool.connect_options())
        .clone()
        .options([("enable_bitmapscan", "off")]);
    let connections = 2 * relay.lanes as u32 + 4;
    PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .context("the relay cannot connect to the database")
}

/// Wakes the sink loops on `NOTIFY keel_relay` (sent by `keel serve` after commits, and by
/// `keel outbox retry|skip`). Reconnects after a lost connection; polling covers the gap.
async fn listen(pool: PgPool, wake: Arc<watch::Sender<u64>>, stop: Shutdown) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&pool).await?;
            l.listen(WAKE_CHANNEL).await?;
            loop {
                l.recv().await?;
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
            #[allow(unreachable_code)]
            Ok::<(), sqlx::Error>(())
        };
        tokio::select! {
            r = listener => if let Err(e) = r {
                tracing::debug!(error = %e, "relay wake-up listener lost its connection");
            },
            _ = stop.wait() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait() => return,
        }
    }
}

/// Every second: delete delivered outbox rows of the partitions held. Every five: export the
/// backlog metrics for them.
async fn housekeeping(
    pool: PgPool,
    owned: watch::Receiver<lease::Owned>,
    sinks: Vec<SinkKind>,
    stop: Shutdown,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait() => return,
        }
        let parts = owned.borrow().current().to_vec();
        ::metrics::gauge!(metrics::RELAY_PARTITIONS).set(parts.len() as f64);
        if !parts.is_empty() {
            if let Err(e) = outbox::cleanup(&pool, &parts, &sinks).await {
                tracing::warn!(partitions = ?parts, error = %e, "outbox clean-up failed");
            }
        }
        n += 1;
        if n % 5 == 1 && parts.is_empty() {
            // Holding nothing, this relay has no backlog of its own: do not keep exporting what
            // it last saw (summed over relays, that would count another relay's rows twice).
            for sink in &sinks {
                let sink = sink.as_str().to_owned();
                ::metrics::gauge!(metrics::OUTBOX_BACKLOG, "sink" => sink.clone()).set(0.0);
                ::metrics::gauge!(metrics::OUTBOX_OLDEST_AGE, "sink" => sink.clone()).set(0.0);
                ::metrics::gauge!(metrics::OUTBOX_PARKED, "sink" => sink).set(0.0);
            }
        }
        if n % 5 == 1 && !parts.is_empty() {
            match admin::status(&pool, &parts).await {
                Ok(status) => {
                    for s in status
                        .iter()
                        .filter(|s| sinks.iter().any(|k| k.as_str() == s.sink))
                    {
                        let sink = s.sink.clone();
                        ::metrics::gauge!(metrics::OUTBOX_BACKLOG, "sink" => sink.clone())
                            .set(s.backlog as f64);
                        ::metrics::gauge!(metrics::OUTBOX_OLDEST_AGE, "sink" => sink.clone())
                            .set(s.oldest_age_seconds);
                        ::metrics::gauge!(metrics::OUTBOX_PARKED, "sink" => sink)
                            .set((s.parked + s.held) as f64);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the outbox status"),
            }
        }
    }
}

/// Every partition, for operator views.
pub fn all_partitions() -> Vec<i16> {
    (0..PARTITIONS).collect()
}
