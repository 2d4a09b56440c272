//! `keel relay`: the relay alone (and the canary, when `observability.canary_interval_ms` is
//! set), with its health endpoints (live, ready, pipeline) and metrics on `relay.listen`, until
//! Ctrl-C or SIGTERM; all stop with the one shutdown token.

use anyhow::Context;
use tokio::net::TcpListener;

use crate::app::{self, Services};
use crate::config::Config;
use crate::{api, health, heartbeat, metrics, relay, shutdown};

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let catalog = app::catalog(config)?;
    let stop = shutdown::on_signals();
    let addr = config.relay.listen;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (relay.listen)"))?;
    tracing::info!(addr = %listener.local_addr()?, "relay health on /v1/health/*, metrics on /metrics");
    let relay = relay::start(
        config,
        services.pool().clone(),
        catalog,
        services.registry.clone(),
        None,
    )
    .await?;
    let status = api::StatusState {
        metrics: metrics::install(),
        pool: services.pool().clone(),
        monitor: health::Monitor::start(config, services.pool().clone(), stop.clone()),
        stages: heartbeat::Stages::of(relay.beats()),
        stall_after: config.observability.stall_after(),
        canary: config.observability.canary_interval_ms > 0,
    };
    let status = tokio::spawn(api::server::serve(
        listener,
        api::status_router(status),
        api::server::Limits::from(&config.api),
        stop.clone(),
    ));
    let canary = health::canary::spawn(config, services.pool().clone(), stop.clone())?;
    stop.wait().await;
    if let Some(c) = canary {
        c.stopped().await;
    }
    relay.shutdown().await;
    status.await.context("the relay's status server panicked")?;
    Ok(())
}
