//! What the two kinds of job do with their [`Sink`]: a projection rebuild
//! ([`crate::projection::rebuild`]) and a republish ([`crate::replay::republish`]), each
//! reporting progress to the job's row and stopping at a page boundary when asked, plus the lock
//! that lets one rebuild of a projection run at a time.

use std::sync::Arc;

use serde_json::json;
use sqlx::{PgConnection, PgPool};

use super::{Finished, Sink};
use crate::projection::rebuild::{rebuild as run_rebuild, RebuildOptions};
use crate::projection::Projection;
use crate::registry::Registry;
use crate::relay::kafka::KafkaSink;
use crate::replay::republish::{republish as run_republish, RepublishOptions};

/// One rebuild of a projection at a time, across every keel process of the database: a session
/// advisory lock on a connection of the job's own, taken out of the pool so that closing it (at
/// the job's end, or when the process dies) always releases the lock.
pub struct RebuildLock {
    conn: PgConnection,
    name: String,
}

const REBUILD_LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('keel.rebuild.' || $1))";
const REBUILD_UNLOCK: &str = "SELECT pg_advisory_unlock(hashtext('keel.rebuild.' || $1))";

impl RebuildLock {
    /// The lock of projection `name`, or `None` while a rebuild of it runs anywhere.
    pub async fn take(pool: &PgPool, name: &str) -> sqlx::Result<Option<Self>> {
        let mut conn = pool.acquire().await?.detach();
        let locked: bool = sqlx::query_scalar(REBUILD_LOCK)
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
        Ok(locked.then(|| Self {
            conn,
            name: name.to_owned(),
        }))
    }

    async fn release(mut self) {
        // If this fails, closing the connection releases the lock.
        let _ = sqlx::query(REBUILD_UNLOCK)
            .bind(&self.name)
            .execute(&mut self.conn)
            .await;
        let _ = sqlx::Connection::close(self.conn).await;
    }
}

/// A rebuild job's work: `options` on `projection`, holding `lock` until it ends. Cancelled,
/// it stops after the page in flight; its shadow schema keeps the cursor for the next run.
pub async fn rebuild(
    sink: Sink,
    pool: PgPool,
    registry: Arc<Registry>,
    projection: Arc<dyn Projection>,
    options: RebuildOptions,
    lock: RebuildLock,
) -> anyhow::Result<Finished> {
    let report = run_rebuild(
        &pool,
        &registry,
        projection.as_ref(),
        &options,
        &sink.reporter(),
        sink.stop().wait(),
    )
    .await;
    // Released before the job reports its end, so that the next rebuild may start at once.
    lock.release().await;
    let report = report?;
    Ok(Finished {
        stopped: report.cancelled,
        report: json!(report),
    })
}

/// A republish job's work: `options` through `kafka`, pointed at `topic`. Cancelled, it stops
/// after the page in flight; its report and its row hold the cursor to resume after.
pub async fn republish(
    sink: Sink,
    pool: PgPool,
    kafka: KafkaSink,
    topic: String,
    options: RepublishOptions,
) -> anyhow::Result<Finished> {
    let label = format!("republishing to {topic}");
    let done = run_republish(
        &pool,
        &kafka,
        &options,
        &label,
        sink.stop(),
        &sink.reporter(),
    )
    .await?;
    Ok(Finished {
        stopped: done.interrupted,
        report: json!({"sent": done.sent, "cursor": done.cursor.encode(), "interrupted": done.interrupted}),
    })
}
