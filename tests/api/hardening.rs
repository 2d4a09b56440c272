//! The hardened server, attacked over real TCP (the research's abuse catalogue, rows 2 to 4 and
//! 8 to 10): slowloris, header floods, slow bodies, connection floods, deep nesting and huge
//! schemas. Each ends in a 4xx or a closed connection, writes nothing, and leaves the server
//! serving others.
//!
//! Limits are set small through the config, so each test takes about its own timeouts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use uuid::Uuid;

use crate::helpers::{spawn_app_with, within, TestApp};

/// Reads one HTTP/1.1 response: its status and body (by `content-length`, none if absent).
async fn read_response(stream: &mut (impl AsyncRead + Unpin)) -> std::io::Result<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(0, |(_, value)| {
            value.trim().parse().expect("a content-length")
        });
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((status, buf[head_end..head_end + length].to_vec()))
}

/// Sends `request` on a new connection while reading the reply, so that a server that answers
/// before it has read everything (as hyper does on a header flood) is heard.
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> (u16, Vec<u8>) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // The server may close before taking the whole request; the reply is what counts.
    let writing = tokio::spawn(async move { writer.write_all(&request).await });
    let reply = tokio::time::timeout(Duration::from_secs(10), read_response(&mut reader))
        .await
        .expect("a reply within 10 s")
        .expect("a reply");
    writing.abort();
    reply
}

/// Whether the server has closed `stream`: a read gives end of file or a reset.
async fn wait_closed(stream: &mut (impl AsyncRead + Unpin)) -> Result<(), Vec<u8>> {
    let mut buf = [0u8; 1024];
    match stream.read(&mut buf).await {
        Ok(0) | Err(_) => Ok(()),
        Ok(n) => Err(buf[..n].to_vec()),
    }
}

/// A GET of the liveness endpoint as raw bytes, kept alive.
fn live_request() -> Vec<u8> {
    b"GET /v1/health/live HTTP/1.1\r\nhost: keel\r\n\r\n".to_vec()
}

/// A liveness check on a connection of its own: a pooled one may have been idle past the (short)
/// header timeout these tests set, which closes idle keep-alive connections too.
async fn assert_live(app: &TestApp) {
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let reply = fresh.get(app.url("/v1/health/live")).send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}

#[tokio::test]
async fn slowloris_connections_are_closed_at_the_header_timeout_while_others_are_served() {
    let timeout = Duration::from_millis(1_000);
    let app = spawn_app_with(|c| c.api.header_read_timeout_ms = 1_000).await;
    let addr = app.addr;

    // Arrange: 20 clients that send a request head one byte at a time and never finish it.
    let started = Instant::now();
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                stream
                    .write_all(b"GET /v1/health/live HTTP/1.1\r\nhost: keel\r\nx-slow: ")
                    .await
                    .expect("the first bytes");
                let mut buf = [0u8; 1024];
                loop {
                    tokio::select! {
                        read = stream.read(&mut buf) => return match read {
                            Ok(0) | Err(_) => Ok(Instant::now()),
                            Ok(n) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
                        },
                        // The attacker's pace, not a wait for the server.
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {
                            if stream.write_all(b"a").await.is_err() {
                                return Ok(Instant::now());
                            }
                        }
                    }
                }
            })
        })
        .collect();

    // Act: a well-behaved client meanwhile.
    assert_live(&app).await;
    let served_at = Instant::now();

    // Assert: every slow connection is closed, without a reply, no sooner than the timeout and
    // well before the test's bound; the normal client was served before any was closed.
    let mut closed = Vec::new();
    for task in slow {
        let at = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the server closes a slowloris connection")
            .unwrap()
            .unwrap_or_else(|reply| panic!("the server replied to a partial head: {reply}"));
        closed.push(at);
    }
    let first = *closed.iter().min().unwrap();
    assert!(
        first.duration_since(started) >= timeout,
        "closed after {:?}, before the header timeout",
        first.duration_since(started)
    );
    assert!(
        served_at < first,
        "the normal client waited for the slow ones"
    );
    assert_live(&app).await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let app = spawn_app_with(|c| c.api.header_read_timeout_ms = 500).await;
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), wait_closed(&mut idle))
        .await
        .expect("an idle connection is closed");
    assert!(closed.is_ok(), "the server sent {:?}", closed);
    assert_live(&app).await;
}

#[tokio::test]
async fn a_header_flood_gets_431_and_the_server_goes_on() {
    let app = spawn_app_with(|c| c.api.max_headers = 100).await;
    let head = |extra: usize, value: &str| {
        let mut request = String::from("GET /v1/health/live HTTP/1.1\r\nhost: keel\r\n");
        for i in 0..extra {
            request.push_str(&format!("x-h{i}: {value}\r\n"));
        }
        request.push_str("connection: close\r\n\r\n");
        request.into_bytes()
    };

    // 100 headers (host, connection and 98 others) are allowed; 101 are not.
    let (status, _) = exchange(app.addr, head(98, "v")).await;
    assert_eq!(status, 200, "100 headers");
    let (status, _) = exchange(app.addr, head(99, "v")).await;
    assert_eq!(status, 431, "101 headers");

    // One header of 1 MiB.
    let (status, _) = exchange(app.addr, head(1, &"a".repeat(1024 * 1024))).await;
    assert_eq!(status, 431, "a 1 MiB header");

    assert_live(&app).await;
}

