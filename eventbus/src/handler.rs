//! The handler contract, and handlers resolved to a group, an event type and a call.
//!
//! Every way of registering a handler (a `#[projection]` method, a
//! `#[handles]` function, a closure given to the builder or to `subscribe`)
//! ends as one [`HandlerEntry`], built by [`HandlerEntry::new`].

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::envelope::{AnyEnvelope, Envelope};
use crate::error::{HandlerError, HandlerResult};
use crate::event::DomainEvent;
use crate::registration::{
    EventRegistration, FunctionCall, FunctionRegistration, HandlerFuture, ProjectionCall,
    ProjectionRegistration,
};

/// What a handler may return: `Result<(), E>` where `E` converts into [`HandlerError`].
#[diagnostic::on_unimplemented(
    message = "event handlers return `Result<(), E>` where `E` converts into `eventbus::HandlerError`, not `{Self}`",
    label = "handlers return `Result<(), HandlerError>`"
)]
pub trait IntoHandlerResult {
    /// Converts.
    fn into_handler_result(self) -> HandlerResult;
}

impl<E: Into<HandlerError>> IntoHandlerResult for Result<(), E> {
    fn into_handler_result(self) -> HandlerResult {
        self.map_err(Into::into)
    }
}

/// A projection instance, type-erased.
pub(crate) type Instance = Arc<dyn Any + Send + Sync>;

/// A closure handler, type-erased.
pub(crate) type ClosureFn = Arc<dyn Fn(AnyEnvelope) -> HandlerFuture<'static> + Send + Sync>;

/// How a handler is invoked.
#[derive(Clone)]
pub(crate) enum Invoke {
    Projection {
        instance: Instance,
        call: ProjectionCall,
    },
    Function(FunctionCall),
    Closure(ClosureFn),
}

impl Invoke {
    pub(crate) fn call<'a>(&'a self, event: &'a AnyEnvelope) -> HandlerFuture<'a> {
        match self {
            Self::Projection { instance, call } => call(&**instance, event),
            Self::Function(call) => call(event),
            Self::Closure(f) => f(event.clone()),
        }
    }

    /// A closure taking `Envelope<E>`.
    pub(crate) fn typed<E, F, Fut>(handler: F) -> Self
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        Self::Closure(Arc::new(move |event: AnyEnvelope| {
            let typed = event.downcast_arc::<E>();
            let fut = typed.map(&handler);
            Box::pin(async move {
                match fut {
                    Some(fut) => fut.await.into_handler_result(),
                    // The dispatch table only routes E to this handler.
                    None => Err(HandlerError::permanent(format!(
                        "handler for {} received a {}",
                        E::EVENT_TYPE,
                        event.meta().event_type()
                    ))),
                }
            })
        }))
    }

    /// A closure taking any event.
    pub(crate) fn any<F, Fut>(handler: F) -> Self
    where
        F: Fn(AnyEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        Self::Closure(Arc::new(move |event: AnyEnvelope| {
            let fut = handler(event);
            Box::pin(async move { fut.await.into_handler_result() })
        }))
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

impl HandlerEntry {
    /// The one constructor.
    pub(crate) fn new(
        name: impl Into<Arc<str>>,
        group: impl Into<Arc<str>>,
        event: Option<EventRegistration>,
        invoke: Invoke,
    ) -> Self {
        Self {
            name: name.into(),
            group: group.into(),
            event,
            invoke,
        }
    }

    /// The entries of a projection's `#[handles]` methods, named `{type}::{method}`.
    pub(crate) fn of_projection(
        reg: &'static ProjectionRegistration,
        instance: &Instance,
        default_group: &str,
    ) -> Vec<Self> {
        let group: Arc<str> = reg.group.unwrap_or(default_group).into();
        reg.handlers
            .iter()
            .map(|h| {
                Self::new(
                    format!("{}::{}", reg.name, h.method),
                    group.clone(),
                    h.event,
                    Invoke::Projection {
                        instance: instance.clone(),
                        call: h.call,
                    },
                )
            })
            .collect()
    }

    /// The entry of a `#[handles]` free function.
    pub(crate) fn of_function(reg: &'static FunctionRegistration, default_group: &str) -> Self {
        Self::new(
            reg.name,
            reg.group.unwrap_or(default_group),
            reg.event,
            Invoke::Function(reg.call),
        )
    }
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
