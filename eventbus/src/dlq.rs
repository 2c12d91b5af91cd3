//! Dead-letter queue tooling: count, list, show, replay, replay all, purge.
//!
//! Nothing here consumes a message it does not mean to remove: listing leaves
//! every message in place. A replay goes to the failing group only (never
//! through the exchange, so no other group sees it again) and the DLQ copy is
//! removed only after the broker has the replayed one.

use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::runtime::{DlqMessage, ReplayFilter, ReplayReport};
use crate::transport::{AnyTransport, Replay, Transport};

/// The dead-letter queue of one consumer group: `bus.dlq("billing")`.
#[derive(Debug, Clone)]
pub struct Dlq {
    transport: Arc<AnyTransport>,
    group: String,
    queue: String,
}

impl Dlq {
    pub(crate) fn new(transport: Arc<AnyTransport>, config: &Config, group: &str) -> Self {
        Self {
            transport,
            group: group.to_owned(),
            queue: if config.url.is_redis() {
                config.dlq_stream_name()
            } else if config.url.is_kafka() {
                config.kafka_dlq_topic()
            } else {
                config.group_dlq_queue_name(group)
            },
        }
    }

    /// `{exchange}.{group}.dlq` (on Redis: the DLQ stream, `{stream_prefix}:stream_dlq`;
    /// on Kafka: the DLQ topic, `{topic_prefix}.stream.dlq`).
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Messages waiting in the DLQ.
    pub async fn count(&self) -> Result<u32, Error> {
        self.transport.dlq_count(&self.group).await
    }

    /// Up to `limit` messages from the head of the DLQ, leaving them all in place.
    pub async fn list(&self, limit: usize) -> Result<Vec<DlqMessage>, Error> {
        self.transport.dlq_list(&self.group, limit).await
    }

    /// The message whose `message_id` is `id`, if it is in the DLQ.
    pub async fn show(&self, id: &str) -> Result<Option<DlqMessage>, Error> {
        self.transport.dlq_show(&self.group, id).await
    }

    /// Sends message `id` back to the group; `false` if it is not in the DLQ.
    pub async fn replay(&self, id: &str) -> Result<bool, Error> {
        self.transport
            .dlq_replay(&self.group, Replay::One(id))
            .await
            .map(|r| r.replayed == 1)
    }

    /// Sends every message matching `filter` back to the group, in one pass.
    pub async fn replay_all(&self, filter: &ReplayFilter) -> Result<ReplayReport, Error> {
        self.transport
            .dlq_replay(&self.group, Replay::Matching(filter))
            .await
    }

    /// Deletes every message in the DLQ; returns how many.
    pub async fn purge(&self) -> Result<u32, Error> {
        self.transport.dlq_purge(&self.group).await
    }
}
