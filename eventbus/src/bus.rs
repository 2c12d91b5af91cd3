//! [`Bus`], its builder, and the programmatic API of eventsource-py's `EventBus`.

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::{Dispatcher, SubscriptionId};
use crate::envelope::{AnyEnvelope, Envelope};
use crate::error::ConfigError;
use crate::error::{Error, HandlerError, HandlerResult, RegistryError};
use crate::event::DomainEvent;
use crate::registry::{
    Discovered, EventRegistration, EventTypes, FunctionRegistration, HandlerEntry, Invoke,
    Projection, ProjectionRegistration,
};
use crate::stats::{BusStats, Stats, add};
use crate::transport::{Transport, rabbit};

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

/// State shared by the bus, its transport and its background tasks.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) event_types: RwLock<Arc<EventTypes>>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) stats: Stats,
    pub(crate) tasks: TaskTracker,
    /// Declare the topology on connect (off for tools that only inspect).
    pub(crate) declare: bool,
}

impl Shared {
    pub(crate) fn event_types(&self) -> Arc<EventTypes> {
        self.event_types
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn register_event(&self, reg: EventRegistration) -> Result<(), RegistryError> {
        let mut conflicts = Vec::new();
        let mut types = self
            .event_types
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only a new or conflicting type needs the copy-on-write map changed.
        if !types.contains(&reg) {
            Arc::make_mut(&mut types).insert(reg, &mut conflicts);
        }
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(RegistryError { conflicts })
        }
    }
}

/// The event bus: publishes events and runs the registered handlers.
///
/// Cheap to clone; every clone is the same bus.
///
/// ```no_run
/// # async fn demo() -> Result<(), eventbus::Error> {
/// // Reads EVENTBUS_* variables, declares the topology, consumes until
/// // SIGINT/SIGTERM, then shuts down gracefully.
/// eventbus::Bus::from_env().run().await
/// # }
/// ```
#[derive(Clone)]
pub struct Bus {
    shared: Arc<Shared>,
    transport: Arc<Transport>,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.shared.config.url)
            .field("exchange", &self.shared.config.exchange_name)
            .field("transport", &self.transport.name())
            .finish_non_exhaustive()
    }
}

/// A projection instance, type-erased.
type Instance = Arc<dyn Any + Send + Sync>;

type ClosureFn = Arc<dyn Fn(AnyEnvelope) -> crate::registry::HandlerFuture<'static> + Send + Sync>;

fn typed_closure<E, F, Fut>(handler: F) -> ClosureFn
where
    E: DomainEvent,
    F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoHandlerResult,
{
    Arc::new(move |event: AnyEnvelope| {
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
    })
}

fn any_closure<F, Fut>(handler: F) -> ClosureFn
where
    F: Fn(AnyEnvelope) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoHandlerResult,
{
    Arc::new(move |event: AnyEnvelope| {
        let fut = handler(event);
        Box::pin(async move { fut.await.into_handler_result() })
    })
}

fn projection_entries(
    reg: &'static ProjectionRegistration,
    instance: &Arc<dyn Any + Send + Sync>,
    default_group: &str,
) -> Vec<HandlerEntry> {
    let group: Arc<str> = reg.group.unwrap_or(default_group).into();
    reg.handlers
        .iter()
        .map(|h| HandlerEntry {
            name: format!("{}::{}", reg.name, h.method).into(),
            group: group.clone(),
            event: h.event,
            invoke: Invoke::Projection {
                instance: instance.clone(),
                call: h.call,
            },
        })
        .collect()
}

fn function_entry(reg: &'static FunctionRegistration, default_group: &str) -> HandlerEntry {
    HandlerEntry {
        name: reg.name.into(),
        group: reg.group.unwrap_or(default_group).into(),
        event: reg.event,
        invoke: Invoke::Function(reg.call),
    }
}

struct ManualHandler {
    name: String,
    group: Option<String>,
    event: Option<EventRegistration>,
    call: ClosureFn,
}

