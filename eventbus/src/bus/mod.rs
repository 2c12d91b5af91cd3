//! The facade: [`Bus`], what users hold. Lifecycle and operations here; the
//! subscription API in `subscribe.rs`, the builder in `builder.rs`.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::dlq::Dlq;
use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::event::DomainEvent;
use crate::registration::EventRegistration;
use crate::registry::EventTypes;
use crate::runtime::{
    self, BatchReport, BusContext, HealthStatus, PublishReport, QueueInfo, StreamInfo,
};
use crate::stats::{BusStats, add};
use crate::transport::{AnyTransport, Transport};

mod builder;
mod observe;
mod subscribe;

pub use builder::BusBuilder;

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
    ctx: Arc<BusContext>,
    transport: Arc<AnyTransport>,
    /// Stops the metrics listener and sampler at shutdown.
    observe: tokio_util::sync::CancellationToken,
}

impl fmt::Debug for Bus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bus")
            .field("url", &self.ctx.config.url)
            .field("exchange", &self.ctx.config.exchange_name)
            .field("transport", &self.transport.name())
            .finish_non_exhaustive()
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
        &self.ctx.config
    }

    /// `memory`, `rabbitmq` or `redis`.
    pub fn transport_name(&self) -> &'static str {
        self.transport.name()
    }

    /// The event types this bus can decode.
    pub fn event_types(&self) -> Arc<EventTypes> {
        self.ctx.event_types()
    }

    /// Publishes events in order and returns once each is confirmed (on
    /// RabbitMQ) or handled (in memory).
    ///
    /// Takes anything iterable of envelopes: one type, or a mix converted to
    /// [`AnyEnvelope`] (the first element names the array's item type, so
    /// `[placed.into(), shipped.into()]` alone is ambiguous).
    ///
    /// ```standalone_crate
    /// # use eventbus::{AnyEnvelope, Bus, DomainEvent, Envelope};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # #[event(aggregate = "Order")]
    /// # struct OrderPlaced { customer_id: String }
    /// # #[derive(Debug, Clone, Serialize, Deserialize, DomainEvent)]
    /// # #[event(aggregate = "Order")]
    /// # struct OrderShipped { tracking_number: String }
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), eventbus::Error> {
    /// let bus = Bus::builder().memory().build().await?;
    /// // In memory, as on RabbitMQ, an event nobody takes is `Unroutable`.
    /// bus.subscribe_to_all_events(|event: AnyEnvelope| async move {
    ///     println!("{}", event.meta().event_type());
    ///     Ok::<_, eventbus::HandlerError>(())
    /// });
    /// let order = uuid::Uuid::new_v4();
    /// let placed = Envelope::new(order, OrderPlaced { customer_id: "C-1".into() });
    /// let shipped = Envelope::new(order, OrderShipped { tracking_number: "T-9".into() });
    ///
    /// bus.publish([placed.clone()]).await?;                              // one type
    /// let report = bus.publish([AnyEnvelope::from(placed), shipped.into()]).await?; // a mix
    /// assert_eq!(report.published, 2);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish<I>(&self, events: I) -> Result<PublishReport, Error>
    where
        I: IntoIterator,
        I::Item: Into<AnyEnvelope>,
    {
        let events: Vec<AnyEnvelope> = events.into_iter().map(Into::into).collect();
        let total = events.len();
        let published = self.timed_publish(&events).await?;
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
        let events: Vec<I::Item> = events.into_iter().collect();
        runtime::publish_in_chunks(
            &self.ctx.config,
            events,
            preserve_order,
            |chunk| async move { self.timed_publish(&chunk).await },
        )
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
        add(&self.ctx.stats.background_tasks_created, 1);
        self.ctx.tasks.spawn(async move {
            if let Err(error) = bus.timed_publish(&events).await {
                bus.ctx.stats.last_error_at.now();
                tracing::error!(%error, events = events.len(), "background publish failed");
            }
        });
    }

    /// Publishes through the transport, timing it and counting failures by kind.
    async fn timed_publish(&self, events: &[AnyEnvelope]) -> Result<usize, Error> {
        let started = std::time::Instant::now();
        let result = if self.ctx.config.enable_tracing {
            use tracing::Instrument as _;
            self.transport
                .publish(events)
                .instrument(self.publish_span(events))
                .await
        } else {
            self.transport.publish(events).await
        };
        let metrics = &self.ctx.stats.metrics;
        match &result {
            Ok(_) => metrics
                .publish_duration
                .observe(started.elapsed().as_secs_f64()),
            Err(error) => {
                let kind = match error {
                    Error::Unroutable { .. } => "unroutable",
                    Error::Nacked { .. } => "nacked",
                    Error::ConfirmTimeout { .. } => "confirm_timeout",
                    Error::Blocked { .. } => "blocked",
                    Error::TooLarge { .. } => "too_large",
                    _ => "other",
                };
                metrics
                    .publish_errors
                    .get_or_create(&crate::metrics::PublishErrorKind { kind })
                    .inc();
            }
        }
        result
    }

    /// The producer span of one publish call: its context is what the
    /// messages carry. A single event's ids are attributes; a batch has its
    /// size.
    fn publish_span(&self, events: &[AnyEnvelope]) -> tracing::Span {
        let exchange = &self.ctx.config.exchange_name;
        let single = match events {
            [one] => Some(one.meta()),
            _ => None,
        };
        tracing::debug_span!(
            "publish",
            otel.name = %format!("publish {exchange}"),
            otel.kind = "producer",
            messaging.system = self.transport_name(),
            messaging.operation.type = "send",
            messaging.destination.name = %exchange,
            messaging.batch.message_count = events.len(),
            messaging.message.id = single.map(|m| m.event_id().to_string()),
            messaging.rabbitmq.destination.routing_key = single.map(|m| m.routing_key()),
            eventsource.event.id = single.map(|m| m.event_id().to_string()),
            eventsource.event.type = single.map(|m| m.event_type()),
            eventsource.aggregate.id = single.map(|m| m.aggregate_id().to_string()),
            eventsource.aggregate.type = single.map(|m| m.aggregate_type()),
        )
    }

    /// Background tasks still running.
    pub fn background_task_count(&self) -> usize {
        self.ctx.tasks.len()
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> BusStats {
        self.ctx.stats.snapshot()
    }

    /// Starts consuming in the background (RabbitMQ); a no-op in memory,
    /// where publishing delivers directly.
    ///
    /// Fails with [`Error::NoHandlers`] when not a single handler is
    /// registered (usually a crate of handlers that is not linked).
    pub async fn start_consuming(&self) -> Result<(), Error> {
        if self.ctx.dispatcher.len() == 0 {
            return Err(Error::NoHandlers);
        }
        self.transport.start_consuming().await
    }

    /// Stops taking new deliveries; in-flight handlers finish and ack.
    ///
    /// Waits up to `EVENTBUS_SHUTDOWN_TIMEOUT` for them; what is still
    /// running then is left unacked, for the broker to deliver again.
    pub async fn stop_consuming(&self) -> Result<(), Error> {
        self.transport
            .stop_consuming(self.ctx.config.shutdown_timeout)
            .await
    }

    /// Stops consuming, waits up to `timeout` (in all) for in-flight handlers
    /// and background publishes, then closes the connections. Handlers still
    /// running at `timeout` are not acked: the broker delivers their messages
    /// again.
    pub async fn shutdown(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = crate::runtime::deadline(timeout);
        self.observe.cancel();
        let stopped = self.transport.stop_consuming(timeout).await;
        self.ctx.tasks.close();
        let waited = tokio::time::timeout_at(deadline, self.ctx.tasks.wait()).await;
        // Closing waits for the broker's close-ok, which a broker that went
        // away never sends: past the deadline it finishes in the background.
        let transport = self.transport.clone();
        let closing = tokio::spawn(async move { transport.close().await });
        if waited.is_err() {
            return Err(Error::ShutdownTimeout {
                timeout,
                pending: self.ctx.tasks.len(),
            });
        }
        let closed = match tokio::time::timeout_at(deadline, closing).await {
            Ok(Ok(closed)) => closed,
            Ok(Err(panicked)) => Err(Error::Broker {
                context: "closing the connections".into(),
                reason: panicked.to_string(),
            }),
            // The close is the one task left.
            Err(_) => Err(Error::ShutdownTimeout {
                timeout,
                pending: 1,
            }),
        };
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
        // The listener first: a taken port fails before anything consumes,
        // and the readiness probe answers (503) while consumers start.
        let metrics = match self.ctx.config.metrics_addr {
            Some(addr) => Some(self.serve_metrics(addr).await?),
            None => None,
        };
        if let Err(error) = self.start_consuming().await {
            self.observe.cancel();
            return Err(error);
        }
        let mut summary = self.startup_summary();
        if let Some(bound) = metrics {
            summary.push_str(&format!(
                "; metrics on http://{bound}/metrics, probes /health/live and /health/ready"
            ));
        }
        if tracing::dispatcher::has_been_set() {
            tracing::info!(target: "eventbus", "{summary}");
        } else {
            // Without a tracing subscriber nothing else is printed: one line
            // says what runs, so a service that serves nothing is noticed.
            eprintln!("{summary}");
        }
        let stopped = stop.await;
        tracing::info!("event bus shutting down");
        let shutdown = self.shutdown(self.ctx.config.shutdown_timeout).await;
        stopped.and(shutdown)
    }

    /// The startup line: broker (password redacted), exchange, and per group
    /// its bindings and handlers.
    fn startup_summary(&self) -> String {
        let config = &self.ctx.config;
        let table = self.ctx.dispatcher.snapshot();
        let groups: Vec<String> = table
            .groups
            .iter()
            .map(|(name, group)| {
                let source = self.transport.describe_group(name);
                let handlers: Vec<&str> = group.handler_names().into_iter().collect();
                format!(
                    "group {name}: {source}{}handlers [{}]",
                    if source.is_empty() { "" } else { ", " },
                    handlers.join(", ")
                )
            })
            .collect();
        // The group descriptions name the stream on Redis: no exchange there.
        let exchange = if config.url.is_redis() || config.url.is_kafka() {
            String::new()
        } else {
            format!(
                ", exchange {} ({})",
                config.exchange_name, config.exchange_type
            )
        };
        format!(
            "eventbus running on {} {}{exchange}; {}",
            self.transport_name(),
            config.url,
            groups.join("; ")
        )
    }

    /// Connection and consumer state.
    pub async fn health_check(&self) -> HealthStatus {
        self.transport.health().await
    }

    /// Adds a binding for `routing_key` to the default group's queue (RabbitMQ).
    pub async fn bind_routing_key(&self, routing_key: &str) -> Result<(), Error> {
        self.transport
            .bind(&self.ctx.config.consumer_group, routing_key)
            .await
    }

    /// Binds `E`'s routing key to the default group's queue (RabbitMQ).
    pub async fn bind_event_type<E: DomainEvent>(&self) -> Result<(), Error> {
        self.ctx
            .register_event(EventRegistration::of::<E>())
            .map_err(Error::Registry)?;
        self.bind_routing_key(E::ROUTING_KEY).await
    }

    /// Name, message count and consumer count of the default group's queue.
    pub async fn queue_info(&self) -> Result<QueueInfo, Error> {
        self.transport
            .queue_info(&self.ctx.config.consumer_group)
            .await
    }

    /// Queue info of consumer group `group`.
    pub async fn group_queue_info(&self, group: &str) -> Result<QueueInfo, Error> {
        self.transport.queue_info(group).await
    }

    /// Redis: claims and handles the entries other members of each group
    /// left pending longer than `pending_idle_ms`, now (this also happens
    /// on its own every half of that time); returns how many. Needs
    /// [`Bus::start_consuming`] first.
    pub async fn recover_pending(&self) -> Result<usize, Error> {
        self.transport.recover_pending().await
    }

    /// Redis: the stream, its consumer groups, pending and DLQ counts and the
    /// statistics, shaped like eventsource-py's `get_stream_info()`.
    /// Kafka: the same for the topic ([`Bus::topic_info`]).
    pub async fn stream_info(&self) -> Result<StreamInfo, Error> {
        self.transport.stream_info().await
    }

    /// Kafka: the topic (its length over every partition, and each
    /// partition's `partition:offset` low and high watermarks as first and
    /// last entry), this bus's consumer groups with their lag, the DLQ
    /// topic's length and the statistics, shaped like eventsource-py's
    /// `get_topic_info()`.
    pub async fn topic_info(&self) -> Result<StreamInfo, Error> {
        self.transport.stream_info().await
    }

    /// The dead-letter queue of consumer group `group`.
    pub fn dlq(&self, group: &str) -> Dlq {
        Dlq::new(self.transport.clone(), &self.ctx.config, group)
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
