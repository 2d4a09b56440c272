//! OIDC bearer tokens (`keel::auth::Oidc`) against a real JWKS server on loopback, with tokens
//! signed here by real RSA, P-256 and Ed25519 keys (signed by hand, not by the verifier's
//! library): the claim and algorithm rules, key rotation, an issuer that is down, and that a
//! flood of unknown `kid`s cannot make keel flood the issuer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::Utc;
use hmac::Mac;
use keel::auth::{Error, Oidc, Reason, Role};
use keel::config::OidcConfig;
use rsa::pkcs1::EncodeRsaPublicKey;
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

use crate::helpers::eventually;

const ISSUER: &str = "https://idp.example.com/realms/keel";
const AUDIENCE: &str = "keel-api";

fn b64(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key of the test issuer, with its public JWK.
#[derive(Clone)]
struct TestKey {
    kid: String,
    alg: &'static str,
    signer: Signer,
}

#[derive(Clone)]
enum Signer {
    Rsa(rsa::PrivateKey),
    P256(p256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

/// RSA key generation is slow in a debug build: two keys serve every test.
fn rsa_key(index: usize) -> rsa::PrivateKey {
    static KEYS: OnceLock<Vec<rsa::PrivateKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..2)
            .map(|_| rsa::PrivateKey::new(&mut getrandom_04::SysRng, 2048).unwrap())
            .collect()
    })[index]
        .clone()
}

impl TestKey {
    fn rsa(kid: &str, index: usize) -> Self {
        Self {
            kid: kid.into(),
            alg: "RS256",
            signer: Signer::Rsa(rsa_key(index)),
        }
    }

    fn p256(kid: &str) -> Self {
        Self {
            kid: kid.into(),
            alg: "ES256",
            // A random scalar; the odd one at or above the curve's order (about 2^-32) is redrawn.
            signer: Signer::P256(loop {
                if let Ok(key) = p256::ecdsa::SigningKey::from_slice(&rand::random::<[u8; 32]>()) {
                    break key;
                }
            }),
        }
    }

    fn ed25519(kid: &str) -> Self {
        let seed: [u8; 32] = rand::random();
        Self {
            kid: kid.into(),
            alg: "EdDSA",
            signer: Signer::Ed25519(ed25519_dalek::SigningKey::from_bytes(&seed)),
        }
    }

    fn jwk(&self) -> Value {
        match &self.signer {
            Signer::Rsa(key) => json!({
                "kty": "RSA", "kid": self.kid, "use": "sig", "alg": "RS256",
                "n": b64(key.n_bytes()), "e": b64(key.e_bytes()),
            }),
            Signer::P256(key) => {
                let point = key.verifying_key().to_sec1_point(false);
                json!({
                    "kty": "EC", "kid": self.kid, "crv": "P-256",
                    "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
                })
            }
            Signer::Ed25519(key) => json!({
                "kty": "OKP", "kid": self.kid, "crv": "Ed25519",
                "x": b64(key.verifying_key().as_bytes()),
            }),
        }
    }

    /// A token with this key's `alg` and `kid` and the given claims.
    fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            json!({"alg": self.alg, "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    fn sign_with_header(&self, header: Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));
        let signature = match &self.signer {
            Signer::Rsa(key) => {
                use rsa::signature::{SignatureEncoding, Signer as _};
                let signer = rsa::pkcs1v15::SigningKey::<sha2_011::Sha256>::new(key.clone());
                signer.sign(input.as_bytes()).to_vec()
            }
            Signer::P256(key) => {
                use p256::ecdsa::signature::Signer as _;
                let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
                signature.to_bytes().to_vec()
            }
            Signer::Ed25519(key) => {
                use ed25519_dalek::Signer as _;
                key.sign(input.as_bytes()).to_bytes().to_vec()
            }
        };
        format!("{input}.{}", b64(signature))
    }
}

/// Claims that keel accepts, for `sub`, with `roles`, valid for ten minutes.
fn claims(sub: &str) -> Value {
    let now = Utc::now().timestamp();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "iat": now, "exp": now + 600,
        "roles": ["reader", "producer", "root"],
    })
}

