//! Trace export for `keel bench append`'s traced run: an OTLP/HTTP receiver in the bench that
//! accepts and discards what it is sent (counting it), unless `--otlp-endpoint` names a real
//! collector. The exporter is installed for the whole bench and paused outside the traced run
//! ([`crate::telemetry::pause`]), so the other runs measure keel with tracing off.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::routing::post;
use axum::Router;

use crate::telemetry::Settings;

/// What the in-bench receiver took.
#[derive(Debug, Default)]
pub struct Received {
    pub requests: AtomicU64,
    pub bytes: AtomicU64,
}

/// Where the bench exports to.
pub struct Export {
    pub settings: Settings,
    /// The in-bench receiver's counts; `None` with `--otlp-endpoint`.
    pub received: Option<Arc<Received>>,
}

/// The export settings for the bench: to `endpoint` if given, else to a discarding receiver
/// started here. Every trace is sampled.
pub async fn export(endpoint: Option<&str>) -> anyhow::Result<Export> {
    if let Some(endpoint) = endpoint {
        return Ok(Export {
            settings: Settings::to_endpoint(endpoint),
            received: None,
        });
    }
    let received = Arc::new(Received::default());
    let counted = received.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let counted = counted.clone();
            async move {
                counted.requests.fetch_add(1, Ordering::Relaxed);
                counted
                    .bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                // An empty body is an empty ExportTraceServiceResponse: all accepted.
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .context("cannot bind the bench's trace receiver")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Export {
        settings: Settings::to_endpoint(&format!("http://{addr}")),
        received: Some(received),
    })
}

/// A `traceparent` for a client request: a new sampled trace, as a traced client sends.
pub fn client_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    format!("00-{trace}-{span}-01")
}
