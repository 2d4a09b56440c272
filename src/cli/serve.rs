//! `keel serve`: the HTTP API, and in-process the relay and projections if asked.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::app::Application;
use crate::config::{Config, Overrides};
use crate::shutdown;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on; overrides `KEEL_LISTEN`.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The event catalog folder; overrides `KEEL_SCHEMAS_DIR`.
    #[arg(long)]
    pub schemas_dir: Option<PathBuf>,
    /// Run the relay in this process too (sets `relay.in_process`).
    #[arg(long)]
    pub relay: bool,
    /// Run the projection runners in this process too (sets `projections.in_process`).
    #[arg(long)]
    pub projections: bool,
    /// Run the saga runners in this process too (sets `sagas.in_process`).
    #[arg(long)]
    pub sagas: bool,
}

impl ServeArgs {
    pub fn override_config(&self, overrides: &mut Overrides) {
        overrides.listen = self.listen;
        overrides.schemas_dir = self.schemas_dir.clone();
        overrides.relay_in_process = self.relay.then_some(true);
        overrides.projections_in_process = self.projections.then_some(true);
        overrides.sagas_in_process = self.sagas.then_some(true);
    }
}

pub async fn run(config: &Config) -> anyhow::Result<()> {
    let app = Application::build(config).await?;
    app.run_until(shutdown::on_signals()).await
}
