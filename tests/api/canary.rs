//! Canary events (`observability.canary_interval_ms`) through a real broker, a Redis server of
//! the test's own and PostgreSQL: each sink's row in `pipeline_canary_seen` advances, keel
//! processes sharing a database write one canary per interval between them, and a Redis outage
//! stops only Redis's row.

use std::time::Duration;

use keel::app::Application;
use keel::config::Config;
use keel::health::canary::{self, CanaryReading, Sink};
use keel::shutdown::Shutdown;
use sqlx::PgPool;

use crate::helpers::{eventually, spawn_app_with, test_config};
use crate::relay_support::{fast_relay, Broker, RedisServer, RelayProcess};

const INTERVAL_MS: u64 = 300;

async fn reading(pool: &PgPool) -> CanaryReading {
    canary::read(pool).await.expect("read the canary tables")
}

/// The newest canary seen on `sink`, once it is past `after`.
async fn seen_past(pool: &PgPool, sink: Sink, after: i64) -> canary::Seen {
    eventually(
        Duration::from_secs(30),
        &format!("a canary past {after} on {}", sink.as_str()),
        || async {
            let r = reading(pool).await;
            r.seen_on(sink).filter(|s| s.seq > after).copied()
        },
    )
    .await
}

/// The newest canary written: its number and when.
async fn sent(pool: &PgPool) -> canary::Sent {
    eventually(
        Duration::from_secs(10),
        "a canary to be written",
        || async { reading(pool).await.sent },
    )
    .await
}

/// How many canary events are stored and how many canaries were claimed, in one snapshot.
async fn events_and_claims(pool: &PgPool) -> (i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM events WHERE aggregate_type = 'keel.canary'),
                (SELECT seq FROM pipeline_canary_sent)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A metric's value for `sink` on the `/metrics` page at `port`.
