//! A service exporting its traces over OTLP with `eventbus::telemetry::init()`
//! (feature `opentelemetry`): publishes one event to itself and exits.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 OTEL_SERVICE_NAME=traced cargo run --bin traced
//! ```
//! `tests/otlp_export.rs` runs it against an OTLP receiver of its own.

use eventbus::{Bus, DomainEvent, Envelope, HandlerError, handles};
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;

#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Demo")]
struct Traced {
    note: String,
}

#[handles(Traced)]
async fn record(event: &Envelope<Traced>) -> Result<(), HandlerError> {
    tracing::info!(note = %event.note, "handled");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    let telemetry = eventbus::telemetry::init()?;
    let bus = Bus::from_env().build().await?;
    bus.start_consuming().await?;
    let event = Envelope::new(
        uuid::Uuid::new_v4(),
        Traced {
            note: "hello".into(),
        },
    );
    bus.publish([event])
        .instrument(tracing::info_span!("demo request"))
        .await?;
    bus.shutdown(std::time::Duration::from_secs(10)).await?;
    telemetry.flush()
}
