//! The one bootstrap every process starts from: connect to PostgreSQL (creating the database and
//! applying migrations), open the schema registry, and load the event catalog where it is needed.

use std::sync::Arc;

use sqlx::PgPool;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::registry::Registry;
use crate::store::Store;

/// The shared handles a component is built from. Cheap to clone.
#[derive(Clone)]
pub struct Services {
    pub store: Store,
    pub registry: Arc<Registry>,
}

impl Services {
    /// Connects to the database named by `config`, creating it if missing and applying pending
    /// migrations, and opens the registry on it. The store appends without group commit; the API
    /// turns it on (see [`crate::app::Application::build`]).
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "connect"))]
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let store = Store::connect(&config.database()).await?;
        let registry = Arc::new(Registry::new(store.pool().clone()));
        Ok(Self { store, registry })
    }

    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }
}

/// The event catalog at `schemas_dir`, for the components that publish, validate or project.
/// Commands that only read the database do not need it, so it is not part of [`Services`].
pub fn catalog(config: &Config) -> anyhow::Result<Arc<Catalog>> {
    Ok(Arc::new(Catalog::load(&config.schemas_dir)?))
}
