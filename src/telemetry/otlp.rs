//! The OTLP trace pipeline: where to send (config, then the standard `OTEL_*` variables), which
//! traces to keep (`OTEL_TRACES_SAMPLER`), and the SDK's batch processor in front of the
//! OTLP/HTTP exporter.
//!
//! Two wrappers make the exporter's troubles visible without touching the request path:
//! [`Bounded`] drops a span itself, counted, when the batch queue is full (the SDK's own drop
//! counter is private), and [`Guarded`] counts the spans of a failed export and logs one warning
//! per [`WARN_EVERY`]. The SDK's internal logs are not built in (`internal-logs` is off), so these
//! are the only lines an unreachable collector causes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use opentelemetry_sdk::Resource;

use crate::config::ObservabilityConfig;

/// At most one "cannot export traces" warning per this long.
pub const WARN_EVERY: Duration = Duration::from_secs(600);

/// The batch queue's size unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise (the SDK's default).
const QUEUE_SIZE: usize = 2048;

/// Where and what to export, resolved and checked at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The full URL spans are posted to (`…/v1/traces`).
    endpoint: String,
    sampler: SamplerSpec,
}

impl Settings {
    /// The settings when traces are to be exported: an endpoint in `observability.otlp_endpoint`
    /// (first), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`. `None`
    /// without one, or with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.
    pub fn from_env(observability: &ObservabilityConfig) -> anyhow::Result<Option<Self>> {
        Self::resolve(observability, |name| {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        })
    }

    /// Export to `base` (`http://host:4318`) with every trace sampled, whatever the environment
    /// says.
    pub fn to_endpoint(base: &str) -> Self {
        Self {
            endpoint: traces_url(base),
            sampler: SamplerSpec::ParentBased(Box::new(SamplerSpec::AlwaysOn)),
        }
    }

    /// The URL spans are posted to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn resolve(
        observability: &ObservabilityConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Option<Self>> {
        if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return Ok(None);
        }
        let endpoint = match (
            observability.otlp_endpoint.as_deref().map(str::trim),
            env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(base), _, _) if !base.is_empty() => traces_url(base),
            // The signal's own variable is the full URL, as the OTLP spec says.
            (_, Some(url), _) => url,
            (_, None, Some(base)) => traces_url(&base),
            _ => return Ok(None),
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            bail!(
                "the OTLP endpoint {endpoint:?} is not an http:// or https:// URL; set \
                 observability.otlp_endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT) to one such as \
                 http://127.0.0.1:4318"
            );
        }
        let protocol = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .map(|p| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", p))
            .or_else(|| {
                env("OTEL_EXPORTER_OTLP_PROTOCOL").map(|p| ("OTEL_EXPORTER_OTLP_PROTOCOL", p))
            });
        match protocol {
            None => {}
            Some((_, p)) if p == "http/protobuf" => {}
            Some((var, p)) if p == "grpc" => bail!(
                "{var}=grpc: this keel is built without gRPC export; use http/protobuf (the \
                 default) and the collector's OTLP/HTTP port (4318)"
            ),
            Some((var, p)) => bail!(
                "{var}={p:?} is not supported: keel exports OTLP over http/protobuf only; unset it \
                 or set it to http/protobuf"
            ),
        }
        let sampler = SamplerSpec::parse(
            env("OTEL_TRACES_SAMPLER").as_deref(),
            env("OTEL_TRACES_SAMPLER_ARG").as_deref(),
        )?;
        Ok(Some(Self { endpoint, sampler }))
    }
}

/// `base` with the traces path, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read: `http://host:4318`
/// becomes `http://host:4318/v1/traces`. A URL that already ends in it is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim().trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// `OTEL_TRACES_SAMPLER` and its argument, checked.
#[derive(Debug, Clone, PartialEq)]
enum SamplerSpec {
    AlwaysOn,
    AlwaysOff,
    Ratio(f64),
    ParentBased(Box<SamplerSpec>),
}