#[tokio::test]
async fn a_slow_body_ends_in_408_request_timeout_and_writes_nothing() {
    let app = spawn_app_with(|c| c.api.request_timeout_ms = 1_000).await;
    let agent = Uuid::new_v4();
    let body =
        json!({"events": [crate::helpers::agent_state_changed(agent, "running")]}).to_string();

    for (path, registry) in [
        (format!("/v1/aggregates/agent/{agent}/events"), false),
        ("/registry/subjects/shop.slow/versions".to_owned(), true),
    ] {
        // Arrange: valid headers, then the body one byte every 100 ms (R.U.D.Y.).
        let started = Instant::now();
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: keel\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            app.admin_key,
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let bytes = body.clone().into_bytes();
        let trickle = tokio::spawn(async move {
            for byte in bytes {
                // The attacker's pace, not a wait for the server.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if writer.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
        });

        // Act.
        let (status, reply) =
            tokio::time::timeout(Duration::from_secs(10), read_response(&mut reader))
                .await
                .expect("a reply, not a hang")
                .expect("a reply");
        trickle.abort();

        // Assert: 408 in the path's dialect, after the timeout, and the connection is closed.
        let elapsed = started.elapsed();
        assert_eq!(status, 408, "{path}: {}", String::from_utf8_lossy(&reply));
        assert!(
            elapsed >= Duration::from_millis(1_000),
            "{path}: after {elapsed:?}"
        );
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["error"]["code"], "request_timeout", "{path}: {reply}");
        assert!(reply["error"]["details"].is_object(), "{reply}");
        if registry {
            assert_eq!(reply["error_code"], 408, "{reply}");
        }
        assert!(
            wait_closed(&mut reader).await.is_ok(),
            "{path}: the connection stays open"
        );
    }
    assert_eq!(app.count("events").await, 0);
    assert_eq!(app.count("outbox").await, 0);
    let reply = app.get("/registry/subjects/shop.slow/versions").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert_live(&app).await;
}

#[tokio::test]
async fn over_the_connection_limit_new_connections_wait_until_one_closes() {
    const MAX: usize = 4;
    const EXTRA: usize = 3;
    let app = spawn_app_with(|c| {
        c.api.max_connections = MAX as u32;
        // Long, so that the held connections are not closed for being idle during the test.
        c.api.header_read_timeout_ms = 30_000;
    })
    .await;

    // Arrange: MAX connections, each served once and then kept open, idle.
    let mut held = Vec::new();
    for _ in 0..MAX {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(&live_request()).await.unwrap();
        let (status, _) = read_response(&mut stream).await.unwrap();
        assert_eq!(status, 200);
        held.push(stream);
    }

    // Act: EXTRA more send a request each.
    let waiting: Vec<_> = (0..EXTRA)
        .map(|_| {
            let addr = app.addr;
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                stream.write_all(&live_request()).await.unwrap();
                read_response(&mut stream).await.map(|(status, _)| status)
            })
        })
        .collect();

    // Assert: they are not served while the limit is reached. (A negative check needs a window;
    // a server that served them would answer on loopback in milliseconds.)
    let tasks = &waiting;
    let early = within(Duration::from_millis(500), move || async move {
        tasks.iter().any(|w| w.is_finished()).then_some(())
    })
    .await;
    assert!(early.is_none(), "a connection over the limit was served");

    // Closing the held connections lets the waiting ones in, and they are served.
    held.clear();
    for task in waiting {
        let status = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a waiting connection is served once others close")
            .unwrap()
            .expect("a reply");
        assert_eq!(status, 200);
    }
    for _ in 0..2 * MAX {
        assert_live(&app).await;
    }
    // Operators see the open connections (the value is shared by the tests in this process).
    let metrics = app
        .client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("keel_http_connections_open"), "{metrics}");
}

#[tokio::test]
async fn a_payload_or_metadata_nested_10_000_deep_is_400_malformed_json() {
    let app = spawn_app_with(|_| {}).await;
    let agent = Uuid::new_v4();
    let path = format!("/v1/aggregates/agent/{agent}/events");
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let deep_object = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    for (what, body) in [
        (
            "payload",
            format!(r#"{{"events":[{{"type":"agent.state.changed","payload":{deep}}}]}}"#),
        ),
        (
            "metadata",
            format!(
                r#"{{"events":[{{"type":"agent.state.changed","payload":{{}},"metadata":{{"x":{deep_object}}}}}]}}"#
            ),
        ),
    ] {
        let reply = app
            .post_raw(&path, Some("application/json"), body.into_bytes())
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            reply.body
        );
        assert_eq!(reply.error_code(), "malformed_json", "{what}");
    }
    assert_eq!(app.count("events").await, 0);
    assert_eq!(app.count("outbox").await, 0);
    assert_live(&app).await;
}

