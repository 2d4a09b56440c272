//! TLS for real, over loopback TCP: the API's HTTPS listener (versions, limits, reload, client
//! certificates), PostgreSQL with `sslmode=verify-full` against a private server of the test's
//! own, and the Redis sink over `rediss://`. Certificates are made at test time with `openssl`.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::routing::get as get_route;
use axum::{Json, Router};
use keel::api::server::{Limits, PeerCertificate};
use keel::api::tls::ServerTls;
use keel::app::Application;
use keel::config::{ApiConfig, ApiTlsConfig, ClientAuth, Config};
use keel::store::{DatabaseConfig, Store};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::helpers::{agent_state_changed, eventually, spawn_app_with, test_config};
use crate::relay_support::fast_relay;
use crate::tls_support::{
    get, postgres_unavailable, server_serial, tls_connect, PgServer, Pki, RedisTls, ANY_TLS, TLS12,
    TLS13,
};

/// `api.tls` with the certificate `server` of `pki`.
fn tls_settings(pki: &Pki, server: &str) -> ApiTlsConfig {
    ApiTlsConfig {
        cert_file: Some(pki.cert(server)),
        key_file: Some(pki.key(server)),
        ..ApiTlsConfig::default()
    }
}

/// A keel API serving HTTPS with `settings`: its address and its TLS reload handle.
async fn spawn_https_app(
    settings: ApiTlsConfig,
    adjust: impl FnOnce(&mut Config),
) -> (SocketAddr, Arc<ServerTls>) {
    let mut config = test_config();
    config.api.tls = settings;
    adjust(&mut config);
    let app = Application::build(&config)
        .await
        .expect("keel builds with api.tls");
    let addr = app.local_addr();
    let tls = app.tls().expect("api.tls is set").clone();
    tokio::spawn(app.run_until_stopped(std::future::pending()));
    (addr, tls)
}

#[tokio::test]
async fn https_serves_the_api_over_tls_1_2_and_1_3_to_clients_that_trust_the_ca() {
    let pki = Pki::new("https");
    pki.server("server", 0x1001);
    let (addr, _) = spawn_https_app(tls_settings(&pki, "server"), |_| {}).await;

    for (versions, expected) in [
        (TLS12, rustls::ProtocolVersion::TLSv1_2),
        (TLS13, rustls::ProtocolVersion::TLSv1_3),
    ] {
        let mut stream = tls_connect(addr, pki.client_config(versions, None))
            .await
            .expect("handshake");
        let session = stream.get_ref().1;
        assert_eq!(session.protocol_version(), Some(expected));
        assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (status, body) = get(&mut stream, "/v1/health/live").await.unwrap();
        assert_eq!((status, body.as_str()), (200, r#"{"status":"live"}"#));
    }

    // An ordinary HTTPS client, by IP address and by name: both are in the certificate.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.ca()).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{}/v1/health/live", addr.port());
        let reply = client.get(&url).send().await.expect(&url);
        assert_eq!(reply.status(), StatusCode::OK, "{url}");
    }
    // A client that trusts only its system's roots does not trust keel's test CA.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}/v1/health/live", addr.port());
    assert!(untrusting.get(&url).send().await.is_err());
}

/// `openssl s_client` to `addr` with `version_flag`: whether the handshake succeeded, and what it
/// printed.
async fn s_client(addr: SocketAddr, pki: &Pki, version_flag: &str) -> (bool, String) {
    let mut command = Command::new("openssl");
    command
        .args([
            "s_client",
            "-brief",
            "-connect",
            &addr.to_string(),
            version_flag,
        ])
        // Security level 0 lets OpenSSL itself offer TLS 1.1, so a refusal is the server's.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile"])
        .arg(pki.ca())
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn openssl_gets_tls_1_2_and_1_3_and_is_refused_tls_1_1() {
    let pki = Pki::new("versions");
    pki.server("server", 0x1001);
    let (addr, _) = spawn_https_app(tls_settings(&pki, "server"), |_| {}).await;

    for (flag, version) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(addr, &pki, flag).await;
        assert!(ok, "{flag}: {text}");
        assert!(
            text.contains(&format!("Protocol version: {version}")),
            "{text}"
        );
        assert!(text.contains("Verification: OK"), "{text}");
    }
    let (ok, text) = s_client(addr, &pki, "-tls1_1").await;
    assert!(!ok, "TLS 1.1 was accepted: {text}");
    // The server's alert (rustls answers a TLS 1.1 hello, which has no signature algorithms,
    // with handshake_failure), not OpenSSL declining to offer TLS 1.1 itself.
    assert!(
        text.contains("alert handshake failure") || text.contains("alert protocol version"),
        "{text}"
    );
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused_at_once_and_silent_clients_at_the_header_timeout() {
    let pki = Pki::new("plain");
    pki.server("server", 0x1001);
    let (addr, _) = spawn_https_app(tls_settings(&pki, "server"), |c| {
        c.api.header_read_timeout_ms = 2_000;
    })
    .await;

    let mut plain = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    plain
        .write_all(b"GET /v1/health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    // A close or a reset, either way quickly; at most a TLS alert comes back, never HTTP.
    let _ = tokio::time::timeout(Duration::from_millis(1_000), plain.read_to_end(&mut answer))
        .await
        .expect("plain HTTP to the TLS port is closed well before the header timeout");
    assert!(started.elapsed() < Duration::from_millis(1_000));
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut nothing))
        .await
        .expect("a client that never starts its handshake is closed at the header timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_500),
        "closed after {waited:?}"
    );
    assert!(nothing.is_empty());

    // After its handshake, a client that sends no request head is closed at the header timeout.
    let config = pki.client_config(ANY_TLS, None);
    let mut idle = tls_connect(addr, config).await.expect("handshake");
    let started = Instant::now();
    let mut nothing = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut nothing))
        .await
        .expect("a TLS client that sends no request is closed at the header timeout");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1_500),
        "closed after {waited:?}"
    );
    assert!(nothing.is_empty());
}