impl SamplerSpec {
    /// The standard's names; without one, `parentbased_always_on`. A ratio (`traceidratio`,
    /// `parentbased_traceidratio`) is `OTEL_TRACES_SAMPLER_ARG`, 1.0 when unset.
    fn parse(name: Option<&str>, arg: Option<&str>) -> anyhow::Result<Self> {
        let ratio = || -> anyhow::Result<f64> {
            let Some(arg) = arg else { return Ok(1.0) };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => bail!(
                    "OTEL_TRACES_SAMPLER_ARG={arg:?} is not a sampling ratio; set it to a number \
                     from 0.0 (none) to 1.0 (every trace)"
                ),
            }
        };
        let parent = |s| Self::ParentBased(Box::new(s));
        Ok(match name.map(str::trim) {
            None | Some("parentbased_always_on") => parent(Self::AlwaysOn),
            Some("always_on") => Self::AlwaysOn,
            Some("always_off") => Self::AlwaysOff,
            Some("traceidratio") => Self::Ratio(ratio()?),
            Some("parentbased_always_off") => parent(Self::AlwaysOff),
            Some("parentbased_traceidratio") => parent(Self::Ratio(ratio()?)),
            Some(other) => bail!(
                "OTEL_TRACES_SAMPLER={other:?} is not a sampler keel knows; use always_on, \
                 always_off, traceidratio, parentbased_always_on (the default), \
                 parentbased_always_off or parentbased_traceidratio"
            ),
        })
    }

    fn build(&self) -> Sampler {
        match self {
            Self::AlwaysOn => Sampler::AlwaysOn,
            Self::AlwaysOff => Sampler::AlwaysOff,
            Self::Ratio(r) => Sampler::TraceIdRatioBased(*r),
            Self::ParentBased(root) => Sampler::ParentBased(Box::new(root.build())),
        }
    }
}

/// The tracer provider: resource `service.name=keel` (or `OTEL_SERVICE_NAME`), the sampler, and
/// the batch processor over the guarded exporter.
pub(super) fn provider(settings: &Settings) -> anyhow::Result<SdkTracerProvider> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(settings.endpoint.clone())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .build()
        .with_context(|| {
            format!(
                "cannot set up the OTLP exporter for {}; check observability.otlp_endpoint and \
                 the OTEL_EXPORTER_OTLP_* variables",
                settings.endpoint
            )
        })?;
    let queue_size = std::env::var("OTEL_BSP_MAX_QUEUE_SIZE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(QUEUE_SIZE);
    let in_flight = Arc::new(AtomicUsize::new(0));
    let guarded = Guarded {
        inner: exporter,
        endpoint: settings.endpoint.clone(),
        in_flight: in_flight.clone(),
        warned: Mutex::new(None),
    };
    let batch = BatchSpanProcessor::builder(guarded)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(queue_size)
                .build(),
        )
        .build();
    let processor = Bounded {
        inner: batch,
        in_flight,
        limit: queue_size,
    };
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(settings.sampler.build())
        .with_resource(resource())
        .build())
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named `keel` when they
/// name no service.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name("keel").build()
    }
}

/// Counts a dropped span.
fn dropped(spans: usize) {
    metrics::counter!(crate::metrics::OTEL_DROPPED_SPANS).increment(spans as u64);
}

/// The batch processor with a queue bound of keel's own: a span that would not fit (the exporter
/// is behind) is dropped here, counted, instead of inside the SDK, uncounted. `in_flight` is
/// every span handed on and not yet through an export attempt, so the SDK's queue (which holds a
/// subset of them) never fills.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        // Unsampled spans are never exported: the batch processor ignores them.
        if !span.span_context.is_sampled() {
            return;
        }
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            dropped(1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans of failed exports and warning at most once per
/// [`WARN_EVERY`]. It runs on the batch processor's thread, never on a request's.
#[derive(Debug)]
struct Guarded<E> {
    inner: E,
    /// For the warning.
    endpoint: String,
    in_flight: Arc<AtomicUsize>,
    /// When the last warning was logged.
    warned: Mutex<Option<Instant>>,
}

impl<E> Guarded<E> {
    fn failed(&self, spans: usize, error: &dyn std::fmt::Display) {
        dropped(spans);
        let mut warned = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(error = %error, endpoint = %self.endpoint, spans,
                "cannot export traces; spans are dropped (counted in keel_otel_dropped_spans_total) \
                 and this is logged at most every 10 minutes: check that the OTLP collector at \
                 the endpoint is up and reachable");
        }
    }
}

