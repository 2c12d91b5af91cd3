//! Prometheus metrics: what [`Stats`](crate::stats::Stats) counts, plus
//! per-handler outcomes, latencies, in-flight deliveries and sampled queue
//! depths, in the OpenMetrics text format.
//!
//! Labels are bounded: group, handler, event type, queue role, error kind;
//! never an id.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::stats::Stats;

/// One handler's outcome.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandlerOutcome {
    pub(crate) group: Arc<str>,
    pub(crate) handler: Arc<str>,
    pub(crate) event_type: Cow<'static, str>,
    /// `success`, `error` or `permanent_error`.
    pub(crate) outcome: &'static str,
}

/// One handler.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandlerKey {
    pub(crate) group: Arc<str>,
    pub(crate) handler: Arc<str>,
}

/// A group's queue: `queue` is `main` or `dlq`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct QueueKey {
    pub(crate) group: String,
    pub(crate) queue: &'static str,
}

/// A consumer group.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GroupKey {
    pub(crate) group: String,
}

/// What failed in a publish: `unroutable`, `nacked`, `confirm_timeout`,
/// `blocked`, `too_large`, `other`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PublishErrorKind {
    pub(crate) kind: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.0005, 3.0, 11))
}

/// The live metrics a bus updates as it works.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) handled: Family<HandlerOutcome, Counter>,
    pub(crate) handler_duration: HistogramFamily<HandlerKey>,
    pub(crate) publish_duration: Histogram,
    pub(crate) publish_errors: Family<PublishErrorKind, Counter>,
    pub(crate) retries: Counter,
    pub(crate) in_flight: Gauge,
    pub(crate) queue_messages: Family<QueueKey, Gauge>,
    pub(crate) consumer_up: Family<GroupKey, Gauge>,
    pub(crate) connected: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            handled: Family::default(),
            handler_duration: Family::new_with_constructor(latency_histogram),
            publish_duration: latency_histogram(),
            publish_errors: Family::default(),
            retries: Counter::default(),
            in_flight: Gauge::default(),
            queue_messages: Family::default(),
            consumer_up: Family::default(),
            connected: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Records one handler call. On the dispatch path: the labels are shared
    /// (`Arc`, a borrowed event type name), never copied strings.
    pub(crate) fn handler_done(
        &self,
        group: &Arc<str>,
        handler: &Arc<str>,
        event_type: Cow<'static, str>,
        outcome: &'static str,
        took: Duration,
    ) {
        self.handled
            .get_or_create(&HandlerOutcome {
                group: group.clone(),
                handler: handler.clone(),
                event_type,
                outcome,
            })
            .inc();
        self.handler_duration
            .get_or_create(&HandlerKey {
                group: group.clone(),
                handler: handler.clone(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a delivery as in flight until the guard drops.
    pub(crate) fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }
}

/// Decrements the in-flight gauge on drop.
#[derive(Debug)]
pub(crate) struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The counters eventsource-py's statistics already keep, read at scrape time.
#[derive(Debug)]
struct StatsCollector(Arc<Stats>);

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let stats = &self.0;
        let counters: [(&str, &str, &AtomicU64); 10] = [
            (
                "eventbus_published",
                "Events the broker confirmed (in memory: delivered).",
                &stats.events_published,
            ),
            (
                "eventbus_consumed",
                "Deliveries taken from the broker.",
                &stats.events_consumed,
            ),
            (
                "eventbus_processed_success",
                "Deliveries whose handlers all succeeded.",
                &stats.events_processed_success,
            ),
            (
                "eventbus_processed_failed",
                "Deliveries with a failed handler that will not be retried again.",
                &stats.events_processed_failed,
            ),
            (
                "eventbus_dead_lettered",
                "Messages sent to a dead-letter queue.",
                &stats.messages_sent_to_dlq,
            ),
            (
                "eventbus_deferred_unhandled",
                "Deliveries this member left to another member of its group: no handler of its takes them.",
                &stats.events_deferred_unhandled,
            ),
            (
                "eventbus_recovered",
                "Pending entries claimed from dead or stuck consumers (Redis).",
                &stats.messages_recovered,
            ),
            (
                "eventbus_handler_calls",
                "Handler invocations.",
                &stats.handlers_invoked,
            ),
            (
                "eventbus_handler_errors",
                "Handler invocations that returned an error.",
                &stats.handler_errors,
            ),
            (
                "eventbus_reconnections",
                "Reconnections to the broker.",
                &stats.reconnections,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// The registry to encode: the stats counters plus every live metric.
pub(crate) fn registry(stats: &Arc<Stats>) -> Registry {
    let m = &stats.metrics;
    let mut r = Registry::default();
    r.register_collector(Box::new(StatsCollector(stats.clone())));
    r.register(
        "eventbus_handled",
        "Handler calls by group, handler, event type and outcome (success, error, permanent_error).",
        m.handled.clone(),
    );
    r.register_with_unit(
        "eventbus_handler_duration",
        "How long each handler call took.",
        Unit::Seconds,
        m.handler_duration.clone(),
    );
    r.register_with_unit(
        "eventbus_publish_duration",
        "From a publish call to the broker's confirms for all of its events.",
        Unit::Seconds,
        m.publish_duration.clone(),
    );
    r.register(
        "eventbus_publish_errors",
        "Failed publish calls by kind (unroutable, nacked, confirm_timeout, blocked, too_large, other).",
        m.publish_errors.clone(),
    );
    r.register(
        "eventbus_retries",
        "Deliveries sent to a delay queue for another attempt.",
        m.retries.clone(),
    );
    r.register(
        "eventbus_in_flight_deliveries",
        "Deliveries whose handlers are running now.",
        m.in_flight.clone(),
    );
    r.register(
        "eventbus_queue_messages",
        "Messages waiting in each group's queue (queue=main) and dead-letter queue (queue=dlq), sampled every EVENTBUS_METRICS_INTERVAL.",
        m.queue_messages.clone(),
    );
    r.register(
        "eventbus_consumer_up",
        "1 while the group's consumer is running, sampled.",
        m.consumer_up.clone(),
    );
    r.register(
        "eventbus_connected",
        "1 while connected to the broker, sampled.",
        m.connected.clone(),
    );
    r
}

/// The OpenMetrics text of `registry`.
pub(crate) fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}
