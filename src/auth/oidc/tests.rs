//! The rules that refuse a token before any key is needed. Tokens signed with real keys, against
//! a real JWKS server, are tested in `tests/api/oidc.rs`.

use super::*;
use serde_json::json;

fn config() -> OidcConfig {
    OidcConfig {
        issuer: Some("https://idp.example.com".into()),
        audience: Some("keel".into()),
        // Nothing listens on port 9 here: a fetch would fail, and these tests must not need one.
        jwks_url: Some("http://127.0.0.1:9/jwks".into()),
        ..OidcConfig::default()
    }
}

fn oidc() -> Oidc {
    Oidc::from_config(&config(), reqwest::Client::new())
        .unwrap()
        .unwrap()
}

fn part(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn token(header: serde_json::Value, signature: &[u8]) -> String {
    let claims = json!({
        "iss": "https://idp.example.com", "aud": "keel", "sub": "alice",
        "exp": Utc::now().timestamp() + 600, "roles": ["admin"],
    });
    format!(
        "{}.{}.{}",
        part(&header),
        part(&claims),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

async fn reason(oidc: &Oidc, token: &str) -> Reason {
    match oidc.verify(token).await {
        Err(Error::TokenInvalid(reason)) => reason,
        other => panic!("expected token_invalid, got {other:?}"),
    }
}

#[test]
fn no_issuer_means_no_verifier_and_a_half_configured_one_is_refused() {
    let none = Oidc::from_config(&OidcConfig::default(), reqwest::Client::new()).unwrap();
    assert!(none.is_none());
    let half = OidcConfig {
        jwks_url: None,
        ..config()
    };
    let err = Oidc::from_config(&half, reqwest::Client::new()).unwrap_err();
    assert!(err.to_string().contains("auth.oidc.jwks_url"), "{err}");
}

#[test]
fn jwts_are_told_from_api_keys_by_shape() {
    let key = format!("keel_{}_{}", "0123456789abcdef", "ab".repeat(32));
    for not_jwt in [
        key.as_str(),
        "",
        "a.b",
        "a.b.c.d",
        "a.b.c.d.e",
        ".b.c",
        "a..c",
        "a.b+/.c",
        "a.b.c=",
        "eyJ.eyJ. c",
    ] {
        assert!(!looks_like_jwt(not_jwt), "{not_jwt:?}");
    }
    for jwt in [
        "a.b.c",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "A-_z.0.9_-",
    ] {
        assert!(looks_like_jwt(jwt), "{jwt:?}");
    }
}

#[tokio::test]
async fn unsigned_hmac_and_unlisted_algorithms_are_refused_before_any_key_is_fetched() {
    let oidc = oidc();
    let header = |alg: &str| json!({"alg": alg, "kid": "k1", "typ": "JWT"});
    assert_eq!(
        reason(&oidc, &token(header("none"), b"")).await,
        Reason::AlgNotAllowed
    );
    // HS256 "signed" with an RSA public key's bytes is the classic confusion; keel never gets
    // as far as choosing a key.
    assert_eq!(
        reason(&oidc, &token(header("HS256"), b"sig")).await,
        Reason::AlgNotAllowed
    );
    for alg in ["HS384", "HS512", "ES384", "RS512", "None", "rs256", ""] {
        assert_eq!(
            reason(&oidc, &token(header(alg), b"sig")).await,
            Reason::AlgNotAllowed,
            "{alg}"
        );
    }
    assert!(!oidc.inner.jwks.tried_fetching(), "no fetch was even tried");
}

#[tokio::test]
async fn a_token_without_kid_with_crit_or_not_a_jws_is_refused() {
    let oidc = oidc();
    assert_eq!(
        reason(&oidc, &token(json!({"alg": "RS256"}), b"sig")).await,
        Reason::MissingKid
    );
    assert_eq!(
        reason(
            &oidc,
            &token(
                json!({"alg": "RS256", "kid": "k", "crit": ["b64"], "b64": false}),
                b"s"
            )
        )
        .await,
        Reason::TokenMalformed
    );
    let long_kid = "k".repeat(MAX_KID_BYTES + 1);
    assert_eq!(
        reason(
            &oidc,
            &token(json!({"alg": "RS256", "kid": long_kid}), b"s")
        )
        .await,
        Reason::UnknownKid
    );
    let too_long = format!("{}.{}.sig", "a".repeat(MAX_TOKEN_BYTES), "b");
    for malformed in [
        "not a token",
        "a.b.c",
        too_long.as_str(),
        &format!("{}.e30.c", URL_SAFE_NO_PAD.encode("[1]")),
        &format!("{}.e30.c", URL_SAFE_NO_PAD.encode("{\"alg\": 256}")),
    ] {
        assert_eq!(
            reason(&oidc, malformed).await,
            Reason::TokenMalformed,
            "{}",
            &malformed[..malformed.len().min(40)]
        );
    }
}

#[tokio::test]
async fn a_refusal_never_repeats_the_token() {
    let oidc = oidc();
    let token = token(json!({"alg": "none", "kid": "k1"}), b"");
    let err = oidc.verify(&token).await.unwrap_err();
    let shown = format!("{err} {err:?}");
    for part in token.split('.').filter(|p| !p.is_empty()) {
        assert!(!shown.contains(part), "{shown}");
    }
}
