//! Logging and tracing set-up. Log lines are lowercase with structured fields; secrets are never
//! logged.
//!
//! Traces go out over OTLP/HTTP (protobuf) only when an endpoint is configured
//! (`observability.otlp_endpoint`, else the standard `OTEL_EXPORTER_OTLP_ENDPOINT`); otherwise
//! nothing about tracing runs and keel behaves as it would without this module. With export on:
//! - keel's own `tracing` spans (target `keel`, level info and above, whatever the log filter
//!   says) become OpenTelemetry spans, beside the log layer;
//! - spans are handed to the SDK's batch processor, which exports from a thread of its own, so
//!   the request path never waits for the collector. An unreachable or slow collector drops
//!   spans (counted in [`crate::metrics::OTEL_DROPPED_SPANS`]) and logs one warning per
//!   [`otlp::WARN_EVERY`], never one per request or export;
//! - [`context`] carries W3C trace context in and out (request headers, event metadata, Kafka
//!   headers) and [`messaging`] makes the publish and process spans.

pub mod context;
pub mod messaging;
mod otlp;

use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::filter::{dynamic_filter_fn, FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, ObservabilityConfig};

pub use otlp::Settings;

/// Whether this process exports traces: set by [`init`] before anything makes a span (and
/// switched by [`pause`]).
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Whether an exporter was installed (export may still be paused, see [`pause`]).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported. Everything that only serves tracing (reading trace headers,
/// storing an append's trace context, per-event spans) is skipped when not.
pub fn enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Pauses or resumes export in a process that has an exporter (a no-op in one without): spans
/// started while paused are not made at all, as if export were off. For the benchmark, which
/// measures both ways in one process.
pub fn pause(paused: bool) {
    if INSTALLED.load(Ordering::Relaxed) {
        EXPORTING.store(!paused, Ordering::Relaxed);
    }
}

/// What [`init`] installed; [`Telemetry::shutdown`] flushes the spans still queued.
#[must_use = "call shutdown before the process exits, or queued spans are lost"]
pub struct Telemetry {
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is queued and stops the exporter. Blocks for at most the export timeout, off
    /// the runtime's threads.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let stopped = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        match stopped {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "trace exporter did not shut down cleanly"),
            Err(e) => tracing::debug!(error = %e, "trace exporter shutdown panicked"),
        }
    }
}

/// Installs the global subscriber: logs to stderr filtered by `filter` (`tracing`'s `EnvFilter`
/// syntax), and with an OTLP endpoint configured, the trace exporter beside them. Call once per
/// process, from inside the tokio runtime.
pub fn init(
    filter: &str,
    format: LogFormat,
    observability: &ObservabilityConfig,
) -> anyhow::Result<Telemetry> {
    let settings = Settings::from_env(observability)?;
    init_with(filter, format, settings)
}

/// [`init`] with the trace settings given (the benchmark points them at its own receiver).
pub fn init_with(
    filter: &str,
    format: LogFormat,
    settings: Option<Settings>,
) -> anyhow::Result<Telemetry> {
    let logs = log_layer(filter, format)?;
    let endpoint = settings.as_ref().map(|s| s.endpoint().to_owned());
    let (provider, traces) = match settings {
        None => (None, None),
        Some(settings) => {
            let provider = otlp::provider(&settings)?;
            let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "keel");
            // keel's spans only: the exporter's own HTTP client must not trace itself. The
            // pause switch is asked per span (a dynamic filter): a plain `filter_fn` would cache
            // its first answer per call site.
            let spans = Targets::new()
                .with_target("keel", tracing::Level::INFO)
                .and(dynamic_filter_fn(|_, _| enabled()));
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(spans);
            (Some(provider), Some(layer))
        }
    };
    tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))?;
    if let Some(provider) = &provider {
        INSTALLED.store(true, Ordering::Relaxed);
        EXPORTING.store(true, Ordering::Relaxed);
        // Carries context in the W3C format wherever keel uses the global propagator.
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());
        tracing::info!(
            endpoint = endpoint.as_deref().unwrap_or_default(),
            "exporting traces over otlp"
        );
    }
    Ok(Telemetry { provider })
}

type BoxedLayer = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>;

/// The stderr log layer with its own filter, so that the log level never decides which spans
/// are exported.
fn log_layer(filter: &str, format: LogFormat) -> anyhow::Result<BoxedLayer> {
    // PostgreSQL's notices ("relation already exists, skipping") are noise unless asked for.
    let filter = if filter.contains("sqlx") {
        filter.to_owned()
    } else {
        format!("{filter},sqlx::postgres::notice=warn")
    };
    let filter = EnvFilter::try_new(&filter)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter:?}: {e}"))?;
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    Ok(match format {
        LogFormat::Text => layer.with_filter(filter).boxed(),
        LogFormat::Json => layer.json().with_filter(filter).boxed(),
    })
}
