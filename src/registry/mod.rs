//! The schema registry, stored in PostgreSQL, in the Confluent Schema Registry's model: a schema
//! has a global id; a subject has versions 1, 2, 3… each pointing at a schema; versions can be
//! soft-deleted; each subject has a compatibility mode (the global default is
//! BACKWARD_TRANSITIVE). [`api`] serves it in Confluent's REST dialect under `/registry`.
//!
//! Subjects: keel registers each event type's schemas under the subject named by the event type,
//! and the record's full name equals the event type (`agent.state.changed` is record `changed` in
//! namespace `agent.state`), so Confluent's RecordNameStrategy and keel agree.
//!
//! One deliberate difference from Confluent: soft-deleted versions still take part in
//! compatibility checks. Events written with them may still be in the store, and keel promises
//! that the newest schema reads every stored event. Delete permanently to take a version out.
//!
//! Parsed schemas are cached by id forever (a schema id never changes meaning). Which schema an
//! append validates with (a subject's latest, or a named version) is cached for about
//! [`LATEST_TTL`]: another keel process's registration or deletion is seen within that time (a
//! little longer while a refresh is in flight); this process's own changes are seen at once.
//!
//! Layout: this file is the [`Registry`] handle and its rules (which version a spec names, when
//! a registration is refused); `cache` holds the two caches, `config` the compatibility modes,
//! `sql` every query, and `upcast` reads stored events with another schema version.

pub mod api;
mod cache;
mod config;
mod error;
mod sql;
pub mod sync;
mod upcast;

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;

pub use cache::LATEST_TTL;
pub use error::Error;
pub use upcast::{UpcastError, Upcaster};

use crate::model::VersionSpec;
use crate::schema::{Compatibility, Incompatibility, ParsedSchema};
use cache::Cache;
use sql::VersionRow;

/// A subject's version, as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
}

/// The outcome of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    pub id: i32,
    pub version: i32,
    /// False when the subject already had this schema: nothing was written.
    pub created: bool,
}

/// A schema as the append path uses it.
#[derive(Debug, Clone)]
pub struct EventSchema {
    pub id: i32,
    pub version: i32,
    pub schema: Arc<ParsedSchema>,
}