#[tokio::test]
async fn the_connection_limit_and_the_header_limit_hold_on_the_tls_port() {
    let pki = Pki::new("limits");
    pki.server("server", 0x1001);
    let (addr, _) = spawn_https_app(tls_settings(&pki, "server"), |c| {
        c.api.max_connections = 2;
        c.api.header_read_timeout_ms = 30_000;
    })
    .await;
    let config = pki.client_config(ANY_TLS, None);

    let mut first = tls_connect(addr, config.clone()).await.unwrap();
    let mut second = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(get(&mut first, "/v1/health/live").await.unwrap().0, 200);
    assert_eq!(get(&mut second, "/v1/health/live").await.unwrap().0, 200);
    // At the limit a third connection waits in the backlog: its handshake gets no answer.
    let waiting = tokio::time::timeout(
        Duration::from_millis(500),
        tls_connect(addr, config.clone()),
    )
    .await;
    assert!(
        waiting.is_err(),
        "a third connection was served at the limit"
    );

    // 101 headers: hyper's 431, over TLS as over plain HTTP.
    let mut request = String::from("GET /v1/health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n");
    for i in 0..101 {
        request.push_str(&format!("x-flood-{i}: 1\r\n"));
    }
    request.push_str("\r\n");
    second.write_all(request.as_bytes()).await.unwrap();
    let (status, _) = crate::tls_support::read_response(&mut second)
        .await
        .unwrap();
    assert_eq!(status, 431);

    drop(first);
    let mut third = eventually(Duration::from_secs(10), "a place under the limit", || {
        let config = config.clone();
        async move {
            tokio::time::timeout(Duration::from_millis(500), tls_connect(addr, config))
                .await
                .ok()?
                .ok()
        }
    })
    .await;
    assert_eq!(get(&mut third, "/v1/health/live").await.unwrap().0, 200);
}

