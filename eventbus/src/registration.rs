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
