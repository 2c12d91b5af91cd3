//! What the macros submit at link time. Public only through `__private`:
//! users never name these types.

use std::any::{Any, TypeId};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::envelope::AnyEnvelope;
use crate::error::{DecodeError, HandlerResult};
use crate::event::DomainEvent;
use crate::wire;

/// The future a type-erased handler returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'a>>;

/// How to recognise and decode one event type. Submitted by `#[derive(DomainEvent)]`.
#[derive(Clone, Copy)]
pub struct EventRegistration {
    /// `event_type` on the wire.
    pub event_type: &'static str,
    /// `aggregate_type` on the wire.
    pub aggregate_type: &'static str,
    /// `{aggregate_type}.{event_type}`.
    pub routing_key: &'static str,
    /// The Rust type's path.
    pub rust_type: fn() -> &'static str,
    type_id: fn() -> TypeId,
    decode: fn(&[u8]) -> Result<AnyEnvelope, DecodeError>,
}

impl EventRegistration {
    /// The registration of `E`.
    pub const fn of<E: DomainEvent>() -> Self {
        Self {
            event_type: E::EVENT_TYPE,
            aggregate_type: E::AGGREGATE_TYPE,
            routing_key: E::ROUTING_KEY,
            rust_type: std::any::type_name::<E>,
            type_id: TypeId::of::<E>,
            decode: wire::decode_any::<E>,
        }
    }

    /// Decodes a body of this type.
    pub fn decode(&self, body: &[u8]) -> Result<AnyEnvelope, DecodeError> {
        (self.decode)(body)
    }

    pub(crate) fn same_type(&self, other: &Self) -> bool {
        (self.type_id)() == (other.type_id)()
    }
}

impl fmt::Debug for EventRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventRegistration")
            .field("event_type", &self.event_type)
            .field("aggregate_type", &self.aggregate_type)
            .field("rust_type", &(self.rust_type)())
            .finish()
    }
}

inventory::collect!(EventRegistration);

/// Calls one `#[handles]` method on a projection instance.
pub type ProjectionCall =
    for<'a> fn(&'a (dyn Any + Send + Sync), &'a AnyEnvelope) -> HandlerFuture<'a>;

/// Calls one `#[handles]` free function.
pub type FunctionCall = for<'a> fn(&'a AnyEnvelope) -> HandlerFuture<'a>;

/// One `#[handles(E)]` method of a projection.
#[derive(Debug, Clone, Copy)]
pub struct ProjectionHandler {
    /// The method's name.
    pub method: &'static str,
    /// The event it takes; `None` for `#[handles(all)]`.
    pub event: Option<EventRegistration>,
    /// The glue the macro generated.
    pub call: ProjectionCall,
}

/// A `#[projection]`: its handlers and how to build it. Submitted by the macro.
#[derive(Debug)]
pub struct ProjectionRegistration {
    /// The type's path.
    pub name: &'static str,
    /// `file:line` of the `#[projection]` impl block.
    pub location: &'static str,
    /// `#[projection(group = "...")]`.
    pub group: Option<&'static str>,
    /// The `TypeId` of the projection type.
    pub type_id: fn() -> TypeId,
    /// Its `#[handles]` methods, in source order.
    pub handlers: &'static [ProjectionHandler],
    /// `Some` when the type implements `Default`.
    pub default_instance: fn() -> Option<Arc<dyn Any + Send + Sync>>,
}

/// What `#[projection]` submits to `inventory`.
#[derive(Debug)]
pub struct ProjectionSubmission(pub &'static ProjectionRegistration);

inventory::collect!(ProjectionSubmission);

/// A `#[handles(E)]` free function. Submitted by the macro.
#[derive(Debug)]
pub struct FunctionRegistration {
    /// The function's path.
    pub name: &'static str,
    /// `#[handles(E, group = "...")]`.
    pub group: Option<&'static str>,
    /// The event it takes; `None` for `#[handles(all)]`.
    pub event: Option<EventRegistration>,
    /// The glue the macro generated.
    pub call: FunctionCall,
}

inventory::collect!(FunctionRegistration);

/// Implemented by `#[projection]` for its type.
pub trait Projection: Send + Sync + 'static {
    /// The registration the macro generated.
    fn registration() -> &'static ProjectionRegistration;
}

/// A library crate whose `#[handles]`, `#[projection]` and
/// `#[derive(DomainEvent)]` items a service links explicitly; made by
/// [`export_handlers!`](crate::export_handlers) in that crate and given to
/// [`BusBuilder::link`](crate::BusBuilder::link).
///
/// The macros register at link time, and a binary links a dependency only when
/// it names something in it: a crate holding only handlers would otherwise be
/// left out silently. Naming its `eventbus_handlers()` links it, and the
/// builder checks that it registered something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandlerCrate {
    module_path: &'static str,
}

impl HandlerCrate {
    #[doc(hidden)]
    pub const fn __new(module_path: &'static str) -> Self {
        Self { module_path }
    }

    /// The crate's name as written in paths (`shop_core`).
    pub fn name(&self) -> &'static str {
        self.module_path
            .split("::")
            .next()
            .unwrap_or(self.module_path)
    }

    /// Whether `path` (a type, function or projection path) is in this crate.
    pub(crate) fn owns(&self, path: &str) -> bool {
        path.strip_prefix(self.name())
            .is_some_and(|rest| rest.starts_with("::"))
    }
}

/// Declares `pub fn eventbus_handlers() -> HandlerCrate` in a library crate,
/// so that a service can link the crate's handlers explicitly with
/// [`BusBuilder::link`](crate::BusBuilder::link).
///
/// ```
/// // In the library crate's lib.rs (say, `shop_core`):
/// eventbus::export_handlers!();
///
/// // In the service's main.rs:
/// // Bus::from_env().link(shop_core::eventbus_handlers()).run().await
/// # assert_eq!(eventbus_handlers().name(), module_path!().split("::").next().unwrap());
/// ```
#[macro_export]
macro_rules! export_handlers {
    () => {
        /// This crate's eventbus events, projections and handlers, for
        /// `eventbus::BusBuilder::link` in a service that does not otherwise
        /// name anything in this crate (it would not be linked).
        pub fn eventbus_handlers() -> $crate::HandlerCrate {
            $crate::HandlerCrate::__new(::core::module_path!())
        }
    };
}
