//! The canary's writer: claims the current slot and appends the canary, in one transaction.
//!
//! A slot is an interval of the database's clock (`floor(epoch ms / interval)`). The claim is one
//! `UPDATE` of the single row of `pipeline_canary_sent` that succeeds only if the newest canary
//! was written in an earlier slot. Concurrent claimers queue on that row's lock, and each sees the
//! winner's `sent_at` once it commits, so a slot gets one canary whatever the number of writers.
//! Every writer tries twice per interval, so that a slot is claimed even when one writer's timer
//! fires late; a claim that finds its slot taken writes nothing.
//!
//! The event and its outbox row commit with the claim or not at all: a failed append leaves the
//! slot free for the next try. The claim takes the row lock before the append takes the
//! aggregate's advisory lock; only canary writers take both, always in this order, and they hold
//! the row lock until they commit, so their transaction ids follow the canary stream's order.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::Outage;
use crate::model::canary::{Heartbeat, AGGREGATE_ID, AGGREGATE_TYPE, EVENT_TYPE};
use crate::model::{AggregateType, CheckedEvent, EventType, ExpectedVersion, Metadata};
use crate::shutdown::Shutdown;
use crate::{relay, store};

/// Claims the current slot: returns the canary's number and time, or nothing if the slot is
/// taken. $1 is the interval in milliseconds.
const CLAIM: &str = "UPDATE pipeline_canary_sent
                        SET seq = seq + 1, sent_at = now()
                      WHERE id = 1
                        AND (sent_at = '-infinity'
                             OR floor(extract(epoch FROM sent_at) * 1000 / $1)
                                < floor(extract(epoch FROM now()) * 1000 / $1))
                  RETURNING seq, sent_at";

pub(super) struct Writer {
    pub pool: PgPool,
    pub interval: Duration,
    /// Send `NOTIFY keel_relay` with the canary, as `keel serve` does after its appends.
    pub notify: bool,
}

impl Writer {
    pub async fn run(self, stop: Shutdown) {
        let mut tick = tokio::time::interval(self.interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outage = Outage::new("writer");
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait() => return,
            }
            match self.write().await {
                Ok(written) => {
                    outage.recovered();
                    if let Some(beat) = written {
                        tracing::trace!(seq = beat.seq, "canary written");
                    }
                }
                Err(e) => outage.failed(&e),
            }
            if stop.is_triggered() {
                return;
            }
        }
    }

    /// Writes this slot's canary unless another writer did; returns it if this one did.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "canary"))]
    pub async fn write(&self) -> anyhow::Result<Option<Heartbeat>> {
        let interval_ms = i64::try_from(self.interval.as_millis()).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.context("cannot begin")?;
        let claimed: Option<(i64, DateTime<Utc>)> = sqlx::query_as(CLAIM)
            .bind(interval_ms)
            .fetch_optional(&mut *tx)
            .await
            .context("cannot claim the canary's slot")?;
        let Some((seq, sent_at)) = claimed else {
            tx.rollback().await.context("cannot roll back")?;
            return Ok(None);
        };
        let beat = Heartbeat { seq, sent_at };
        // keel's own type: no catalog entry or schema describes it, so it skips the validator.
        let event = CheckedEvent::new(
            Uuid::now_v7(),
            EventType::parse(EVENT_TYPE).expect("the canary's event type is a valid name"),
            serde_json::to_value(beat).context("cannot serialise the canary")?,
            Metadata::default(),
            None,
        );
        let aggregate = AggregateType::parse(AGGREGATE_TYPE)
            .expect("the canary's aggregate type is a valid name");
        store::append(
            &mut tx,
            &aggregate,
            AGGREGATE_ID,
            ExpectedVersion::Any,
            &[event],
        )
        .await
        .context("cannot append the canary")?;
        if self.notify {
            relay::outbox::wake_relays(&mut *tx)
                .await
                .context("cannot notify the relays")?;
        }
        tx.commit().await.context("cannot commit the canary")?;
        Ok(Some(beat))
    }
}
