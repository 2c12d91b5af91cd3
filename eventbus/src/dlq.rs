//! Dead-letter queue tooling: count, list, show, replay, replay all, purge.
//!
//! Nothing here consumes a message it does not mean to remove: listing takes
//! messages without acking them and returns them all (in order) when it is
//! done. A replay goes to the group's own queue (never the exchange, so no
//! other group sees it again) and the DLQ copy is removed only after the
//! broker confirmed the replayed one.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::bus::Bus;
use crate::error::Error;

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

/// Which messages [`Dlq::replay_all`] sends back.
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
}

/// What [`Dlq::replay_all`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Sent back to the group's queue and removed from the DLQ.
    pub replayed: usize,
    /// Left in the DLQ (not matching the filter).
    pub kept: usize,
}

/// The dead-letter queue of one consumer group: `bus.dlq("billing")`.
#[derive(Debug)]
pub struct Dlq<'a> {
    pub(crate) bus: &'a Bus,
    pub(crate) group: String,
}

impl Dlq<'_> {
    /// `{exchange}.{group}.dlq`.
    pub fn queue_name(&self) -> String {
        self.bus.config().group_dlq_queue_name(&self.group)
    }

    /// Messages waiting in the DLQ.
    pub async fn count(&self) -> Result<u32, Error> {
        Ok(self
            .bus
            .rabbit("counting the DLQ")?
            .queue_info(&self.queue_name())
            .await?
            .message_count)
    }

    /// Up to `limit` messages from the head of the DLQ, leaving them all in place.
    pub async fn list(&self, limit: usize) -> Result<Vec<DlqMessage>, Error> {
        self.bus
            .rabbit("listing the DLQ")?
            .dlq_list(&self.queue_name(), limit)
            .await
    }

    /// The message whose `message_id` is `id`, if it is in the DLQ.
    pub async fn show(&self, id: &str) -> Result<Option<DlqMessage>, Error> {
        self.bus
            .rabbit("reading the DLQ")?
            .dlq_show(&self.queue_name(), id)
            .await
    }

    /// Sends message `id` back to the group's queue; `false` if it is not in the DLQ.
    pub async fn replay(&self, id: &str) -> Result<bool, Error> {
        let target = self.bus.config().group_queue_name(&self.group);
        self.bus
            .rabbit("replaying from the DLQ")?
            .dlq_replay(
                self.bus.shared(),
                &self.queue_name(),
                &target,
                Some(id),
                &ReplayFilter::all(),
            )
            .await
            .map(|r| r.replayed == 1)
    }

    /// Sends every message matching `filter` back to the group's queue, in one pass.
    pub async fn replay_all(&self, filter: &ReplayFilter) -> Result<ReplayReport, Error> {
        let target = self.bus.config().group_queue_name(&self.group);
        self.bus
            .rabbit("replaying from the DLQ")?
            .dlq_replay(self.bus.shared(), &self.queue_name(), &target, None, filter)
            .await
    }

    /// Deletes every message in the DLQ; returns how many.
    pub async fn purge(&self) -> Result<u32, Error> {
        self.bus
            .rabbit("purging the DLQ")?
            .dlq_purge(&self.queue_name())
            .await
    }
}
