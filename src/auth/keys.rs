//! [`Keys`]: principals and their API keys in PostgreSQL, and authentication with a key.
//!
//! Changes take the caller's connection or transaction (`&mut PgConnection`), so that a later
//! audit row can commit in the same transaction as the change it records. [`Keys::authenticate`]
//! uses the pool: it is a read, usually answered from the cache.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::cache::{Cache, Verified};
use super::grant::Grant;
use super::key::{ApiKey, KeyId};
use super::principal::{Kind, Principal, PrincipalName, Role};
use super::secret::{ServerSecret, DIGEST_BYTES};
use super::{Error, Reason};
use crate::config::AuthConfig;

/// A key as listed: its id and dates, never its secret or digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub key_id: KeyId,
    pub principal: PrincipalName,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The key store: a pool, the server secret and the cache of verified keys. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keys {
    pool: PgPool,
    secret: Arc<ServerSecret>,
    cache: Arc<Cache>,
}

const PRINCIPAL_COLUMNS: &str = "p.id, p.name, p.kind, p.roles, p.created_at, p.disabled_at, \
    (SELECT coalesce(jsonb_agg(jsonb_build_array(g.effect, g.action, g.resource, g.event_type) \
                               ORDER BY g.id), '[]') \
       FROM grants g WHERE g.principal_id = p.id) AS grants";

#[derive(sqlx::FromRow)]
struct PrincipalRow {
    id: Uuid,
    name: String,
    kind: String,
    roles: Vec<String>,
    created_at: DateTime<Utc>,
    disabled_at: Option<DateTime<Utc>>,
    grants: sqlx::types::Json<Vec<[String; 4]>>,
}

impl TryFrom<PrincipalRow> for Principal {
    type Error = Error;
    fn try_from(row: PrincipalRow) -> Result<Self, Error> {
        let corrupt = |what: String| Error::Database(what.into());
        let roles = row
            .roles
            .iter()
            .filter_map(|r| match Role::parse(r) {
                Ok(role) => Some(role),
                // A role this build does not know (stored by a newer one) grants nothing here.
                Err(unknown) => {
                    tracing::warn!(principal = %row.name, role = %unknown.0, "ignoring an unknown role");
                    None
                }
            })
            .collect();
        Ok(Principal {
            id: row.id,
            name: PrincipalName::parse(&row.name)
                .map_err(|_| corrupt(format!("stored principal name {:?}", row.name)))?,
            kind: Kind::parse(&row.kind).map_err(|e| corrupt(e.to_string()))?,
            roles,
            created_at: row.created_at,
            disabled_at: row.disabled_at,
            grants: row
                .grants
                .0
                .iter()
                .map(|[effect, action, resource, event_type]| {
                    Grant::parse(effect, action, resource, event_type)
                        .map_err(|e| corrupt(format!("stored grant of {}: {e}", row.name)))
                })
                .collect::<Result<_, _>>()?,
        })
    }
}

#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: String,
    principal: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<KeyRow> for KeyInfo {
    type Error = Error;
    fn try_from(row: KeyRow) -> Result<Self, Error> {
        Ok(Self {
            // The table's check constraint is the same rule as `KeyId::parse`.
            key_id: KeyId::parse(&row.key_id)
                .map_err(|e| Error::Database(format!("stored key id: {e}").into()))?,
            // The table's check constraint is the same rule as `PrincipalName::parse`.
            principal: PrincipalName(row.principal),
            created_at: row.created_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        })
    }
}

fn refuse<T>(reason: Reason) -> Result<T, Error> {
    tracing::debug!(reason = reason.as_str(), "api key refused");
    Err(Error::Unauthenticated(reason))
}

impl Keys {
    /// A key store over an already migrated database. Verified keys are trusted for
    /// `cache_ttl`: a revocation made through another process, or a principal disabled there, takes
    /// effect within that time.
    pub fn new(pool: PgPool, secret: ServerSecret, cache_ttl: Duration) -> Self {
        Self {
            pool,
            secret: Arc::new(secret),
            cache: Arc::new(Cache::new(cache_ttl)),
        }
    }

