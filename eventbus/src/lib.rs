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

// Lets the derive's `::eventbus::...` paths resolve inside this crate's own tests.
#[cfg(test)]
extern crate self as eventbus;

mod bus;
pub mod codec;
pub mod config;
mod dispatch;
mod dlq;
mod envelope;
mod error;
mod event;
pub mod registry;
mod stats;
mod transport;

pub use bus::{
    BatchReport, Bus, BusBuilder, HealthStatus, IntoHandlerResult, PublishReport, QueueInfo,
    shutdown_signal,
};
pub use config::{BrokerUrl, Config, ExchangeType};
pub use dispatch::SubscriptionId;
pub use dlq::{Dlq, DlqMessage, ReplayFilter, ReplayReport};
pub use envelope::{AnyEnvelope, Envelope, EventMeta};
pub use error::{ConfigError, DecodeError, Error, HandlerError, HandlerResult, RegistryError};
pub use event::DomainEvent;
pub use eventbus_macros::{DomainEvent, handles, projection};
pub use registry::Projection;
pub use stats::BusStats;

/// Not public API: what the macros' generated code uses.
#[doc(hidden)]
pub mod __private {
    pub use crate::registry::{
        EventRegistration, FunctionRegistration, HandlerFuture, ProjectionHandler,
        ProjectionRegistration, ProjectionSubmission,
    };
    pub use inventory;
    use std::any::Any;
    use std::sync::Arc;

    /// Autoref specialisation: `Some(instance)` when `T: Default`, `None` otherwise.
    #[derive(Debug)]
    pub struct MaybeDefault<T>(pub std::marker::PhantomData<T>);

    /// Picked when `T: Default`.
    pub trait ViaDefault {
        /// Builds the instance.
        fn instance(&self) -> Option<Arc<dyn Any + Send + Sync>>;
    }
    impl<T: Default + Send + Sync + 'static> ViaDefault for MaybeDefault<T> {
        fn instance(&self) -> Option<Arc<dyn Any + Send + Sync>> {
            Some(Arc::new(T::default()))
        }
    }

    /// Picked otherwise.
    pub trait NoDefault {
        /// No instance.
        fn instance(&self) -> Option<Arc<dyn Any + Send + Sync>>;
    }
    impl<T> NoDefault for &MaybeDefault<T> {
        fn instance(&self) -> Option<Arc<dyn Any + Send + Sync>> {
            None
        }
    }

    /// Checks at compile time that `E` is a domain event (the error lands on `E`).
    pub const fn assert_domain_event<E: crate::DomainEvent>() {}

    /// Checks at compile time that a return type is a handler result.
    pub fn into_handler_result<R: crate::IntoHandlerResult>(r: R) -> crate::HandlerResult {
        r.into_handler_result()
    }

    /// Downcasts the projection instance; only ever called with the right type.
    pub fn projection<T: Any>(instance: &(dyn Any + Send + Sync)) -> Option<&T> {
        instance.downcast_ref::<T>()
    }

    /// The error the glue returns if the registry routed the wrong type (a bug).
    pub fn misrouted(handler: &str, expected: &str, found: &str) -> crate::HandlerError {
        crate::HandlerError::permanent(format!(
            "eventbus bug: handler `{handler}` expects {expected} but was given {found}"
        ))
    }
}
