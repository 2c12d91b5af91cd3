//! One trace from publish to handler on RabbitMQ: the consumer span is a
//! child of the publisher's span (through the `traceparent` header), each
//! handler span a child of its consumer span, and a retry stays in the trace.

mod common;
#[path = "common/spans.rs"]
mod spans;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{OrderPlaced, Scope, eventually, placed};
use opentelemetry::trace::SpanKind;
use opentelemetry_sdk::trace::SpanData;
use tracing::Instrument as _;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_handler_span_is_a_child_of_the_publish_span_across_a_retry() {
    let recording = spans::record().await;
    let (exporter, provider) = (&recording.exporter, &recording.provider);

    let scope = Scope::new("tracing");
    let calls = Arc::new(AtomicUsize::new(0));
    let bus = scope
        .builder()
        .configure(|c| {
            c.retry_base_delay = Duration::from_millis(50);
            c.retry_max_delay = Duration::from_millis(100);
        })
        .handler::<OrderPlaced, _, _>("fails_once", common::fails_first_attempt(calls.clone()))
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");

    bus.publish([placed("traced")])
        .instrument(tracing::info_span!("checkout"))
        .await
        .expect("publishes");
    eventually("the failure and the retry handled", WAIT, || async {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    provider.force_flush().expect("flushes");

    let spans = exporter.get_finished_spans().expect("spans");
    let named = |prefix: &str| -> Vec<&SpanData> {
        spans
            .iter()
            .filter(|s| s.name.starts_with(prefix))
            .collect()
    };
    let checkout = named("checkout");
    let publish = named(&format!("publish {}", scope.exchange));
    let consume = named(&format!("process {}.default", scope.exchange));
    let handle = named("handle fails_once");
    assert_eq!(checkout.len(), 1, "{spans:#?}");
    assert_eq!(publish.len(), 1, "{spans:#?}");
    assert_eq!(
        consume.len(),
        2,
        "the first delivery and the retry: {spans:#?}"
    );
    assert_eq!(handle.len(), 2, "{spans:#?}");

    let trace = checkout[0].span_context.trace_id();
    let publish = publish[0];
    assert_eq!(publish.span_kind, SpanKind::Producer);
    assert_eq!(publish.parent_span_id, checkout[0].span_context.span_id());
    for span in consume.iter().chain(&handle) {
        assert_eq!(span.span_context.trace_id(), trace, "one trace: {span:#?}");
    }
    for span in &consume {
        assert_eq!(span.span_kind, SpanKind::Consumer);
        assert_eq!(
            span.parent_span_id,
            publish.span_context.span_id(),
            "the consumer's parent is the publisher, also on the retry"
        );
        assert!(span.parent_span_is_remote);
        let attribute = |key: &str| {
            span.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("messaging.system").as_deref(), Some("rabbitmq"));
        assert_eq!(
            attribute("messaging.consumer.group.name").as_deref(),
            Some("default")
        );
        assert_eq!(
            attribute("messaging.rabbitmq.destination.routing_key").as_deref(),
            Some("Order.OrderPlaced")
        );
        assert_eq!(
            attribute("eventsource.event.type").as_deref(),
            Some("OrderPlaced")
        );
    }
    let consume_ids: HashSet<_> = consume.iter().map(|s| s.span_context.span_id()).collect();
    for span in &handle {
        assert!(consume_ids.contains(&span.parent_span_id), "{span:#?}");
    }
}

#[tokio::test]
async fn a_dlq_replay_stays_in_the_publishers_trace() {
    let recording = spans::record().await;
    let (exporter, provider) = (&recording.exporter, &recording.provider);

    let scope = Scope::new("tracing-replay");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let bus = scope
        .builder()
        // The first attempt is dead-lettered at once; the replay succeeds.
        .handler::<OrderPlaced, _, _>("rejects_then_accepts", move |_e| {
            let first = counted.fetch_add(1, Ordering::SeqCst) == 0;
            std::future::ready(if first {
                Err(eventbus::HandlerError::permanent("not today"))
            } else {
                Ok(())
            })
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");
    bus.publish([placed("replayed")]).await.expect("publishes");
    let dlq = bus.dlq("default");
    eventually("dead-lettered", WAIT, || async {
        dlq.count().await.is_ok_and(|n| n == 1)
    })
    .await;
    let id = dlq.list(1).await.expect("lists")[0]
        .message_id
        .clone()
        .expect("a message id");
    assert!(dlq.replay(&id).await.expect("replays"), "found in the DLQ");
    eventually("the replay handled", WAIT, || async {
        calls.load(Ordering::SeqCst) == 2
    })
    .await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    provider.force_flush().expect("flushes");

    let spans = exporter.get_finished_spans().expect("spans");
    let publish: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == format!("publish {}", scope.exchange))
        .collect();
    let consume: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("process "))
        .collect();
    assert_eq!(publish.len(), 1, "{spans:#?}");
    assert_eq!(consume.len(), 2, "the delivery and its replay: {spans:#?}");
    for span in consume {
        assert_eq!(span.parent_span_id, publish[0].span_context.span_id());
        assert_eq!(
            span.span_context.trace_id(),
            publish[0].span_context.trace_id()
        );
    }
}
