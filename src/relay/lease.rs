//! Partition leases: how several relay processes split the outbox so that no two of them publish
//! the same aggregate at the same time, and how a dead relay's share is taken over.
//!
//! * Each relay heartbeats in `relay_members` and renews its leases every `relay.heartbeat_ms`.
//!   A lease lasts `relay.lease_ttl_ms` from its last renewal, by PostgreSQL's clock.
//! * Each relay aims at its fair share, `ceil(16 / live relays)`: it claims free or expired
//!   partitions up to that share and releases the ones above it.
//! * A relay stops publishing on its own before its lease can run out: its sink loops treat the
//!   leases as valid only until `renewal sent + ttl - one heartbeat`, by its local monotonic clock.
//!   Cursor updates also re-check the lease in the database (see [`super::outbox::commit`]).
//! * Before releasing a partition the relay waits for the sink loops of that partition's lane to
//!   finish (or abandon) the round in flight (the lane's gate), so the next owner starts only
//!   after the last send. Other lanes, and a sink stuck in an outage on another lane, are not
//!   waited for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{watch, RwLock};
use uuid::Uuid;

use super::outbox::PARTITIONS;
use crate::shutdown::Shutdown;

/// The partitions this relay may publish, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub partitions: Vec<i16>,
    pub valid_until: Option<Instant>,
}

impl Owned {
    /// The partitions, if the leases are still safely valid.
    pub fn current(&self) -> &[i16] {
        match self.valid_until {
            Some(until) if Instant::now() < until => &self.partitions,
            _ => &[],
        }
    }
}

pub struct Leases {
    pool: PgPool,
    pub owner: Uuid,
    name: String,
    ttl: Duration,
    heartbeat: Duration,
    owned: watch::Sender<Owned>,
    /// One gate per lane: a sink loop holds its lane's gate for reading during a round; releasing
    /// a partition takes the gate of the partition's lane for writing, so it waits only for the
    /// loops that publish that partition.
    gates: Vec<Arc<RwLock<()>>>,
}

impl Leases {
    pub fn new(pool: PgPool, name: String, ttl: Duration, heartbeat: Duration, lanes: i16) -> Self {
        Self {
            pool,
            owner: Uuid::new_v4(),
            name,
            ttl,
            heartbeat,
            owned: watch::Sender::new(Owned::default()),
            gates: (0..lanes.max(1))
                .map(|_| Arc::new(RwLock::new(())))
                .collect(),
        }
    }

    /// The gate of lane `lane` (partitions `p` with `p % lanes == lane`).
    pub fn gate(&self, lane: i16) -> Arc<RwLock<()>> {
        self.gates[lane as usize].clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Owned> {
        self.owned.subscribe()
    }

    /// Renews and rebalances every heartbeat until `stop` fires, then releases everything.
    pub async fn run(&self, stop: Shutdown) {
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "relay lease round failed; will retry");
            }
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat) => {}
                _ = stop.wait() => break,
            }
        }
        self.release_all().await;
    }

    async fn round(&self) -> Result<(), sqlx::Error> {
        let started = Instant::now();
        let ttl_ms = self.ttl.as_millis() as i64;
        // One statement: this relay's heartbeat, forgetting long-dead relays, and counting the
        // live ones (the others, as of before this statement, plus this one).
        let live: i64 = sqlx::query_scalar(
            "WITH beat AS (INSERT INTO relay_members (id, name) VALUES ($1, $2)
                           ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()),
                  gone AS (DELETE FROM relay_members
                            WHERE id <> $1 AND heartbeat_at < now() - $4 * interval '1 millisecond')
             SELECT 1 + count(*) FROM relay_members
              WHERE id <> $1 AND heartbeat_at > now() - $3 * interval '1 millisecond'",
        )
        .bind(self.owner)
        .bind(&self.name)
        .bind(ttl_ms)
        .bind(ttl_ms * 10)
        .fetch_one(&self.pool)
        .await?;
        let mut mine: Vec<i16> = sqlx::query_scalar(
            "UPDATE relay_leases SET lease_until = now() + $2 * interval '1 millisecond'
              WHERE owner = $1 AND lease_until > now() RETURNING partition",
        )
        .bind(self.owner)
        .bind(ttl_ms)
        .fetch_all(&self.pool)
        .await?;
        let fair = (PARTITIONS as usize).div_ceil(live.max(1) as usize);
        mine.sort_unstable();
        if mine.len() > fair {
            let release = mine.split_off(fair);
            self.publish(mine.clone(), started);
            self.release(&release).await?;
            tracing::info!(?release, "released relay partitions for a fair share");
        } else if mine.len() < fair {
            let claimed: Vec<i16> = sqlx::query_scalar(
                "UPDATE relay_leases l
                    SET owner = $1, owner_name = $2,
                        lease_until = now() + $3 * interval '1 millisecond'
                  WHERE l.partition IN (
                        SELECT partition FROM relay_leases
                         WHERE owner IS NULL OR lease_until <= now()
                         ORDER BY partition LIMIT $4 FOR UPDATE SKIP LOCKED)
                  RETURNING l.partition",
            )
            .bind(self.owner)
            .bind(&self.name)
            .bind(ttl_ms)
            .bind((fair - mine.len()) as i64)
            .fetch_all(&self.pool)
            .await?;
            if !claimed.is_empty() {
                tracing::info!(?claimed, "claimed relay partitions");
            }
            mine.extend(claimed);
            mine.sort_unstable();
        }
        self.publish(mine, started);
        Ok(())
    }

    fn publish(&self, partitions: Vec<i16>, renewed_at: Instant) {
        let until = renewed_at + self.ttl.saturating_sub(self.heartbeat);
        self.owned.send_replace(Owned {
            partitions,
            valid_until: Some(until),
        });
    }

    /// Stops the sink loops from using `partitions`, waits for their round in flight, then frees
    /// the leases so another relay can take them at once.
    async fn release(&self, partitions: &[i16]) -> Result<(), sqlx::Error> {
        let lanes = self.gates.len() as i16;
        let mut affected: Vec<i16> = partitions.iter().map(|p| p % lanes).collect();
        affected.sort_unstable();
        affected.dedup();
        for lane in affected {
            drop(self.gates[lane as usize].write().await);
        }
        sqlx::query(
            "UPDATE relay_leases SET owner = NULL, owner_name = NULL, lease_until = '-infinity'
              WHERE owner = $1 AND partition = ANY($2)",
        )
        .bind(self.owner)
        .bind(partitions)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_all(&self) {
        let all: Vec<i16> = self.owned.borrow().partitions.clone();
        self.owned.send_replace(Owned::default());
        if let Err(e) = self.release(&all).await {
            tracing::warn!(error = %e, "cannot release relay leases; they expire on their own");
        }
        let _ = sqlx::query("DELETE FROM relay_members WHERE id = $1")
            .bind(self.owner)
            .execute(&self.pool)
            .await;
    }
}
