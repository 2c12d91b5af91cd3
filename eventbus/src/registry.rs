//! What the macros submit at link time, and the registry the runtime builds from it.
//!
//! The macros only `submit!`; the runtime owns the collections, sorts them
//! (inventory's order is unspecified) and reports every conflict at once.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::codec;
use crate::envelope::AnyEnvelope;
use crate::error::{DecodeError, HandlerResult};
use crate::event::DomainEvent;

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
            decode: codec::decode_any::<E>,
        }
    }

    /// Decodes a body of this type.
    pub fn decode(&self, body: &[u8]) -> Result<AnyEnvelope, DecodeError> {
        (self.decode)(body)
    }

    fn same_type(&self, other: &Self) -> bool {
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

/// How a handler is invoked.
#[derive(Clone)]
pub(crate) enum Invoke {
    Projection {
        instance: Arc<dyn Any + Send + Sync>,
        call: ProjectionCall,
    },
    Function(FunctionCall),
    Closure(Arc<dyn Fn(AnyEnvelope) -> HandlerFuture<'static> + Send + Sync>),
}

impl Invoke {
    pub(crate) fn call<'a>(&'a self, event: &'a AnyEnvelope) -> HandlerFuture<'a> {
        match self {
            Self::Projection { instance, call } => call(&**instance, event),
            Self::Function(call) => call(event),
            Self::Closure(f) => f(event.clone()),
        }
    }
}

/// One handler, resolved: which group, which event, how to call it.
#[derive(Clone)]
pub(crate) struct HandlerEntry {
    pub(crate) name: Arc<str>,
    pub(crate) group: Arc<str>,
    /// `None` = every event (wildcard).
    pub(crate) event: Option<EventRegistration>,
    pub(crate) invoke: Invoke,
}

impl fmt::Debug for HandlerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerEntry")
            .field("name", &self.name)
            .field("group", &self.group)
            .field("event", &self.event.map(|e| e.event_type))
            .finish_non_exhaustive()
    }
}

/// Event types by name: how a consumer finds the decoder for a message.
#[derive(Debug, Clone, Default)]
pub struct EventTypes {
    by_name: BTreeMap<&'static str, EventRegistration>,
}

impl EventTypes {
    /// The registration for `event_type`.
    pub fn get(&self, event_type: &str) -> Option<&EventRegistration> {
        self.by_name.get(event_type)
    }

    /// Every registered name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }

    /// How many event types are registered.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Is nothing registered?
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Is exactly this type registered under its name?
    pub(crate) fn contains(&self, reg: &EventRegistration) -> bool {
        self.by_name
            .get(reg.event_type)
            .is_some_and(|existing| existing.same_type(reg))
    }

    /// Adds one; a second, different type under the same name is a conflict.
    pub(crate) fn insert(&mut self, reg: EventRegistration, conflicts: &mut Vec<String>) {
        match self.by_name.get(reg.event_type) {
            Some(existing) if existing.same_type(&reg) => {}
            Some(existing) => conflicts.push(format!(
                "event type `{}` is claimed by both `{}` and `{}`; rename one with #[event(name = \"...\")]",
                reg.event_type,
                (existing.rust_type)(),
                (reg.rust_type)()
            )),
            None => {
                self.by_name.insert(reg.event_type, reg);
            }
        }
    }

    /// Decodes a message body, picking the type from `event_type`.
    pub fn decode(&self, event_type: &str, body: &[u8]) -> Result<AnyEnvelope, DecodeError> {
        let reg = self
            .get(event_type)
            .ok_or_else(|| DecodeError::UnknownEventType {
                event_type: event_type.to_owned(),
                known: self.names().collect::<Vec<_>>().join(", "),
            })?;
        reg.decode(body)
    }
}

/// Everything linked into the binary, sorted and checked.
#[derive(Debug, Default)]
pub(crate) struct Discovered {
    pub(crate) events: Vec<EventRegistration>,
    pub(crate) projections: Vec<&'static ProjectionRegistration>,
    pub(crate) functions: Vec<&'static FunctionRegistration>,
}

impl Discovered {
    /// Collects what the macros submitted; sorted so startup is deterministic.
    pub(crate) fn from_inventory() -> Self {
        let mut events: Vec<_> = inventory::iter::<EventRegistration>().copied().collect();
        events.sort_by_key(|e| (e.event_type, (e.rust_type)()));
        let mut projections: Vec<_> = inventory::iter::<ProjectionSubmission>()
            .map(|p| p.0)
            .collect();
        projections.sort_by_key(|p| p.name);
        let mut functions: Vec<_> = inventory::iter::<FunctionRegistration>().collect();
        functions.sort_by_key(|f| f.name);
        Self {
            events,
            projections,
            functions,
        }
    }
}
