//! `keel project`: the configured projections, live from Kafka, until Ctrl-C or SIGTERM.

use crate::app::{self, Projections, Services};
use crate::config::Config;
use crate::shutdown;

pub async fn run(config: &Config) -> anyhow::Result<()> {
    // Checked before connecting, so that a misspelt name fails at once.
    let projections = Projections::builtin();
    projections.selected(config)?;
    let services = Services::connect(config).await?;
    let catalog = app::catalog(config)?;
    app::run_projections(
        config,
        &services,
        &catalog,
        &projections,
        shutdown::on_signals(),
    )
    .await
}
