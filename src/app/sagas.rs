//! Wiring sagas: which ones a process knows (keel's own and the embedding service's), which of
//! them `sagas.run` selects, and running each one's three parts side by side: its Kafka inputs
//! (through the projection runner), its timeouts and redrives, and its housekeeping.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::append::Validator;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::heartbeat::Stages;
use crate::projection::runner::RunnerOptions;
use crate::saga::inputs::Inputs;
use crate::saga::runner::{housekeeping, Metrics, SagaOptions};
use crate::saga::step::Ctx;
use crate::saga::{self, DynSaga};
use crate::shutdown::Shutdown;

use super::Services;

/// The sagas a process can run, by name.
#[derive(Clone)]
pub struct Sagas {
    known: Vec<Arc<dyn DynSaga>>,
}

impl Sagas {
    /// keel's built-in sagas, with `config`'s settings.
    pub fn builtin(config: &Config) -> Self {
        Self {
            known: saga::builtin(&config.sagas),
        }
    }

    pub fn none() -> Self {
        Self { known: Vec::new() }
    }

    /// Adds `saga`; it replaces a known one of the same name.
    pub fn with(mut self, saga: impl DynSaga) -> Self {
        self.add(Arc::new(saga));
        self
    }

    pub fn add(&mut self, saga: Arc<dyn DynSaga>) {
        self.known.retain(|s| s.name() != saga.name());
        self.known.push(saga);
    }

    pub fn all(&self) -> Vec<Arc<dyn DynSaga>> {
        self.known.clone()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.known.iter().map(|s| s.name()).collect()
    }

    pub fn find(&self, name: &str) -> anyhow::Result<Arc<dyn DynSaga>> {
        self.known
            .iter()
            .find(|s| s.name() == name)
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!("no saga named {name:?}; known: {}", self.names().join(", "))
            })
    }

    /// The sagas `names` lists, or `config.sagas.run`'s, or every known one when both are empty.
    pub fn selected(
        &self,
        config: &Config,
        names: &[String],
    ) -> anyhow::Result<Vec<Arc<dyn DynSaga>>> {
        let run = if names.is_empty() {
            &config.sagas.run
        } else {
            names
        };
        if run.is_empty() {
            return Ok(self.known.clone());
        }
        run.iter().map(|name| self.find(name)).collect()
    }
}

/// Runs `selected` until `shutdown` is triggered or one of them fails (then the others stop too
/// and the first error is returned).
pub async fn run(
    config: &Config,
    services: &Services,
    catalog: Arc<Catalog>,
    selected: Vec<Arc<dyn DynSaga>>,
    stages: Option<Stages>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let stop = shutdown.child();
    let validator = Validator::new(
        catalog.clone(),
        services.registry.clone(),
        config.api.validate_payloads,
    );
    let mut tasks = tokio::task::JoinSet::new();
    for saga in selected {
        let options = SagaOptions::from_config(config, stages.clone());
        let name = saga.name();
        let part = run_one(
            services.clone(),
            catalog.clone(),
            validator.clone(),
            config.kafka_brokers.clone(),
            saga,
            options,
            stop.child(),
        );
        tasks.spawn(async move { part.await.with_context(|| format!("saga {name}")) });
    }
    let mut result = Ok(());
    tokio::select! {
        _ = stop.wait() => {}
        Some(done) = tasks.join_next() => {
            result = done.map_err(anyhow::Error::from).and_then(|r| r);
        }
    }
    stop.trigger();
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            tracing::error!(error = %format!("{e:#}"), "saga runner failed");
        }
    }
    result
}

/// One saga's inputs, timers and housekeeping, until `stop` or the first failure.
async fn run_one(
    services: Services,
    catalog: Arc<Catalog>,
    validator: Validator,
    brokers: String,
    saga: Arc<dyn DynSaga>,
    options: SagaOptions,
    stop: Shutdown,
) -> anyhow::Result<()> {
    let pool = services.pool().clone();
    let mut ctx = Ctx::new(saga, validator, options.max_state_bytes)?;
    ctx.notify = options.notify;
    let ctx = Arc::new(ctx);
    let metrics = Arc::new(Metrics);
    let start_after = crate::saga::runner::register(&pool, ctx.name(), &options.start_from).await?;
    let inputs = Arc::new(Inputs::new(
        ctx.clone(),
        metrics.clone(),
        pool.clone(),
        start_after,
    ));
    let topics = crate::projection::topics(inputs.as_ref(), &catalog, &options.topic_prefix)?;
    let timers = tokio::spawn(saga::timers::run(
        pool.clone(),
        ctx.clone(),
        metrics.clone(),
        options.poll_interval,
        stop.wait(),
    ));
    let kept = tokio::spawn(housekeeping(
        pool.clone(),
        ctx.name(),
        options.retain_ended,
        stop.wait(),
    ));
    tracing::info!(saga = ctx.name(), ?topics, "saga runner started");
    let runner_options = RunnerOptions {
        batch_size: options.batch_size,
        linger: Duration::from_millis(5),
        properties: options.properties.clone(),
        beat_every: options.beat_every,
        stages: options.stages.clone(),
        stop_on_gap: true,
    };
    let result = crate::projection::runner::run(
        pool,
        services.registry.clone(),
        &brokers,
        &topics,
        inputs,
        runner_options,
        stop.wait(),
    )
    .await;
    stop.trigger();
    let _ = timers.await;
    let _ = kept.await;
    tracing::info!(saga = ctx.name(), "saga runner stopped");
    result
}