/// Builds a [`Bus`]: configuration, transport, and what to register beyond
/// what the macros registered.
#[must_use = "a builder does nothing until `.build()` or `.run()`"]
pub struct BusBuilder {
    config: Result<Config, ConfigError>,
    discover: bool,
    declare: bool,
    events: Vec<EventRegistration>,
    projections: Vec<(&'static ProjectionRegistration, Instance)>,
    handlers: Vec<ManualHandler>,
}

impl fmt::Debug for BusBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BusBuilder")
            .field("config", &self.config)
            .field("discover", &self.discover)
            .field("declare", &self.declare)
            .field("events", &self.events)
            .field(
                "projections",
                &self
                    .projections
                    .iter()
                    .map(|(r, _)| r.name)
                    .collect::<Vec<_>>(),
            )
            .field(
                "handlers",
                &self.handlers.iter().map(|h| &h.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Bus {
    /// A builder configured from the `EVENTBUS_*` environment variables.
    ///
    /// An invalid variable is reported by `.build()` / `.run()`, naming it.
    /// Without `EVENTBUS_URL` the bus connects to `amqp://guest:guest@localhost:5672/`;
    /// it never falls back to memory on its own.
    pub fn from_env() -> BusBuilder {
        BusBuilder::new(Config::from_env())
    }

    /// A builder with the default configuration (RabbitMQ on localhost).
    pub fn builder() -> BusBuilder {
        BusBuilder::new(Ok(Config::default()))
    }

    /// An in-memory bus with everything the macros registered.
    pub async fn memory() -> Result<Self, Error> {
        Self::builder().memory().build().await
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// `memory` or `rabbitmq`.
    pub fn transport_name(&self) -> &'static str {
        self.transport.name()
    }

    /// The event types this bus can decode.
    pub fn event_types(&self) -> Arc<EventTypes> {
        self.shared.event_types()
    }

    /// Publishes events in order and returns once each is confirmed (on
    /// RabbitMQ) or handled (in memory).
    ///
    /// Accepts any mix of event types: `bus.publish([placed.into(), shipped.into()])`.
    pub async fn publish<I>(&self, events: I) -> Result<PublishReport, Error>
    where
        I: IntoIterator,
        I::Item: Into<AnyEnvelope>,
    {
        let events: Vec<AnyEnvelope> = events.into_iter().map(Into::into).collect();
        let total = events.len();
        let published = self.transport.publish(&self.shared, &events).await?;
        Ok(PublishReport { published, total })
    }

    /// Publishes in chunks of `publish_chunk_size`, up to
    /// `max_concurrent_publishes` chunks at once; with `preserve_order`, one
    /// chunk after the other. Reports how many of how many were published and
    /// the first error, instead of stopping at it.
    pub async fn publish_batch<I>(&self, events: I, preserve_order: bool) -> BatchReport
    where
        I: IntoIterator,
        I::Item: Into<AnyEnvelope>,
    {
        let events: Vec<AnyEnvelope> = events.into_iter().map(Into::into).collect();
        self.transport
            .publish_batch(&self.shared, events, preserve_order)
            .await
    }

    /// Publishes in a tracked background task; [`Bus::shutdown`] waits for it.
    /// Failures are logged and counted.
    pub fn publish_background<I>(&self, events: I)
    where
        I: IntoIterator,
        I::Item: Into<AnyEnvelope>,
    {
        let events: Vec<AnyEnvelope> = events.into_iter().map(Into::into).collect();
        let bus = self.clone();
        add(&self.shared.stats.background_tasks_created, 1);
        self.shared.tasks.spawn(async move {
            if let Err(error) = bus.transport.publish(&bus.shared, &events).await {
                bus.shared.stats.last_error_at.now();
                tracing::error!(%error, events = events.len(), "background publish failed");
            }
        });
    }

    /// Background tasks still running.
    pub fn background_task_count(&self) -> usize {
        self.shared.tasks.len()
    }

    /// Subscribes a handler to `E` in the default consumer group.
    ///
    /// ```
    /// # use eventbus::{Bus, DomainEvent, Envelope, HandlerError};
    /// # use serde::{Deserialize, Serialize};
    /// # use std::sync::Arc;
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # #[event(aggregate = "Order")]
    /// # struct OrderPlaced { customer_id: String }
    /// # async fn demo(bus: Bus) {
    /// let id = bus.subscribe(|event: Arc<Envelope<OrderPlaced>>| async move {
    ///     println!("order for {}", event.customer_id);
    ///     Ok::<_, HandlerError>(())
    /// });
    /// assert!(bus.unsubscribe(id));
    /// # }
    /// ```
    pub fn subscribe<E, F, Fut>(&self, handler: F) -> SubscriptionId
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.subscribe_named::<E, F, Fut>(std::any::type_name::<F>(), handler)
    }

    /// [`Bus::subscribe`] with a name for logs.
    pub fn subscribe_named<E, F, Fut>(&self, name: &str, handler: F) -> SubscriptionId
    where
        E: DomainEvent,
        F: Fn(Arc<Envelope<E>>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        let reg = EventRegistration::of::<E>();
        if let Err(error) = self.shared.register_event(reg) {
            tracing::error!(%error, "subscribing to an event type whose name is taken");
        }
        self.shared.dispatcher.add(HandlerEntry {
            name: name.into(),
            group: self.shared.config.consumer_group.as_str().into(),
            event: Some(reg),
            invoke: Invoke::Closure(typed_closure(handler)),
        })
    }

    /// Removes a subscription made with [`Bus::subscribe`].
    pub fn unsubscribe(&self, id: SubscriptionId) -> bool {
        self.shared.dispatcher.remove(id, Some(false))
    }

    /// Subscribes every `#[handles]` method of a projection instance (the
    /// seed's `subscribe_all`: the projection declares its event types).
    pub fn subscribe_all<P: Projection>(&self, projection: P) -> Vec<SubscriptionId> {
        let reg = P::registration();
        let instance: Arc<dyn Any + Send + Sync> = Arc::new(projection);
        projection_entries(reg, &instance, &self.shared.config.consumer_group)
            .into_iter()
            .map(|entry| {
                if let Some(event) = entry.event
                    && let Err(error) = self.shared.register_event(event)
                {
                    tracing::error!(%error, "projection uses an event type whose name is taken");
                }
                self.shared.dispatcher.add(entry)
            })
            .collect()
    }

    /// Subscribes a handler to every event (audit logs, metrics).
    pub fn subscribe_to_all_events<F, Fut>(&self, handler: F) -> SubscriptionId
    where
        F: Fn(AnyEnvelope) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoHandlerResult,
    {
        self.shared.dispatcher.add(HandlerEntry {
            name: std::any::type_name::<F>().into(),
            group: self.shared.config.consumer_group.as_str().into(),
            event: None,
            invoke: Invoke::Closure(any_closure(handler)),
        })
    }

    /// Removes a subscription made with [`Bus::subscribe_to_all_events`].
    pub fn unsubscribe_from_all_events(&self, id: SubscriptionId) -> bool {
        self.shared.dispatcher.remove(id, Some(true))
    }

    /// Removes every subscription, including the registered projections.
    pub fn clear_subscribers(&self) {
        self.shared.dispatcher.clear();
    }

    /// Handlers of `E` (typed only), across groups.
    pub fn subscriber_count<E: DomainEvent>(&self) -> usize {
        self.subscriber_count_for(E::EVENT_TYPE)
    }

    /// Handlers of the event type named `event_type` (typed only), across groups.
    pub fn subscriber_count_for(&self, event_type: &str) -> usize {
        self.shared
            .dispatcher
            .snapshot()
            .groups
            .values()
            .map(|g| {
                g.handlers_for(event_type)
                    .filter(|h| h.event.is_some())
                    .count()
            })
            .sum()
    }

    /// Wildcard handlers, across groups.
    pub fn wildcard_subscriber_count(&self) -> usize {
        self.shared
            .dispatcher
            .snapshot()
            .groups
            .values()
            .map(|g| g.handlers_for("").count())
            .sum()
    }

    /// Every handler, typed and wildcard.
    pub fn total_subscriber_count(&self) -> usize {
        self.shared.dispatcher.len()
    }

    /// The consumer groups and the event types each handles (`*` = all).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        self.shared
            .dispatcher
            .snapshot()
            .groups
            .iter()
            .map(|(name, g)| {
                let mut events: Vec<String> = g.events().map(|e| e.event_type.to_owned()).collect();
                if g.has_wildcard() {
                    events.push("*".to_owned());
                }
                (name.to_string(), events)
            })
            .collect()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> BusStats {
        self.shared.stats.snapshot()
    }

    /// Starts consuming in the background (RabbitMQ); a no-op in memory,
    /// where publishing delivers directly.
    pub async fn start_consuming(&self) -> Result<(), Error> {
        self.transport.start_consuming(&self.shared).await
    }

    /// Stops taking new deliveries; in-flight handlers finish and ack.
    pub async fn stop_consuming(&self) -> Result<(), Error> {
        self.transport.stop_consuming().await
    }

    /// Stops consuming, waits up to `timeout` for in-flight handlers and
    /// background publishes, then closes the connections.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let stopped = self.transport.stop_consuming().await;
        self.shared.tasks.close();
        let waited = tokio::time::timeout_at(deadline, self.shared.tasks.wait()).await;
        let closed = self.transport.close().await;
        if waited.is_err() {
            return Err(Error::ShutdownTimeout {
                timeout,
                pending: self.shared.tasks.len(),
            });
        }
        stopped.and(closed)
    }

    /// Consumes until SIGINT or SIGTERM, then shuts down gracefully within
    /// `shutdown_timeout`.
    pub async fn run(&self) -> Result<(), Error> {
        self.run_until(shutdown_signal()).await
    }

    /// Consumes until `stop` completes, then shuts down gracefully.
    pub async fn run_until<F>(&self, stop: F) -> Result<(), Error>
    where
        F: Future<Output = Result<(), Error>>,
    {
        self.start_consuming().await?;
        tracing::info!(
            transport = self.transport_name(),
            url = %self.shared.config.url,
            groups = ?self.groups(),
            "event bus running"
        );
        let stopped = stop.await;
        tracing::info!("event bus shutting down");
        let shutdown = self.shutdown(self.shared.config.shutdown_timeout).await;
        stopped.and(shutdown)
    }

    /// Connection and consumer state.
    pub async fn health_check(&self) -> HealthStatus {
        self.transport.health(&self.shared).await
    }

    /// Adds a binding for `routing_key` to the default group's queue (RabbitMQ).
    pub async fn bind_routing_key(&self, routing_key: &str) -> Result<(), Error> {
        self.transport
            .bind(
                &self.shared,
                &self.shared.config.consumer_group,
                routing_key,
            )
            .await
    }

    /// Binds `E`'s routing key to the default group's queue (RabbitMQ).
    pub async fn bind_event_type<E: DomainEvent>(&self) -> Result<(), Error> {
        self.shared
            .register_event(EventRegistration::of::<E>())
            .map_err(Error::Registry)?;
        self.bind_routing_key(E::ROUTING_KEY).await
    }

    /// Name, message count and consumer count of the default group's queue.
    pub async fn queue_info(&self) -> Result<QueueInfo, Error> {
        self.transport
            .queue_info(&self.shared.config.queue_name())
            .await
    }

    /// Queue info of consumer group `group`.
    pub async fn group_queue_info(&self, group: &str) -> Result<QueueInfo, Error> {
        self.transport
            .queue_info(&self.shared.config.group_queue_name(group))
            .await
    }

    /// The dead-letter queue of consumer group `group`.
    pub fn dlq(&self, group: &str) -> crate::dlq::Dlq<'_> {
        crate::dlq::Dlq {
            bus: self,
            group: group.to_owned(),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn rabbit(
        &self,
        operation: &'static str,
    ) -> Result<&rabbit::RabbitTransport, Error> {
        match &*self.transport {
            Transport::Rabbit(r) => Ok(r),
            Transport::Memory => Err(Error::Unsupported {
                operation,
                transport: "memory",
            }),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() -> Result<(), Error> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(Error::Signal),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.map_err(Error::Signal)
    }
}

/// How many events of a publish went out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PublishReport {
    /// Confirmed (or delivered in memory).
    pub published: usize,
    /// Asked for.
    pub total: usize,
}

/// A batch publish: counts and the first error, if any.
#[derive(Debug, Default)]
pub struct BatchReport {
    /// Confirmed.
    pub published: usize,
    /// Asked for.
    pub total: usize,
    /// Errors, one per failed chunk.
    pub errors: Vec<Error>,
}

/// The state of the bus, for health endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HealthStatus {
    /// Everything is up.
    pub healthy: bool,
    /// `memory` or `rabbitmq`.
    pub transport: &'static str,
    /// The connection is open.
    pub connected: bool,
    /// Consumers are running.
    pub consuming: bool,
    /// Consumers by group queue, and whether each is active.
    pub consumers: BTreeMap<String, bool>,
    /// What is wrong, when not healthy.
    pub error: Option<String>,
}

/// A queue as the broker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    /// Its name.
    pub name: String,
    /// Messages ready.
    pub message_count: u32,
    /// Consumers attached.
    pub consumer_count: u32,
}

