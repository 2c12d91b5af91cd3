//! [`BusBuilder`]: configuration, transport, and what to register beyond
//! what the macros registered.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use crate::config::{BrokerUrl, Config};
use crate::dispatch::Dispatcher;
use crate::envelope::{AnyEnvelope, Envelope};
use crate::error::{ConfigError, Error, RegistryError};
use crate::event::DomainEvent;
use crate::handler::{IntoHandlerResult, Invoke};
use crate::registration::{EventRegistration, HandlerCrate, Projection};
use crate::registry::{Additions, Discovered, ManualHandler, Registry};
use crate::runtime::BusContext;
use crate::transport::AnyTransport;

use super::Bus;

/// Builds a [`Bus`]: configuration, transport, and what to register beyond
/// what the macros registered.
#[must_use = "a builder does nothing until `.build()` or `.run()`"]
pub struct BusBuilder {
    config: Result<Config, ConfigError>,
    discover: bool,
    declare: bool,
    additions: Additions,
    linked: Vec<HandlerCrate>,
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("config", &self.config)
            .field("discover", &self.discover)
            .field("declare", &self.declare)
            .field("linked", &self.linked)
            .field("events", &self.additions.events)
            .field(
                "projections",
                &self
                    .additions
                    .projections
                    .iter()
                    .map(|(r, _)| r.name)
                    .collect::<Vec<_>>(),
            )
            .field(
                "handlers",
                &self
                    .additions
                    .handlers
                    .iter()
                    .map(|h| &h.name)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl BusBuilder {
    pub(super) fn new(config: Result<Config, ConfigError>) -> Self {
        Self {
            config,
            discover: true,
            declare: true,
            additions: Additions::default(),
            linked: Vec::new(),
        }
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = Ok(config);
        self
    }

    /// Changes settings in code: `.configure(|c| c.prefetch_count = 50)`.
    pub fn configure(mut self, change: impl FnOnce(&mut Config)) -> Self {
        if let Ok(config) = &mut self.config {
            change(config);
        }
        self
    }

    /// Sets how consumer group `group` orders its deliveries, overriding
    /// `EVENTBUS_ORDERING` for that group.
    pub fn group_ordering(self, group: &str, order: crate::DeliveryOrder) -> Self {
        self.configure(|c| {
            c.group_ordering.insert(group.to_owned(), order);
        })
    }

    /// Selects the broker: `memory://`, `amqp://...` or `amqps://...`.
    pub fn url(mut self, url: &str) -> Self {
        if let Ok(config) = &mut self.config {
            match BrokerUrl::parse(url) {
                Ok(url) => config.url = url,
                Err(e) => self.config = Err(e),
            }
        }
        self
    }

    /// Selects the in-memory transport.
    pub fn memory(self) -> Self {
        self.url("memory://")
    }

    /// Only what is registered through this builder: skip link-time discovery.
    pub fn without_discovery(mut self) -> Self {
        self.discover = false;
        self
    }

    /// Declares nothing on the broker: for tools that only inspect or move
    /// messages (the `eventbus` CLI), so a differing exchange type or queue
    /// argument in their environment cannot conflict with the services'.
    pub fn without_topology(mut self) -> Self {
        self.declare = false;
        self
    }

    /// Links the handlers, projections and events of a library crate that the
    /// service does not otherwise name, so they are not left out of the binary:
    /// `.link(shop_core::eventbus_handlers())`, after
    /// [`eventbus::export_handlers!()`](crate::export_handlers) in that crate's
    /// `lib.rs`. `build()` fails if the crate registered nothing.
    pub fn link(mut self, handlers: HandlerCrate) -> Self {
        self.linked.push(handlers);
        self
    }

    /// Registers an event type by hand (for crates that might not be linked).
    pub fn event<E: DomainEvent>(mut self) -> Self {
        self.additions.events.push(EventRegistration::of::<E>());
        self
    }

    /// Supplies the instance of a projection (one holding a database pool,
    /// say); registers it if discovery did not.
    pub fn projection<P: Projection>(mut self, projection: P) -> Self {
        self.additions
            .projections
            .push((P::registration(), Arc::new(projection)));
        self
    }

    /// Registers a handler of `E` by hand, under `name`, in the default group.
    pub fn handler<E, F, Fut>(mut self, name: &str, handler: F) -> Self
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.additions.handlers.push(ManualHandler {
            name: name.to_owned(),
            group: None,
            event: Some(EventRegistration::of::<E>()),
            invoke: Invoke::typed(handler),
        });
        self
    }

    /// Registers a handler of every event by hand, under `name`, in `group`
    /// (`None`: the default group).
    pub fn wildcard_handler<F, Fut>(mut self, name: &str, group: Option<&str>, handler: F) -> Self
    where
        F: Fn(AnyEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.additions.handlers.push(ManualHandler {
            name: name.to_owned(),
            group: group.map(str::to_owned),
            event: None,
            invoke: Invoke::any(handler),
        });
        self
    }

    /// Checks the registry and configuration, connects, declares the topology.
    pub async fn build(self) -> Result<Bus, Error> {
        let config = self.config?;
        config.validate()?;
        let discovered = if self.discover {
            Discovered::from_inventory()
        } else {
            Discovered::default()
        };
        let unlinked = discovered.missing(&self.linked);
        if !unlinked.is_empty() {
            return Err(RegistryError {
                conflicts: unlinked
                    .iter()
                    .map(|krate| {
                        format!(
                            "crate `{krate}` was linked with `.link(...)` but registered no event, \
                             projection or handler{}",
                            if self.discover {
                                ""
                            } else {
                                " (discovery is off: `without_discovery()`)"
                            }
                        )
                    })
                    .collect(),
            }
            .into());
        }
        let registry = Registry::assemble(&discovered, self.additions, &config.consumer_group)?;
        let dispatcher = Dispatcher::default();
        for entry in registry.entries {
            dispatcher.add(entry);
        }
        let ctx = Arc::new(BusContext::new(
            config,
            registry.event_types,
            dispatcher,
            self.declare,
        ));
        let transport = AnyTransport::connect(&ctx).await?;
        Ok(Bus {
            ctx,
            transport: Arc::new(transport),
            observe: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Builds, consumes until SIGINT/SIGTERM, shuts down gracefully.
    pub async fn run(self) -> Result<(), Error> {
        self.build().await?.run().await
    }
}
