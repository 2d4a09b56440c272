//! The service skeleton: build from config, bind, serve until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::append::{Appender, Validator};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::registry::{self, Registry};
use crate::relay;
use crate::store::Store;

pub struct Application {
    listener: TcpListener,
    state: AppState,
    config: Config,
}

impl Application {
    /// Connects to the database (creating and migrating it), loads the catalog and binds the
    /// listener. Binding port 0 picks a free port; see [`Application::local_addr`].
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database()).await?.with_group_commit(
            config.append.group_commit_workers,
            config.append.group_commit_max_events,
        );
        let catalog = Catalog::load(&config.schemas_dir)?;
        let registry = Arc::new(Registry::new(store.pool().clone()));
        let synced = registry::sync::sync(&registry, &catalog).await?;
        tracing::info!(schemas = synced.len(), "event catalog registered");
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let catalog = Arc::new(catalog);
        let validator = Validator::new(
            catalog.clone(),
            registry.clone(),
            config.api.validate_payloads,
        );
        let state = AppState {
            appender: Appender::new(store.clone(), validator),
            store,
            catalog,
            registry,
            limits: Arc::new(config.api.clone()),
            metrics: crate::metrics::install(),
        };
        Ok(Self {
            listener,
            state,
            config: config.clone(),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The write path, for appending in-process as the HTTP API does.
    pub fn appender(&self) -> &Appender {
        &self.state.appender
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.state.registry
    }

    /// Serves until `shutdown` completes, then drains in-flight requests. With
    /// `relay.in_process` the relay runs alongside and stops after the API.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let store = self.state.store.clone();
        let relay = if self.config.relay.in_process {
            Some(
                relay::start(
                    &self.config,
                    store.pool().clone(),
                    self.state.catalog.clone(),
                    self.state.registry.clone(),
                    Some(store.commits()),
                )
                .await?,
            )
        } else {
            None
        };
        let notifier = self
            .config
            .relay
            .notify
            .then(|| tokio::spawn(notify_relays(store.clone())));
        let (stop_projections, stopped) = tokio::sync::oneshot::channel::<()>();
        let projections = if self.config.projections.in_process {
            let (config, pool, registry, catalog) = (
                self.config.clone(),
                store.pool().clone(),
                self.state.registry.clone(),
                self.state.catalog.clone(),
            );
            Some(tokio::spawn(async move {
                let stopped = async move {
                    let _ = stopped.await;
                };
                crate::projection::runner::run_configured(
                    &config, pool, registry, &catalog, stopped,
                )
                .await
            }))
        } else {
            None
        };
        tracing::info!(addr = %self.local_addr(), "keel api listening");
        let served = axum::serve(self.listener, api::router(self.state))
            .with_graceful_shutdown(shutdown)
            .await
            .context("http server failed");
        if let Some(n) = notifier {
            n.abort();
        }
        let _ = stop_projections.send(());
        if let Some(p) = projections {
            if let Ok(Err(e)) = p.await {
                tracing::error!(error = %format!("{e:#}"), "projections failed");
            }
        }
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
        served
    }
}

/// Sends one `NOTIFY` per burst of commits, after they committed, so relays in other processes
/// wake at once. Bursts coalesce: commits made while a notification is on its way share the next.
async fn notify_relays(store: Store) {
    let mut commits = store.commits();
    while commits.changed().await.is_ok() {
        if let Err(e) = relay::outbox::wake_relays(store.pool()).await {
            tracing::debug!(error = %e, "cannot notify relays; they poll");
        }
    }
}
