//! W3C trace context (`traceparent`, `tracestate`) in and out of keel's spans.
//!
//! Every value is checked with the same rules as event metadata ([`crate::model::is_traceparent`],
//! [`crate::model::is_tracestate`]) before it is used: an invalid `traceparent` is no parent at
//! all, an invalid `tracestate` is dropped and the `traceparent` kept. Incoming request headers
//! that are ignored this way are counted in [`crate::metrics::TRACE_CONTEXT_INVALID`] by
//! `header`.

use std::collections::HashMap;

use axum::http::HeaderMap;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::model::{is_traceparent, is_tracestate, Metadata};

pub const TRACEPARENT: &str = Metadata::TRACEPARENT;
pub const TRACESTATE: &str = Metadata::TRACESTATE;

/// The remote parent that a valid `traceparent` names, with `tracestate` when that is valid
/// too; `None` for an invalid `traceparent`.
pub fn remote(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    if !is_traceparent(traceparent) {
        return None;
    }
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert(TRACEPARENT.to_owned(), traceparent.to_owned());
    if let Some(state) = tracestate.filter(|s| is_tracestate(s)) {
        carrier.insert(TRACESTATE.to_owned(), state.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// The parent an HTTP request names in its `traceparent` and `tracestate` headers. A header
/// that is not valid (not UTF-8, malformed, `traceparent` given twice) is ignored and counted;
/// a `tracestate` without a `traceparent` means nothing and is ignored silently.
pub fn from_request(headers: &HeaderMap) -> Option<Context> {
    let invalid = |header: &'static str| {
        metrics::counter!(crate::metrics::TRACE_CONTEXT_INVALID, "header" => header).increment(1);
    };
    let mut parents = headers.get_all(TRACEPARENT).iter();
    let first = parents.next()?;
    let traceparent = match (first.to_str(), parents.next()) {
        (Ok(value), None) if is_traceparent(value) => value,
        _ => {
            invalid(TRACEPARENT);
            return None;
        }
    };
    // Several tracestate headers are one list (W3C), joined with commas.
    let states: Option<Vec<&str>> = headers
        .get_all(TRACESTATE)
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    let tracestate = match states {
        Some(list) if list.is_empty() => None,
        Some(list) => {
            let joined = list.join(",");
            if is_tracestate(&joined) {
                Some(joined)
            } else {
                invalid(TRACESTATE);
                None
            }
        }
        None => {
            invalid(TRACESTATE);
            None
        }
    };
    remote(traceparent, tracestate.as_deref())
}

/// The trace context of `span` as `traceparent` and `tracestate` (when it has one), for storing
/// and sending on; `None` when the span is not traced (export off, or a span the exporter does
/// not see). Starts the span: set its parent first.
pub fn of(span: &tracing::Span) -> Option<(String, Option<String>)> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier: HashMap<String, String> = HashMap::with_capacity(2);
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    let traceparent = carrier.remove(TRACEPARENT)?;
    let tracestate = carrier.remove(TRACESTATE).filter(|s| !s.is_empty());
    Some((traceparent, tracestate))
}

/// Makes `span` a child of `parent`, or the root of a new trace when `parent` is `None`. Must
/// come before the span is first entered.
pub fn set_parent(span: &tracing::Span, parent: Option<Context>) {
    // Fails only for a span the exporter does not see (disabled, or export off): nothing to do.
    let _ = span.set_parent(parent.unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn ids(cx: &Context) -> (String, String) {
        let span = cx.span();
        let sc = span.span_context();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    }

    #[test]
    fn a_valid_traceparent_is_a_remote_parent_and_an_invalid_one_is_none() {
        let cx = remote(PARENT, Some("k=v")).unwrap();
        assert_eq!(
            ids(&cx),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            )
        );
        assert!(cx.span().span_context().is_remote());
        assert_eq!(
            cx.span().span_context().trace_state().header(),
            "k=v".to_owned()
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(remote(bad, None).is_none(), "{bad}");
        }
        // A bad tracestate is dropped; the parent stays.
        let cx = remote(PARENT, Some("Bad=1")).unwrap();
        assert_eq!(cx.span().span_context().trace_state().header(), "");
    }

    #[test]
    fn request_headers_give_the_parent_when_valid_and_nothing_otherwise() {
        let mut h = HeaderMap::new();
        assert!(from_request(&h).is_none());
        h.insert(TRACEPARENT, PARENT.parse().unwrap());
        h.append(TRACESTATE, "a=1".parse().unwrap());
        h.append(TRACESTATE, "b=2".parse().unwrap());
        let cx = from_request(&h).unwrap();
        assert_eq!(cx.span().span_context().trace_state().header(), "a=1,b=2");
        h.insert(TRACESTATE, "Bad=1".parse().unwrap());
        let cx = from_request(&h).unwrap();
        assert_eq!(cx.span().span_context().trace_state().header(), "");
        h.append(TRACEPARENT, PARENT.parse().unwrap());
        assert!(from_request(&h).is_none(), "two traceparent headers");
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, "00-abc-def-01".parse().unwrap());
        assert!(from_request(&h).is_none());
    }
}
