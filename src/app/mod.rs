//! The service skeleton, and the only place (with [`crate::cli`]) that wires components together:
//! build from config, bind, serve until a shutdown signal.
//!
//! - [`Services`] is the one bootstrap: database (created and migrated) and registry.
//! - [`Projections`] is the set of projections a process can run; a service embedding keel adds
//!   its own to it.
//! - [`Application`] is `keel serve`: the API, and in-process the relay and projections, and the
//!   canary when `observability.canary_interval_ms` is set; the operator jobs it starts, and
//!   the sweep that marks jobs of dead processes interrupted ([`crate::jobs`]).
//!
//! Shutdown order: the API drains first, then the projections stop, then the relay, so that
//! nothing the API accepted is left unshipped by this process's relay. Running jobs are asked to
//! stop when the shutdown starts (they end `interrupted`); rows of jobs still running once the
//! API has drained are marked so.

mod projections;
mod sagas;
mod services;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::tls::ServerTls;
use crate::api::{self, AppState};
use crate::append::{Appender, Validator};
use crate::auth::{self, Keys};
use crate::config::{AuthMode, Config};
use crate::health::{canary, Monitor};
use crate::jobs::Jobs;
use crate::journey;
use crate::registry::{self, Registry};
use crate::relay;
use crate::shutdown::Shutdown;
use crate::store::Store;

pub use projections::{run as run_projections, Projections};
pub use sagas::{run as run_sagas, Sagas};

/// The OIDC token verifier, when `auth.oidc` names an issuer. Its keys are fetched once now, so
/// that an unreachable issuer shows in the start-up log; keel starts anyway (API keys still work,
/// tokens fail closed until the keys can be fetched).
async fn oidc(config: &Config) -> anyhow::Result<Option<auth::Oidc>> {
    let Some(oidc) = auth::Oidc::from_config(&config.auth.oidc, reqwest::Client::new())? else {
        return Ok(None);
    };
    match oidc.fetch_keys().await {
        Ok(n) => {
            tracing::info!(keys = n, issuer = %config.auth.oidc.issuer.as_deref().unwrap_or(""), "oidc issuer keys fetched")
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "cannot fetch the oidc issuer's keys yet; tokens are refused until they can be fetched")
        }
    }
    Ok(Some(oidc))
}

/// The key store and the first admin, as `auth` configures them; `None` with `auth.mode = "none"`,
/// which is logged loudly, wherever keel listens.
async fn security(config: &Config, pool: &sqlx::PgPool) -> anyhow::Result<Option<Keys>> {
    if config.auth.mode == AuthMode::None {
        tracing::warn!(
            listen = %config.listen,
            "AUTHENTICATION IS OFF (auth.mode = \"none\"): anyone who can reach {} may append, \
             read, change the registry and run operator actions; use this only on a trusted network",
            config.listen
        );
        return Ok(None);
    }
    if config.auth.key_secret.is_none() && config.auth.key_secret_file.is_none() {
        anyhow::bail!(
            "authentication is required (auth.mode = \"required\", the default), but no api key \
             secret is set: set auth.key_secret_file (KEEL_AUTH__KEY_SECRET_FILE) to a file of at \
             least {} random bytes (scripts/run makes one for local use), or set auth.mode = \
             \"none\" to run without authentication on a trusted network",
            crate::config::MIN_KEY_SECRET_BYTES
        );
    }
    let keys = Keys::from_config(pool.clone(), &config.auth)?;
    if let Some(path) = &config.auth.bootstrap_key_file {
        if auth::bootstrap(&keys, pool, path).await? {
            tracing::warn!(file = %path.display(), "created the first admin, principal 'admin', from auth.bootstrap_key_file; the file may now be deleted");
        }
    }
    Ok(Some(keys))
}
pub use services::{audit_catalog_sync, catalog, Services};

pub struct Application {
    listener: TcpListener,
    /// With `api.tls`, the API's TLS configuration; SIGHUP reloads it.
    tls: Option<Arc<ServerTls>>,
    state: AppState,
    config: Config,
    projections: Projections,
    /// Stops the pipeline monitor once the API has drained.
    monitor_stop: Shutdown,
}

