//! The audit log: one row per operator action and principal change, written in the same
//! transaction as the change it records ([`record`]), or alone for a refusal or a failure
//! ([`record_alone`]). A job that spans many transactions records `started` and then `ok` or
//! `failed`.
//!
//! Rows are append-only: a trigger refuses UPDATE, DELETE and TRUNCATE (migration 0008). Each
//! row also carries `hash = SHA-256(prev_hash ‖ row)`, a chain from the first row, so that an
//! edit made around the trigger (by a superuser, or in a dump) is found by [`verify`]. Writers
//! take one advisory lock for the chain's tip; operator actions are rare, so it costs nothing
//! that matters.

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};

use super::caller::Caller;
use super::Error;

/// The advisory lock key that serialises writers at the chain's tip ("keel.audit" in ASCII).
const CHAIN_LOCK: i64 = 0x6b65_656c_2e61_7564;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    Failed,
    /// A long job began; its `ok` or `failed` row follows.
    Started,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Denied => "denied",
            Self::Failed => "failed",
            Self::Started => "started",
        }
    }
}

/// What an audit row says, before it is written.
#[derive(Debug, Clone)]
pub struct Entry {
    pub principal: String,
    pub auth_method: String,
    /// What was done, for example `dlq.retry` or `principal.create`.
    pub action: String,
    /// What it was done to, for example `{"group": "billing"}`.
    pub target: Value,
    /// How: the request's parameters, with secrets removed by the caller.
    pub params: Value,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
}

impl Entry {
    pub fn new(caller: &Caller, action: &str, target: Value) -> Self {
        Self {
            principal: caller.name.clone(),
            auth_method: caller.method.as_str().into(),
            action: action.into(),
            target,
            params: json!({}),
            outcome: Outcome::Ok,
            reason: None,
            request_id: None,
            trace_id: None,
        }
    }

    /// An action keel takes by itself (at start-up, say), recorded as principal `keel`.
    pub fn system(action: &str, target: Value, params: Value) -> Self {
        Self {
            principal: "keel".into(),
            auth_method: "system".into(),
            action: action.into(),
            target,
            params,
            outcome: Outcome::Ok,
            reason: None,
            request_id: None,
            trace_id: None,
        }
    }

    pub fn params(mut self, params: Value) -> Self {
        self.params = params;
        self
    }

    pub fn outcome(mut self, outcome: Outcome, reason: Option<String>) -> Self {
        self.outcome = outcome;
        self.reason = reason;
        self
    }

    pub fn request(mut self, request_id: Option<String>, trace_id: Option<String>) -> Self {
        self.request_id = request_id;
        self.trace_id = trace_id;
        self
    }
}

/// An audit row as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Row {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub principal: String,
    pub auth_method: String,
    pub action: String,
    pub target: Value,
    pub params: Value,
    pub outcome: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    #[serde(skip)]
    pub hash: Vec<u8>,
}

const COLUMNS: &str = "id, at, principal, auth_method, action, target, params, outcome, reason, \
                       request_id, trace_id, prev_hash, hash";

impl Row {
    /// The chain hash of this row's content after `prev_hash`. JSON is hashed in jsonb's own
    /// rendering, as read back, so that what was written and what is read hash the same.
    fn chained(&self, prev_hash: &[u8]) -> Vec<u8> {
        let content = json!([
            self.id,
            self.at.timestamp_micros(),
            self.principal,
            self.auth_method,
            self.action,
            self.target,
            self.params,
            self.outcome,
            self.reason,
            self.request_id,
            self.trace_id,
        ]);
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        hasher.update(content.to_string().as_bytes());
        hasher.finalize().to_vec()
    }
}

