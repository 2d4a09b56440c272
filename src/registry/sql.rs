//! The registry's SQL: every query against `registry_schemas`, `registry_versions` and
//! `registry_config`, and nothing else. The caller picks the connection or transaction, so a
//! registration's lock, reads and writes share one transaction.
//!
//! The global default compatibility mode is the `registry_config` row whose subject is `''`.

use sqlx::PgConnection;

use super::{Error, SubjectVersion};
use crate::schema::{Compatibility, ParsedSchema};

/// The first key of the registry's advisory locks (per subject); see `store::append` for keel's
/// other class.
const SUBJECT_LOCK_CLASS: i32 = 0x6B65_6572;

/// One version of a subject, joined with its schema.
#[derive(sqlx::FromRow)]
pub(super) struct VersionRow {
    pub subject: String,
    pub version: i32,
    pub id: i32,
    pub schema_text: String,
    pub deleted: bool,
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

/// Serialises writers of one subject until the end of the transaction `tx` belongs to.
pub(super) async fn lock_subject(tx: &mut PgConnection, subject: &str) -> Result<(), Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(SUBJECT_LOCK_CLASS)
        .bind(subject)
        .execute(tx)
        .await?;
    Ok(())
}

/// A subject's versions, oldest first; soft-deleted ones too with `include_deleted`.
pub(super) async fn versions_of(
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

/// Stores `schema` (once: its text identifies it) and returns its global id.
pub(super) async fn insert_schema(
    tx: &mut PgConnection,
    schema: &ParsedSchema,
) -> Result<i32, Error> {
    sqlx::query(
        "INSERT INTO registry_schemas (schema_text, canonical_form, fingerprint) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(schema.identity())
    .bind(schema.canonical_form())
    .bind(schema.fingerprint())
    .execute(&mut *tx)
    .await?;
    Ok(
        sqlx::query_scalar("SELECT id FROM registry_schemas WHERE schema_md5 = md5($1)")
            .bind(schema.identity())
            .fetch_one(tx)
            .await?,
    )
}

/// Adds schema `id` as the subject's next version and returns that version.
pub(super) async fn insert_version(
    tx: &mut PgConnection,
    subject: &str,
    id: i32,
) -> Result<i32, Error> {
    Ok(sqlx::query_scalar(
        "INSERT INTO registry_versions (subject, version, schema_id)
         SELECT $1, COALESCE(max(version), 0) + 1, $2 FROM registry_versions WHERE subject = $1
         RETURNING version",
    )
    .bind(subject)
    .bind(id)
    .fetch_one(tx)
    .await?)
}

pub(super) async fn subjects(
    conn: &mut PgConnection,
    include_deleted: bool,
) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "SELECT DISTINCT subject FROM registry_versions WHERE NOT deleted OR $1 ORDER BY subject",
    )
    .bind(include_deleted)
    .fetch_all(conn)
    .await?)
}

/// The text of schema `id`, if it exists.
pub(super) async fn schema_text(conn: &mut PgConnection, id: i32) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT schema_text FROM registry_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Every `(subject, version)` that uses schema `id`.
pub(super) async fn usages(
    conn: &mut PgConnection,
    id: i32,
    include_deleted: bool,
) -> Result<Vec<(String, i32)>, Error> {
    Ok(sqlx::query_as(
        "SELECT subject, version FROM registry_versions
          WHERE schema_id = $1 AND (NOT deleted OR $2) ORDER BY subject, version",
    )
    .bind(id)
    .bind(include_deleted)
    .fetch_all(conn)
    .await?)
}

/// Removes a subject's versions and its own compatibility mode; returns the versions removed.
pub(super) async fn purge_subject(tx: &mut PgConnection, subject: &str) -> Result<Vec<i32>, Error> {
    sqlx::query("DELETE FROM registry_config WHERE subject = $1")
        .bind(subject)
        .execute(&mut *tx)
        .await?;
    Ok(
        sqlx::query_scalar("DELETE FROM registry_versions WHERE subject = $1 RETURNING version")
            .bind(subject)
            .fetch_all(tx)
            .await?,
    )
}

/// Marks a subject's live versions deleted; returns them.
pub(super) async fn soft_delete_subject(
    tx: &mut PgConnection,
    subject: &str,
) -> Result<Vec<i32>, Error> {
    Ok(sqlx::query_scalar(
        "UPDATE registry_versions SET deleted = true WHERE subject = $1 AND NOT deleted RETURNING version",
    )
    .bind(subject)
    .fetch_all(tx)
    .await?)
}

pub(super) async fn purge_version(
    conn: &mut PgConnection,
    subject: &str,
    version: i32,
) -> Result<(), Error> {
    sqlx::query("DELETE FROM registry_versions WHERE subject = $1 AND version = $2")
        .bind(subject)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(())
}

pub(super) async fn soft_delete_version(
    conn: &mut PgConnection,
    subject: &str,
    version: i32,
) -> Result<(), Error> {
    sqlx::query("UPDATE registry_versions SET deleted = true WHERE subject = $1 AND version = $2")
        .bind(subject)
        .bind(version)
        .execute(conn)
        .await?;
    Ok(())
}

/// The mode stored for `subject` (`""` for the global default), as stored.
pub(super) async fn config(
    conn: &mut PgConnection,
    subject: &str,
) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar("SELECT compatibility FROM registry_config WHERE subject = $1")
            .bind(subject)
            .fetch_optional(conn)
            .await?,
    )
}

/// The mode that applies to `subject`: its own, else the global default.
pub(super) async fn effective_config(
    conn: &mut PgConnection,
    subject: &str,
) -> Result<Compatibility, Error> {
    let level: String = sqlx::query_scalar(
        "SELECT compatibility FROM registry_config WHERE subject IN ($1, '')
          ORDER BY subject = '' LIMIT 1",
    )
    .bind(subject)
    .fetch_one(conn)
    .await?;
    Compatibility::parse(&level).ok_or(Error::InvalidCompatibility(level))
}

pub(super) async fn set_config(
    conn: &mut PgConnection,
    subject: &str,
    mode: Compatibility,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2)
         ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
    )
    .bind(subject)
    .bind(mode.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// Removes a subject's own mode; returns it as it was stored.
pub(super) async fn delete_config(
    conn: &mut PgConnection,
    subject: &str,
) -> Result<Option<String>, Error> {
    Ok(
        sqlx::query_scalar(
            "DELETE FROM registry_config WHERE subject = $1 RETURNING compatibility",
        )
        .bind(subject)
        .fetch_optional(conn)
        .await?,
    )
}
