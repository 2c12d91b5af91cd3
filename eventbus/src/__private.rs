//! Not public API: what the macros' generated code uses. Nothing here is
//! covered by semver.

pub use crate::registration::{
    EventRegistration, FunctionCall, FunctionRegistration, HandlerFuture, ProjectionCall,
    ProjectionHandler, ProjectionRegistration, ProjectionSubmission,
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
