//! Each request's span, made by the router's outermost trace layer, so that everything a request
//! does (authentication, rate limits, the handler) runs inside it.
//!
//! With trace export on, it is an OpenTelemetry server span named `{method} {route}` with the
//! HTTP attribute names, a child of the request's `traceparent`/`tracestate` headers when they
//! are valid (ignored and counted when not, [`crate::telemetry::context::from_request`]). Health
//! probes and `/metrics` get none: a probe every few seconds is not worth a trace. With export
//! off, the span is `tower-http`'s usual debug `request` span, as before.

use std::time::Duration;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;
use tower_http::classify::{
    ClassifiedResponse, ClassifyResponse, MakeClassifier, NeverClassifyEos, ServerErrorsAsFailures,
    ServerErrorsFailureClass,
};
use tower_http::trace::{DefaultOnResponse, OnResponse};
use tracing::field::Empty;
use tracing::Span;

use crate::telemetry;

/// The span for `request` (see the module docs).
pub fn request_span(request: &Request) -> Span {
    if !telemetry::enabled() {
        return tracing::debug_span!(
            "request",
            method = %request.method(),
            uri = %request.uri(),
            version = ?request.version(),
        );
    }
    let path = request.uri().path();
    if path.starts_with("/v1/health/") || path == "/metrics" {
        return Span::none();
    }
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    // Without a matched route (a 404), the conventions name the span by the method alone.
    let name = match route {
        Some(route) => format!("{method} {route}"),
        None => method.to_owned(),
    };
    let span = tracing::info_span!(
        "http.request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = Empty,
        url.path = path,
    );
    telemetry::context::set_parent(&span, telemetry::context::from_request(request.headers()));
    span
}

/// Records the response's status on the request's span (a 5xx is an error), after
/// `tower-http`'s usual debug line.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordStatus;

impl<B> OnResponse<B> for RecordStatus {
    fn on_response(self, response: &Response<B>, latency: Duration, span: &Span) {
        DefaultOnResponse::default().on_response(response, latency, span);
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "error");
        }
    }
}

/// Which responses the trace layer logs as failures: 5xx, as `tower-http` does, except on the
/// health probes, where a 503 is the answer ("unhealthy"), not a failure: a probe polled every few
/// seconds would otherwise log an error line each time while the pipeline is unhealthy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Classify;

/// See [`Classify`].
#[derive(Debug, Clone, Copy)]
pub struct Classifier {
    probe: bool,
}

impl MakeClassifier for Classify {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;
    type Classifier = Classifier;

    fn make_classifier<B>(&self, request: &axum::http::Request<B>) -> Classifier {
        Classifier {
            probe: request.uri().path().starts_with("/v1/health/"),
        }
    }
}

impl ClassifyResponse for Classifier {
    type FailureClass = ServerErrorsFailureClass;
    type ClassifyEos = NeverClassifyEos<ServerErrorsFailureClass>;

    fn classify_response<B>(
        self,
        response: &axum::http::Response<B>,
    ) -> ClassifiedResponse<Self::FailureClass, Self::ClassifyEos> {
        if self.probe {
            return ClassifiedResponse::Ready(Ok(()));
        }
        ServerErrorsAsFailures::new().classify_response(response)
    }

    fn classify_error<E: std::fmt::Display + 'static>(self, error: &E) -> Self::FailureClass {
        ServerErrorsAsFailures::new().classify_error(error)
    }
}
