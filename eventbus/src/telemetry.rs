//! One call to export eventbus's spans, and the service's own, over OTLP
//! (feature `opentelemetry`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), eventbus::Error> {
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=orders
//! let _telemetry = eventbus::telemetry::init()?; // flushes when dropped
//! eventbus::Bus::from_env().run().await
//! # }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, fmt};

use crate::error::Error;

/// Keeps the exporter running; dropping it sends what is still buffered.
#[derive(Debug)]
#[must_use = "dropping the guard shuts the exporter down"]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends every finished span now.
    pub fn flush(&self) -> Result<(), Error> {
        self.provider
            .force_flush()
            .map_err(|e| Error::Telemetry(format!("flushing spans: {e}")))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("eventbus: the OTLP exporter did not shut down cleanly: {error}");
        }
    }
}

/// Installs the global `tracing` subscriber: log lines on stderr filtered by
/// `RUST_LOG` (default `info`), and eventbus's spans plus every other span
/// at INFO or above exported over OTLP/HTTP
/// (protobuf) as the standard variables say: `OTEL_EXPORTER_OTLP_ENDPOINT`
/// (default `http://localhost:4318`), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
/// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`.
///
/// Fails if a global subscriber is already set or the exporter cannot be
/// built. A service with its own subscriber adds
/// `tracing_opentelemetry::layer()` to it instead.
pub fn init() -> Result<Telemetry, Error> {
    let exporter = SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| Error::Telemetry(format!("building the OTLP exporter: {e}")))?;
    let provider = SdkTracerProvider::builder()
        .with_resource(Resource::builder().build())
        .with_batch_exporter(exporter)
        .build();
    // Each layer has its own filter: RUST_LOG quiets the log lines, not the
    // exported spans: eventbus's (DEBUG level, so they do not prefix every
    // log line) and everyone's at INFO and above.
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let spans = Targets::new()
        .with_default(Level::INFO)
        .with_target("eventbus", Level::DEBUG);
    tracing_subscriber::registry()
        .with(fmt::layer().with_writer(std::io::stderr).with_filter(logs))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("eventbus"))
                .with_filter(spans),
        )
        .try_init()
        .map_err(|e| Error::Telemetry(format!("installing the tracing subscriber: {e}")))?;
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Telemetry { provider })
}
