//! Compatibility modes: per subject, with a global default (stored as subject `''`). A subject
//! without its own mode follows the default, whatever the default is at the time of the check.

use super::{sql, Error, Registry};
use crate::schema::Compatibility;

impl Registry {
    /// The compatibility mode: the subject's own (`Ok(None)` if it has none) or, with `None`, the
    /// global default.
    pub async fn config(&self, subject: Option<&str>) -> Result<Option<Compatibility>, Error> {
        let mut conn = self.pool.acquire().await?;
        let level = sql::config(&mut conn, subject.unwrap_or("")).await?;
        Ok(level.as_deref().and_then(Compatibility::parse))
    }

    /// The mode that applies to `subject`: its own, else the global default.
    pub async fn effective_config(&self, subject: &str) -> Result<Compatibility, Error> {
        let mut conn = self.pool.acquire().await?;
        sql::effective_config(&mut conn, subject).await
    }

    /// Sets the mode of `subject`, or with `None` the global default.
    #[tracing::instrument(skip_all, fields(
        db.system = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "registry_config",
        registry.subject = subject.unwrap_or(""),
        registry.compatibility = level,
    ))]
    pub async fn set_config(
        &self,
        subject: Option<&str>,
        level: &str,
    ) -> Result<Compatibility, Error> {
        let mode = Compatibility::parse(level)
            .ok_or_else(|| Error::InvalidCompatibility(level.chars().take(50).collect()))?;
        let mut conn = self.pool.acquire().await?;
        sql::set_config(&mut conn, subject.unwrap_or(""), mode).await?;
        Ok(mode)
    }

    /// Removes a subject's own mode, returning it; the subject falls back to the global default.
    #[tracing::instrument(skip_all, fields(
        db.system = "postgresql",
        db.operation.name = "DELETE",
        db.collection.name = "registry_config",
        registry.subject = subject,
    ))]
    pub async fn delete_config(&self, subject: &str) -> Result<Compatibility, Error> {
        let mut conn = self.pool.acquire().await?;
        sql::delete_config(&mut conn, subject)
            .await?
            .as_deref()
            .and_then(Compatibility::parse)
            .ok_or_else(|| Error::SubjectConfigNotFound(subject.to_owned()))
    }
}
