//! `keel relay`: the relay alone, with its metrics endpoint, until Ctrl-C or SIGTERM.

use crate::app::{self, Services};
use crate::config::Config;
use crate::{relay, shutdown};

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let services = Services::connect(config).await?;
    let catalog = app::catalog(config)?;
    let metrics = relay::serve_metrics(config.relay.listen).await?;
    tracing::info!(addr = %metrics, "relay metrics on /metrics");
    let relay = relay::start(
        config,
        services.pool().clone(),
        catalog,
        services.registry.clone(),
        None,
    )
    .await?;
    shutdown::on_signals().wait().await;
    relay.shutdown().await;
    Ok(())
}
