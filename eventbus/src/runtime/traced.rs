//! The consumer span every transport opens around one delivery: a child of
//! the trace context the message carries (W3C headers or stream fields).

use std::future::Future;

use futures_util::future::Either;

use opentelemetry::context::FutureExt as _;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::wire::{self, trace};

/// What a transport knows of a delivery, for its consumer span.
#[derive(Debug)]
pub(crate) struct Delivered<'a> {
    /// `rabbitmq`, `redis`.
    pub(crate) system: &'static str,
    /// The exchange or stream.
    pub(crate) destination: &'a str,
    /// The group's queue (or the stream): the span is `process {source}`.
    pub(crate) source: &'a str,
    pub(crate) group: &'a str,
    /// The routing key it was published with (RabbitMQ).
    pub(crate) routing_key: Option<&'a str>,
    pub(crate) message_id: Option<&'a str>,
}

/// Runs `work` (handling the delivery) in a consumer span whose parent is the
/// context `field(name)` carries; that context is also current while it runs,
/// so handlers' publishes continue the trace without an OpenTelemetry layer.
///
/// Not an `async fn`: the span is opened here, and the future returned is
/// `work` itself or `work` wrapped once, no bigger than that. (An `async fn`
/// keeps a copy of `work`'s state for each of its three awaits, which made
/// every RabbitMQ delivery task about 7 KiB, copied several times on its way
/// to the scheduler.)
pub(crate) fn consume<F: Future, Field: Fn(&str) -> Option<String>>(
    enabled: bool,
    delivered: Delivered<'_>,
    field: Field,
    work: F,
) -> impl Future<Output = F::Output> + use<F, Field> {
    if !enabled {
        return Either::Left(work);
    }
    let cx = trace::extract(&field);
    let span = tracing::debug_span!(
        "consume",
        otel.name = %format!("process {}", delivered.source),
        otel.kind = "consumer",
        messaging.system = delivered.system,
        messaging.operation.type = "process",
        messaging.destination.name = %delivered.destination,
        messaging.consumer.group.name = %delivered.group,
        messaging.rabbitmq.destination.routing_key = delivered.routing_key,
        messaging.message.id = delivered.message_id,
        eventsource.event.type = field(wire::HEADER_EVENT_TYPE),
        eventsource.aggregate.id = field(wire::HEADER_AGGREGATE_ID),
        eventsource.aggregate.type = field(wire::HEADER_AGGREGATE_TYPE),
        eventsource.tenant.id = field(wire::HEADER_TENANT_ID),
    );
    // No span to record and no context to carry on: nothing to wrap (the
    // common case without a debug-level subscriber; it saves a context
    // switch per poll).
    if span.is_disabled() && cx.is_none() {
        return Either::Left(work);
    }
    let cx = cx.unwrap_or_default();
    // Fails only when no OpenTelemetry layer is installed: nothing to link then.
    let _ = span.set_parent(cx.clone());
    Either::Right(work.instrument(span).with_context(cx))
}