/// The registry: a pool and the caches in front of it. Share it in an `Arc`.
#[derive(Debug)]
pub struct Registry {
    pool: PgPool,
    cache: Cache,
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Cache::default(),
        }
    }

    /// Registers `text` under `subject`: the existing version if the subject already has this
    /// schema, otherwise a new version once the subject's compatibility mode allows it.
    #[tracing::instrument(skip_all, fields(
        db.system = "postgresql",
        db.operation.name = "INSERT",
        db.collection.name = "registry_versions",
        registry.subject = subject,
        registry.schema.id = tracing::field::Empty,
        registry.schema.version = tracing::field::Empty,
    ))]
    pub async fn register(
        &self,
        subject: &str,
        text: &str,
        schema_type: Option<&str>,
    ) -> Result<Registered, Error> {
        if let Some(t) = schema_type.filter(|t| *t != "AVRO") {
            return Err(Error::UnsupportedSchemaType(t.chars().take(50).collect()));
        }
        let parsed = ParsedSchema::parse(text)?;
        let mut tx = self.pool.begin().await?;
        sql::lock_subject(&mut tx, subject).await?;
        // Soft-deleted versions still count for compatibility: events written with them may be
        // in the store, and the newest schema must still read those (see the module docs).
        let rows = sql::versions_of(&mut tx, subject, true).await?;
        let span = tracing::Span::current();
        if let Some(row) = rows
            .iter()
            .find(|r| !r.deleted && r.schema_text == parsed.identity())
        {
            span.record("registry.schema.id", row.id);
            span.record("registry.schema.version", row.version);
            return Ok(Registered {
                id: row.id,
                version: row.version,
                created: false,
            });
        }
        let mode = sql::effective_config(&mut tx, subject).await?;
        let found = self.incompatibilities(mode, &parsed, &rows)?;
        if !found.is_empty() {
            return Err(Error::Incompatible {
                subject: subject.to_owned(),
                found,
            });
        }
        let id = sql::insert_schema(&mut tx, &parsed).await?;
        let version = sql::insert_version(&mut tx, subject, id).await?;
        tx.commit().await?;
        self.cache.forget(subject);
        span.record("registry.schema.id", id);
        span.record("registry.schema.version", version);
        tracing::info!(subject, id, version, "registered a schema");
        Ok(Registered {
            id,
            version,
            created: true,
        })
    }

    /// What keeps `mode` from letting `parsed` follow `rows` (empty when it may).
    fn incompatibilities(
        &self,
        mode: Compatibility,
        parsed: &ParsedSchema,
        rows: &[VersionRow],
    ) -> Result<Vec<Incompatibility>, Error> {
        let existing = rows
            .iter()
            .map(|r| Ok((r.version, self.cache.parsed(r.id, &r.schema_text)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let refs: Vec<(i32, &ParsedSchema)> =
            existing.iter().map(|(v, s)| (*v, s.as_ref())).collect();
        Ok(mode.check(parsed, &refs))
    }

    /// The version of `subject` that holds exactly this schema.
    pub async fn lookup(
        &self,
        subject: &str,
        text: &str,
        include_deleted: bool,
    ) -> Result<SubjectVersion, Error> {
        let parsed = ParsedSchema::parse(text)?;
        let mut conn = self.pool.acquire().await?;
        let rows = existing(
            subject,
            sql::versions_of(&mut conn, subject, include_deleted).await?,
        )?;
        rows.into_iter()
            .rev()
            .find(|r| r.schema_text == parsed.identity())
            .map(Into::into)
            .ok_or(Error::SchemaNotFound)
    }

    pub async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>, Error> {
        let mut conn = self.pool.acquire().await?;
        sql::subjects(&mut conn, include_deleted).await
    }

    pub async fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<i32>, Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = existing(
            subject,
            sql::versions_of(&mut conn, subject, include_deleted).await?,
        )?;
        Ok(rows.into_iter().map(|r| r.version).collect())
    }

    pub async fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<SubjectVersion, Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = sql::versions_of(&mut conn, subject, include_deleted).await?;
        pick(subject, rows, spec).map(Into::into)
    }

    /// The schema with global id `id`: its text and its parsed form.
    pub async fn schema_by_id(&self, id: i32) -> Result<(String, Arc<ParsedSchema>), Error> {
        let mut conn = self.pool.acquire().await?;
        let text = sql::schema_text(&mut conn, id)
            .await?
            .ok_or(Error::SchemaNotFound)?;
        let parsed = self.cache.parsed(id, &text)?;
        Ok((text, parsed))
    }

    /// The parsed schema with global id `id`, from memory after the first lookup: an id means one
    /// schema forever, so this never goes stale. Decoders, the relay and upcasting call it per
    /// event; only the first call per id reads the database.
    pub async fn parsed_by_id(&self, id: i32) -> Result<Arc<ParsedSchema>, Error> {
        if let Some(found) = self.cache.parsed_by_id(id) {
            return Ok(found);
        }
        self.schema_by_id(id).await.map(|(_, parsed)| parsed)
    }

    /// Every `(subject, version)` that uses schema `id`.
    pub async fn usages(
        &self,
        id: i32,
        include_deleted: bool,
    ) -> Result<Vec<(String, i32)>, Error> {
        self.schema_by_id(id).await?;
        let mut conn = self.pool.acquire().await?;
        sql::usages(&mut conn, id, include_deleted).await
    }

    /// Soft-deletes every version of `subject`, or with `permanent` removes the soft-deleted ones.
    #[tracing::instrument(skip_all, fields(
        db.system = "postgresql",
        db.operation.name = if permanent { "DELETE" } else { "UPDATE" },
        db.collection.name = "registry_versions",
        registry.subject = subject,
        registry.permanent = permanent,
    ))]
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>, Error> {
        let mut tx = self.pool.begin().await?;
        let rows = existing(subject, sql::versions_of(&mut tx, subject, true).await?)?;
        let live = rows.iter().any(|r| !r.deleted);
        let mut versions = match (permanent, live) {
            (true, true) => return Err(Error::SubjectNotSoftDeleted(subject.to_owned())),
            (false, false) => return Err(Error::SubjectSoftDeleted(subject.to_owned())),
            (true, false) => sql::purge_subject(&mut tx, subject).await?,
            (false, true) => sql::soft_delete_subject(&mut tx, subject).await?,
        };
        tx.commit().await?;
        self.cache.forget(subject);
        versions.sort_unstable();
        Ok(versions)
    }

    /// Soft-deletes one version, or with `permanent` removes a soft-deleted one.
    #[tracing::instrument(skip_all, fields(
        db.system = "postgresql",
        db.operation.name = if permanent { "DELETE" } else { "UPDATE" },
        db.collection.name = "registry_versions",
        registry.subject = subject,
        registry.schema.version = %spec,
        registry.permanent = permanent,
    ))]
    pub async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<i32, Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = sql::versions_of(&mut conn, subject, permanent).await?;
        let target = pick(subject, rows, spec)?;
        if permanent {
            if !target.deleted {
                return Err(Error::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: target.version,
                });
            }
            sql::purge_version(&mut conn, subject, target.version).await?;
        } else {
            sql::soft_delete_version(&mut conn, subject, target.version).await?;
        }
        self.cache.forget(subject);
        Ok(target.version)
    }

    /// Checks `text` against `subject` by the subject's mode: against one version, or with `None`
    /// against every version the mode looks at (soft-deleted ones included, as for a
    /// registration). A subject with no versions is compatible with anything.
    pub async fn check(
        &self,
        subject: &str,
        spec: Option<VersionSpec>,
        text: &str,
    ) -> Result<Vec<Incompatibility>, Error> {
        let parsed = ParsedSchema::parse(text)?;
        let mut conn = self.pool.acquire().await?;
        let mode = sql::effective_config(&mut conn, subject).await?;
        let all = sql::versions_of(&mut conn, subject, true).await?;
        let rows = match spec {
            // Clients check against "latest" before a subject's first registration.
            Some(VersionSpec::Latest) if all.iter().all(|r| r.deleted) => Vec::new(),
            Some(spec) => {
                let live = all.into_iter().filter(|r| !r.deleted).collect();
                vec![pick(subject, live, spec)?]
            }
            None => all,
        };
        self.incompatibilities(mode, &parsed, &rows)
    }

    /// The schema an event of `subject` is validated with: `version`, or the latest. `None` when
    /// the subject (or that version) does not exist or is deleted. Cached (see [`LATEST_TTL`]).
    pub async fn event_schema(
        &self,
        subject: &str,
        version: Option<i32>,
    ) -> Result<Option<EventSchema>, Error> {
        self.cache
            .event_schema(subject, version, self.fetch_event_schema(subject, version))
            .await
    }

    async fn fetch_event_schema(
        &self,
        subject: &str,
        version: Option<i32>,
    ) -> Result<Option<EventSchema>, Error> {
        let spec = version.map_or(VersionSpec::Latest, VersionSpec::Number);
        match self.version(subject, spec, false).await {
            Ok(v) => Ok(Some(EventSchema {
                id: v.id,
                version: v.version,
                schema: self.cache.parsed(v.id, &v.schema)?,
            })),
            Err(Error::SubjectNotFound(_) | Error::VersionNotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }
}

/// A subject's `rows`, or [`Error::SubjectNotFound`] when it has none.
fn existing(subject: &str, rows: Vec<VersionRow>) -> Result<Vec<VersionRow>, Error> {
    if rows.is_empty() {
        return Err(Error::SubjectNotFound(subject.to_owned()));
    }
    Ok(rows)
}

/// The version `spec` names among a subject's `rows` (oldest first); "latest" is the newest live
/// one.
fn pick(subject: &str, rows: Vec<VersionRow>, spec: VersionSpec) -> Result<VersionRow, Error> {
    let rows = existing(subject, rows)?;
    let found = match spec {
        VersionSpec::Latest => rows.into_iter().rfind(|r| !r.deleted),
        VersionSpec::Number(n) => rows.into_iter().find(|r| r.version == n),
    };
    found.ok_or_else(|| Error::VersionNotFound {
        subject: subject.to_owned(),
        version: spec.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(version: i32, deleted: bool) -> VersionRow {
        VersionRow {
            subject: "s".into(),
            version,
            id: version * 10,
            schema_text: String::new(),
            deleted,
        }
    }

    #[test]
    fn latest_is_the_newest_live_version_and_a_number_names_any_version() {
        let rows = || vec![row(1, false), row(2, false), row(3, true)];
        let latest = pick("s", rows(), VersionSpec::Latest).expect("latest");
        assert_eq!(latest.version, 2);
        let deleted = pick("s", rows(), VersionSpec::Number(3)).expect("a deleted one by number");
        assert_eq!(deleted.version, 3);
        assert!(matches!(
            pick("s", rows(), VersionSpec::Number(4)),
            Err(Error::VersionNotFound { version, .. }) if version == "4"
        ));
    }

    #[test]
    fn a_subject_without_versions_is_not_found_and_one_all_deleted_has_no_latest() {
        assert!(matches!(
            pick("s", Vec::new(), VersionSpec::Latest),
            Err(Error::SubjectNotFound(s)) if s == "s"
        ));
        assert!(matches!(
            pick("s", vec![row(1, true)], VersionSpec::Latest),
            Err(Error::VersionNotFound { version, .. }) if version == "latest"
        ));
    }
}
