//! What operations report: publish counts, health, queue and DLQ contents.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::error::Error;

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

impl HealthStatus {
    /// Up, with nothing to report (a transport without connections).
    pub(crate) fn up(transport: &'static str) -> Self {
        Self {
            healthy: true,
            transport,
            connected: true,
            consuming: true,
            consumers: BTreeMap::new(),
            error: None,
        }
    }
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

/// A message parked in a dead-letter queue, as `eventbus dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct DlqMessage {
    /// `message_id`: the event id.
    pub message_id: Option<String>,
    /// The `event_type` header.
    pub event_type: Option<String>,
    /// `x-dlq-reason`.
    pub reason: Option<String>,
    /// `x-dlq-error-type`.
    pub error_type: Option<String>,
    /// `x-dlq-handler`: the handler that failed.
    pub handler: Option<String>,
    /// `x-dlq-retry-count`.
    pub retry_count: Option<i64>,
    /// `x-dlq-timestamp`.
    pub dead_lettered_at: Option<String>,
    /// `x-original-routing-key`.
    pub original_routing_key: Option<String>,
    /// Every header, as strings and numbers.
    pub headers: BTreeMap<String, serde_json::Value>,
    /// The body (lossy UTF-8).
    pub body: String,
}

/// Which messages [`Dlq::replay_all`](crate::Dlq::replay_all) sends back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplayFilter {
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only messages dead-lettered at least this long ago.
    pub older_than: Option<Duration>,
}

impl ReplayFilter {
    /// Every message.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only `event_type`.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = Some(event_type.into());
        self
    }

    /// Only messages dead-lettered at least `age` ago.
    #[must_use]
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Does a dead letter of `event_type`, dead-lettered at `dlq_timestamp`
    /// (the text of its timestamp header or field), pass? Without a readable
    /// timestamp an age filter does not match; an age longer than the
    /// calendar reaches back matches nothing.
    pub(crate) fn matches(&self, event_type: Option<&str>, dlq_timestamp: Option<&str>) -> bool {
        if let Some(wanted) = &self.event_type
            && event_type != Some(wanted.as_str())
        {
            return false;
        }
        let Some(age) = self.older_than else {
            return true;
        };
        let Some(at) = dlq_timestamp.and_then(|t| crate::wire::parse_time(t).ok()) else {
            return false;
        };
        chrono::Duration::from_std(age)
            .ok()
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
            .is_some_and(|cutoff| at <= cutoff)
    }
}

/// What [`Dlq::replay_all`](crate::Dlq::replay_all) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Sent back to the group's queue and removed from the DLQ.
    pub replayed: usize,
    /// Left in the DLQ (not matching the filter).
    pub kept: usize,
}

/// A Redis stream as [`Bus::stream_info`](crate::Bus::stream_info) reports it,
/// shaped like eventsource-py's `get_stream_info()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The server answered.
    pub connected: bool,
    /// The stream itself.
    pub stream: StreamState,
    /// Every consumer group of the stream.
    pub consumer_groups: Vec<StreamGroupInfo>,
    /// Entries delivered and not yet acked, over every group.
    pub pending_messages: u64,
    /// Entries in the DLQ stream (every group).
    pub dlq_messages: u64,
    /// Consumers over every group.
    pub active_consumers: u64,
    /// This bus's statistics.
    pub stats: crate::stats::BusStats,
}

/// Length and ends of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamState {
    /// `{stream_prefix}:stream`.
    pub name: String,
    /// `XLEN`.
    pub length: u64,
    /// The oldest entry's id.
    pub first_entry_id: Option<String>,
    /// The newest entry's id.
    pub last_entry_id: Option<String>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct StreamGroupInfo {
    /// The group.
    pub name: String,
    /// Its consumers.
    pub consumers: u64,
    /// Entries delivered to it and not acked.
    pub pending: u64,
    /// Entries it has not read yet, when Redis knows.
    pub lag: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::ReplayFilter;
    use std::time::Duration;

    #[test]
    fn a_replay_filter_reaching_past_the_calendar_matches_nothing() {
        let at = Some("2026-01-01T00:00:00+00:00");
        assert!(ReplayFilter::all().matches(Some("OrderPlaced"), None));
        assert!(
            ReplayFilter::all()
                .older_than(Duration::ZERO)
                .matches(None, at)
        );
        // chrono cannot hold now - Duration::MAX: that subtraction panicked.
        assert!(
            !ReplayFilter::all()
                .older_than(Duration::MAX)
                .matches(None, at)
        );
        assert!(
            !ReplayFilter::all()
                .older_than(Duration::ZERO)
                .matches(None, None)
        );
        let typed = ReplayFilter::all().event_type("OrderPlaced");
        assert!(typed.matches(Some("OrderPlaced"), None));
        assert!(!typed.matches(Some("OrderShipped"), at) && !typed.matches(None, at));
    }
}