/// A JWKS endpoint on loopback that counts its requests and can be made to fail.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    requests: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(keys: &[&TestKey]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks", listener.local_addr().unwrap());
        let served = Arc::new(Mutex::new(keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()));
        let requests = Arc::new(AtomicUsize::new(0));
        let failing = Arc::new(AtomicBool::new(false));
        let router = {
            let (served, requests, failing) = (served.clone(), requests.clone(), failing.clone());
            Router::new().route(
                "/jwks",
                get(move || async move {
                    requests.fetch_add(1, Ordering::SeqCst);
                    if failing.load(Ordering::SeqCst) {
                        return Err(StatusCode::SERVICE_UNAVAILABLE);
                    }
                    let keys = served.lock().unwrap().clone();
                    Ok(Json(json!({ "keys": keys })))
                }),
            )
        };
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            url,
            keys: served,
            requests,
            failing,
            task,
        }
    }

    fn serve(&self, keys: &[&TestKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk()).collect();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl JwksServer {
    /// Stops serving: new connections are refused.
    async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn config(jwks: &JwksServer) -> OidcConfig {
    OidcConfig {
        issuer: Some(ISSUER.into()),
        audience: Some(AUDIENCE.into()),
        jwks_url: Some(jwks.url.clone()),
        ..OidcConfig::default()
    }
}

fn verifier(config: &OidcConfig) -> Oidc {
    // No pooled connections: a stopped server is then unreachable at once.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    Oidc::from_config(config, client).unwrap().unwrap()
}

async fn invalid(oidc: &Oidc, token: &str) -> Reason {
    match oidc.verify(token).await {
        Err(Error::TokenInvalid(reason)) => {
            assert_eq!(Error::TokenInvalid(reason).code(), "token_invalid");
            reason
        }
        other => panic!("expected token_invalid, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_token_verifies_with_its_roles_mapped_and_unknown_roles_ignored() {
    let key = TestKey::rsa("rsa-1", 0);
    let jwks = JwksServer::start(&[&key]).await;
    let oidc = verifier(&config(&jwks));
    let claims = claims("alice");

    let identity = oidc.verify(&key.sign(&claims)).await.unwrap();

    assert_eq!(identity.subject, "alice");
    assert_eq!(identity.issuer, ISSUER);
    assert_eq!(identity.roles, [Role::Producer, Role::Reader]);
    assert_eq!(
        identity.expires_at.timestamp(),
        claims["exp"].as_i64().unwrap()
    );
    assert_eq!(jwks.requests(), 1);

    // An audience array that contains keel's, and no roles claim at all.
    let mut other = claims.clone();
    other["aud"] = json!(["another-api", AUDIENCE]);
    other.as_object_mut().unwrap().remove("roles");
    let identity = oidc.verify(&key.sign(&other)).await.unwrap();
    assert_eq!(identity.roles, []);
    assert_eq!(jwks.requests(), 1, "the keys are cached");
}

#[tokio::test]
async fn es256_and_eddsa_tokens_verify_and_roles_may_come_from_a_scope_string() {
    let (ec, ed) = (TestKey::p256("ec-1"), TestKey::ed25519("ed-1"));
    let jwks = JwksServer::start(&[&ec, &ed]).await;
    let oidc = verifier(&OidcConfig {
        roles_claim: "scope".into(),
        ..config(&jwks)
    });
    let mut claims = claims("svc-billing");
    claims["scope"] = json!("openid producer registry-admin");

    for key in [&ec, &ed] {
        let identity = oidc.verify(&key.sign(&claims)).await.unwrap();
        assert_eq!(identity.subject, "svc-billing", "{}", key.alg);
        assert_eq!(identity.roles, [Role::Producer, Role::RegistryAdmin]);
    }

    // Not in the allow-list: refused even though the key would verify it.
    let ec_only = verifier(&OidcConfig {
        algorithms: vec!["RS256".into()],
        ..config(&jwks)
    });
    assert_eq!(
        invalid(&ec_only, &ec.sign(&claims)).await,
        Reason::AlgNotAllowed
    );
}

#[tokio::test]
async fn an_expired_token_is_token_expired_and_the_leeway_is_honoured() {
    let key = TestKey::rsa("rsa-1", 0);
    let jwks = JwksServer::start(&[&key]).await;
    let oidc = verifier(&config(&jwks));
    let now = Utc::now().timestamp();
    let mut expired = claims("alice");
    expired["exp"] = json!(now - 61);

    let err = oidc.verify(&key.sign(&expired)).await.unwrap_err();
    assert!(matches!(err, Error::TokenExpired), "{err:?}");
    assert_eq!(err.code(), "token_expired");
    assert_eq!(err.reason(), Some(Reason::TokenExpired));

    let mut within_leeway = claims("alice");
    within_leeway["exp"] = json!(now - 10);
    oidc.verify(&key.sign(&within_leeway)).await.unwrap();

    // An expired token with a bad signature is invalid, not expired: the signature comes first.
    let forged = key.sign(&expired);
    let (input, _) = forged.rsplit_once('.').unwrap();
    let forged = format!("{input}.{}", b64([7u8; 256]));
    assert_eq!(invalid(&oidc, &forged).await, Reason::BadSignature);
}

#[tokio::test]
async fn tokens_that_are_not_yet_valid_for_others_or_incomplete_are_invalid() {
    let key = TestKey::rsa("rsa-1", 0);
    let jwks = JwksServer::start(&[&key]).await;
    let oidc = verifier(&config(&jwks));
    let now = Utc::now().timestamp();
    let with = |name: &str, value: Value| {
        let mut claims = claims("alice");
        claims[name] = value;
        key.sign(&claims)
    };
    let without = |name: &str| {
        let mut claims = claims("alice");
        claims.as_object_mut().unwrap().remove(name);
        key.sign(&claims)
    };

    let cases = [
        (
            "nbf in two minutes",
            with("nbf", json!(now + 120)),
            Reason::NotYetValid,
        ),
        (
            "another audience",
            with("aud", json!("other-api")),
            Reason::WrongAudience,
        ),
        (
            "audiences without keel",
            with("aud", json!(["a", "b"])),
            Reason::WrongAudience,
        ),
        (
            "another issuer",
            with("iss", json!("https://evil.example.com")),
            Reason::WrongIssuer,
        ),
        (
            "issuer with a slash",
            with("iss", json!(format!("{ISSUER}/"))),
            Reason::WrongIssuer,
        ),
        ("no sub", without("sub"), Reason::BadClaim),
        ("empty sub", with("sub", json!("")), Reason::BadClaim),
        ("numeric sub", with("sub", json!(42)), Reason::BadClaim),
        ("no aud", without("aud"), Reason::BadClaim),
        ("no iss", without("iss"), Reason::BadClaim),
        ("no exp", without("exp"), Reason::BadClaim),
        ("text exp", with("exp", json!("tomorrow")), Reason::BadClaim),
    ];
    for (what, token, expected) in cases {
        assert_eq!(invalid(&oidc, &token).await, expected, "{what}");
    }
    let mut fine = claims("alice");
    fine["nbf"] = json!(now + 10);
    oidc.verify(&key.sign(&fine)).await.unwrap();
}

#[tokio::test]
async fn algorithm_confusion_none_and_tampering_are_refused() {
    let key = TestKey::rsa("rsa-1", 0);
    let ec = TestKey::p256("ec-1");
    let jwks = JwksServer::start(&[&key, &ec]).await;
    let oidc = verifier(&config(&jwks));
    let claims = claims("alice");
    let input = |header: Value| format!("{}.{}", b64(header.to_string()), b64(claims.to_string()));

    // alg none, with and without a signature part.
    let none = input(json!({"alg": "none", "kid": "rsa-1"}));
    assert_eq!(
        invalid(&oidc, &format!("{none}.")).await,
        Reason::AlgNotAllowed
    );
    assert_eq!(
        invalid(&oidc, &format!("{none}.AAAA")).await,
        Reason::AlgNotAllowed
    );

    // HS256 with the RSA public key as the HMAC secret, in each form an attacker might try.
    let Signer::Rsa(private) = &key.signer else {
        unreachable!()
    };
    let public = private.to_public_key();
    let pem = public.to_pkcs1_pem(Default::default()).unwrap();
    let der = public.to_pkcs1_der().unwrap();
    let jwk_text = key.jwk().to_string();
    let secrets: [&[u8]; 4] = [
        pem.as_bytes(),
        der.as_bytes(),
        jwk_text.as_bytes(),
        &public.n_bytes(),
    ];
    for secret in secrets {
        let message = input(json!({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}));
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap();
        mac.update(message.as_bytes());
        let token = format!("{message}.{}", b64(mac.finalize().into_bytes()));
        assert_eq!(invalid(&oidc, &token).await, Reason::AlgNotAllowed);
    }

    // A real ES256 signature, but naming the RSA key: the key type must fit the algorithm.
    let confused = ec.sign_with_header(json!({"alg": "ES256", "kid": "rsa-1"}), &claims);
    assert_eq!(invalid(&oidc, &confused).await, Reason::KeyMismatch);
    // An RS256 token signed by the RSA key but labelled PS256: the JWK pins RS256.
    let relabelled = key.sign_with_header(json!({"alg": "PS256", "kid": "rsa-1"}), &claims);
    let ps = verifier(&OidcConfig {
        algorithms: vec!["PS256".into(), "RS256".into()],
        ..config(&jwks)
    });
    assert_eq!(invalid(&ps, &relabelled).await, Reason::KeyMismatch);

    // Tampered payload: more roles, same signature.
    let token = key.sign(&claims);
    let parts: Vec<&str> = token.split('.').collect();
    let mut elevated = claims.clone();
    elevated["roles"] = json!(["admin"]);
    let tampered = format!("{}.{}.{}", parts[0], b64(elevated.to_string()), parts[2]);
    assert_eq!(invalid(&oidc, &tampered).await, Reason::BadSignature);

    // A kid the issuer does not have.
    let stranger = TestKey::rsa("rsa-unknown", 1);
    assert_eq!(
        invalid(&oidc, &stranger.sign(&claims)).await,
        Reason::UnknownKid
    );
    oidc.verify(&token).await.unwrap();
}

#[tokio::test]
async fn jku_x5u_and_embedded_jwk_headers_are_never_fetched_or_trusted() {
    let key = TestKey::rsa("rsa-1", 0);
    let jwks = JwksServer::start(&[&key]).await;
    let attacker_key = TestKey::rsa("attacker", 1);
    let attacker = JwksServer::start(&[&attacker_key]).await;
    let oidc = verifier(&config(&jwks));
    let claims = claims("mallory");

    let pointing_elsewhere = |kid: &str| {
        json!({
            "alg": "RS256", "kid": kid, "jku": attacker.url, "x5u": attacker.url,
            "jwk": attacker_key.jwk(),
        })
    };
    let own_kid = attacker_key.sign_with_header(pointing_elsewhere("attacker"), &claims);
    assert_eq!(invalid(&oidc, &own_kid).await, Reason::UnknownKid);
    let borrowed_kid = attacker_key.sign_with_header(pointing_elsewhere("rsa-1"), &claims);
    assert_eq!(invalid(&oidc, &borrowed_kid).await, Reason::BadSignature);

    assert_eq!(
        attacker.requests(),
        0,
        "keel never asked the attacker's server"
    );
    assert!(jwks.requests() >= 1, "keel asked the configured JWKS URL");
}

#[tokio::test]
async fn a_rotated_key_verifies_without_restart_and_a_withdrawn_one_stops() {
    let old = TestKey::rsa("2026-11", 0);
    let new = TestKey::p256("2026-12");
    let jwks = JwksServer::start(&[&old]).await;
    let oidc = verifier(&OidcConfig {
        jwks_cache_s: 1,
        jwks_refetch_min_s: 1,
        ..config(&jwks)
    });
    oidc.verify(&old.sign(&claims("alice"))).await.unwrap();

    // The issuer publishes a new key and signs with it.
    jwks.serve(&[&old, &new]);
    let token = new.sign(&claims("alice"));
    let identity = eventually(Duration::from_secs(5), "the rotated key", || async {
        match oidc.verify(&token).await {
            Ok(identity) => Some(identity),
            Err(Error::TokenInvalid(Reason::UnknownKid)) => None,
            Err(other) => panic!("{other:?}"),
        }
    })
    .await;
    assert_eq!(identity.subject, "alice");
    let fetches = jwks.requests();
    assert!(fetches >= 2, "fetched again for the new kid");

    // Then withdraws the old one: within about jwks_cache_s it stops verifying.
    jwks.serve(&[&new]);
    let token = old.sign(&claims("alice"));
    eventually(
        Duration::from_secs(5),
        "the withdrawn key refused",
        || async {
            match oidc.verify(&token).await {
                Ok(_) => None,
                Err(Error::TokenInvalid(Reason::UnknownKid)) => Some(()),
                Err(other) => panic!("{other:?}"),
            }
        },
    )
    .await;
    oidc.verify(&new.sign(&claims("alice"))).await.unwrap();
}

#[tokio::test]
async fn with_the_jwks_down_cached_keys_keep_verifying_and_a_new_kid_fails_closed() {
    let known = TestKey::rsa("known", 0);
    let fresh = TestKey::ed25519("fresh");
    let mut jwks = JwksServer::start(&[&known]).await;
    let oidc = verifier(&OidcConfig {
        jwks_cache_s: 1,
        jwks_refetch_min_s: 1,
        ..config(&jwks)
    });
    assert_eq!(oidc.fetch_keys().await.unwrap(), 1);
    let token = known.sign(&claims("alice"));
    let fresh_token = fresh.sign(&claims("alice"));

    // The endpoint fails, and the new key is published where keel cannot get it.
    jwks.failing.store(true, Ordering::SeqCst);
    jwks.serve(&[&known, &fresh]);
    let before = jwks.requests();
    eventually(Duration::from_secs(5), "a failed refetch", || async {
        assert_eq!(invalid(&oidc, &fresh_token).await, Reason::UnknownKid);
        (jwks.requests() > before).then_some(())
    })
    .await;
    // The keys are older than jwks_cache_s and the last fetch failed: they still verify.
    oidc.verify(&token).await.unwrap();
    assert_eq!(invalid(&oidc, &fresh_token).await, Reason::UnknownKid);

    // Unreachable altogether: the same.
    jwks.stop().await;
    eventually(Duration::from_secs(5), "a fetch to fail", || async {
        oidc.fetch_keys().await.is_err().then_some(())
    })
    .await;
    oidc.verify(&token).await.unwrap();
    assert_eq!(invalid(&oidc, &fresh_token).await, Reason::UnknownKid);
}

#[tokio::test]
async fn concurrent_requests_on_a_cold_cache_share_one_fetch() {
    let key = TestKey::p256("real");
    let jwks = JwksServer::start(&[&key]).await;
    let oidc = verifier(&config(&jwks));
    let token = key.sign(&claims("alice"));

    let results = futures::future::join_all((0..50).map(|_| oidc.verify(&token))).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(jwks.requests(), 1);
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_issuer_at_most_one_fetch_per_window() {
    let key = TestKey::p256("real");
    let jwks = JwksServer::start(&[&key]).await;
    // The default window, 30 s: far longer than this test.
    let oidc = verifier(&config(&jwks));
    let claims = claims("alice");
    let bogus = |i: usize| {
        key.sign_with_header(
            json!({"alg": "ES256", "kid": format!("bogus-{i}-{}", rand::random::<u64>())}),
            &claims,
        )
    };

    // 100 tokens with made-up kids at once, then 100 more one by one.
    let tokens: Vec<String> = (0..100).map(bogus).collect();
    let results = futures::future::join_all(tokens.iter().map(|t| oidc.verify(t))).await;
    for result in results {
        assert!(
            matches!(result, Err(Error::TokenInvalid(Reason::UnknownKid))),
            "{result:?}"
        );
    }
    for token in (100..200).map(bogus) {
        assert_eq!(invalid(&oidc, &token).await, Reason::UnknownKid);
    }

    assert_eq!(
        jwks.requests(),
        1,
        "one fetch for the first unknown kid, none for the other 199"
    );
    oidc.verify(&key.sign(&claims)).await.unwrap();
    assert_eq!(jwks.requests(), 1, "the real key came with that fetch");
}

#[tokio::test]
async fn over_http_a_token_works_beside_api_keys_and_refusals_have_their_codes() {
    // Arrange: keel with an issuer, and a token whose roles are reader and producer.
    let key = TestKey::p256("http-1");
    let jwks = JwksServer::start(&[&key]).await;
    let oidc = config(&jwks);
    let app = crate::helpers::spawn_app_with(|c| c.auth.oidc = oidc).await;
    let bearer = |token: String| {
        let client = reqwest::Client::new();
        let url = app.url("/v1/events");
        async move {
            let reply = client.get(url).bearer_auth(token).send().await.unwrap();
            let status = reply.status();
            (status, reply.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    // Act and assert: the token reads; its roles do not manage principals.
    let token = key.sign(&claims("alice"));
    let (status, body) = bearer(token.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let manage = reqwest::Client::new()
        .get(app.url("/v1/principals"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(manage.status(), StatusCode::FORBIDDEN);
    // The refusal of an operator action names the token's subject in the audit log.
    let audit: Value = app
        .client()
        .get(app.url("/v1/audit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(audit["rows"][0]["principal"], "oidc:alice");
    assert_eq!(audit["rows"][0]["auth_method"], "token");

    let mut expired = claims("alice");
    expired["exp"] = json!(Utc::now().timestamp() - 600);
    let (status, body) = bearer(key.sign(&expired)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_expired"))
    );
    let mut other_audience = claims("alice");
    other_audience["aud"] = json!("another-api");
    let (status, body) = bearer(key.sign(&other_audience)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("token_invalid"))
    );
    // The admin's API key still works beside tokens.
    assert_eq!(app.get("/v1/events").await.status, StatusCode::OK);
}
