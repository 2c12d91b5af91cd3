//! W3C trace context in messages: `traceparent`, `tracestate` and `baggage`
//! string headers, as eventsource-py writes and reads them with
//! OpenTelemetry's default propagators (Trace Context + Baggage).
//!
//! The context to send is the current `tracing` span's OpenTelemetry context
//! when a `tracing-opentelemetry` layer is installed; otherwise the context of
//! the delivery being handled (attached while its handlers run), so a service
//! without tracing still passes a trace through unbroken.

use std::collections::HashMap;
use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::HeaderValue;

/// W3C `traceparent`.
pub(crate) const HEADER_TRACEPARENT: &str = "traceparent";
/// W3C `tracestate`.
pub(crate) const HEADER_TRACESTATE: &str = "tracestate";
/// W3C `baggage`.
pub(crate) const HEADER_BAGGAGE: &str = "baggage";
/// Every trace header, in the order they are written.
pub(crate) const TRACE_HEADERS: [&str; 3] = [HEADER_TRACEPARENT, HEADER_TRACESTATE, HEADER_BAGGAGE];

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
});

/// The context a message published now carries.
pub(crate) fn current_context() -> Context {
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::current()
    }
}

/// The trace headers for `cx` (none when it has no trace or baggage).
pub(crate) fn inject(cx: &Context) -> Vec<(&'static str, HeaderValue)> {
    if !cx.span().span_context().is_valid() && cx.baggage().is_empty() {
        return Vec::new();
    }
    let mut carrier: HashMap<String, String> = HashMap::new();
    PROPAGATOR.inject_context(cx, &mut carrier);
    TRACE_HEADERS
        .iter()
        .filter_map(|name| {
            carrier
                .remove(*name)
                .filter(|v| !v.is_empty())
                .map(|v| (*name, HeaderValue::Str(v)))
        })
        .collect()
}

/// `traceparent` with its flags reduced to the sampled bit. OpenTelemetry's
/// Python SDK writes flags `03` (W3C Trace Context level 2's "random" bit);
/// the Rust propagator rejects any version-00 flags above `02`, which would
/// start a new trace for every message from Python.
fn sampled_flag_only(traceparent: &str) -> String {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    match parts.as_slice() {
        [version, trace, span, flags] if flags.len() == 2 => match u8::from_str_radix(flags, 16) {
            Ok(bits) if bits > 0x01 => {
                format!("{version}-{trace}-{span}-{:02x}", bits & 0x01)
            }
            _ => traceparent.to_owned(),
        },
        _ => traceparent.to_owned(),
    }
}

/// The trace headers among `headers`, as (name, text) pairs.
pub(crate) fn fields<'a>(
    headers: &'a [(&'static str, HeaderValue)],
) -> impl Iterator<Item = (&'static str, &'a str)> {
    headers.iter().filter_map(|(name, value)| {
        TRACE_HEADERS
            .contains(name)
            .then(|| value.as_str().map(|v| (*name, v)))
            .flatten()
    })
}

/// The context carried by a message whose header `name` is `get(name)`.
/// `None` when the message carries no trace header at all.
pub(crate) fn extract(get: impl Fn(&str) -> Option<String>) -> Option<Context> {
    let carrier: HashMap<String, String> = TRACE_HEADERS
        .iter()
        .filter_map(|name| get(name).map(|v| ((*name).to_owned(), v)))
        .map(|(name, value)| {
            let value = if name == HEADER_TRACEPARENT {
                sampled_flag_only(&value)
            } else {
                value
            };
            (name, value)
        })
        .collect();
    if carrier.is_empty() {
        return None;
    }
    Some(PROPAGATOR.extract(&carrier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_survives_extract_then_inject() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract(|name| match name {
            HEADER_TRACEPARENT => Some(parent.to_owned()),
            HEADER_BAGGAGE => Some("tenant=acme".to_owned()),
            _ => None,
        })
        .expect("a context");
        assert!(cx.span().span_context().is_remote());
        let headers = inject(&cx);
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .and_then(|(_, v)| v.as_str().map(str::to_owned))
        };
        assert_eq!(get(HEADER_TRACEPARENT).as_deref(), Some(parent));
        assert_eq!(get(HEADER_BAGGAGE).as_deref(), Some("tenant=acme"));
        assert_eq!(get(HEADER_TRACESTATE), None);
    }

    #[test]
    fn a_level_2_random_flag_from_python_keeps_the_trace() {
        let cx = extract(|name| {
            (name == HEADER_TRACEPARENT)
                .then(|| "00-00167eb33bc911e4de310aa44576bb3f-3b20f1e7c7d37eab-03".to_owned())
        })
        .expect("a context");
        let span = cx.span();
        let context = span.span_context();
        assert!(context.is_valid());
        assert!(context.is_sampled());
        assert_eq!(
            format!("{:032x}", context.trace_id()),
            "00167eb33bc911e4de310aa44576bb3f"
        );
    }

    #[test]
    fn no_context_no_headers() {
        assert!(inject(&Context::new()).is_empty());
        assert!(extract(|_| None).is_none());
    }
}
