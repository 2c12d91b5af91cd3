//! The one-line bootstrap as a service: `Bus::from_env().run()` serves the
//! registered handlers until SIGINT or SIGTERM, then shuts down gracefully.
//!
//! ```text
//! EVENTBUS_URL=amqp://guest:guest@localhost:5672/ cargo run --bin serve
//! ```
//! `tests/run_until_signal.rs` runs it and stops it with SIGTERM.

use eventbus::{AnyEnvelope, Bus, DomainEvent, HandlerError, handles};
use serde::{Deserialize, Serialize};

/// The one event type this service knows; others are dead-lettered as unknown.
#[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
#[event(aggregate = "Service")]
struct Ping {
    note: String,
}

#[handles(all)]
async fn log_every_event(event: &AnyEnvelope) -> Result<(), HandlerError> {
    let meta = event.meta();
    println!("handled {} {}", meta.event_type(), meta.event_id());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), eventbus::Error> {
    eventbus_examples::log_to_stderr();
    Bus::from_env().run().await?;
    println!("stopped cleanly");
    Ok(())
}