impl BusBuilder {
    fn new(config: Result<Config, ConfigError>) -> Self {
        Self {
            config,
            discover: true,
            declare: true,
            events: Vec::new(),
            projections: Vec::new(),
            handlers: Vec::new(),
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

    /// Selects the broker: `memory://`, `amqp://...` or `amqps://...`.
    pub fn url(mut self, url: &str) -> Self {
        if let Ok(config) = &mut self.config {
            match crate::config::BrokerUrl::parse(url) {
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

    /// Registers an event type by hand (for crates that might not be linked).
    pub fn event<E: DomainEvent>(mut self) -> Self {
        self.events.push(EventRegistration::of::<E>());
        self
    }

    /// Supplies the instance of a projection (one holding a database pool,
    /// say); registers it if discovery did not.
    pub fn projection<P: Projection>(mut self, projection: P) -> Self {
        self.projections
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
        self.handlers.push(ManualHandler {
            name: name.to_owned(),
            group: None,
            event: Some(EventRegistration::of::<E>()),
            call: typed_closure(handler),
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
        self.handlers.push(ManualHandler {
            name: name.to_owned(),
            group: group.map(str::to_owned),
            event: None,
            call: any_closure(handler),
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
        let mut conflicts = Vec::new();
        let mut event_types = EventTypes::default();
        for reg in discovered.events.iter().chain(&self.events) {
            event_types.insert(*reg, &mut conflicts);
        }

        // Projections: discovered ones, plus instances supplied here (which win).
        let mut projections: BTreeMap<
            &'static str,
            (&'static ProjectionRegistration, Option<Instance>),
        > = BTreeMap::new();
        for reg in &discovered.projections {
            projections.insert(reg.name, (reg, None));
        }
        let mut supplied: BTreeMap<TypeId, &'static str> = BTreeMap::new();
        for (reg, instance) in self.projections {
            if let Some(first) = supplied.insert((reg.type_id)(), reg.name) {
                conflicts.push(format!(
                    "projection `{first}` was supplied twice to the builder; pass one instance"
                ));
            }
            projections.insert(reg.name, (reg, Some(instance)));
        }

        let mut entries = Vec::new();
        let group = config.consumer_group.as_str();
        for (name, (reg, instance)) in projections {
            let instance = match instance.or_else(reg.default_instance) {
                Some(instance) => instance,
                None => {
                    conflicts.push(format!(
                        "projection `{name}` does not implement `Default`; supply an instance with `Bus::builder().projection(...)`"
                    ));
                    continue;
                }
            };
            entries.extend(projection_entries(reg, &instance, group));
        }
        entries.extend(
            discovered
                .functions
                .iter()
                .map(|f| function_entry(f, group)),
        );
        for h in self.handlers {
            entries.push(HandlerEntry {
                name: h.name.into(),
                group: h.group.as_deref().unwrap_or(group).into(),
                event: h.event,
                invoke: Invoke::Closure(h.call),
            });
        }

        let mut names: BTreeMap<Arc<str>, usize> = BTreeMap::new();
        for entry in &entries {
            *names.entry(entry.name.clone()).or_default() += 1;
            if let Some(event) = entry.event {
                event_types.insert(event, &mut conflicts);
            }
        }
        for (name, count) in names.into_iter().filter(|(_, n)| *n > 1) {
            conflicts.push(format!(
                "handler `{name}` is registered {count} times; give each handler its own name"
            ));
        }
        conflicts.sort();
        conflicts.dedup();
        if !conflicts.is_empty() {
            return Err(RegistryError { conflicts }.into());
        }

        let dispatcher = Dispatcher::default();
        for entry in entries {
            dispatcher.add(entry);
        }
        let shared = Arc::new(Shared {
            config,
            event_types: RwLock::new(Arc::new(event_types)),
            dispatcher,
            stats: Stats::default(),
            tasks: TaskTracker::new(),
            declare: self.declare,
        });
        let transport = if shared.config.url.is_memory() {
            Transport::Memory
        } else {
            Transport::Rabbit(rabbit::RabbitTransport::connect(&shared).await?)
        };
        Ok(Bus {
            shared,
            transport: Arc::new(transport),
        })
    }

    /// Builds, consumes until SIGINT/SIGTERM, shuts down gracefully.
    pub async fn run(self) -> Result<(), Error> {
        self.build().await?.run().await
    }
}
