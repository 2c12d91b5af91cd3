//! `eventbus::telemetry::init()` exports over OTLP/HTTP where the standard
//! `OTEL_*` variables say: a receiver in this test gets the spans of a real
//! process (`src/bin/traced.rs`).

use std::process::Command;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread")]
async fn spans_reach_the_otlp_endpoint_named_by_otel_variables() {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(body.to_vec());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_traced"))
            .env("EVENTBUS_URL", "memory://")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_SERVICE_NAME", "otlp-export-test")
            .env("RUST_LOG", "warn")
            .output()
            .expect("the traced binary runs")
    })
    .await
    .expect("joins");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // The exporter posted protobuf: span names and the service name are
    // plain strings inside it.
    let mut received = Vec::new();
    while let Ok(body) = rx.try_recv() {
        received.extend(body);
    }
    let text = String::from_utf8_lossy(&received);
    for expected in [
        "otlp-export-test",
        "demo request",
        "publish events",
        "handle traced::record",
        "messaging.system",
        "eventsource.event.type",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} not exported: {text:?}; the process said: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