async fn metric(port: u16, name: &str, sink: &str) -> Option<f64> {
    let body = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let prefix = format!("{name}{{sink=\"{sink}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&prefix))?
        .parse()
        .ok()
}

#[tokio::test]
async fn a_relay_process_writes_canaries_and_sees_them_on_kafka_and_redis() {
    let broker = Broker::start().await;
    let redis = RedisServer::start().await;
    // keel serve without the canary or the relay; a separate `keel relay` has both.
    let app = spawn_app_with(|c| fast_relay(c, &broker.brokers(), &redis.url())).await;
    let mut relay_config = app.config.clone();
    relay_config.observability.canary_interval_ms = INTERVAL_MS;
    let relay = RelayProcess::start(&relay_config, "canary-relay");
    let pool = app.store.pool();

    let kafka = seen_past(pool, Sink::Kafka, 0).await;
    let redis_seen = seen_past(pool, Sink::Redis, 0).await;
    for first in [kafka, redis_seen] {
        assert!(first.seen_at > first.sent_at, "{first:?}");
        assert!(first.latency() > Duration::ZERO);
    }
    // Later canaries keep arriving, with higher numbers, on both sinks.
    let later_kafka = seen_past(pool, Sink::Kafka, kafka.seq + 2).await;
    let later_redis = seen_past(pool, Sink::Redis, redis_seen.seq + 2).await;
    assert!(later_kafka.sent_at > kafka.sent_at && later_redis.sent_at > redis_seen.sent_at);

    // One event per claimed canary.
    let (events, claims) = events_and_claims(pool).await;
    assert_eq!(events, claims);
    let versions: Vec<i32> = sqlx::query_scalar(
        "SELECT version FROM events WHERE aggregate_type = 'keel.canary' ORDER BY version",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(versions, (1..=versions.len() as i32).collect::<Vec<_>>());

    // The relay process exports both metrics for both sinks.
    for sink in ["kafka", "redis"] {
        let latency = eventually(Duration::from_secs(10), "the canary latency metric", || {
            metric(relay.metrics_port, "keel_canary_latency_seconds", sink)
        })
        .await;
        assert!(latency > 0.0, "{sink}: {latency}");
        eventually(Duration::from_secs(10), "the canary age metric", || {
            metric(relay.metrics_port, "keel_canary_age_seconds", sink)
        })
        .await;
    }
}

/// A `keel serve` on `config`'s database, stopped by triggering the token returned.
async fn serve(config: &Config) -> Shutdown {
    let app = Application::build(config).await.expect("keel builds");
    let stop = Shutdown::new();
    tokio::spawn(app.run_until(stop.clone()));
    stop
}

#[tokio::test]
async fn two_servers_on_one_database_write_one_canary_per_interval_between_them() {
    let mut config = test_config();
    config.observability.canary_interval_ms = INTERVAL_MS;
    // The writers alone: no sink to watch.
    config.relay.kafka.enabled = false;
    config.relay.redis.enabled = false;
    let first = serve(&config).await;
    let pool = PgPool::connect(&config.database_url).await.unwrap();
    // The first server alone writes canaries.
    let alone = sent(&pool).await;
    eventually(
        Duration::from_secs(10),
        "the first server's canaries",
        || async { reading(&pool).await.sent.filter(|s| s.seq >= alone.seq + 2) },
    )
    .await;

    // A second one joins on the same database, with the same settings.
    let second = serve(&config).await;
    tokio::time::sleep(Duration::from_millis(INTERVAL_MS)).await;
    let start = reading(&pool).await.sent.expect("canaries");
    tokio::time::sleep(Duration::from_millis(12 * INTERVAL_MS)).await;
    let end = reading(&pool).await.sent.expect("canaries");
    let written = (end.seq - start.seq) as f64;
    let intervals = (end.sent_at - start.sent_at).num_milliseconds() as f64 / INTERVAL_MS as f64;
    // One canary per slot is about one per interval; two servers each writing their own would
    // make it two.
    assert!(
        written >= 5.0 && written <= 1.3 * intervals + 1.0,
        "{written} canaries in {intervals:.1} intervals"
    );
    let (events, claims) = events_and_claims(&pool).await;
    assert_eq!(events, claims, "one event per claimed slot");

    // The second server was trying all along: with the first gone, it carries on alone.
    first.trigger();
    let after = reading(&pool).await.sent.expect("canaries");
    eventually(
        Duration::from_secs(10),
        "canaries after the first server left",
        || async { reading(&pool).await.sent.filter(|s| s.seq >= after.seq + 3) },
    )
    .await;
    second.trigger();
}

#[tokio::test]
async fn a_redis_outage_stops_the_redis_canary_while_kafkas_keeps_advancing() {
    let broker = Broker::start().await;
    let mut redis = RedisServer::start().await;
    let app = spawn_app_with(|c| {
        fast_relay(c, &broker.brokers(), &redis.url());
        c.relay.in_process = true;
        c.observability.canary_interval_ms = INTERVAL_MS;
    })
    .await;
    let pool = app.store.pool();
    let kafka = seen_past(pool, Sink::Kafka, 0).await;
    seen_past(pool, Sink::Redis, 0).await;
    seen_past(pool, Sink::Kafka, kafka.seq + 1).await;

    redis.stop();
    // A canary already on its way may still be recorded; nothing after it.
    let redis_at_stop = reading(pool).await.seen_on(Sink::Redis).unwrap().seq;
    let kafka_at_stop = reading(pool).await.seen_on(Sink::Kafka).unwrap().seq;
    let kafka_later = seen_past(pool, Sink::Kafka, kafka_at_stop + 5).await;
    let r = reading(pool).await;
    let redis_now = r.seen_on(Sink::Redis).unwrap();
    assert!(
        redis_now.seq <= redis_at_stop + 1,
        "redis advanced from {redis_at_stop} to {} while down",
        redis_now.seq
    );
    assert!(kafka_later.seq > redis_now.seq + 3);
    assert!(r.age(Sink::Redis) > r.age(Sink::Kafka));
    assert!(r.behind(Sink::Redis) >= 4, "{r:?}");

    // Back up: the observer reconnects and Redis's row advances again.
    redis.restart().await;
    seen_past(pool, Sink::Redis, kafka_later.seq).await;
}
