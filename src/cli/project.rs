//! `keel project`: the configured projections, live from Kafka, until Ctrl-C or SIGTERM, with
//! health endpoints (live, ready, pipeline) and metrics on `projections.listen`. It is ready once
//! every runner has started and while each one's loop turns.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::{self, Projections, Services};
use crate::config::Config;
use crate::{api, health, heartbeat, metrics, shutdown};

pub async fn run(config: &Config) -> anyhow::Result<()> {
    // Checked before connecting, so that a misspelt name fails at once.
    let projections = Projections::builtin();
    let selected = projections.selected(config)?;
    let addr = config.projections.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (projections.listen)"))?;
    let services = Services::connect(config).await?;
    let catalog = app::catalog(config)?;
    let stop = shutdown::on_signals();
    tracing::info!(addr = %listener.local_addr()?, "projections health on /v1/health/*, metrics on /metrics");
    let stages = heartbeat::Stages::expecting(selected.len());
    let status = api::StatusState {
        metrics: metrics::install(),
        pool: services.pool().clone(),
        monitor: health::Monitor::start(config, services.pool().clone(), stop.clone()),
        stages: stages.clone(),
        stall_after: config.observability.stall_after(),
        canary: false,
    };
    let status = tokio::spawn(api::server::serve(
        listener,
        api::status_router(status),
        api::server::Limits::from(&config.api),
        stop.clone(),
    ));
    let result = app::run_projections(
        config,
        &services,
        &catalog,
        &projections,
        Some(stages),
        stop.clone(),
    )
    .await;
    // A failed runner ends the process: its status server stops with it.
    stop.trigger();
    status
        .await
        .context("the projections' status server panicked")?;
    result
}