/// Replaces the files of certificate `into` with those of `from`.
fn swap_certificate(pki: &Pki, from: &str, into: &str) {
    std::fs::copy(pki.key(from), pki.key(into)).unwrap();
    std::fs::copy(pki.cert(from), pki.cert(into)).unwrap();
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_to_new_connections_while_open_ones_keep_working() {
    let pki = Pki::new("reload");
    pki.server("server", 0x1001).server("renewed", 0x2002);
    let (addr, tls) = spawn_https_app(tls_settings(&pki, "server"), |c| {
        c.api.header_read_timeout_ms = 30_000;
    })
    .await;
    let config = pki.client_config(ANY_TLS, None);

    let mut open = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(server_serial(&open), [0x10, 0x01]);
    assert_eq!(get(&mut open, "/v1/health/live").await.unwrap().0, 200);

    swap_certificate(&pki, "renewed", "server");
    tls.reload().expect("the renewed certificate loads");
    let mut renewed = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(server_serial(&renewed), [0x20, 0x02]);
    assert_eq!(get(&mut renewed, "/v1/health/live").await.unwrap().0, 200);
    // The connection opened before the reload goes on, with its certificate.
    assert_eq!(get(&mut open, "/v1/health/live").await.unwrap().0, 200);
    assert_eq!(server_serial(&open), [0x10, 0x01]);

    // A broken file on the next reload: an error that names it, and the current one stays.
    std::fs::write(pki.cert("server"), "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let err = tls.reload().unwrap_err();
    assert_eq!(err.code(), "tls_pem_invalid");
    assert!(err.to_string().contains("api.tls.cert_file"), "{err}");
    let mut after = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(server_serial(&after), [0x20, 0x02]);
    assert_eq!(get(&mut after, "/v1/health/live").await.unwrap().0, 200);
}

#[tokio::test]
async fn sighup_reloads_the_certificate() {
    // This test's own SIGHUP listener goes first: once one is registered, SIGHUP no longer
    // stops the test process, whenever keel's reload task registers its own.
    let _listening = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("listen for SIGHUP");
    let pki = Pki::new("sighup");
    pki.server("server", 0x1001).server("renewed", 0x2002);
    let (addr, _) = spawn_https_app(tls_settings(&pki, "server"), |_| {}).await;
    let config = pki.client_config(ANY_TLS, None);
    let first = tls_connect(addr, config.clone()).await.unwrap();
    assert_eq!(server_serial(&first), [0x10, 0x01]);

    swap_certificate(&pki, "renewed", "server");
    let pid = std::process::id().to_string();
    // Sent until it lands: keel's task may not have registered for the first one yet.
    eventually(Duration::from_secs(10), "a SIGHUP reload", || {
        let (config, pid) = (config.clone(), pid.clone());
        async move {
            let sent = Command::new("kill").args(["-HUP", &pid]).status().ok()?;
            assert!(sent.success());
            tokio::time::sleep(Duration::from_millis(100)).await;
            let stream = tls_connect(addr, config).await.ok()?;
            (server_serial(&stream) == [0x20, 0x02]).then_some(())
        }
    })
    .await;
}

/// A route that shows what the server put in the request: the peer's address and certificate.
fn whoami() -> Router {
    Router::new().route(
        "/whoami",
        get_route(|request: Request| async move {
            let peer = request
                .extensions()
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0.to_string());
            let cert = request.extensions().get::<PeerCertificate>().cloned();
            Json(json!({
                "peer": peer,
                "subject": cert.as_ref().map(|c| c.subject.clone()),
                "sans": cert.map(|c| c.sans),
            }))
        }),
    )
}

/// `whoami` served over TLS with `settings`.
async fn serve_whoami(settings: ApiTlsConfig) -> SocketAddr {
    let tls = Arc::new(ServerTls::load(&settings).expect("the test certificates load"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits::from(&ApiConfig::default());
    let stop = keel::shutdown::Shutdown::new();
    tokio::spawn(keel::api::server::serve_tls(
        listener,
        whoami(),
        limits,
        tls,
        stop,
    ));
    addr
}

/// `/whoami` over a new TLS connection with `config`: what it shows, and the client's own
/// address; `None` if the server refused the connection.
async fn ask_whoami(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<(Value, String)> {
    let mut stream = tls_connect(addr, config).await.ok()?;
    let local = stream.get_ref().0.local_addr().unwrap().to_string();
    let (status, body) = get(&mut stream, "/whoami").await.ok()?;
    assert_eq!(status, 200, "{body}");
    Some((serde_json::from_str(&body).unwrap(), local))
}

#[tokio::test]
async fn a_verified_client_certificate_reaches_the_request_as_peer_certificate_with_the_peer_address(
) {
    let pki = Pki::new("mtls");
    pki.server("server", 0x1001).client("client", "keel-client");
    let stranger = Pki::new("stranger");
    stranger.client("client", "keel-client");
    let addr = serve_whoami(ApiTlsConfig {
        client_ca_file: Some(pki.ca()),
        client_auth: ClientAuth::Optional,
        ..tls_settings(&pki, "server")
    })
    .await;

    for versions in [TLS12, TLS13] {
        let (seen, local) = ask_whoami(addr, pki.client_config(versions, Some((&pki, "client"))))
            .await
            .expect("a client with a certificate of the CA is let in");
        assert_eq!(
            seen,
            json!({"peer": local, "subject": "keel-client",
                "sans": ["client.example", "spiffe://keel/test"]})
        );
    }
    // Optional: no certificate is let in, with no identity.
    let (seen, local) = ask_whoami(addr, pki.client_config(ANY_TLS, None))
        .await
        .expect("a client without a certificate is let in when client_auth is optional");
    assert_eq!(seen, json!({"peer": local, "subject": null, "sans": null}));
    // A certificate of another CA is refused, not ignored.
    for versions in [TLS12, TLS13] {
        let refused = ask_whoami(
            addr,
            pki.client_config(versions, Some((&stranger, "client"))),
        );
        assert!(
            refused.await.is_none(),
            "a stranger's certificate was accepted"
        );
    }

    // The plain server puts the peer's address in the request too.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = listener.local_addr().unwrap();
    let limits = Limits::from(&ApiConfig::default());
    let stop = keel::shutdown::Shutdown::new();
    tokio::spawn(keel::api::server::serve(listener, whoami(), limits, stop));
    let mut plain = TcpStream::connect(plain_addr).await.unwrap();
    let local = plain.local_addr().unwrap().to_string();
    let (_, body) = get(&mut plain, "/whoami").await.unwrap();
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen, json!({"peer": local, "subject": null, "sans": null}));
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_a_certificate() {
    let pki = Pki::new("required");
    pki.server("server", 0x1001).client("client", "keel-client");
    let addr = serve_whoami(ApiTlsConfig {
        client_ca_file: Some(pki.ca()),
        client_auth: ClientAuth::Required,
        ..tls_settings(&pki, "server")
    })
    .await;
    for versions in [TLS12, TLS13] {
        let refused = ask_whoami(addr, pki.client_config(versions, None)).await;
        assert!(
            refused.is_none(),
            "a client without a certificate was let in"
        );
        let (seen, _) = ask_whoami(addr, pki.client_config(versions, Some((&pki, "client"))))
            .await
            .expect("a client with a certificate of the CA is let in");
        assert_eq!(seen["subject"], "keel-client");
    }
}

#[tokio::test]
async fn a_missing_or_bad_tls_file_fails_start_up_naming_the_setting_and_the_file() {
    let pki = Pki::new("bad-files");
    pki.server("server", 0x1001).server("other", 0x1002);
    let garbage = pki.dir.path("garbage.pem");
    std::fs::write(&garbage, "this is no PEM\n").unwrap();
    let missing = pki.dir.path("missing.pem");
    let cases = [
        (
            ApiTlsConfig {
                cert_file: Some(missing.clone()),
                ..tls_settings(&pki, "server")
            },
            "api.tls.cert_file",
            missing.clone(),
        ),
        (
            ApiTlsConfig {
                key_file: Some(garbage.clone()),
                ..tls_settings(&pki, "server")
            },
            "api.tls.key_file",
            garbage.clone(),
        ),
        (
            ApiTlsConfig {
                client_ca_file: Some(garbage.clone()),
                ..tls_settings(&pki, "server")
            },
            "api.tls.client_ca_file",
            garbage.clone(),
        ),
        (
            // The key of another certificate.
            ApiTlsConfig {
                key_file: Some(pki.key("other")),
                ..tls_settings(&pki, "server")
            },
            "api.tls.key_file",
            pki.key("other"),
        ),
    ];
    for (settings, setting, file) in cases {
        let mut config = test_config();
        config.api.tls = settings;
        let err = match Application::build(&config).await {
            Ok(_) => panic!("keel started with a bad {setting}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains(setting), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
    }
}

/// Connects the store to `url` (creating the database): the error text if it fails.
async fn connect(url: &str) -> Result<Store, String> {
    Store::connect(&DatabaseConfig {
        url: url.to_owned(),
        max_connections: 2,
        acquire_timeout_ms: 10_000,
    })
    .await
    .map_err(|e| format!("{e:#}"))
}

/// Whether the store's connection is encrypted, and with which TLS version.
async fn ssl_of(store: &Store) -> (bool, Option<String>) {
    sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_ca_and_the_host_and_never_falls_back_to_plaintext() {
    if let Some(why) = postgres_unavailable() {
        eprintln!("SKIPPED postgres_over_tls_...: {why}");
        return;
    }
    let pki = Pki::new("postgres");
    pki.server("server", 0x5005);
    let wrong = Pki::new("wrong");
    let pg = PgServer::start(&pki, "server");
    let ca = pki.ca().display().to_string();
    let db = || format!("keel_tls_{}", Uuid::new_v4().simple());

    // verify-full with the CA that signed the server's certificate, by address and by name.
    for host in ["127.0.0.1", "localhost"] {
        let url = pg.url(
            host,
            &db(),
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );
        let store = connect(&url).await.expect("verify-full with the right CA");
        assert_eq!(ssl_of(&store).await, (true, Some("TLSv1.3".into())));
    }

    // The wrong CA fails keel's start-up, saying what to check.
    let mut config = test_config();
    config.database_url = pg.url(
        "127.0.0.1",
        &db(),
        &format!("sslmode=verify-full&sslrootcert={}", wrong.ca().display()),
    );
    let err = match Application::build(&config).await {
        Ok(_) => panic!("keel started with the wrong CA"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("does not verify"), "{err}");
    assert!(err.contains("sslrootcert"), "{err}");
    assert!(err.contains("invalid peer certificate"), "{err}");

    // A CA file that is not there.
    let missing = pki.dir.path("missing.pem").display().to_string();
    let url = pg.url(
        "127.0.0.1",
        &db(),
        &format!("sslmode=verify-full&sslrootcert={missing}"),
    );
    let err = connect(&url)
        .await
        .expect_err("a missing sslrootcert file fails");
    assert!(err.contains("sslrootcert"), "{err}");

    // 127.0.0.2 is the same server, but not a name in its certificate: verify-full refuses it.
    let url = pg.url(
        "127.0.0.2",
        &db(),
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    );
    let err = connect(&url)
        .await
        .expect_err("verify-full checks the host");
    assert!(
        err.contains("does not verify") && err.contains("not valid for name"),
        "{err}"
    );
    // verify-ca checks the CA. (It should not check the host, but with sqlx 0.8.6 and rustls
    // 0.23.24+ it does, as verify-full does: sqlx issue #3793, fixed after 0.8.6.)
    let url = pg.url(
        "127.0.0.1",
        &db(),
        &format!("sslmode=verify-ca&sslrootcert={ca}"),
    );
    connect(&url).await.expect("verify-ca with the right CA");
    let wrong_ca = wrong.ca().display().to_string();
    let url = pg.url(
        "127.0.0.1",
        &db(),
        &format!("sslmode=verify-ca&sslrootcert={wrong_ca}"),
    );
    let err = connect(&url).await.expect_err("verify-ca checks the CA");
    assert!(err.contains("does not verify"), "{err}");

    // The server turns TLS off: require and verify-* fail rather than go on in plaintext.
    let plain = connect(&pg.url("127.0.0.1", "postgres", "sslmode=disable"))
        .await
        .unwrap();
    sqlx::query("ALTER SYSTEM SET ssl = off")
        .execute(plain.pool())
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(plain.pool())
        .await
        .unwrap();
    let url = pg.url("127.0.0.1", "postgres", "sslmode=disable");
    eventually(
        Duration::from_secs(20),
        "the server to turn ssl off",
        || {
            let url = url.clone();
            async move {
                let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&url)
                    .await
                    .ok()?;
                let ssl: String = sqlx::query_scalar("SHOW ssl")
                    .fetch_one(&mut c)
                    .await
                    .ok()?;
                (ssl == "off").then_some(())
            }
        },
    )
    .await;
    for mode in ["require", "verify-ca", "verify-full"] {
        let url = pg.url(
            "127.0.0.1",
            &db(),
            &format!("sslmode={mode}&sslrootcert={ca}"),
        );
        let err = connect(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("sslmode={mode} connected to a server without TLS"));
        assert!(err.contains("server does not support TLS"), "{mode}: {err}");
        assert!(err.contains("never gives up"), "{mode}: {err}");
    }
    // prefer, by contrast, goes on in plaintext: never use it where TLS matters.
    let url = pg.url("127.0.0.1", &db(), "sslmode=prefer");
    let store = connect(&url).await.unwrap();
    assert_eq!(ssl_of(&store).await, (false, None));
}

/// The ids of the entries of `stream` on the TLS Redis at `url`, trusting `ca`.
async fn stream_ids_over_tls(url: &str, ca: &std::path::Path, stream: &str) -> Option<Vec<String>> {
    let certificates = redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(std::fs::read(ca).unwrap()),
    };
    let client = redis::Client::build_with_tls(url, certificates).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .ok()?;
    Some(
        entries
            .into_iter()
            .filter_map(|(_, fields)| fields.into_iter().find(|(k, _)| k == "id").map(|(_, v)| v))
            .collect(),
    )
}

#[tokio::test]
async fn the_redis_sink_publishes_over_tls_with_its_ca_and_a_wrong_ca_fails_its_start() {
    let pki = Pki::new("redis");
    pki.server("server", 0x3003);
    let wrong = Pki::new("redis-wrong");
    let redis = RedisTls::start(&pki, "server").await;
    let app = spawn_app_with(|c| {
        fast_relay(c, "127.0.0.1:1", &redis.url());
        c.relay.in_process = true;
        c.relay.kafka.enabled = false;
        c.relay.redis.tls_ca_file = Some(pki.ca());
    })
    .await;

    let agent = Uuid::new_v4();
    let reply = app
        .append(
            "agent",
            agent,
            &json!({"expected_version": "any", "events": [agent_state_changed(agent, "a")]}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["events"][0]["id"].as_str().unwrap().to_owned();
    let stream = format!("{}agent", app.config.relay.redis.stream_prefix);
    eventually(
        Duration::from_secs(20),
        "the event on the TLS redis",
        || async {
            let ids = stream_ids_over_tls(&redis.url(), &pki.ca(), &stream).await?;
            ids.contains(&id).then_some(())
        },
    )
    .await;

    // Another CA, or the system's roots (which do not know the test CA): the sink does not start.
    for ca in [Some(wrong.ca()), None] {
        let mut config = app.config.clone();
        config.relay.redis.tls_ca_file = ca.clone();
        let catalog = keel::catalog::Catalog::load(&config.schemas_dir).unwrap();
        let started = keel::relay::start(
            &config,
            app.store.pool().clone(),
            Arc::new(catalog),
            app.registry.clone(),
            None,
        )
        .await;
        let err = match started {
            Ok(_) => panic!("the redis sink started with CA {ca:?}"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("does not verify"), "{err}");
        assert!(err.contains("relay.redis.tls_ca_file"), "{err}");
        assert!(err.contains("invalid peer certificate"), "{err}");
    }
}
