//! Trace export over OTLP/HTTP, against an OTLP receiver in the test (decoding what keel sends
//! with `opentelemetry-proto`), a real broker and real keel processes.
//!
//! keel's tracer is process-wide (the global subscriber and tracer provider), and the test
//! binary runs many in-process apps at once, so every keel here whose spans are checked runs as
//! its own `keel` process, set up by a config file and started as an operator would start it.
//! The in-process apps of the other tests never export anything. The consumer group is
//! `examples/recording_consumer.rs`, a service on keel's library set up with
//! `keel::telemetry::init`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::consumer::ConsumerProcess;
use crate::helpers::{agent_state_changed, eventually, fresh_database_url};
use crate::relay_support::{Broker, KafkaReader, Server};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    kind: i32,
    attributes: HashMap<String, String>,
}

/// An OTLP/HTTP receiver on 127.0.0.1 that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start() -> (Self, SocketAddr) {
        let receiver = Self::default();
        let kept = receiver.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    match ExportTraceServiceRequest::decode(body.as_ref()) {
                        Ok(request) => {
                            kept.keep(request);
                            StatusCode::OK
                        }
                        Err(_) => StatusCode::BAD_REQUEST,
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (receiver, addr)
    }

    fn keep(&self, request: ExportTraceServiceRequest) {
        let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
            .as_ref()
            .and_then(|v| v.value.as_ref())
        {
            Some(AnyValue::StringValue(s)) => s.clone(),
            Some(AnyValue::IntValue(i)) => i.to_string(),
            Some(AnyValue::BoolValue(b)) => b.to_string(),
            other => format!("{other:?}"),
        };
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|a| a.key == "service.name")
                .map(|a| text(&a.value))
                .unwrap_or_default();
            for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
                spans.push(Received {
                    service: service.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name,
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|a| (a.key.clone(), text(&a.value)))
                        .collect(),
                });
            }
        }
    }

    /// Waits for the span named `name` in trace `trace_id`.
    async fn wait_for(&self, trace_id: &str, name: &str) -> Received {
        self.wait_for_where(trace_id, name, |_| true).await
    }

    /// Waits for a span named `name` in trace `trace_id` for which `pick` holds.
    async fn wait_for_where(
        &self,
        trace_id: &str,
        name: &str,
        pick: impl Fn(&Received) -> bool,
    ) -> Received {
        eventually(Duration::from_secs(60), name, || async {
            self.spans
                .lock()
                .unwrap()
                .iter()
                .find(|s| s.trace_id == trace_id && s.name == name && pick(s))
                .cloned()
        })
        .await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// A `keel` process started from a config file, killed on drop.
struct Keel {
    child: Child,
    port: u16,
    config: PathBuf,
}

impl Keel {
    /// `keel <args>` with `config` (TOML) and the trace export variables that make tests quick
    /// (a 50 ms batch delay); `stderr` takes its log.
    fn start(args: &[&str], config: &str, stderr: Stdio) -> Self {
        let port = closed_port();
        let path = std::env::temp_dir().join(format!("keel-tracing-{}.toml", Uuid::new_v4()));
        std::fs::write(&path, format!("listen = \"127.0.0.1:{port}\"\n{config}")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["--config", path.to_str().unwrap()])
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEEL_LOG", "warn")
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            // `keel project`'s status listener, on a port of its own.
            .env("KEEL_PROJECTIONS__LISTEN", "127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start keel");
        Self {
            child,
            port,
            config: path,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until the API answers.
    async fn live(&self) {
        let client = reqwest::Client::new();
        eventually(Duration::from_secs(60), "keel's API", || async {
            let reply = client.get(self.url("/v1/health/live")).send().await.ok()?;
            reply.status().is_success().then_some(())
        })
        .await;
    }

    /// The value of the metric line starting with `prefix` in `/metrics`, or 0 without one.
    async fn metric(&self, prefix: &str) -> f64 {
        let text = reqwest::get(self.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The config the keel processes share: a fresh database, authentication off, the relay's and
/// the projections' quick test settings, Redis off, traces to `otlp`.
fn config(database_url: &str, brokers: &str, otlp: &str) -> String {
    let schemas = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemas");
    format!(
        r#"database_url = "{database_url}"
kafka_brokers = "{brokers}"
schemas_dir = "{}"
[auth]
mode = "none"
[relay]
poll_interval_ms = 50
lease_ttl_ms = 2000
heartbeat_ms = 500
[relay.redis]
enabled = false
[projections]
run = ["agent_status"]
[projections.properties]
"session.timeout.ms" = "6000"
"fetch.wait.max.ms" = "50"
[observability]
otlp_endpoint = "{otlp}"
"#,
        schemas.display()
    )
}

/// Appends one `agent.state.changed` event with `headers`; returns its id.
async fn append(keel: &Keel, headers: &[(&str, &str)]) -> Uuid {
    let agent = Uuid::new_v4();
    let mut request = reqwest::Client::new()
        .post(keel.url(&format!("/v1/aggregates/agent/{agent}/events")))
        .json(&json!({"events": [agent_state_changed(agent, "running")]}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = request.send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED, "append");
    let body: Value = reply.json().await.unwrap();
    body["events"][0]["id"].as_str().unwrap().parse().unwrap()
}

/// The stored event's metadata.
async fn metadata(keel: &Keel, id: Uuid) -> Value {
    let event: Value = reqwest::get(keel.url(&format!("/v1/events/{id}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    event["metadata"].clone()
}

/// `keel serve --relay` on a fresh database, exporting to `otlp`; its config and database.
async fn start_pipeline(broker: &Server, otlp: &str) -> (Keel, String, String) {
    let database_url = fresh_database_url();
    let config = config(&database_url, &broker.brokers(), otlp);
    let serve = Keel::start(&["serve", "--relay"], &config, Stdio::inherit());
    serve.live().await;
    (serve, config, database_url)
}

/// A child process, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_append_publish_and_process_spans_of_one_event_join_the_clients_trace_across_the_broker(
) {
    let broker = Broker::start().await;
    let (receiver, addr) = Receiver::start().await;
    let otlp = format!("http://{addr}");
    let (serve, config, database_url) = start_pipeline(&broker, &otlp).await;
    // The projection and a consumer group run in processes of their own: their spans' parent
    // can only come from the Kafka record.
    let _project = Keel::start(&["project"], &config, Stdio::inherit());
    let _consumer = Killed(
        Command::new(ConsumerProcess::binary())
            .args(["--database-url", &database_url])
            .args(["--brokers", &broker.brokers()])
            .args([
                "--group",
                "traced",
                "--topic",
                "keel.agent",
                "--name",
                "traced",
            ])
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp)
            .env("OTEL_BSP_SCHEDULE_DELAY", "50")
            .stdout(Stdio::null())
            .spawn()
            .expect("start recording_consumer"),
    );
    let trace_id = Uuid::new_v4().simple().to_string();
    let client_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{client_span}-01");

    let id = append(&serve, &[("traceparent", &traceparent)]).await;

    let request_span = receiver
        .wait_for(
            &trace_id,
            "POST /v1/aggregates/{aggregate_type}/{aggregate_id}/events",
        )
        .await;
    assert_eq!(request_span.kind, SpanKind::Server as i32);
    assert_eq!(request_span.parent_span_id, client_span, "{request_span:?}");
    assert_eq!(request_span.service, "keel");
    assert_eq!(request_span.attributes["http.response.status_code"], "201");
    assert_eq!(request_span.attributes["http.request.method"], "POST");
    let append_span = receiver.wait_for(&trace_id, "keel.append").await;
    assert_eq!(append_span.parent_span_id, request_span.span_id);
    // The event carries the append span's context, which the relay copied into the record.
    let stored = format!("00-{trace_id}-{}-01", append_span.span_id);
    assert_eq!(metadata(&serve, id).await["traceparent"], stored.as_str());
    let mut reader = KafkaReader::new(&broker.brokers(), &["keel.agent"]);
    reader.read_ids(&[id], Duration::from_secs(60)).await;
    let record = reader.received.iter().find(|r| r.event_id() == id).unwrap();
    assert_eq!(record.headers["traceparent"], stored);

    let publish = receiver.wait_for(&trace_id, "publish keel.agent").await;
    assert_eq!(publish.kind, SpanKind::Producer as i32);
    assert_eq!(publish.parent_span_id, append_span.span_id, "{publish:?}");
    let a = &publish.attributes;
    assert_eq!(a["messaging.system"], "kafka");
    assert_eq!(a["messaging.destination.name"], "keel.agent");
    assert_eq!(a["messaging.operation.type"], "send");
    assert_eq!(a["messaging.message.id"], id.to_string());
    assert_eq!(a["messaging.kafka.message.key"], record.key);

    // The projection runner's and the consumer runtime's processing of the same record.
    for group in ["keel-projection-agent_status", "traced"] {
        let process = receiver
            .wait_for_where(&trace_id, "process keel.agent", |s| {
                s.attributes.get("messaging.consumer.group.name") == Some(&group.to_owned())
            })
            .await;
        assert_eq!(process.kind, SpanKind::Consumer as i32);
        assert_eq!(process.parent_span_id, append_span.span_id, "{process:?}");
        let a = &process.attributes;
        assert_eq!(a["messaging.system"], "kafka");
        assert_eq!(a["messaging.destination.name"], "keel.agent");
        assert_eq!(a["messaging.operation.type"], "process");
        assert_eq!(a["messaging.message.id"], id.to_string());
        assert_eq!(a["messaging.kafka.message.key"], record.key);
        assert!(
            a.contains_key("messaging.destination.partition.id"),
            "{a:?}"
        );
        assert!(a.contains_key("messaging.kafka.offset"), "{a:?}");
    }
}

#[tokio::test]
async fn an_unreachable_collector_fails_no_append_and_logs_one_warning_not_one_per_request() {
    let log = std::env::temp_dir().join(format!("keel-tracing-{}.log", Uuid::new_v4()));
    let file = std::fs::File::create(&log).unwrap();
    let database_url = fresh_database_url();
    let otlp = format!("http://127.0.0.1:{}", closed_port());
    let serve = Keel::start(
        &["serve"],
        &config(&database_url, "127.0.0.1:9", &otlp),
        Stdio::from(file),
    );
    serve.live().await;
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();

    // Rounds of appends, each until its spans' export has failed, so that several exports fail.
    for round in 0..4 {
        let before = serve.metric("keel_otel_dropped_spans_total").await;
        for _ in 0..5 {
            append(&serve, &[]).await;
        }
        eventually(
            Duration::from_secs(30),
            &format!("dropped spans counted after round {round}"),
            || async {
                (serve.metric("keel_otel_dropped_spans_total").await > before).then_some(())
            },
        )
        .await;
    }

    drop(serve);
    let log = lines();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot export traces"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    // Nothing else about traces, and nothing per request.
    let others: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("cannot export traces") && !l.contains("AUTHENTICATION IS OFF"))
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(others.is_empty(), "{others:?}");
}

#[tokio::test]
async fn an_invalid_trace_header_is_ignored_and_counted_and_never_reaches_kafka() {
    let broker = Broker::start().await;
    let (receiver, addr) = Receiver::start().await;
    let (serve, _, _) = start_pipeline(&broker, &format!("http://{addr}")).await;
    let garbage = "00-not-a-trace-01";

    let id = append(&serve, &[("traceparent", garbage), ("tracestate", "k=v")]).await;
    // A valid traceparent with a tracestate that is not: the parent is kept, the state dropped.
    let trace_id = Uuid::new_v4().simple().to_string();
    let parent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let kept = append(
        &serve,
        &[("traceparent", &parent), ("tracestate", "Bad Key=1")],
    )
    .await;

    assert_eq!(
        serve
            .metric("keel_trace_context_invalid_total{header=\"traceparent\"}")
            .await,
        1.0
    );
    assert_eq!(
        serve
            .metric("keel_trace_context_invalid_total{header=\"tracestate\"}")
            .await,
        1.0
    );
    let mut reader = KafkaReader::new(&broker.brokers(), &["keel.agent"]);
    reader.read_ids(&[id, kept], Duration::from_secs(60)).await;
    let record = |id| {
        reader
            .received
            .iter()
            .find(|r| r.event_id() == id)
            .unwrap()
            .headers
            .clone()
    };
    // The garbage started nothing: keel's own span (a new trace) is what the event carries.
    let headers = record(id);
    let own = &headers["traceparent"];
    assert!(keel::model::is_traceparent(own), "{own}");
    assert_ne!(own, garbage);
    assert_eq!(metadata(&serve, id).await["traceparent"], own.as_str());
    assert!(!headers.contains_key("tracestate"), "{headers:?}");
    let headers = record(kept);
    assert!(headers["traceparent"].contains(&trace_id), "{headers:?}");
    assert!(!headers.contains_key("tracestate"), "{headers:?}");
    let append_span = receiver
        .wait_for(
            &trace_id,
            "POST /v1/aggregates/{aggregate_type}/{aggregate_id}/events",
        )
        .await;
    assert_eq!(append_span.parent_span_id, "00f067aa0ba902b7");
}