impl Application {
    /// Connects to the database (creating and migrating it), loads the catalog and binds the
    /// listener. Binding port 0 picks a free port; see [`Application::local_addr`]. The in-process
    /// projections are keel's own; see [`Application::build_with`] to add a service's.
    pub async fn build(config: &Config) -> anyhow::Result<Self> {
        Self::build_with(config, Projections::builtin()).await
    }

    /// Like [`Application::build`], with `projections` as the projections `projections.run` can
    /// name and `keel serve --projections` runs. An unknown name in `projections.run` fails here.
    pub async fn build_with(config: &Config, projections: Projections) -> anyhow::Result<Self> {
        projections.selected(config)?;
        crate::tls::install_provider();
        // Before anything connects: a certificate that does not load is a configuration error.
        let tls = if config.api.tls.enabled() {
            Some(Arc::new(
                ServerTls::load(&config.api.tls).context("cannot set up TLS for the API")?,
            ))
        } else {
            None
        };
        let Services { store, registry } = Services::connect(config).await?;
        let store = store.with_group_commit(
            config.append.group_commit_workers,
            config.append.group_commit_max_events,
        );
        let catalog = services::catalog(config)?;
        let synced = registry::sync::sync(&registry, &catalog).await?;
        services::audit_catalog_sync(store.pool(), config, &synced).await?;
        tracing::info!(schemas = synced.len(), "event catalog registered");
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let validator = Validator::new(
            catalog.clone(),
            registry.clone(),
            config.api.validate_payloads,
        );
        let keys = security(config, store.pool()).await?;
        let oidc = match keys {
            Some(_) => oidc(config).await?,
            None => None,
        };
        let rate = api::rate::RateLimits::new(&config.api.rate_limit);
        let monitor_stop = Shutdown::new();
        let monitor = Monitor::start(config, store.pool().clone(), monitor_stop.clone());
        let authn = api::Authn::new(&config.auth, keys.clone(), oidc, store.pool().clone())?
            .with_rate_limits(rate.clone());
        // Jobs left running by a process that died are marked interrupted before this one
        // serves, so that no list shows them running.
        let jobs = Jobs::new(store.pool().clone());
        jobs.sweep()
            .await
            .context("cannot look for interrupted jobs")?;
        let journey = journey::Sources::new(config, catalog.clone(), &projections.all());
        let archive =
            crate::archive::read::Tiered::new(crate::archive::Objects::open(&config.archive)?);
        let state = AppState {
            archive,
            journey: Arc::new(journey),
            appender: Appender::new(store.clone(), validator),
            store,
            catalog,
            registry,
            limits: Arc::new(config.api.clone()),
            metrics: crate::metrics::install(),
            rate,
            authn: Arc::new(authn),
            keys,
            relay: Arc::new(config.relay.clone()),
            kafka_brokers: config.kafka_brokers.clone(),
            projections: projections.all().into(),
            monitor,
            jobs,
        };
        Ok(Self {
            listener,
            tls,
            state,
            config: config.clone(),
            projections,
            monitor_stop,
        })
    }

    /// Every route the API serves, with the grant it needs.
    pub fn routes(&self) -> Vec<api::Route> {
        api::route_table(&self.state)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound TCP listener has an address")
    }

    pub fn store(&self) -> &Store {
        &self.state.store
    }

