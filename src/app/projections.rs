//! Wiring projections: which ones a process knows (keel's own and the embedding service's), which
//! of them `projections.run` selects, and running the selected ones live from Kafka.
//!
//! Names are checked here, where the projections are wired, not in [`crate::config`]: config is
//! leaf data and cannot know the projections a service adds. A service adds its own with
//! [`Projections::with`] and hands the set to [`crate::app::Application::build_with`] (or to
//! [`run`] directly); `projections.run` may then name them like keel's.

use std::sync::Arc;

use anyhow::Context as _;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::heartbeat::Stages;
use crate::projection::runner::{self, RunnerOptions};
use crate::projection::{self, Projection};
use crate::shutdown::Shutdown;

use super::Services;

/// The projections a process can run, by name.
#[derive(Clone)]
pub struct Projections {
    known: Vec<Arc<dyn Projection>>,
}

impl Default for Projections {
    /// keel's built-in projections.
    fn default() -> Self {
        Self::builtin()
    }
}

impl Projections {
    /// keel's built-in projections.
    pub fn builtin() -> Self {
        Self {
            known: projection::builtin(),
        }
    }

    /// No projections; add some with [`Projections::with`].
    pub fn none() -> Self {
        Self { known: Vec::new() }
    }

    /// Adds `projection`; it replaces a known one of the same name.
    pub fn with(mut self, projection: impl Projection) -> Self {
        self.add(Arc::new(projection));
        self
    }

    /// Adds `projection`; it replaces a known one of the same name.
    pub fn add(&mut self, projection: Arc<dyn Projection>) {
        self.known.retain(|p| p.name() != projection.name());
        self.known.push(projection);
    }

    /// Every known projection.
    pub fn all(&self) -> Vec<Arc<dyn Projection>> {
        self.known.clone()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.known.iter().map(|p| p.name()).collect()
    }

    /// The projection called `name`.
    pub fn find(&self, name: &str) -> anyhow::Result<Arc<dyn Projection>> {
        self.known
            .iter()
            .find(|p| p.name() == name)
            .cloned()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no projection named {name:?}; known: {}",
                    self.names().join(", ")
                )
            })
    }

    /// The projections `config.projections.run` names, or every known one when it names none. An
    /// unknown name is an error that lists the known ones.
    pub fn selected(&self, config: &Config) -> anyhow::Result<Vec<Arc<dyn Projection>>> {
        let run = &config.projections.run;
        if run.is_empty() {
            return Ok(self.known.clone());
        }
        run.iter().map(|name| self.find(name)).collect()
    }
}

/// Runs the projections `config` selects from `projections` until `shutdown` is triggered or one
/// of them fails; each has its own consumer group. On a failure the others are stopped too and
/// the first error is returned. Each runner joins `stages` when its heartbeat starts.
pub async fn run(
    config: &Config,
    services: &Services,
    catalog: &Catalog,
    projections: &Projections,
    stages: Option<Stages>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let selected = projections.selected(config)?;
    // A child, so that a failing runner stops its siblings without triggering the caller's token.
    let stop = shutdown.child();
    let mut tasks = tokio::task::JoinSet::new();
    for projection in selected {
        let topics = projection::topics(
            projection.as_ref(),
            catalog,
            &config.relay.kafka.topic_prefix,
        )?;
        let options = RunnerOptions {
            batch_size: config.projections.batch_size,
            properties: config.projections.properties.clone(),
            beat_every: config.observability.sample_every(),
            stages: stages.clone(),
            ..Default::default()
        };
        let (pool, registry, brokers) = (
            services.pool().clone(),
            services.registry.clone(),
            config.kafka_brokers.clone(),
        );
        let stopped = stop.wait();
        tasks.spawn(async move {
            let name = projection.name();
            runner::run(
                pool, registry, &brokers, &topics, projection, options, stopped,
            )
            .await
            .with_context(|| format!("projection {name}"))
        });
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
            tracing::error!(error = %format!("{e:#}"), "projection runner failed");
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_checked_against_the_known_projections() {
        let mut config = Config::default();
        let all = Projections::builtin();
        assert_eq!(all.selected(&config).unwrap().len(), all.names().len());
        config.projections.run = vec!["agent_status".into()];
        let one = all.selected(&config).unwrap();
        assert_eq!(
            one.iter().map(|p| p.name()).collect::<Vec<_>>(),
            ["agent_status"]
        );
        config.projections.run = vec!["nope".into()];
        let err = all.selected(&config).err().unwrap().to_string();
        assert!(
            err.contains("no projection named \"nope\"") && err.contains("agent_status"),
            "{err}"
        );
        assert!(Projections::none().find("agent_status").is_err());
    }

    /// A service's own read model, as a user of the library would write it.
    struct Audit;

    #[async_trait::async_trait]
    impl Projection for Audit {
        fn name(&self) -> &'static str {
            "audit"
        }
        fn event_types(&self) -> &'static [&'static str] {
            &["agent.state.changed"]
        }
        fn ddl(&self) -> &'static str {
            "CREATE TABLE audit (event_id uuid PRIMARY KEY)"
        }
        async fn apply(
            &self,
            _tx: &mut sqlx::PgConnection,
            _events: &[crate::model::RecordedEvent],
            _ctx: crate::projection::ApplyContext,
        ) -> anyhow::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_user_written_projection_can_be_named_in_config() {
        let mut config = Config::default();
        config.projections.run = vec!["audit".into(), "agent_status".into()];
        assert!(Projections::builtin().selected(&config).is_err());
        let projections = Projections::builtin().with(Audit);
        let names: Vec<_> = projections
            .selected(&config)
            .unwrap()
            .iter()
            .map(|p| p.name())
            .collect();
        assert_eq!(names, ["audit", "agent_status"]);
    }
}
