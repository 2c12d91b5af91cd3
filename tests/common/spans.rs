//! Spans recorded in memory, for the tracing tests (`#[path]`-included by
//! the test binaries that depend on OpenTelemetry's SDK).

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

/// What a test needs to read its spans: hold it for the whole test.
pub(crate) struct Recording {
    pub(crate) exporter: InMemorySpanExporter,
    pub(crate) provider: SdkTracerProvider,
    // Dropped after the subscriber: one scoped subscriber at a time.
    _guard: tracing::subscriber::DefaultGuard,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Installs a subscriber exporting every span to memory on this
/// (current-thread) test runtime, one test at a time.
pub(crate) async fn record() -> Recording {
    let serial = super::common::SCOPED_SUBSCRIBER.lock().await;
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("eventbus-tests")));
    Recording {
        exporter,
        provider,
        _guard: tracing::subscriber::set_default(subscriber),
        _serial: serial,
    }
}
