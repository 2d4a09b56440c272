//! The first admin: from a key file (`auth.bootstrap_key_file`), once. When no enabled principal
//! holds the `admin` role, keel creates the principal `admin` with that role and the file's key,
//! and audits it; afterwards the file is ignored and may be deleted.

use std::path::Path;

use anyhow::Context;
use serde_json::json;
use sqlx::PgPool;

use super::audit::{self, Entry};
use super::key::ApiKey;
use super::keys::Keys;
use super::principal::{Kind, PrincipalName, Role};
use super::Error;

/// The key lock that keeps two processes starting at once from both creating the admin.
const BOOTSTRAP_LOCK: i64 = 0x6b65_656c_2e62_6f6f;

/// Creates the first admin from the key in `path` if there is no admin; whether it did.
pub async fn bootstrap(keys: &Keys, pool: &PgPool, path: &Path) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read auth.bootstrap_key_file {}", path.display()))?;
    let key = ApiKey::parse(text.trim()).map_err(|e| {
        anyhow::anyhow!(
            "auth.bootstrap_key_file {} does not hold a key of the form keel_<16 hex>_<64 hex>: {e}",
            path.display()
        )
    })?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(BOOTSTRAP_LOCK)
        .execute(&mut *tx)
        .await?;
    if keys.has_admin(&mut tx).await? {
        return Ok(false);
    }
    let name = PrincipalName::parse("admin").expect("a valid name");
    match keys
        .create_principal(&mut tx, &name, Kind::Admin, &[Role::Admin])
        .await
    {
        Ok(_) => {}
        Err(Error::PrincipalExists(_)) => anyhow::bail!(
            "auth.bootstrap_key_file: no enabled principal has the admin role, but a principal \
             named 'admin' exists (disabled, or without the role); fix it in the principals \
             table, or remove the bootstrap file"
        ),
        Err(e) => return Err(e.into()),
    }
    keys.add_key(&mut tx, &name, &key, None).await?;
    let entry = Entry {
        principal: "keel".into(),
        auth_method: "bootstrap".into(),
        ..Entry::system(
            "principal.create",
            json!({"principal": "admin"}),
            json!({"roles": ["admin"], "key_id": key.id().to_string(), "from": "auth.bootstrap_key_file"}),
        )
    };
    audit::record(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(true)
}
