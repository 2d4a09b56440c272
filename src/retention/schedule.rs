//! The in-process schedule (`archive.schedule`, off by default): `keel serve` runs the archiver
//! and then the guarded purge every interval, exactly as `keel archive run` and `keel retention
//! run` would. The archive lease makes a second keel process (or a command run by hand) skip
//! its turn instead of racing, so any number of `keel serve` processes may have it on.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;

use super::{purge, PurgeOptions, Reader};
use crate::archive::{self, Objects, RunOptions};
use crate::catalog::Catalog;
use crate::config::ArchiveConfig;
use crate::shutdown::Shutdown;

/// Runs until `stop`, once per `every`: archive, then purge. Failures are logged and tried again
/// at the next turn; a turn another process holds the lease for is skipped.
pub async fn run_every(
    every: Duration,
    pool: PgPool,
    objects: Objects,
    catalog: Arc<Catalog>,
    readers: Vec<Reader>,
    config: ArchiveConfig,
    stop: Shutdown,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait() => return,
        }
        let now = Utc::now();
        let options = RunOptions { now, types: vec![] };
        match archive::run(&pool, &objects, &catalog, &config, &options, &()).await {
            Ok(report) => {
                let events: u64 = report.types.iter().map(|t| t.events).sum();
                tracing::info!(events, "scheduled archive run finished");
            }
            Err(archive::Error::Busy) => {
                tracing::info!(
                    "scheduled archive run skipped: another process holds the archive lease"
                );
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled archive run failed; trying again at the next turn");
                continue;
            }
        }
        let options = PurgeOptions {
            now,
            batch: config.purge_batch,
            verify_max_age_secs: config.verify_max_age_secs,
        };
        match purge(&pool, Some(&objects), &catalog, &readers, &options).await {
            Ok(report) => tracing::info!(purged = ?report.purged, "scheduled purge finished"),
            Err(super::Error::Archive(archive::Error::Busy)) => {
                tracing::info!("scheduled purge skipped: another process holds the archive lease")
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled purge failed; trying again at the next turn")
            }
        }
    }
}
