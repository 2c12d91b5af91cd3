//! Counters: the statistics of eventsource-py's buses, as a struct and as a map.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Live counters, shared by the bus and its transport.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) events_published: AtomicU64,
    pub(crate) events_consumed: AtomicU64,
    pub(crate) events_processed_success: AtomicU64,
    pub(crate) events_processed_failed: AtomicU64,
    pub(crate) messages_sent_to_dlq: AtomicU64,
    pub(crate) events_deferred_unhandled: AtomicU64,
    pub(crate) messages_recovered: AtomicU64,
    pub(crate) handlers_invoked: AtomicU64,
    pub(crate) handler_errors: AtomicU64,
    pub(crate) background_tasks_created: AtomicU64,
    pub(crate) reconnections: AtomicU64,
    pub(crate) last_publish_at: Stamp,
    pub(crate) last_consume_at: Stamp,
    pub(crate) last_error_at: Stamp,
    pub(crate) connected_at: Stamp,
    /// What only the Prometheus endpoint shows (labelled, histograms, gauges).
    pub(crate) metrics: crate::metrics::Metrics,
}

/// A time in microseconds since the epoch; 0 means never.
#[derive(Debug, Default)]
pub(crate) struct Stamp(AtomicI64);

impl Stamp {
    pub(crate) fn now(&self) {
        self.0
            .store(Utc::now().timestamp_micros(), Ordering::Relaxed);
    }
    fn get(&self) -> Option<DateTime<Utc>> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            micros => DateTime::from_timestamp_micros(micros),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn snapshot(&self) -> BusStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BusStats {
            events_published: get(&self.events_published),
            events_consumed: get(&self.events_consumed),
            events_processed_success: get(&self.events_processed_success),
            events_processed_failed: get(&self.events_processed_failed),
            messages_sent_to_dlq: get(&self.messages_sent_to_dlq),
            events_deferred_unhandled: get(&self.events_deferred_unhandled),
            messages_recovered: get(&self.messages_recovered),
            handlers_invoked: get(&self.handlers_invoked),
            handler_errors: get(&self.handler_errors),
            background_tasks_created: get(&self.background_tasks_created),
            reconnections: get(&self.reconnections),
            last_publish_at: self.last_publish_at.get(),
            last_consume_at: self.last_consume_at.get(),
            last_error_at: self.last_error_at.get(),
            connected_at: self.connected_at.get(),
        }
    }
}

/// A snapshot of the bus's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct BusStats {
    /// Events confirmed published.
    pub events_published: u64,
    /// Messages taken from the broker (or delivered in memory).
    pub events_consumed: u64,
    /// Events whose handlers all succeeded.
    pub events_processed_success: u64,
    /// Events with at least one failed handler.
    pub events_processed_failed: u64,
    /// Messages parked in a dead-letter queue.
    pub messages_sent_to_dlq: u64,
    /// Deliveries this member left to another member of its group because
    /// none of its handlers takes them (each deferral counts; see
    /// `Config::max_unhandled_deferrals`).
    pub events_deferred_unhandled: u64,
    /// Pending entries claimed from dead or stuck consumers (Redis).
    pub messages_recovered: u64,
    /// Handler calls.
    pub handlers_invoked: u64,
    /// Handler calls that failed.
    pub handler_errors: u64,
    /// Background publishes started.
    pub background_tasks_created: u64,
    /// Times the connection was re-established.
    pub reconnections: u64,
    /// Last confirmed publish.
    pub last_publish_at: Option<DateTime<Utc>>,
    /// Last message consumed.
    pub last_consume_at: Option<DateTime<Utc>>,
    /// Last error.
    pub last_error_at: Option<DateTime<Utc>>,
    /// When the current connection was established.
    pub connected_at: Option<DateTime<Utc>>,
}

impl BusStats {
    /// The statistics as a map, as eventsource-py's `get_stats_dict()`; times in ISO-8601.
    pub fn to_map(&self) -> BTreeMap<&'static str, serde_json::Value> {
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or(serde_json::Value::Null, |t| {
                crate::wire::format_time(&t).into()
            })
        };
        BTreeMap::from([
            ("events_published", self.events_published.into()),
            ("events_consumed", self.events_consumed.into()),
            (
                "events_processed_success",
                self.events_processed_success.into(),
            ),
            (
                "events_processed_failed",
                self.events_processed_failed.into(),
            ),
            ("messages_sent_to_dlq", self.messages_sent_to_dlq.into()),
            (
                "events_deferred_unhandled",
                self.events_deferred_unhandled.into(),
            ),
            ("messages_recovered", self.messages_recovered.into()),
            ("handlers_invoked", self.handlers_invoked.into()),
            ("handler_errors", self.handler_errors.into()),
            (
                "background_tasks_created",
                self.background_tasks_created.into(),
            ),
            ("reconnections", self.reconnections.into()),
            ("last_publish_at", time(self.last_publish_at)),
            ("last_consume_at", time(self.last_consume_at)),
            ("last_error_at", time(self.last_error_at)),
            ("connected_at", time(self.connected_at)),
        ])
    }
}