    /// A key store with the secret and cache time that `config` names.
    pub fn from_config(pool: PgPool, config: &AuthConfig) -> anyhow::Result<Self> {
        Ok(Self::new(
            pool,
            ServerSecret::from_config(config)?,
            Duration::from_millis(config.key_cache_ttl_ms),
        ))
    }

    /// Creates a principal. Names are unique.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "principals", principal = %name))]
    pub async fn create_principal(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
        kind: Kind,
        roles: &[Role],
    ) -> Result<Principal, Error> {
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        let row: Option<PrincipalRow> = sqlx::query_as(&format!(
            "INSERT INTO principals AS p (id, name, kind, roles) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING RETURNING {PRINCIPAL_COLUMNS}"
        ))
        .bind(Uuid::now_v7())
        .bind(name.as_str())
        .bind(kind.as_str())
        .bind(&names)
        .fetch_optional(conn)
        .await?;
        row.ok_or_else(|| Error::PrincipalExists(name.clone()))?
            .try_into()
    }

    /// The principal `name`.
    pub async fn principal(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
    ) -> Result<Principal, Error> {
        let row: Option<PrincipalRow> = sqlx::query_as(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.name = $1"
        ))
        .bind(name.as_str())
        .fetch_optional(conn)
        .await?;
        row.ok_or_else(|| Error::PrincipalNotFound(name.clone()))?
            .try_into()
    }

    /// Every principal, by name.
    pub async fn principals(&self, conn: &mut PgConnection) -> Result<Vec<Principal>, Error> {
        let rows: Vec<PrincipalRow> = sqlx::query_as(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p ORDER BY p.name"
        ))
        .fetch_all(conn)
        .await?;
        rows.into_iter().map(Principal::try_from).collect()
    }

    /// Disables the principal `name`: none of its keys authenticates any more (through other
    /// processes, once their cache entries are older than the TTL). Disabling twice is fine.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "principals", principal = %name))]
    pub async fn disable_principal(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
    ) -> Result<(), Error> {
        let found = sqlx::query(
            "UPDATE principals SET disabled_at = coalesce(disabled_at, now()) WHERE name = $1",
        )
        .bind(name.as_str())
        .execute(conn)
        .await?
        .rows_affected();
        self.cache.forget_principal(name.as_str());
        if found == 0 {
            return Err(Error::PrincipalNotFound(name.clone()));
        }
        Ok(())
    }

    /// Adds a custom grant to the principal `name`; adding one it has already is fine. Takes
    /// effect at once through this process and within the cache TTL through others.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "grants", principal = %name, grant = %grant))]
    pub async fn add_grant(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
        grant: &Grant,
    ) -> Result<(), Error> {
        self.change_grant(
            conn,
            "INSERT INTO grants (principal_id, effect, action, resource, event_type)
             SELECT id, $2, $3, $4, $5 FROM principals WHERE name = $1
             ON CONFLICT DO NOTHING",
            name,
            grant,
        )
        .await?;
        Ok(())
    }

    /// Removes a custom grant from the principal `name`; whether it had it.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "DELETE", db.collection.name = "grants", principal = %name, grant = %grant))]
    pub async fn remove_grant(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
        grant: &Grant,
    ) -> Result<bool, Error> {
        let removed = self
            .change_grant(
                conn,
                "DELETE FROM grants g USING principals p
                  WHERE g.principal_id = p.id AND p.name = $1 AND g.effect = $2 AND g.action = $3
                    AND g.resource = $4 AND g.event_type = $5",
                name,
                grant,
            )
            .await?;
        Ok(removed > 0)
    }

    /// Runs `sql` with the principal's name as `$1` and the grant's effect, action, resource and
    /// event type as `$2`..`$5`, then forgets the principal's cached grants. When no row changed
    /// (the grant was there already, or was not), checks that the principal exists, so that an
    /// unknown name is an error rather than a quiet no-op. Returns the rows changed.
    async fn change_grant(
        &self,
        conn: &mut PgConnection,
        sql: &'static str,
        name: &PrincipalName,
        grant: &Grant,
    ) -> Result<u64, Error> {
        let changed = sqlx::query(sql)
            .bind(name.as_str())
            .bind(grant.effect.as_str())
            .bind(grant.action.as_str())
            .bind(grant.resource.to_string())
            .bind(grant.event_type.to_string())
            .execute(&mut *conn)
            .await?
            .rows_affected();
        self.cache.forget_principal(name.as_str());
        if changed == 0 {
            self.principal(conn, name).await?;
        }
        Ok(changed)
    }

    /// The principal `name` if it exists and is enabled: for a verified TLS client certificate,
    /// which names a principal instead of carrying a key. Asked on every such request, so a
    /// disabled principal stops at once.
    pub async fn enabled_principal(
        &self,
        name: &PrincipalName,
    ) -> Result<Option<Principal>, Error> {
        let row: Option<PrincipalRow> = sqlx::query_as(&format!(
            "SELECT {PRINCIPAL_COLUMNS} FROM principals p WHERE p.name = $1 AND p.disabled_at IS NULL"
        ))
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?;
        row.map(Principal::try_from).transpose()
    }

    /// Whether some enabled principal holds the admin role: the bootstrap key is used only when
    /// none does.
    pub async fn has_admin(&self, conn: &mut PgConnection) -> Result<bool, Error> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM principals
                             WHERE 'admin' = ANY(roles) AND disabled_at IS NULL)",
        )
        .fetch_one(conn)
        .await?)
    }

    /// Creates a new key for the principal `name`, expiring at `expires_at` if given. The
    /// returned key is the only copy of its secret: show it once.
    pub async fn create_key(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<ApiKey, Error> {
        let key = ApiKey::generate().map_err(Error::Random)?;
        self.add_key(conn, name, &key, expires_at).await?;
        Ok(key)
    }

    /// Stores a given key (a bootstrap key file's, say) for the principal `name`.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "INSERT", db.collection.name = "api_keys", principal = %name, key_id = %key.id()))]
    pub async fn add_key(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
        key: &ApiKey,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<KeyInfo, Error> {
        let row: Option<KeyRow> = sqlx::query_as(
            "WITH p AS (SELECT id, name FROM principals WHERE name = $2),
                  k AS (INSERT INTO api_keys (key_id, principal_id, hmac, expires_at)
                        SELECT $1, p.id, $3, $4 FROM p
                        ON CONFLICT (key_id) DO NOTHING
                        RETURNING key_id, created_at, expires_at, revoked_at)
             SELECT k.key_id, p.name AS principal, k.created_at, k.expires_at, k.revoked_at
               FROM k, p",
        )
        .bind(key.id().to_string())
        .bind(name.as_str())
        .bind(&self.secret.digest(key)[..])
        .bind(expires_at)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(row) = row {
            return row.try_into();
        }
        // Nothing inserted: tell an unknown principal from a taken key id.
        self.principal(conn, name).await?;
        Err(Error::KeyExists(key.id()))
    }

    /// The keys of the principal `name`, oldest first, revoked and expired ones included.
    pub async fn keys(
        &self,
        conn: &mut PgConnection,
        name: &PrincipalName,
    ) -> Result<Vec<KeyInfo>, Error> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT k.key_id, p.name AS principal, k.created_at, k.expires_at, k.revoked_at
               FROM api_keys k JOIN principals p ON p.id = k.principal_id
              WHERE p.name = $1 ORDER BY k.created_at, k.key_id",
        )
        .bind(name.as_str())
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            self.principal(conn, name).await?;
        }
        rows.into_iter().map(KeyInfo::try_from).collect()
    }

    /// Revokes a key. It stops working at once through this process and within the cache TTL
    /// through others. Revoking twice is fine; the first revocation time stays.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "UPDATE", db.collection.name = "api_keys", key_id = %id))]
    pub async fn revoke_key(&self, conn: &mut PgConnection, id: &KeyId) -> Result<(), Error> {
        let found = sqlx::query(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1",
        )
        .bind(id.to_string())
        .execute(conn)
        .await?
        .rows_affected();
        self.cache.forget(id);
        if found == 0 {
            return Err(Error::KeyNotFound(*id));
        }
        Ok(())
    }

    /// The principal that `credential` (`keel_<key id>_<secret>`) stands for. Every refusal is
    /// [`Error::Unauthenticated`], with the [`Reason`] for metrics and logs; other errors are the
    /// database's.
    #[tracing::instrument(skip_all, fields(key_id))]
    pub async fn authenticate(&self, credential: &str) -> Result<Principal, Error> {
        let key = match ApiKey::parse(credential) {
            Ok(key) => key,
            Err(invalid) => return refuse(Reason::Malformed(invalid)),
        };
        tracing::Span::current().record("key_id", tracing::field::display(key.id()));
        self.check(&key.id(), Some(&key)).await
    }

    /// The principal of key `id` while the key is valid (not revoked or expired, its principal
    /// enabled), without its secret: for a UI session that was opened with the key, so that
    /// revoking the key ends the session.
    pub async fn session_principal(&self, id: &KeyId) -> Result<Principal, Error> {
        self.check(id, None).await
    }

    /// Checks key `id`, and its secret when `key` is given.
    async fn check(&self, id: &KeyId, key: Option<&ApiKey>) -> Result<Principal, Error> {
        let now = Utc::now();
        if let Some(cached) = self.cache.get(id) {
            if key.is_some_and(|k| !self.secret.verify(k, &cached.digest)) {
                return refuse(Reason::WrongSecret);
            }
            if cached.expires_at.is_some_and(|at| at <= now) {
                return refuse(Reason::Expired);
            }
            return Ok((*cached.principal).clone());
        }
        let row = self.stored_key(id).await?;
        let Some(row) = row else {
            // Verify against a dummy anyway, so an unknown id costs what a wrong secret costs.
            if let Some(key) = key {
                let _ = self.secret.verify(key, &[0; DIGEST_BYTES]);
            }
            return refuse(Reason::UnknownKey);
        };
        if key.is_some_and(|k| !self.secret.verify(k, &row.hmac)) {
            return refuse(Reason::WrongSecret);
        }
        if row.revoked_at.is_some() {
            return refuse(Reason::Revoked);
        }
        if row.expires_at.is_some_and(|at| at <= now) {
            return refuse(Reason::Expired);
        }
        let expires_at = row.expires_at;
        let digest = row.hmac.as_slice().try_into().map_err(|_| {
            Error::Database(format!("stored digest of key {id} has the wrong length").into())
        })?;
        let principal = Principal::try_from(row.principal)?;
        if principal.disabled_at.is_some() {
            return refuse(Reason::PrincipalDisabled);
        }
        self.cache.insert(
            *id,
            Verified {
                digest,
                expires_at,
                principal: Arc::new(principal.clone()),
            },
        );
        Ok(principal)
    }

    /// The stored key `id` with its principal.
    #[tracing::instrument(skip_all, fields(db.system = "postgresql", db.operation.name = "SELECT", db.collection.name = "api_keys"))]
    async fn stored_key(&self, id: &KeyId) -> Result<Option<StoredKey>, Error> {
        Ok(sqlx::query_as(&format!(
            "SELECT k.hmac, k.expires_at, k.revoked_at, {PRINCIPAL_COLUMNS}
               FROM api_keys k JOIN principals p ON p.id = k.principal_id
              WHERE k.key_id = $1"
        ))
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?)
    }
}

#[derive(sqlx::FromRow)]
struct StoredKey {
    hmac: Vec<u8>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
    #[sqlx(flatten)]
    principal: PrincipalRow,
}
