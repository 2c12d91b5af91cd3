//! The core every transport is given: the running bus's configuration,
//! registry, dispatcher, counters and tasks, plus the transport-independent
//! policies that work on them (chunked publishing, per-aggregate ordering,
//! ack coalescing) and the result types transports report in.
//!
//! Nothing here knows a broker; transports build on it, the facade
//! ([`Bus`](crate::Bus)) owns it.

use std::future::Future;
use std::sync::{Arc, RwLock};

use futures_util::StreamExt;
use futures_util::stream;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::envelope::AnyEnvelope;
use crate::error::{Error, RegistryError};
use crate::registration::EventRegistration;
use crate::registry::EventTypes;
use crate::stats::Stats;

mod acks;
mod ordering;
mod report;
pub(crate) mod traced;

pub(crate) use acks::AckTracker;
pub(crate) use ordering::{OrderMode, Sequencer};
pub use report::{
    BatchReport, DlqMessage, HealthStatus, PublishReport, QueueInfo, ReplayFilter, ReplayReport,
    StreamGroupInfo, StreamInfo, StreamState,
};

/// The state of one running bus, shared by the facade, its transport and
/// every background task.
#[derive(Debug)]
pub(crate) struct BusContext {
    pub(crate) config: Config,
    event_types: RwLock<Arc<EventTypes>>,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) stats: Arc<Stats>,
    /// Background publishes, awaited on shutdown.
    pub(crate) tasks: TaskTracker,
    /// Declare the topology on connect (off for tools that only inspect).
    pub(crate) declare: bool,
}

impl BusContext {
    pub(crate) fn new(
        config: Config,
        event_types: EventTypes,
        dispatcher: Dispatcher,
        declare: bool,
    ) -> Self {
        Self {
            config,
            event_types: RwLock::new(Arc::new(event_types)),
            dispatcher,
            stats: Arc::default(),
            tasks: TaskTracker::new(),
            declare,
        }
    }

    /// The event types this bus can decode, now.
    pub(crate) fn event_types(&self) -> Arc<EventTypes> {
        self.event_types
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Adds an event type at runtime; a name taken by another type is an error.
    pub(crate) fn register_event(&self, reg: EventRegistration) -> Result<(), RegistryError> {
        // Known types (every publish on the memory transport) take only the read lock.
        if self.event_types().contains(&reg) {
            return Ok(());
        }
        let mut conflicts = Vec::new();
        let mut types = self
            .event_types
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked again: another caller may have added it meanwhile.
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

/// `after` from now; a moment a century away when that overflows the clock
/// (`Duration::MAX` as a timeout means "no limit", not a panic).
pub(crate) fn deadline(after: std::time::Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + std::time::Duration::from_secs(100 * 365 * 86_400))
}

/// The sequencer a group consumer runs its deliveries through, keyed by
/// aggregate id.
pub(crate) fn sequencer(order: crate::config::DeliveryOrder) -> Arc<Sequencer<uuid::Uuid>> {
    use crate::config::DeliveryOrder;
    let mode = match order {
        DeliveryOrder::Unordered => OrderMode::None,
        DeliveryOrder::Strict => OrderMode::Strict,
        // `DeliveryOrder` is non-exhaustive for users, not for us: new modes land here.
        DeliveryOrder::PerAggregate => OrderMode::PerKey,
    };
    Arc::new(Sequencer::new(mode))
}

/// The delay before retry number `retry_count + 1`: eventsource-py's policy,
/// `min(base * 2^retry_count, max)` with symmetric jitter (the Redis
/// transport's; RabbitMQ keeps the same formula next to its delay queues).
pub(crate) fn retry_delay(config: &Config, retry_count: u32) -> std::time::Duration {
    let base = config.retry_base_delay.as_secs_f64();
    let nominal = (base * 2f64.powi(i32::try_from(retry_count).unwrap_or(i32::MAX)))
        .min(config.retry_max_delay.as_secs_f64());
    // A uniform number in [0, 1), from the OS's randomness via a v4 UUID.
    let unit = (uuid::Uuid::new_v4().as_u64_pair().0 >> 11) as f64 / (1u64 << 53) as f64;
    let jitter = config.retry_jitter * (2.0 * unit - 1.0);
    std::time::Duration::from_secs_f64((nominal * (1.0 + jitter)).max(0.0))
}

/// Publishes `events` in chunks of `publish_chunk_size`, up to
/// `max_concurrent_publishes` chunks at once (one at a time with
/// `preserve_order`), collecting counts and one error per failed chunk.
///
/// Each chunk is converted to [`AnyEnvelope`]s only when its turn comes, so a
/// large batch is not held a second time, type-erased, while it is published
/// (that copy cost a fresh page of memory for every dozen events).
pub(crate) async fn publish_in_chunks<T, F, Fut>(
    config: &Config,
    events: Vec<T>,
    preserve_order: bool,
    publish: F,
) -> BatchReport
where
    T: Into<AnyEnvelope>,
    F: Fn(Vec<AnyEnvelope>) -> Fut,
    Fut: Future<Output = Result<usize, Error>>,
{
    let concurrency = if preserve_order {
        1
    } else {
        config.max_concurrent_publishes.max(1)
    };
    let total = events.len();
    let size = config.publish_chunk_size.max(1);
    let mut rest = events.into_iter();
    let chunks = std::iter::from_fn(move || {
        let chunk: Vec<AnyEnvelope> = rest.by_ref().take(size).map(Into::into).collect();
        (!chunk.is_empty()).then_some(chunk)
    });
    let results: Vec<Result<usize, Error>> = stream::iter(chunks)
        .map(publish)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut report = BatchReport {
        published: 0,
        total,
        errors: Vec::new(),
    };
    for result in results {
        match result {
            Ok(n) => report.published += n,
            Err(e) => report.errors.push(e),
        }
    }
    report
}