/// `levels` arrays inside each other, around an int.
fn nested_arrays(levels: usize) -> Value {
    (0..levels).fold(
        json!("int"),
        |inner, _| json!({"type": "array", "items": inner}),
    )
}

#[tokio::test]
async fn deep_schemas_and_a_2000_branch_union_are_refused_and_nothing_is_registered() {
    // The union's text is about 100 KB: over the tests' usual body limit, under the default.
    let app = spawn_app_with(|c| c.api.max_body_bytes = 1024 * 1024).await;
    let union: Vec<Value> = (0..2_000)
        .map(|i| json!({"type": "fixed", "name": format!("f{i}"), "size": 1}))
        .collect();
    let huge_union =
        json!({"type": "record", "name": "shop.wide", "fields": [{"name": "u", "type": union}]});
    let deep_text = format!(
        "{}\"int\"{}",
        r#"{"type":"array","items":"#.repeat(10_000),
        "}".repeat(10_000)
    );
    let cases = [
        (
            "65 nested arrays",
            nested_arrays(65).to_string(),
            "deeper than 64",
        ),
        ("10,000 nested arrays", deep_text, "recursion limit"),
        (
            "a 2000-branch union",
            huge_union.to_string(),
            "2000 branches",
        ),
    ];
    for (what, schema, says) in cases {
        let started = Instant::now();
        let reply = app
            .post_json(
                "/registry/subjects/shop.abuse/versions",
                &json!({"schema": schema}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{what}: {}",
            reply.body
        );
        assert_eq!(reply.body["error_code"], 42201, "{what}: {}", reply.body);
        assert_eq!(reply.error_code(), "invalid_schema", "{what}");
        let message = reply.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{what}: {message}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what} took {:?}",
            started.elapsed()
        );
    }
    let reply = app.get("/registry/subjects/shop.abuse/versions").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.body);
    assert_eq!(reply.body["error_code"], 40401);

    // At the cap, a schema is fine.
    let reply = app
        .post_json(
            "/registry/subjects/shop.abuse/versions",
            &json!({"schema": nested_arrays(64).to_string()}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
}

#[tokio::test]
async fn shutdown_stops_accepting_answers_the_request_in_flight_then_returns() {
    let config = crate::helpers::test_config();
    let app = keel::app::Application::build(&config).await.unwrap();
    let addr = app.local_addr();
    let shutdown = keel::shutdown::Shutdown::new();
    let running = tokio::spawn(app.run_until(shutdown.clone()));

    // Arrange: an append whose handler is reading its body when shutdown comes. With
    // `expect: 100-continue` the server says when that is, and the client sends the body after.
    let agent = Uuid::new_v4();
    let body =
        json!({"events": [crate::helpers::agent_state_changed(agent, "running")]}).to_string();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/aggregates/agent/{agent}/events HTTP/1.1\r\nhost: keel\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        crate::helpers::admin_key(&config),
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (status, _) = read_response(&mut stream).await.unwrap();
    assert_eq!(status, 100, "the handler reads the body");

    // Act: shut down. The server stops accepting but waits for the request in flight.
    shutdown.trigger();
    let refused = within(Duration::from_secs(5), || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await;
    assert!(
        refused.is_some(),
        "the listener is still open after shutdown"
    );
    assert!(
        !running.is_finished(),
        "the server returned with a request in flight"
    );

    // Assert: the body gets its 201, and then the server returns.
    stream.write_all(body.as_bytes()).await.unwrap();
    let (status, reply) = read_response(&mut stream).await.unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&reply));
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the server returns once its connections closed")
        .unwrap()
        .unwrap();
    let store = keel::store::Store::connect(&config.database())
        .await
        .unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn schemas_at_the_width_caps_register_and_check_compatibility_within_a_time_budget() {
    let app = spawn_app_with(|c| c.api.max_body_bytes = 1024 * 1024).await;
    let symbols: Vec<String> = (0..10_000).map(|i| format!("S{i}")).collect();
    let fields = |extra: bool| {
        let mut fields: Vec<Value> = (0..9_999)
            .map(|i| json!({"name": format!("f{i}"), "type": "int"}))
            .collect();
        fields.push(
            json!({"name": "e", "type": {"type": "enum", "name": "shop.e", "symbols": symbols}}),
        );
        if extra {
            fields.push(json!({"name": "added", "type": ["null", "int"], "default": null}));
            fields.remove(0);
        }
        json!({"type": "record", "name": "shop.wide", "fields": fields})
    };
    for (version, schema) in [(1, fields(false)), (2, fields(true))] {
        let started = Instant::now();
        let reply = app
            .post_json(
                "/registry/subjects/shop.wide/versions",
                &json!({"schema": schema.to_string()}),
            )
            .await;
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::OK, "v{version}: {}", reply.body);
        assert!(took < Duration::from_secs(5), "v{version} took {took:?}");
    }
}