impl<E: SpanExporter> SpanExporter for Guarded<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        // Settled however the attempt ends, even if the future is dropped part-way: a leak
        // here would shrink the queue bound for good.
        let _settled = Settled(&self.in_flight, spans);
        let result = self.inner.export(batch).await;
        if let Err(e) = &result {
            self.failed(spans, e);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Takes an export attempt's spans off the in-flight count when dropped.
struct Settled<'a>(&'a AtomicUsize, usize);

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(config: Option<&str>, vars: &[(&str, &str)]) -> anyhow::Result<Option<Settings>> {
        let observability = ObservabilityConfig {
            otlp_endpoint: config.map(str::to_owned),
            ..Default::default()
        };
        Settings::resolve(&observability, |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_config_wins_over_the_environment() {
        assert!(resolve(None, &[]).unwrap().is_none());
        let env = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318/")];
        assert_eq!(
            resolve(None, &env).unwrap().unwrap().endpoint,
            "http://env:4318/v1/traces"
        );
        assert_eq!(
            resolve(Some("http://config:4318"), &env)
                .unwrap()
                .unwrap()
                .endpoint,
            "http://config:4318/v1/traces"
        );
        let signal = [(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://signal:4318/custom",
        )];
        assert_eq!(
            resolve(None, &signal).unwrap().unwrap().endpoint,
            "http://signal:4318/custom"
        );
        let disabled = [env[0], ("OTEL_SDK_DISABLED", "true")];
        assert!(resolve(Some("http://config:4318"), &disabled)
            .unwrap()
            .is_none());
    }

    #[test]
    fn grpc_and_json_are_refused_by_name_and_http_protobuf_is_the_default() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let err = resolve(None, &[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap_err();
        assert!(err.to_string().contains("without gRPC"), "{err}");
        let err = resolve(None, &[base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).unwrap_err();
        assert!(err.to_string().contains("http/protobuf"), "{err}");
        let ok = [base, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")];
        assert!(resolve(None, &ok).unwrap().is_some());
        let err = resolve(Some("collector:4318"), &[]).unwrap_err();
        assert!(err.to_string().contains("http://"), "{err}");
    }

    #[test]
    fn an_https_exporter_builds_on_the_process_tls_provider() {
        // What cli::run does first: the ring provider reqwest's `rustls-no-provider` relies on.
        crate::tls::install_provider();
        let provider = provider(&Settings::to_endpoint("https://127.0.0.1:9")).unwrap();
        provider.shutdown().unwrap();
    }

    #[test]
    fn the_standard_sampler_names_parse_and_a_bad_one_says_which_exist() {
        use SamplerSpec as S;
        let parent = |s| S::ParentBased(Box::new(s));
        assert_eq!(S::parse(None, None).unwrap(), parent(S::AlwaysOn));
        assert_eq!(
            S::parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap(),
            parent(S::Ratio(0.25))
        );
        assert_eq!(S::parse(Some("traceidratio"), None).unwrap(), S::Ratio(1.0));
        assert_eq!(S::parse(Some("always_off"), None).unwrap(), S::AlwaysOff);
        assert!(S::parse(Some("traceidratio"), Some("2")).is_err());
        let err = S::parse(Some("jaeger_remote"), None).unwrap_err();
        assert!(
            err.to_string().contains("parentbased_traceidratio"),
            "{err}"
        );
    }
}
