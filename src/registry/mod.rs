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

pub mod api;
mod error;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

pub use error::Error;

use crate::model::RecordedEvent;
use crate::schema::{resolve, Compatibility, Incompatibility, ParsedSchema, ResolveError};

/// How long a subject's latest version is trusted before it is read again.
pub const LATEST_TTL: Duration = Duration::from_secs(1);

/// The first key of the registry's advisory locks (per subject); see `store::append` for keel's
/// other class.
const SUBJECT_LOCK_CLASS: i32 = 0x6B65_6572;

/// A subject's version, as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema: String,
}

/// A version as a path names it: a number or the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSpec {
    Latest,
    Number(i32),
}

impl VersionSpec {
    /// `latest`, `-1` (Confluent's alias for latest) or a positive integer.
    pub fn parse(text: &str) -> Result<Self, Error> {
        match text {
            "latest" | "-1" => Ok(Self::Latest),
            _ => match text.parse::<i32>() {
                Ok(n) if n > 0 => Ok(Self::Number(n)),
                _ => Err(Error::InvalidVersion(text.chars().take(50).collect())),
            },
        }
    }
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

#[derive(Debug)]
pub struct Registry {
    pool: PgPool,
    by_id: RwLock<HashMap<i32, Arc<ParsedSchema>>>,
    /// `(subject, version)` (`None` = latest) to the schema appends validate with.
    latest: RwLock<HashMap<(String, Option<i32>), Cached>>,
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    subject: String,
    version: i32,
    id: i32,
    schema_text: String,
    deleted: bool,
}

impl Registry {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            by_id: RwLock::default(),
            latest: RwLock::default(),
        }
    }

    /// Parses the stored schema `id` once and keeps it.
    fn parsed(&self, id: i32, text: &str) -> Result<Arc<ParsedSchema>, Error> {
        if let Some(found) = self.by_id.read().expect("registry cache lock").get(&id) {
            return Ok(found.clone());
        }
        let parsed =
            Arc::new(ParsedSchema::parse(text).map_err(|e| Error::InvalidSchema(e.to_string()))?);
        self.by_id
            .write()
            .expect("registry cache lock")
            .insert(id, parsed.clone());
        Ok(parsed)
    }

    fn forget_latest(&self, subject: &str) {
        self.latest
            .write()
            .expect("registry cache lock")
            .retain(|(cached, _), _| cached != subject);
    }

    /// [`Registry::versions_of`], or [`Error::SubjectNotFound`] when the subject has none.
    async fn existing_versions(
        conn: &mut PgConnection,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<VersionRow>, Error> {
        let rows = Self::versions_of(conn, subject, include_deleted).await?;
        if rows.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        Ok(rows)
    }

    async fn versions_of(
        conn: &mut PgConnection,
        subject: &str,
        include_deleted: bool,
    ) -> Result<Vec<VersionRow>, Error> {
        Ok(sqlx::query_as(
            "SELECT v.subject, v.version, s.id, s.schema_text, v.deleted
               FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id
              WHERE v.subject = $1 AND (NOT v.deleted OR $2)
              ORDER BY v.version",
        )
        .bind(subject)
        .bind(include_deleted)
        .fetch_all(conn)
        .await?)
    }

    /// Registers `text` under `subject`: the existing version if the subject already has this
    /// schema, otherwise a new version once the subject's compatibility mode allows it.
    #[tracing::instrument(skip(self, text))]
    pub async fn register(
        &self,
        subject: &str,
        text: &str,
        schema_type: Option<&str>,
    ) -> Result<Registered, Error> {
        if let Some(t) = schema_type.filter(|t| *t != "AVRO") {
            return Err(Error::UnsupportedSchemaType(t.chars().take(50).collect()));
        }
        let parsed = ParsedSchema::parse(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(SUBJECT_LOCK_CLASS)
            .bind(subject)
            .execute(&mut *tx)
            .await?;
        // Soft-deleted versions still count for compatibility: events written with them may be
        // in the store, and the newest schema must still read those (see the module docs).
        let rows = Self::versions_of(&mut tx, subject, true).await?;
        if let Some(row) = rows
            .iter()
            .find(|r| !r.deleted && r.schema_text == parsed.identity())
        {
            return Ok(Registered {
                id: row.id,
                version: row.version,
                created: false,
            });
        }
        let mode = compatibility_of(&mut tx, subject).await?;
        let existing = rows
            .iter()
            .map(|r| Ok((r.version, self.parsed(r.id, &r.schema_text)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let refs: Vec<(i32, &ParsedSchema)> =
            existing.iter().map(|(v, s)| (*v, s.as_ref())).collect();
        let found = mode.check(&parsed, &refs);
        if !found.is_empty() {
            return Err(Error::Incompatible {
                subject: subject.to_owned(),
                found,
            });
        }
        sqlx::query(
            "INSERT INTO registry_schemas (schema_text, canonical_form, fingerprint) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING",
        )
        .bind(parsed.identity())
        .bind(parsed.canonical_form())
        .bind(parsed.fingerprint())
        .execute(&mut *tx)
        .await?;
        let id: i32 =
            sqlx::query_scalar("SELECT id FROM registry_schemas WHERE schema_md5 = md5($1)")
                .bind(parsed.identity())
                .fetch_one(&mut *tx)
                .await?;
        let version: i32 = sqlx::query_scalar(
            "INSERT INTO registry_versions (subject, version, schema_id)
             SELECT $1, COALESCE(max(version), 0) + 1, $2 FROM registry_versions WHERE subject = $1
             RETURNING version",
        )
        .bind(subject)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        self.forget_latest(subject);
        tracing::info!(subject, id, version, "registered a schema");
        Ok(Registered {
            id,
            version,
            created: true,
        })
    }

    /// The version of `subject` that holds exactly this schema.
    pub async fn lookup(
        &self,
        subject: &str,
        text: &str,
        include_deleted: bool,
    ) -> Result<SubjectVersion, Error> {
        let parsed = ParsedSchema::parse(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        let mut conn = self.pool.acquire().await?;
        let rows = Self::existing_versions(&mut conn, subject, include_deleted).await?;
        rows.into_iter()
            .rev()
            .find(|r| r.schema_text == parsed.identity())
            .map(Into::into)
            .ok_or(Error::SchemaNotFound)
    }

    pub async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>, Error> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT subject FROM registry_versions WHERE NOT deleted OR $1 ORDER BY subject",
        )
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn versions(&self, subject: &str, include_deleted: bool) -> Result<Vec<i32>, Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = Self::existing_versions(&mut conn, subject, include_deleted).await?;
        Ok(rows.into_iter().map(|r| r.version).collect())
    }

    pub async fn version(
        &self,
        subject: &str,
        spec: VersionSpec,
        include_deleted: bool,
    ) -> Result<SubjectVersion, Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = Self::versions_of(&mut conn, subject, include_deleted).await?;
        Self::pick(subject, rows, spec).map(Into::into)
    }

    /// The version `spec` names among a subject's `rows` (oldest first); "latest" is the newest
    /// live one.
    fn pick(subject: &str, rows: Vec<VersionRow>, spec: VersionSpec) -> Result<VersionRow, Error> {
        if rows.is_empty() {
            return Err(Error::SubjectNotFound(subject.to_owned()));
        }
        let found = match spec {
            VersionSpec::Latest => rows.into_iter().rfind(|r| !r.deleted),
            VersionSpec::Number(n) => rows.into_iter().find(|r| r.version == n),
        };
        found.ok_or_else(|| Error::VersionNotFound {
            subject: subject.to_owned(),
            version: match spec {
                VersionSpec::Latest => "latest".into(),
                VersionSpec::Number(n) => n.to_string(),
            },
        })
    }

    /// The schema with global id `id`: its text and its parsed form.
    pub async fn schema_by_id(&self, id: i32) -> Result<(String, Arc<ParsedSchema>), Error> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT schema_text FROM registry_schemas WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        let text = text.ok_or(Error::SchemaNotFound)?;
        let parsed = self.parsed(id, &text)?;
        Ok((text, parsed))
    }

    /// The parsed schema with global id `id`, from memory after the first lookup: an id means one
    /// schema forever, so this never goes stale. Decoders, the relay and upcasting call it per
    /// event; only the first call per id reads the database.
    pub async fn parsed_by_id(&self, id: i32) -> Result<Arc<ParsedSchema>, Error> {
        if let Some(found) = self.by_id.read().expect("registry cache lock").get(&id) {
            return Ok(found.clone());
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
        Ok(sqlx::query_as(
            "SELECT subject, version FROM registry_versions
              WHERE schema_id = $1 AND (NOT deleted OR $2) ORDER BY subject, version",
        )
        .bind(id)
        .bind(include_deleted)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Soft-deletes every version of `subject`, or with `permanent` removes the soft-deleted ones.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<i32>, Error> {
        let mut tx = self.pool.begin().await?;
        let rows = Self::existing_versions(&mut tx, subject, true).await?;
        let live = rows.iter().any(|r| !r.deleted);
        let versions: Vec<i32> = if permanent {
            if live {
                return Err(Error::SubjectNotSoftDeleted(subject.to_owned()));
            }
            sqlx::query("DELETE FROM registry_config WHERE subject = $1")
                .bind(subject)
                .execute(&mut *tx)
                .await?;
            sqlx::query_scalar("DELETE FROM registry_versions WHERE subject = $1 RETURNING version")
                .bind(subject)
                .fetch_all(&mut *tx)
                .await?
        } else {
            if !live {
                return Err(Error::SubjectSoftDeleted(subject.to_owned()));
            }
            sqlx::query_scalar(
                "UPDATE registry_versions SET deleted = true WHERE subject = $1 AND NOT deleted RETURNING version",
            )
            .bind(subject)
            .fetch_all(&mut *tx)
            .await?
        };
        tx.commit().await?;
        self.forget_latest(subject);
        let mut versions = versions;
        versions.sort_unstable();
        Ok(versions)
    }

    /// Soft-deletes one version, or with `permanent` removes a soft-deleted one.
    pub async fn delete_version(
        &self,
        subject: &str,
        spec: VersionSpec,
        permanent: bool,
    ) -> Result<i32, Error> {
        let mut conn = self.pool.acquire().await?;
        let rows = Self::versions_of(&mut conn, subject, permanent).await?;
        let target = Self::pick(subject, rows, spec)?;
        if permanent {
            if !target.deleted {
                return Err(Error::VersionNotSoftDeleted {
                    subject: subject.to_owned(),
                    version: target.version,
                });
            }
            sqlx::query("DELETE FROM registry_versions WHERE subject = $1 AND version = $2")
                .bind(subject)
                .bind(target.version)
                .execute(&mut *conn)
                .await?;
        } else {
            sqlx::query(
                "UPDATE registry_versions SET deleted = true WHERE subject = $1 AND version = $2",
            )
            .bind(subject)
            .bind(target.version)
            .execute(&mut *conn)
            .await?;
        }
        self.forget_latest(subject);
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
        let parsed = ParsedSchema::parse(text).map_err(|e| Error::InvalidSchema(e.to_string()))?;
        let mut conn = self.pool.acquire().await?;
        let mode = compatibility_of(&mut conn, subject).await?;
        let all = Self::versions_of(&mut conn, subject, true).await?;
        let rows = match spec {
            // Clients check against "latest" before a subject's first registration.
            Some(VersionSpec::Latest) if all.iter().all(|r| r.deleted) => Vec::new(),
            Some(spec) => {
                let live = all.into_iter().filter(|r| !r.deleted).collect();
                vec![Self::pick(subject, live, spec)?]
            }
            None => all,
        };
        let existing = rows
            .iter()
            .map(|r| Ok((r.version, self.parsed(r.id, &r.schema_text)?)))
            .collect::<Result<Vec<_>, Error>>()?;
        let refs: Vec<(i32, &ParsedSchema)> =
            existing.iter().map(|(v, s)| (*v, s.as_ref())).collect();
        Ok(mode.check(&parsed, &refs))
    }

    /// The compatibility mode: the subject's own (`Ok(None)` if it has none) or, with `None`, the
    /// global default.
    pub async fn config(&self, subject: Option<&str>) -> Result<Option<Compatibility>, Error> {
        let level: Option<String> =
            sqlx::query_scalar("SELECT compatibility FROM registry_config WHERE subject = $1")
                .bind(subject.unwrap_or(""))
                .fetch_optional(&self.pool)
                .await?;
        Ok(level.as_deref().and_then(Compatibility::parse))
    }

    /// The mode that applies to `subject`: its own, else the global default.
    pub async fn effective_config(&self, subject: &str) -> Result<Compatibility, Error> {
        let mut conn = self.pool.acquire().await?;
        compatibility_of(&mut conn, subject).await
    }

    pub async fn set_config(
        &self,
        subject: Option<&str>,
        level: &str,
    ) -> Result<Compatibility, Error> {
        let mode = Compatibility::parse(level)
            .ok_or_else(|| Error::InvalidCompatibility(level.chars().take(50).collect()))?;
        sqlx::query(
            "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2)
             ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
        )
        .bind(subject.unwrap_or(""))
        .bind(mode.as_str())
        .execute(&self.pool)
        .await?;
        Ok(mode)
    }

    /// Removes a subject's own mode, returning it; the subject falls back to the global default.
    pub async fn delete_config(&self, subject: &str) -> Result<Compatibility, Error> {
        let level: Option<String> = sqlx::query_scalar(
            "DELETE FROM registry_config WHERE subject = $1 RETURNING compatibility",
        )
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        level
            .as_deref()
            .and_then(Compatibility::parse)
            .ok_or_else(|| Error::SubjectConfigNotFound(subject.to_owned()))
    }

    /// The schema an event of `subject` is validated with: `version`, or the latest. `None` when
    /// the subject (or that version) does not exist or is deleted.
    ///
    /// Answers come from a cache refreshed every [`LATEST_TTL`]. When an entry expires, one caller
    /// refreshes it and the others keep the previous answer meanwhile, so a busy server asks the
    /// database once per subject per interval, not once per request.
    pub async fn event_schema(
        &self,
        subject: &str,
        version: Option<i32>,
    ) -> Result<Option<EventSchema>, Error> {
        let key = (subject.to_owned(), version);
        {
            let mut cache = self.latest.write().expect("registry cache lock");
            if let Some(entry) = cache.get_mut(&key) {
                if entry.fetched.elapsed() < LATEST_TTL || entry.refreshing {
                    return Ok(entry.value.clone());
                }
                entry.refreshing = true;
            }
        }
        let found = self.fetch_event_schema(subject, version).await;
        let mut cache = self.latest.write().expect("registry cache lock");
        match found {
            Ok(value) => {
                let entry = Cached {
                    fetched: Instant::now(),
                    value: value.clone(),
                    refreshing: false,
                };
                cache.insert(key, entry);
                Ok(value)
            }
            Err(err) => {
                if let Some(entry) = cache.get_mut(&key) {
                    entry.refreshing = false;
                }
                Err(err)
            }
        }
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
                schema: self.parsed(v.id, &v.schema)?,
            })),
            Err(Error::SubjectNotFound(_) | Error::VersionNotFound { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }
}

/// A cached answer of [`Registry::event_schema`].
#[derive(Debug)]
struct Cached {
    fetched: Instant,
    value: Option<EventSchema>,
    /// One caller is fetching a fresh answer; the others use this one meanwhile.
    refreshing: bool,
}

/// Why an event could not be shown in the schema version a reader asked for.
#[derive(Debug, thiserror::Error)]
pub enum UpcastError {
    #[error("event type {event_type} has no schema version {version}")]
    NoSuchVersion { event_type: String, version: String },
    #[error("the event cannot be read with that schema version: {0}")]
    Resolve(#[from] ResolveError),
    #[error(transparent)]
    Registry(#[from] Error),
}

impl Registry {
    /// Shows `event` as a reader of schema version `wanted` of its type sees it: the payload is
    /// resolved from the schema that validated it (upcasting), and `schema_id`/`schema_version`
    /// then describe the payload as it is now. Events stored without a schema are left alone.
    /// The stored event is not touched; this is the library's `?schema_version=`.
    pub async fn upcast(
        &self,
        event: &mut RecordedEvent,
        wanted: VersionSpec,
    ) -> Result<(), UpcastError> {
        let Some(writer_id) = event.schema_id else {
            return Ok(());
        };
        let version = match wanted {
            VersionSpec::Latest => None,
            VersionSpec::Number(n) => Some(n),
        };
        let reader = self
            .event_schema(&event.event_type, version)
            .await?
            .ok_or_else(|| UpcastError::NoSuchVersion {
                event_type: event.event_type.clone(),
                version: version.map_or_else(|| "latest".to_owned(), |v| v.to_string()),
            })?;
        if reader.id != writer_id {
            let writer = self.parsed_by_id(writer_id).await?;
            event.payload = resolve(&writer, &reader.schema, &event.payload)?;
        }
        event.schema_id = Some(reader.id);
        event.schema_version = Some(reader.version);
        Ok(())
    }
}

impl From<VersionRow> for SubjectVersion {
    fn from(r: VersionRow) -> Self {
        Self {
            subject: r.subject,
            version: r.version,
            id: r.id,
            schema: r.schema_text,
        }
    }
}

async fn compatibility_of(conn: &mut PgConnection, subject: &str) -> Result<Compatibility, Error> {
    let level: String = sqlx::query_scalar(
        "SELECT compatibility FROM registry_config WHERE subject IN ($1, '')
          ORDER BY subject = '' LIMIT 1",
    )
    .bind(subject)
    .fetch_one(conn)
    .await?;
    Compatibility::parse(&level).ok_or(Error::InvalidCompatibility(level))
}