/// Writes `entry` in `tx`, the transaction of the change it records: both commit or neither.
pub async fn record(tx: &mut Transaction<'_, Postgres>, entry: &Entry) -> Result<i64, Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut **tx)
        .await?;
    let tip: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    let (id, prev_hash) = match tip {
        Some((id, hash)) => (id + 1, hash),
        None => (1, vec![0; 32]),
    };
    // jsonb renders JSON in its own way (key order, spacing); hash what it will give back.
    let (target, params): (Value, Value) = sqlx::query_as("SELECT $1::jsonb, $2::jsonb")
        .bind(&entry.target)
        .bind(&entry.params)
        .fetch_one(&mut **tx)
        .await?;
    let mut row = Row {
        id,
        // Microseconds: what timestamptz keeps.
        at: Utc::now().trunc_subsecs(6),
        principal: entry.principal.clone(),
        auth_method: entry.auth_method.clone(),
        action: entry.action.clone(),
        target,
        params,
        outcome: entry.outcome.as_str().into(),
        reason: entry.reason.clone(),
        request_id: entry.request_id.clone(),
        trace_id: entry.trace_id.clone(),
        prev_hash: Vec::new(),
        hash: Vec::new(),
    };
    row.hash = row.chained(&prev_hash);
    row.prev_hash = prev_hash;
    sqlx::query(&format!(
        "INSERT INTO audit_log ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    ))
    .bind(row.id)
    .bind(row.at)
    .bind(&row.principal)
    .bind(&row.auth_method)
    .bind(&row.action)
    .bind(&row.target)
    .bind(&row.params)
    .bind(&row.outcome)
    .bind(&row.reason)
    .bind(&row.request_id)
    .bind(&row.trace_id)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// Writes `entry` in a transaction of its own: a refusal, a failure, a job's start or end.
pub async fn record_alone(pool: &PgPool, entry: &Entry) -> Result<i64, Error> {
    let mut tx = pool.begin().await?;
    let id = record(&mut tx, entry).await?;
    tx.commit().await?;
    Ok(id)
}

/// Records `entry` as a refused attempt (`denied`, reason `forbidden`) in a transaction of its
/// own. A failure to write it is logged, not returned: the caller is refused either way.
pub async fn record_denied(pool: &PgPool, entry: Entry) {
    let entry = entry.outcome(Outcome::Denied, Some("forbidden".into()));
    if let Err(e) = record_alone(pool, &entry).await {
        tracing::error!(error = %e, action = %entry.action, "cannot record a denied operator action in the audit log");
    }
}

/// Which rows [`list`] returns: newest first, before `before` (an id), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub before: Option<i64>,
    pub limit: i64,
    pub principal: Option<String>,
    pub action: Option<String>,
}

pub async fn list(pool: &PgPool, query: &Query) -> Result<Vec<Row>, Error> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM audit_log
          WHERE ($1::bigint IS NULL OR id < $1)
            AND ($2::text IS NULL OR principal = $2)
            AND ($3::text IS NULL OR action = $3)
          ORDER BY id DESC LIMIT $4"
    ))
    .bind(query.before)
    .bind(&query.principal)
    .bind(&query.action)
    .bind(query.limit)
    .fetch_all(pool)
    .await?)
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Rows checked.
    pub rows: u64,
    /// The first row whose hash does not follow from its content and its predecessor, or whose
    /// id breaks the sequence (a deleted row); `None` when the chain holds.
    pub broken_at: Option<i64>,
}

/// Walks the chain from the first row and recomputes every hash.
pub async fn verify(pool: &PgPool) -> Result<Verification, Error> {
    const PAGE: i64 = 1_000;
    let mut prev_hash = vec![0; 32];
    let mut expected_id = 1;
    let mut rows = 0;
    loop {
        let page: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE id >= $1 ORDER BY id LIMIT $2"
        ))
        .bind(expected_id)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let done = (page.len() as i64) < PAGE;
        for row in page {
            if row.id != expected_id
                || row.prev_hash != prev_hash
                || row.chained(&prev_hash) != row.hash
            {
                return Ok(Verification {
                    rows,
                    broken_at: Some(row.id),
                });
            }
            rows += 1;
            expected_id += 1;
            prev_hash = row.hash;
        }
        if done {
            return Ok(Verification {
                rows,
                broken_at: None,
            });
        }
    }
}
