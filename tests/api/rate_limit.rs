//! The failed-authentication guard over real HTTP: keel's server and `api::rate::guard_peers` in
//! front of a stand-in for authentication (a route that answers 401 unless the password is
//! right), since keel's own routes do not check credentials yet.

use std::net::IpAddr;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::{middleware, Router};
use keel::api::rate::{guard_peers, RateLimits};
use keel::api::server;
use keel::config::{ApiConfig, RateLimitConfig};
use keel::shutdown::Shutdown;

struct Guarded {
    base: String,
    stop: Shutdown,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        self.stop.trigger();
    }
}

/// `/login` answers 200 to `x-password: good` and 401 to anything else, behind the guard with
/// `failures` failed authentications a minute, on keel's server on a loopback port.
async fn serve_guarded(failures: u32) -> Guarded {
    let limits = RateLimits::new(&RateLimitConfig {
        failed_auth_per_minute: failures,
        ..RateLimitConfig::default()
    });
    let login = |headers: HeaderMap| async move {
        if headers.get("x-password").is_some_and(|v| v == "good") {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        }
    };
    let app = Router::new()
        .route("/login", get(login))
        .route("/v1/health/live", get(|| async { "ok" }))
        .layer(middleware::from_fn_with_state(limits, guard_peers));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = Shutdown::new();
    let limits = server::Limits::from(&ApiConfig::default());
    tokio::spawn(server::serve(listener, app, limits, stop.clone()));
    Guarded {
        base: format!("http://127.0.0.1:{port}"),
        stop,
    }
}

/// A client whose connections come from `from` (any 127.0.0.0/8 address is this host's).
fn client_from(from: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn login(client: &reqwest::Client, base: &str, password: &str) -> reqwest::Response {
    client
        .get(format!("{base}/login"))
        .header("x-password", password)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_peer_past_its_failed_authentications_gets_429_even_with_the_right_password() {
    let app = serve_guarded(3).await;
    let client = client_from("127.0.0.1");
    assert_eq!(login(&client, &app.base, "good").await.status(), 200);
    for _ in 0..3 {
        assert_eq!(login(&client, &app.base, "wrong").await.status(), 401);
    }

    let refused = login(&client, &app.base, "good").await;

    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One failure comes back every 20 s at 3 a minute.
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["details"]["limit"], "failed_auth", "{body}");
    let health = client
        .get(format!("{}/v1/health/live", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "health probes are never limited");
}

#[tokio::test]
async fn forwarding_headers_do_not_change_the_bucket_but_another_peer_has_its_own() {
    let app = serve_guarded(3).await;
    let client = client_from("127.0.0.1");
    for n in 0..3 {
        let spoofed = client
            .get(format!("{}/login", app.base))
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .header("x-real-ip", format!("198.51.100.{n}"))
            .header("forwarded", format!("for=192.0.2.{n}"))
            .send()
            .await
            .unwrap();
        assert_eq!(spoofed.status(), 401);
    }
    let spoofed = client
        .get(format!("{}/login", app.base))
        .header("x-forwarded-for", "203.0.113.200")
        .header("x-password", "good")
        .send()
        .await
        .unwrap();
    assert_eq!(
        spoofed.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "a new forwarded address is the same peer"
    );

    let other = client_from("127.0.0.2");
    assert_eq!(login(&other, &app.base, "good").await.status(), 200);
    assert_eq!(login(&other, &app.base, "wrong").await.status(), 401);
}

#[tokio::test]
async fn zero_failed_authentications_a_minute_turns_the_guard_off() {
    let app = serve_guarded(0).await;
    let client = client_from("127.0.0.1");
    for _ in 0..50 {
        assert_eq!(login(&client, &app.base, "wrong").await.status(), 401);
    }
    assert_eq!(login(&client, &app.base, "good").await.status(), 200);
}

#[tokio::test]
async fn a_principal_over_its_request_rate_gets_429_while_another_is_served_and_a_new_key_does_not_reset_it(
) {
    // Arrange: 5 requests of burst per principal, refilling slowly.
    let app = crate::helpers::spawn_app_with(|c| {
        c.api.rate_limit.requests_per_second = 1;
        c.api.rate_limit.request_burst = 5;
    })
    .await;
    let noisy_key = app
        .principal("noisy", &[keel::auth::Role::Reader], &[])
        .await;
    let calm_key = app
        .principal("calm", &[keel::auth::Role::Reader], &[])
        .await;
    let noisy = crate::helpers::client_with_key(&noisy_key);
    let calm = crate::helpers::client_with_key(&calm_key);
    let get = |client: &reqwest::Client| client.get(app.url("/v1/events")).send();

    // Act: the noisy one spends its burst and more.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(get(&noisy).await.unwrap());
    }

    // Assert.
    let codes: Vec<u16> = statuses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(&codes[..5], [200; 5], "{codes:?}");
    assert!(codes[5..].iter().all(|&c| c == 429), "{codes:?}");
    let limited = statuses.pop().unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        get(&calm).await.unwrap().status(),
        200,
        "another principal is unaffected"
    );
    // A second key of the same principal shares its bucket.
    let second: serde_json::Value = app
        .client()
        .post(app.url("/v1/principals/noisy/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rotated = crate::helpers::client_with_key(second["key"].as_str().unwrap());
    assert_eq!(get(&rotated).await.unwrap().status(), 429);
}
