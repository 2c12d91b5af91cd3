//! The transport seam: what a broker must do for a [`Bus`](crate::Bus).
//!
//! A broker is a folder under `transport/` with a type implementing
//! [`Transport`], constructed with the [`BusContext`] it serves, plus one arm
//! in [`AnyTransport`] (selected by the URL scheme in [`AnyTransport::connect`]).
//! The facade never matches on a broker; nothing here imports the facade.
//!
//! The contract every implementation keeps:
//! - **publish**: encode each event with [`crate::wire`], send them in order and
//!   return only once the broker has them (confirms); an event no consumer
//!   group would receive is [`Error::Unroutable`] where the broker can tell.
//! - **consume per group**: every consumer group in the context's dispatcher
//!   gets its own subscription; a delivery is decoded with
//!   `wire::decode`, dispatched with the dispatcher, and settled (acked) only
//!   after every handler of the group succeeded or its retry / dead-letter
//!   copy is safe. Runtime subscription changes are followed.
//! - **topology**: whatever the broker needs is declared from the registry
//!   when the context says `declare`; `bind` adds a routing key at runtime.
//! - **DLQ**: count, list without consuming, show, replay (only to the failing
//!   group), purge.
//! - **health and queue info**, and a `close` that waits for nothing past its
//!   timeouts.
//!
//! Operations a broker cannot do keep the default bodies, which return
//! [`Error::Unsupported`] naming the operation and the transport.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::AnyEnvelope;
use crate::error::Error;
use crate::runtime::{
    BusContext, DlqMessage, HealthStatus, QueueInfo, ReplayFilter, ReplayReport, StreamInfo,
};

/// Which consumers of a transport are receiving, by group (or queue), for
/// health checks.
pub(crate) type ConsumerStates = Arc<std::sync::Mutex<std::collections::BTreeMap<String, bool>>>;

/// Records whether the consumer of `name` is receiving.
pub(crate) fn set_state(states: &ConsumerStates, name: &str, active: bool) {
    states
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(name.to_owned(), active);
}

/// Runs `handling` (the deliveries of one read, already in their sequencer's
/// order) to the end on one task of `tracker`. A panicking handler ends only
/// its own delivery (its turn and permit are released); `not_settled` says
/// what then happens to it.
pub(crate) fn spawn_all<F>(
    tracker: &tokio_util::task::TaskTracker,
    mut handling: futures_util::stream::FuturesUnordered<F>,
    not_settled: &'static str,
) where
    F: Future<Output = std::thread::Result<()>> + Send + 'static,
{
    use futures_util::StreamExt as _;
    if !handling.is_empty() {
        tracker.spawn(async move {
            while let Some(done) = handling.next().await {
                if done.is_err() {
                    tracing::error!("a handler panicked; {not_settled}");
                }
            }
        });
    }
}

/// A copy of `states` as they are now.
pub(crate) fn states_now(states: &ConsumerStates) -> std::collections::BTreeMap<String, bool> {
    states
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

/// The health of a stream transport (Redis, Kafka): `error` is what its
/// connection probe found; while consuming, each consumer that is not
/// receiving is reported as `the {what} of group `g` is {why}`.
pub(crate) fn stream_health(
    transport: &'static str,
    error: Option<String>,
    consuming: bool,
    consumers: std::collections::BTreeMap<String, bool>,
    down: impl Fn(&str) -> String,
) -> HealthStatus {
    let connected = error.is_none();
    let mut errors: Vec<String> = error.into_iter().collect();
    if consuming {
        errors.extend(
            consumers
                .iter()
                .filter(|(_, up)| !**up)
                .map(|(g, _)| down(g)),
        );
    }
    HealthStatus {
        healthy: errors.is_empty(),
        transport,
        connected,
        consuming: consuming && consumers.values().all(|up| *up),
        consumers,
        error: (!errors.is_empty()).then(|| errors.join("; ")),
    }
}

/// The running consumer groups of a stream transport, by name.
pub(crate) type Groups<G> = Arc<tokio::sync::Mutex<std::collections::BTreeMap<Arc<str>, Arc<G>>>>;

/// Starts the groups subscribed at runtime (Redis, Kafka): on every change
/// of the subscriptions, each group of the dispatcher not in `groups` yet is
/// started with `start`, until `stop` (or `stopped()`, the run's own stop).
pub(crate) fn watch_new_groups<G, S, F, Fut>(
    mut changes: tokio::sync::watch::Receiver<u64>,
    ctx: Arc<BusContext>,
    groups: Groups<G>,
    stop: tokio_util::sync::CancellationToken,
    stopped: S,
    start: F,
) where
    G: Send + Sync + 'static,
    S: Fn() -> bool + Send + 'static,
    F: Fn(Arc<str>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Arc<G>, Error>> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { break },
                () = stop.cancelled() => break,
            }
            let wanted: Vec<Arc<str>> = ctx.dispatcher.snapshot().groups.keys().cloned().collect();
            let mut running = groups.lock().await;
            for name in wanted {
                if running.contains_key(&name) || stopped() {
                    continue;
                }
                match start(name.clone()).await {
                    Ok(g) => {
                        tracing::info!(group = %name, "new consumer group subscribed; consuming it");
                        running.insert(name, g);
                    }
                    Err(error) => {
                        tracing::error!(group = %name, %error, "cannot start consuming a new group")
                    }
                }
            }
        }
    });
}