    /// The API's TLS configuration when `api.tls` is set: [`ServerTls::reload`] is what SIGHUP
    /// calls.
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.tls.as_ref()
    }

    /// The write path, for appending in-process as the HTTP API does.
    pub fn appender(&self) -> &Appender {
        &self.state.appender
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.state.registry
    }

    /// Serves until `shutdown` completes; see [`Application::run_until`].
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.run_until(Shutdown::when(shutdown)).await
    }

    /// Serves until `shutdown` is triggered, then drains in-flight requests. With
    /// `relay.in_process` the relay runs alongside, and with `projections.in_process` the
    /// projections; both stop after the API.
    pub async fn run_until(self, shutdown: Shutdown) -> anyhow::Result<()> {
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
        // Not a child of `shutdown`: what runs beside the API stops only once the API has drained.
        let beside = Shutdown::new();
        let canary = canary::spawn(&self.config, store.pool().clone(), beside.clone())?;
        let notifier = self
            .config
            .relay
            .notify
            .then(|| tokio::spawn(notify_relays(store.clone(), beside.clone())));
        let jobs = self.state.jobs.clone();
        tokio::spawn(jobs.clone().sweep_until(beside.clone()));
        if self.config.archive.schedule != "off" {
            let every = crate::model::Age::parse(&self.config.archive.schedule)?.seconds();
            let objects = crate::archive::Objects::open(&self.config.archive)?
                .ok_or(crate::archive::Error::NotConfigured)?;
            let readers = self
                .projections
                .all()
                .iter()
                .map(crate::retention::Reader::of)
                .chain(
                    Sagas::builtin(&self.config)
                        .all()
                        .iter()
                        .map(crate::retention::Reader::of_saga),
                )
                .collect();
            tokio::spawn(crate::retention::schedule::run_every(
                std::time::Duration::from_secs(every.max(1) as u64),
                store.pool().clone(),
                objects,
                self.state.catalog.clone(),
                readers,
                self.config.archive.clone(),
                beside.clone(),
            ));
        }
        // Jobs stop at once on a shutdown, so that clients following them get their end and
        // the API's drain does not wait for a job to finish.
        tokio::spawn({
            let (jobs, stop) = (jobs.clone(), shutdown.clone());
            async move {
                stop.wait().await;
                jobs.stop_all();
            }
        });
        let projections = if self.config.projections.in_process {
            let services = Services {
                store: store.clone(),
                registry: self.state.registry.clone(),
            };
            let (config, catalog, projections, stop) = (
                self.config.clone(),
                self.state.catalog.clone(),
                self.projections.clone(),
                beside.clone(),
            );
            Some(tokio::spawn(async move {
                projections::run(&config, &services, &catalog, &projections, None, stop).await
            }))
        } else {
            None
        };
        let sagas = if self.config.sagas.in_process {
            let services = Services {
                store: store.clone(),
                registry: self.state.registry.clone(),
            };
            let selected = Sagas::builtin(&self.config).selected(&self.config, &[])?;
            let (config, catalog, stop) = (
                self.config.clone(),
                self.state.catalog.clone(),
                beside.clone(),
            );
            Some(tokio::spawn(async move {
                sagas::run(&config, &services, catalog, selected, None, stop).await
            }))
        } else {
            None
        };
        tracing::info!(addr = %self.local_addr(), tls = self.tls.is_some(), "keel api listening");
        let limits = api::server::Limits::from(self.state.limits.as_ref());
        let ui = match self.config.ui.enabled {
            true => crate::ui::routes(crate::ui::UiState::new(self.state.clone(), &self.config)?),
            false => axum::Router::new(),
        };
        let router = api::router_with(self.state, ui);
        let monitor_stop = self.monitor_stop;
        match self.tls {
            None => api::server::serve(self.listener, router, limits, shutdown).await,
            Some(tls) => {
                tokio::spawn(api::tls::reload_on_hangup(tls.clone(), shutdown.clone()));
                api::server::serve_tls(self.listener, router, limits, tls, shutdown).await
            }
        }
        beside.trigger();
        monitor_stop.trigger();
        jobs.shutdown().await;
        if let Some(c) = canary {
            c.stopped().await;
        }
        if let Some(n) = notifier {
            // It holds no state worth draining; waiting only makes sure it is gone.
            let _ = n.await;
        }
        if let Some(p) = projections {
            if let Ok(Err(e)) = p.await {
                tracing::error!(error = %format!("{e:#}"), "projections failed");
            }
        }
        if let Some(s) = sagas {
            if let Ok(Err(e)) = s.await {
                tracing::error!(error = %format!("{e:#}"), "sagas failed");
            }
        }
        if let Some(relay) = relay {
            relay.shutdown().await;
        }
        Ok(())
    }
}

/// Sends one `NOTIFY` per burst of commits, after they committed, so relays in other processes
/// wake at once. Bursts coalesce: commits made while a notification is on its way share the next.
async fn notify_relays(store: Store, shutdown: Shutdown) {
    let mut commits = store.commits();
    loop {
        tokio::select! {
            changed = commits.changed() => if changed.is_err() { return },
            _ = shutdown.wait() => return,
        }
        if let Err(e) = relay::outbox::wake_relays(store.pool()).await {
            tracing::debug!(error = %e, "cannot notify relays; they poll");
        }
    }
}
