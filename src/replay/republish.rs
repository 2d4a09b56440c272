//! Republishing: re-send stored events to a Kafka topic, for example to seed a new consumer group
//! or to recover a lost topic (`keel replay republish`).
//!
//! Events are read in the log's gap-safe order (which is version order for every aggregate) and
//! sent a page at a time through the relay's Kafka sink: same key, value and headers as the
//! relay's, so consumers deduplicate on `keel-event-id` as usual. A page is sent only after the
//! previous one was acknowledged, so each aggregate's events arrive in order. The rate is capped;
//! a shutdown stops after the page in flight and returns the cursor to resume from. Progress
//! reports carry the cursor of the last acknowledged page ([`Progress::advance_to`]), so a run
//! cut short without its report (its process died) resumes from the last one it reported.

use std::time::{Duration, Instant};

use anyhow::bail;
use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::progress::Reporter;
use crate::archive::read::Tiered;
use crate::model::EventType;
use crate::relay::kafka::KafkaSink;
use crate::relay::sink::Outcome;
use crate::shutdown::Shutdown;
use crate::store::log::{LogCursor, LogFilter};

/// Which events to re-send, and how fast.
#[derive(Debug, Clone, Default)]
pub struct RepublishOptions {
    /// Only events of these types; empty for all.
    pub event_types: Vec<EventType>,
    /// Only events created at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// Only events created before this time.
    pub to: Option<DateTime<Utc>>,
    /// Resume after this log cursor ([`LogCursor::START`] for the beginning).
    pub after: LogCursor,
    /// Most events per second; positive.
    pub rate: u64,
    /// Reads below a retention horizon through the archive: the bytes sent are the bytes the
    /// relay sent originally, since the archive keeps each event's payload, schema id and ids.
    pub archive: Tiered,
}

/// What a republish did.
#[derive(Debug, Clone, Copy)]
pub struct Republished {
    pub sent: u64,
    /// The last event sent; resume after it.
    pub cursor: LogCursor,
    /// Stopped by the shutdown before the end of the log.
    pub interrupted: bool,
}

const PAGE: i64 = 500;

impl RepublishOptions {
    fn filter(&self) -> LogFilter {
        LogFilter {
            event_types: self.event_types.clone(),
            from: self.from,
            to: self.to,
            ..Default::default()
        }
    }
}

/// How many events a republish with `options` would send now: what its progress counts to.
pub async fn count(pool: &PgPool, options: &RepublishOptions) -> anyhow::Result<u64> {
    Ok(options
        .archive
        .count_after(pool, options.after, &options.filter())
        .await?)
}

/// Re-sends the events `options` selects through `sink` (already pointed at its topic) until the
/// end of the log or `shutdown`. `label` names the work in progress reports, which go to
/// `reporter`.
#[tracing::instrument(skip_all, fields(messaging.system = "kafka", db.system = "postgresql"))]
pub async fn republish(
    pool: &PgPool,
    sink: &KafkaSink,
    options: &RepublishOptions,
    label: &str,
    shutdown: &Shutdown,
    reporter: &Reporter,
) -> anyhow::Result<Republished> {
    if options.rate == 0 {
        bail!("the rate must be positive");
    }
    let mut cursor = options.after;
    let filter = options.filter();
    let total = count(pool, options).await?;
    let progress = reporter.start(label, Some(total));
    let started = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let page = options
            .archive
            .read_after(pool, cursor, &filter, PAGE)
            .await?;
        let Some(last) = page.last().map(|e| e.cursor()) else {
            break;
        };
        let events: Vec<_> = page.iter().map(|e| &e.event).collect();
        let outcomes = sink.publish(&events).await;
        if let Some((event, outcome)) = events
            .iter()
            .zip(&outcomes)
            .find(|(_, o)| **o != Outcome::Delivered)
        {
            bail!(
                "event {} was not delivered ({outcome:?}); resume with --after {}",
                event.id,
                cursor.encode()
            );
        }
        sent += events.len() as u64;
        progress.advance_to(events.len() as u64, last);
        cursor = last;
        let due = Duration::from_secs_f64(sent as f64 / options.rate as f64);
        let elapsed = started.elapsed();
        tokio::select! {
            _ = tokio::time::sleep(due.saturating_sub(elapsed)) => {}
            _ = shutdown.wait() => {
                progress.finish(&format!("interrupted; resume with --after {}", cursor.encode()));
                return Ok(Republished { sent, cursor, interrupted: true });
            }
        }
    }
    sink.flush(Duration::from_secs(5)).await;
    progress.finish("done");
    Ok(Republished {
        sent,
        cursor,
        interrupted: false,
    })
}
