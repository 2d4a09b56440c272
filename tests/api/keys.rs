//! The key store (`keel::auth`) against real PostgreSQL: principals, keys, authentication and
//! its refusals, revocation within the cache TTL, and what the `api_keys` table holds.

use std::time::{Duration, Instant};

use keel::auth::{ApiKey, Error, Keys, Kind, PrincipalName, Reason, Role, ServerSecret};
use sqlx::PgPool;

use crate::helpers::spawn_app;

const SECRET: &[u8] = b"the integration tests' server secret, 32+ bytes";

fn keys(pool: &PgPool, ttl: Duration) -> Keys {
    Keys::new(pool.clone(), ServerSecret::new(SECRET).unwrap(), ttl)
}

fn name(text: &str) -> PrincipalName {
    PrincipalName::parse(text).unwrap()
}

/// Creates the principal `who` with `roles` and one key for it, committed.
async fn principal_with_key(keys: &Keys, pool: &PgPool, who: &str, roles: &[Role]) -> ApiKey {
    let mut tx = pool.begin().await.unwrap();
    keys.create_principal(&mut tx, &name(who), Kind::Service, roles)
        .await
        .unwrap();
    let key = keys.create_key(&mut tx, &name(who), None).await.unwrap();
    tx.commit().await.unwrap();
    key
}

fn reason(result: Result<keel::auth::Principal, Error>) -> Reason {
    match result {
        Err(Error::Unauthenticated(reason)) => reason,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Polls `authenticate(credential)` until it is refused, failing after `deadline`.
async fn refused_within(keys: &Keys, credential: &str, deadline: Duration) -> Reason {
    let start = Instant::now();
    loop {
        match keys.authenticate(credential).await {
            Err(Error::Unauthenticated(reason)) => return reason,
            Ok(_) if start.elapsed() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("still not refused after {deadline:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_new_key_authenticates_as_its_principal_and_lists_without_its_secret() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let keys = keys(pool, Duration::from_secs(5));

    let key = principal_with_key(&keys, pool, "billing", &[Role::Producer, Role::Reader]).await;
    let principal = keys.authenticate(&key.expose_secret()).await.unwrap();

    assert_eq!(principal.name.as_str(), "billing");
    assert_eq!(principal.kind, Kind::Service);
    assert_eq!(principal.roles, [Role::Producer, Role::Reader]);
    let again = keys.authenticate(&key.expose_secret()).await.unwrap();
    assert_eq!(again, principal, "a cached answer is the same principal");

    let mut conn = pool.acquire().await.unwrap();
    let listed = keys.keys(&mut conn, &name("billing")).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key_id, key.id());
    assert_eq!(listed[0].revoked_at, None);
    let shown = serde_json::to_string(&listed).unwrap();
    let text = key.expose_secret();
    let secret = text.rsplit_once('_').unwrap().1;
    assert!(!shown.contains(secret), "{shown}");
}

#[tokio::test]
async fn a_wrong_secret_and_an_unknown_key_id_are_refused_alike() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let keys = keys(pool, Duration::from_secs(5));
    let key = principal_with_key(&keys, pool, "billing", &[Role::Producer]).await;
    // Cached first, so the wrong secret is checked against the cache as well as the table.
    keys.authenticate(&key.expose_secret()).await.unwrap();
    let wrong_secret = format!("keel_{}_{}", key.id(), "0".repeat(64));
    let unknown_id = format!("keel_0000000000000000_{}", "0".repeat(64));

    let wrong = keys.authenticate(&wrong_secret).await.unwrap_err();
    let unknown = keys.authenticate(&unknown_id).await.unwrap_err();
    let uncached_wrong = self::keys(pool, Duration::ZERO)
        .authenticate(&wrong_secret)
        .await
        .unwrap_err();

    assert_eq!(wrong.to_string(), unknown.to_string());
    assert_eq!(wrong.code(), unknown.code());
    assert_eq!(wrong.code(), "unauthenticated");
    assert_eq!(wrong.reason(), Some(Reason::WrongSecret));
    assert_eq!(uncached_wrong.reason(), Some(Reason::WrongSecret));
    assert_eq!(unknown.reason(), Some(Reason::UnknownKey));
    let malformed = keys.authenticate("keel_nope").await.unwrap_err();
    assert!(matches!(malformed.reason(), Some(Reason::Malformed(_))));
    assert_eq!(malformed.to_string(), unknown.to_string());
}

#[tokio::test]
async fn another_server_secret_verifies_no_stored_key() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let key = principal_with_key(&keys(pool, Duration::ZERO), pool, "billing", &[]).await;
    let other = Keys::new(
        pool.clone(),
        ServerSecret::new(b"another server's secret, also 32+ bytes".to_vec()).unwrap(),
        Duration::ZERO,
    );

    let refused = reason(other.authenticate(&key.expose_secret()).await);

    assert_eq!(refused, Reason::WrongSecret);
}

#[tokio::test]
async fn a_revoked_key_stops_at_once_here_and_within_the_ttl_in_another_process() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let ttl = Duration::from_millis(300);
    // Two handles stand for two keel processes: each has its own cache.
    let here = keys(pool, ttl);
    let there = keys(pool, ttl);
    let key = principal_with_key(&here, pool, "billing", &[Role::Producer]).await;
    let credential = key.expose_secret();
    here.authenticate(&credential).await.unwrap();
    there.authenticate(&credential).await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    here.revoke_key(&mut conn, &key.id()).await.unwrap();

    assert_eq!(
        reason(here.authenticate(&credential).await),
        Reason::Revoked
    );
    let started = Instant::now();
    assert_eq!(
        refused_within(&there, &credential, ttl + Duration::from_secs(2)).await,
        Reason::Revoked
    );
    assert!(started.elapsed() <= ttl + Duration::from_secs(2));
    let listed = here.keys(&mut conn, &name("billing")).await.unwrap();
    assert!(listed[0].revoked_at.is_some());
    here.revoke_key(&mut conn, &key.id()).await.unwrap();
}

#[tokio::test]
async fn an_expired_key_is_refused_even_from_the_cache() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let keys = keys(pool, Duration::from_secs(60));
    let mut tx = pool.begin().await.unwrap();
    keys.create_principal(&mut tx, &name("billing"), Kind::Service, &[])
        .await
        .unwrap();
    let past = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expired = keys
        .create_key(&mut tx, &name("billing"), Some(past))
        .await
        .unwrap();
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(500);
    let expiring = keys
        .create_key(&mut tx, &name("billing"), Some(soon))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(
        reason(keys.authenticate(&expired.expose_secret()).await),
        Reason::Expired
    );
    keys.authenticate(&expiring.expose_secret()).await.unwrap();
    // Cached for a minute, yet refused once its expiry passes.
    assert_eq!(
        refused_within(&keys, &expiring.expose_secret(), Duration::from_secs(5)).await,
        Reason::Expired
    );
}

