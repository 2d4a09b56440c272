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

/// Records what a catalog sync changed (new schema versions) in the audit log, as `catalog.sync`
/// by the principal `keel` (the catalog folder is the operator's word). Nothing is recorded when
/// nothing changed. Written right after the registrations commit, not in their transactions: the
/// registry commits each version on its own.
pub async fn audit_catalog_sync(
    pool: &PgPool,
    config: &Config,
    synced: &[crate::registry::sync::Synced],
) -> anyhow::Result<()> {
    let registered: Vec<serde_json::Value> = synced
        .iter()
        .filter(|s| s.registered.created)
        .map(|s| {
            serde_json::json!({"subject": s.subject, "version": s.registered.version,
                "id": s.registered.id, "file": s.file})
        })
        .collect();
    if registered.is_empty() {
        return Ok(());
    }
    let entry = crate::auth::audit::Entry::system(
        "catalog.sync",
        serde_json::json!({"schemas_dir": config.schemas_dir.display().to_string()}),
        serde_json::json!({ "registered": registered }),
    );
    crate::auth::audit::record_alone(pool, &entry).await?;
    Ok(())
}