#[cfg(feature = "kafka")]
pub(crate) mod kafka;
pub(crate) mod memory;
pub(crate) mod rabbit;
pub(crate) mod redis;

/// Which DLQ messages a replay sends back.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Replay<'a> {
    /// The message with this id.
    One(&'a str),
    /// Every message matching the filter.
    Matching(&'a ReplayFilter),
}

fn unsupported(transport: &'static str, operation: &'static str) -> Error {
    Error::Unsupported {
        operation,
        transport,
    }
}

/// What a broker implements. See the module docs for the contract.
pub(crate) trait Transport: Send + Sync {
    /// `memory`, `rabbitmq`, ...
    fn name(&self) -> &'static str;

    /// Publishes `events` in order; returns how many the broker confirmed.
    fn publish(&self, events: &[AnyEnvelope]) -> impl Future<Output = Result<usize, Error>> + Send;

    /// Starts one consumer per consumer group; returns once they are running.
    fn start_consuming(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stops taking deliveries; in-flight ones finish and are settled within
    /// `drain`. What is unsettled then is left to the broker, which delivers
    /// it again (to this group's next member); the call returns by `drain`
    /// (plus the bounded close of the consumer connection) whatever the
    /// handlers do.
    fn stop_consuming(&self, drain: Duration) -> impl Future<Output = Result<(), Error>> + Send;

    /// Stops consuming and closes every connection.
    fn close(&self) -> impl Future<Output = Result<(), Error>> + Send;

    /// Connection and consumer state.
    fn health(&self) -> impl Future<Output = HealthStatus> + Send;

    /// Where `group`'s deliveries come from, for the startup line
    /// (`queue events.billing bound to [Order.OrderPlaced]`).
    /// Empty when there is nothing to say beyond the handlers.
    fn describe_group(&self, group: &str) -> String {
        let _ = group;
        String::new()
    }

    /// Routes `routing_key` to `group` from now on.
    fn bind(
        &self,
        group: &str,
        routing_key: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (group, routing_key);
        let name = self.name();
        async move { Err(unsupported(name, "binding a routing key")) }
    }

    /// The state of `group`'s queue (or stream).
    fn queue_info(&self, group: &str) -> impl Future<Output = Result<QueueInfo, Error>> + Send {
        let _ = group;
        let name = self.name();
        async move { Err(unsupported(name, "queue_info")) }
    }

    /// Messages in `group`'s dead-letter queue.
    fn dlq_count(&self, group: &str) -> impl Future<Output = Result<u32, Error>> + Send {
        let _ = group;
        let name = self.name();
        async move { Err(unsupported(name, "counting the DLQ")) }
    }

    /// Up to `limit` messages from the head of `group`'s DLQ, leaving them in place.
    fn dlq_list(
        &self,
        group: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DlqMessage>, Error>> + Send {
        let _ = (group, limit);
        let name = self.name();
        async move { Err(unsupported(name, "listing the DLQ")) }
    }

    /// The DLQ message whose id is `id`.
    fn dlq_show(
        &self,
        group: &str,
        id: &str,
    ) -> impl Future<Output = Result<Option<DlqMessage>, Error>> + Send {
        let _ = (group, id);
        let name = self.name();
        async move { Err(unsupported(name, "reading the DLQ")) }
    }

    /// Sends DLQ messages back to `group` only; each DLQ copy is removed only
    /// after the broker has the replayed one.
    fn dlq_replay(
        &self,
        group: &str,
        which: Replay<'_>,
    ) -> impl Future<Output = Result<ReplayReport, Error>> + Send {
        let _ = (group, which);
        let name = self.name();
        async move { Err(unsupported(name, "replaying from the DLQ")) }
    }

    /// Deletes every message in `group`'s DLQ; returns how many.
    fn dlq_purge(&self, group: &str) -> impl Future<Output = Result<u32, Error>> + Send {
        let _ = group;
        let name = self.name();
        async move { Err(unsupported(name, "purging the DLQ")) }
    }

    /// Claims and handles messages other consumers left unsettled past the
    /// idle time, now; returns how many.
    fn recover_pending(&self) -> impl Future<Output = Result<usize, Error>> + Send {
        let name = self.name();
        async move { Err(unsupported(name, "recover_pending")) }
    }

    /// The stream, its groups and counts (a stream broker).
    fn stream_info(&self) -> impl Future<Output = Result<StreamInfo, Error>> + Send {
        let name = self.name();
        async move { Err(unsupported(name, "stream_info")) }
    }
}

/// The transport of a bus, chosen by the URL scheme.
#[derive(Debug)]
pub(crate) enum AnyTransport {
    /// In-process delivery.
    Memory(memory::MemoryTransport),
    /// RabbitMQ.
    Rabbit(rabbit::RabbitTransport),
    /// Redis Streams.
    Redis(Box<redis::RedisTransport>),
    /// Kafka (cargo feature `kafka`).
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::KafkaTransport>),
}

impl AnyTransport {
    /// Connects the transport `ctx.config.url` names.
    pub(crate) async fn connect(ctx: &Arc<BusContext>) -> Result<Self, Error> {
        if ctx.config.url.is_memory() {
            Ok(Self::Memory(memory::MemoryTransport::new(ctx.clone())))
        } else if ctx.config.url.is_kafka() {
            #[cfg(feature = "kafka")]
            {
                Ok(Self::Kafka(Box::new(
                    kafka::KafkaTransport::connect(ctx).await?,
                )))
            }
            #[cfg(not(feature = "kafka"))]
            {
                Err(Error::FeatureDisabled {
                    feature: "kafka",
                    what: format!("EVENTBUS_URL={}", ctx.config.url),
                })
            }
        } else if ctx.config.url.is_redis() {
            Ok(Self::Redis(Box::new(
                redis::RedisTransport::connect(ctx).await?,
            )))
        } else {
            Ok(Self::Rabbit(rabbit::RabbitTransport::connect(ctx).await?))
        }
    }
}

/// Forwards a call to whichever transport this is.
macro_rules! forward {
    ($self:ident, $t:ident => $call:expr) => {
        match $self {
            AnyTransport::Memory($t) => $call,
            AnyTransport::Rabbit($t) => $call,
            AnyTransport::Redis($t) => $call,
            #[cfg(feature = "kafka")]
            AnyTransport::Kafka($t) => $call,
        }
    };
}

impl Transport for AnyTransport {
    fn name(&self) -> &'static str {
        forward!(self, t => t.name())
    }
    async fn publish(&self, events: &[AnyEnvelope]) -> Result<usize, Error> {
        forward!(self, t => t.publish(events).await)
    }
    async fn start_consuming(&self) -> Result<(), Error> {
        forward!(self, t => t.start_consuming().await)
    }
    async fn stop_consuming(&self, drain: Duration) -> Result<(), Error> {
        forward!(self, t => t.stop_consuming(drain).await)
    }
    async fn close(&self) -> Result<(), Error> {
        forward!(self, t => t.close().await)
    }
    async fn health(&self) -> HealthStatus {
        forward!(self, t => t.health().await)
    }
    fn describe_group(&self, group: &str) -> String {
        forward!(self, t => t.describe_group(group))
    }
    async fn bind(&self, group: &str, routing_key: &str) -> Result<(), Error> {
        forward!(self, t => t.bind(group, routing_key).await)
    }
    async fn queue_info(&self, group: &str) -> Result<QueueInfo, Error> {
        forward!(self, t => t.queue_info(group).await)
    }
    async fn dlq_count(&self, group: &str) -> Result<u32, Error> {
        forward!(self, t => t.dlq_count(group).await)
    }
    async fn dlq_list(&self, group: &str, limit: usize) -> Result<Vec<DlqMessage>, Error> {
        forward!(self, t => t.dlq_list(group, limit).await)
    }
    async fn dlq_show(&self, group: &str, id: &str) -> Result<Option<DlqMessage>, Error> {
        forward!(self, t => t.dlq_show(group, id).await)
    }
    async fn dlq_replay(&self, group: &str, which: Replay<'_>) -> Result<ReplayReport, Error> {
        forward!(self, t => t.dlq_replay(group, which).await)
    }
    async fn dlq_purge(&self, group: &str) -> Result<u32, Error> {
        forward!(self, t => t.dlq_purge(group).await)
    }
    async fn recover_pending(&self) -> Result<usize, Error> {
        forward!(self, t => t.recover_pending().await)
    }
    async fn stream_info(&self) -> Result<StreamInfo, Error> {
        forward!(self, t => t.stream_info().await)
    }
}