#[tokio::test]
async fn a_disabled_principals_keys_are_refused() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let ttl = Duration::from_millis(300);
    let here = keys(pool, ttl);
    let there = keys(pool, ttl);
    let key = principal_with_key(&here, pool, "billing", &[Role::Producer]).await;
    let credential = key.expose_secret();
    // Both processes have the key cached: "at once here" must not be served by an empty cache.
    here.authenticate(&credential).await.unwrap();
    there.authenticate(&credential).await.unwrap();

    let mut conn = pool.acquire().await.unwrap();
    here.disable_principal(&mut conn, &name("billing"))
        .await
        .unwrap();

    assert_eq!(
        reason(here.authenticate(&credential).await),
        Reason::PrincipalDisabled
    );
    assert_eq!(
        refused_within(&there, &credential, ttl + Duration::from_secs(2)).await,
        Reason::PrincipalDisabled
    );
    let principal = here.principal(&mut conn, &name("billing")).await.unwrap();
    assert!(principal.disabled_at.is_some());
}

#[tokio::test]
async fn the_api_keys_row_holds_no_part_of_the_secret() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let keys = keys(pool, Duration::ZERO);
    let key = principal_with_key(&keys, pool, "billing", &[]).await;
    let text = key.expose_secret();
    let secret = text.rsplit_once('_').unwrap().1;

    // The whole row as PostgreSQL prints it: bytea as hex, so raw secret bytes would show too.
    let row: String = sqlx::query_scalar("SELECT k::text FROM api_keys k WHERE key_id = $1")
        .bind(key.id().to_string())
        .fetch_one(pool)
        .await
        .unwrap();

    assert!(row.contains(&key.id().to_string()), "{row}");
    for window in secret.as_bytes().windows(8) {
        let piece = std::str::from_utf8(window).unwrap();
        assert!(
            !row.contains(piece),
            "the row holds {piece} of the secret: {row}"
        );
    }
}

#[tokio::test]
async fn names_keys_and_principals_that_do_not_fit_are_refused() {
    let app = spawn_app().await;
    let pool = app.store.pool();
    let keys = keys(pool, Duration::ZERO);
    let key = principal_with_key(&keys, pool, "billing", &[]).await;
    let mut conn = pool.acquire().await.unwrap();

    let twice = keys
        .create_principal(&mut conn, &name("billing"), Kind::Human, &[])
        .await;
    let nobody = keys.create_key(&mut conn, &name("nobody"), None).await;
    let same_key = keys.add_key(&mut conn, &name("billing"), &key, None).await;
    let unknown = keel::auth::KeyId::parse("00000000000000ff").unwrap();
    let revoke_unknown = keys.revoke_key(&mut conn, &unknown).await;
    let list_nobody = keys.keys(&mut conn, &name("nobody")).await;

    assert!(matches!(twice, Err(Error::PrincipalExists(_))), "{twice:?}");
    assert!(
        matches!(nobody, Err(Error::PrincipalNotFound(_))),
        "{nobody:?}"
    );
    assert!(matches!(same_key, Err(Error::KeyExists(_))), "{same_key:?}");
    assert!(matches!(revoke_unknown, Err(Error::KeyNotFound(_))));
    assert!(matches!(list_nobody, Err(Error::PrincipalNotFound(_))));
    let all: Vec<String> = keys
        .principals(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name.to_string())
        .collect();
    // The bootstrap admin every test app starts with, and billing.
    assert_eq!(all, ["admin", "billing"]);
}
