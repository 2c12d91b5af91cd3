//! One trace across Python and Rust on RabbitMQ, with the real eventsource-py
//! 0.15.1 and OpenTelemetry's Python SDK (`tests/interop/trace_peer.py`): a
//! Python publish is the parent of the Rust consumer span, and a Rust publish
//! the parent of eventsource-py's consume span. (eventsource-py injects the
//! context current at its publish call, not its own publish span; eventbus
//! injects its publish span.)

mod common;
#[path = "common/spans.rs"]
mod spans;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::python::{python, script};
use common::{ChildGuard, OrderPlaced, Scope, eventually, placed};
use eventbus::{Envelope, HandlerError};
use opentelemetry_sdk::trace::SpanData;
use serde_json::Value;
use tracing::Instrument as _;

const WAIT: Duration = Duration::from_secs(60);

fn trace_peer(scope: &Scope, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(script("trace_peer.py")).args(args).args([
        "--url",
        &common::url(),
        "--exchange",
        &scope.exchange,
    ]);
    cmd
}

fn hex_trace(span: &SpanData) -> (String, String) {
    (
        format!("{:032x}", span.span_context.trace_id()),
        format!("{:016x}", span.span_context.span_id()),
    )
}

#[tokio::test]
async fn a_python_publish_is_the_parent_of_the_rust_consumer_span() {
    let recording = spans::record().await;
    let (exporter, provider) = (&recording.exporter, &recording.provider);
    let scope = Scope::new("trace-py-to-rust");
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let bus = scope
        .builder()
        .handler::<OrderPlaced, _, _>("rust_side", move |_e: Arc<Envelope<OrderPlaced>>| {
            h.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, HandlerError>(()))
        })
        .build()
        .await
        .expect("connects");
    bus.start_consuming().await.expect("consumes");

    let out = tokio::task::spawn_blocking({
        let mut cmd = trace_peer(&scope, &["publish", "--group", "python-publisher"]);
        move || cmd.output().expect("python runs")
    })
    .await
    .expect("joins");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let python: Value = serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .find(|l| l.starts_with(b"{"))
            .expect("python prints its span"),
    )
    .expect("json");
    scope.group("python-publisher");
    eventually("the Rust handler ran", WAIT, || async {
        handled.load(Ordering::SeqCst) == 1
    })
    .await;
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    provider.force_flush().expect("flushes");

    let spans = exporter.get_finished_spans().expect("spans");
    let consume: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name.starts_with("process "))
        .collect();
    assert_eq!(consume.len(), 1, "{spans:#?}");
    let (trace_id, _) = hex_trace(consume[0]);
    assert_eq!(Some(trace_id.as_str()), python["trace_id"].as_str());
    assert_eq!(
        Some(format!("{:016x}", consume[0].parent_span_id).as_str()),
        python["span_id"].as_str(),
        "the parent is the Python span the publish was made in"
    );
}

#[tokio::test]
async fn a_rust_publish_is_the_parent_of_the_python_consume_span() {
    let recording = spans::record().await;
    let (exporter, provider) = (&recording.exporter, &recording.provider);
    let scope = Scope::new("trace-rust-to-py");
    let group = scope.group("python");
    let mut child = trace_peer(&scope, &["consume", "--group", &group])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python starts");
    let lines = common::lines(child.stdout.take().expect("piped"));
    let mut peer = ChildGuard(child);
    assert_eq!(
        lines
            .recv_timeout(WAIT)
            .expect("the Python consumer is ready"),
        "ready"
    );

    let bus = scope.builder().build().await.expect("connects");
    bus.publish([placed("to python")])
        .instrument(tracing::info_span!("rust request"))
        .await
        .expect("routed to the Python group");
    let reply = lines.recv_timeout(WAIT).expect("python reports its span");
    let python: Value = serde_json::from_str(&reply).expect("json");
    assert!(peer.0.wait().expect("python exits").success());
    bus.shutdown(Duration::from_secs(10))
        .await
        .expect("shuts down");
    provider.force_flush().expect("flushes");

    let spans = exporter.get_finished_spans().expect("spans");
    let publish: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == format!("publish {}", scope.exchange))
        .collect();
    assert_eq!(publish.len(), 1, "{spans:#?}");
    let (trace_id, span_id) = hex_trace(publish[0]);
    assert_eq!(Some(trace_id.as_str()), python["trace_id"].as_str());
    assert_eq!(
        Some(span_id.as_str()),
        python["parent_span_id"].as_str(),
        "eventsource-py's consume span is a child of the Rust publish span"
    );
}
