//! # eventbus
//!
//! Typed domain events for Rust services on RabbitMQ, wire-compatible with
//! eventsource-py. Annotate events and projections; one line wires the rest.
//!
//! ```standalone_crate
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use eventbus::{Bus, DomainEvent, Envelope, HandlerError, handles, projection};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
//! #[event(aggregate = "Order")]
//! struct OrderPlaced {
//!     customer_id: String,
//!     total_amount: f64,
//! }
//!
//! #[derive(Default)]
//! struct Revenue {
//!     cents: AtomicU64,
//! }
//!
//! #[projection]
//! impl Revenue {
//!     #[handles(OrderPlaced)]
//!     async fn on_placed(&self, event: &Envelope<OrderPlaced>) -> Result<(), HandlerError> {
//!         self.cents.fetch_add((event.total_amount * 100.0) as u64, Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), eventbus::Error> {
//! let bus = Bus::builder().memory().build().await?;
//! let order = uuid::Uuid::new_v4();
//! bus.publish([Envelope::new(order, OrderPlaced { customer_id: "C-1".into(), total_amount: 12.5 })])
//!     .await?;
//! assert_eq!(bus.stats().handlers_invoked, 1);
//! bus.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! In a service, the whole bootstrap is `Bus::from_env().run().await`: it reads
//! the `EVENTBUS_*` variables, declares the RabbitMQ topology for every
//! registered projection, consumes until SIGINT/SIGTERM and shuts down gracefully.
//!
//! # Architecture
//!
//! Layers depend only on the layers below them:
//!
//! ```text
//!  facade       bus/ (Bus, BusBuilder, subscriptions)   dlq (Dlq)
//!                 |
//!  transports   transport/ — the seam (trait Transport, AnyTransport)
//!                 ├── memory/
//!                 └── rabbit/  (one folder per broker)
//!                 |
//!  core         runtime/ (BusContext: config, registry, dispatcher, stats,
//!               tasks; chunked publishing, ordering, ack coalescing; reports)
//!                 |
//!  handlers     registry, handler, dispatch, stats, config
//!                 |
//!  event model  event, envelope, wire (body, headers, the one decode path),
//!               error, registration (what the macros submit)
//! ```
//!
//! A broker is added as a folder under `transport/` implementing the seam
//! documented there; the facade does not change.

// Lets the derive's `::eventbus::...` paths resolve inside this crate's own tests.
#[cfg(test)]
extern crate self as eventbus;

// Event model.
mod envelope;
mod error;
mod event;
mod registration;
mod wire;
// Handlers, registry, dispatch, settings.
mod config;
mod dispatch;
mod handler;
mod metrics;
mod registry;
mod stats;
// Core every transport is given.
mod runtime;
// Transports.
mod transport;
// Facade.
mod bus;
mod dlq;
#[cfg(feature = "opentelemetry")]
pub mod telemetry;

#[doc(hidden)]
pub mod __private;

/// Compiles every Rust example of README.md as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

pub use bus::{Bus, BusBuilder, shutdown_signal};
pub use config::{
    BrokerUrl, Config, DEFAULT_URL, DeliveryOrder, ENV_PREFIX, ExchangeType, QueueArgument, Secret,
};
pub use dispatch::SubscriptionId;
pub use dlq::Dlq;
pub use envelope::{AnyEnvelope, Envelope, EventMeta};
pub use error::{ConfigError, DecodeError, Error, HandlerError, HandlerResult, RegistryError};
pub use event::DomainEvent;
pub use eventbus_macros::{DomainEvent, handles, projection};
pub use handler::IntoHandlerResult;
pub use registration::{HandlerCrate, Projection};
pub use registry::EventTypes;
pub use runtime::{
    BatchReport, DlqMessage, HealthStatus, PublishReport, QueueInfo, ReplayFilter, ReplayReport,
    StreamGroupInfo, StreamInfo, StreamState,
};
pub use stats::BusStats;
