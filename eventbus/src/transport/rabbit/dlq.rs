//! DLQ tooling on RabbitMQ.
//!
//! Messages are taken with `basic.get` and not acked; closing the channel
//! returns every one we did not remove to the queue, in its original place.
//! Removal (an ack) happens only after the broker confirmed the replayed copy.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueuePurgeOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel};

use crate::error::Error;
use crate::runtime::{DlqMessage, ReplayFilter, ReplayReport};
use crate::wire::{
    self, HEADER_DLQ_ERROR_TYPE, HEADER_DLQ_HANDLER, HEADER_DLQ_REASON, HEADER_DLQ_RETRY_COUNT,
    HEADER_DLQ_TIMESTAMP, HEADER_EVENT_TYPE, HEADER_ORIGINAL_ROUTING_KEY,
};

use super::RabbitTransport;
use super::amqp;
use super::errors::broker;
use super::publish::Outgoing;
use super::retry;

/// Replayed copies are confirmed, then their originals acked, this many at a time.
const REPLAY_CHUNK: usize = 200;

fn json(value: &AMQPValue) -> serde_json::Value {
    match value {
        AMQPValue::FieldArray(items) => items.as_slice().iter().map(json).collect(),
        AMQPValue::FieldTable(table) => table
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), json(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        AMQPValue::Boolean(b) => (*b).into(),
        other => match amqp::read_header(other) {
            Some(wire::HeaderValue::Str(s)) => s.into(),
            Some(wire::HeaderValue::Int(i)) => i.into(),
            None => format!("{other:?}").into(),
        },
    }
}

fn describe(delivery: &Delivery) -> DlqMessage {
    let p = &delivery.properties;
    let text = |name: &str| amqp::string_header(p, name);
    DlqMessage {
        message_id: p.message_id().as_ref().map(|id| id.as_str().to_owned()),
        event_type: text(HEADER_EVENT_TYPE),
        reason: text(HEADER_DLQ_REASON),
        error_type: text(HEADER_DLQ_ERROR_TYPE),
        handler: text(HEADER_DLQ_HANDLER),
        retry_count: amqp::int_header(p, HEADER_DLQ_RETRY_COUNT),
        dead_lettered_at: text(HEADER_DLQ_TIMESTAMP),
        original_routing_key: text(HEADER_ORIGINAL_ROUTING_KEY),
        headers: p
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json(v)))
                    .collect()
            })
            .unwrap_or_default(),
        body: String::from_utf8_lossy(&delivery.data).into_owned(),
    }
}

fn matches(properties: &BasicProperties, filter: &ReplayFilter) -> bool {
    filter.matches(
        amqp::str_header(properties, HEADER_EVENT_TYPE).as_deref(),
        amqp::str_header(properties, HEADER_DLQ_TIMESTAMP).as_deref(),
    )
}

/// Takes messages one by one without acking, up to `limit` (and never more
/// than were there when we started, so a replay cannot chase its own tail).
struct Scan {
    channel: Channel,
    queue: String,
    left: u32,
    /// Each broker call's bound (`EVENTBUS_CONFIRM_TIMEOUT`).
    timeout: Duration,
}

/// `call`, or a typed error naming `operation` once `timeout` has passed.
async fn within<T>(
    operation: impl Fn() -> String,
    timeout: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Broker {
                context: operation(),
                reason: format!("no answer within {timeout:?}"),
            })
        })
}

impl Scan {
    async fn next(&mut self) -> Result<Option<Delivery>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let what = || format!("reading `{}`", self.queue);
        let got = within(what, self.timeout, async {
            self.channel
                .basic_get(
                    self.queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .map_err(|e| broker(what(), &e))
        })
        .await?;
        Ok(got.map(|m| m.delivery))
    }

    /// Returns every message not acked to the queue (the broker requeues
    /// them when the channel closes, also if the close itself times out).
    async fn close(self) {
        let _ = tokio::time::timeout(self.timeout, self.channel.close(200, "done".into())).await;
    }
}

impl RabbitTransport {
    async fn scan(&self, queue: &str, limit: usize) -> Result<Scan, Error> {
        let info = self.queue_state(queue).await?;
        let channel = self.side_channel().await?;
        Ok(Scan {
            channel,
            queue: queue.to_owned(),
            left: info
                .message_count
                .min(u32::try_from(limit).unwrap_or(u32::MAX)),
            timeout: self.ctx.config.confirm_timeout,
        })
    }

    pub(super) async fn dlq_list_queue(
        &self,
        queue: &str,
        limit: usize,
    ) -> Result<Vec<DlqMessage>, Error> {
        let mut scan = self.scan(queue, limit).await?;
        let mut out = Vec::new();
        let result = async {
            while let Some(delivery) = scan.next().await? {
                out.push(describe(&delivery));
            }
            Ok::<_, Error>(())
        }
        .await;
        scan.close().await;
        result.map(|()| out)
    }

    pub(super) async fn dlq_show_queue(
        &self,
        queue: &str,
        id: &str,
    ) -> Result<Option<DlqMessage>, Error> {
        let mut scan = self.scan(queue, usize::MAX).await?;
        let result = async {
            while let Some(delivery) = scan.next().await? {
                if delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|m| m.as_str() == id)
                {
                    return Ok(Some(describe(&delivery)));
                }
            }
            Ok(None)
        }
        .await;
        scan.close().await;
        result
    }

    /// Replays message `id`, or every message matching `filter`, to `target`.
    pub(super) async fn dlq_replay_queue(
        &self,
        queue: &str,
        target: &str,
        id: Option<&str>,
        filter: &ReplayFilter,
    ) -> Result<ReplayReport, Error> {
        let mut scan = self.scan(queue, usize::MAX).await?;
        let mut report = ReplayReport::default();
        let result = async {
            let mut chunk = Chunk::default();
            while let Some(delivery) = scan.next().await? {
                let wanted = match id {
                    Some(id) => delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .is_some_and(|m| m.as_str() == id),
                    None => matches(&delivery.properties, filter),
                };
                if !wanted {
                    report.kept += 1;
                    continue;
                }
                // Under its original key, to the group's queue alone.
                let copy = Outgoing {
                    exchange: String::new(),
                    routing_key: retry::original_routing_key(
                        &delivery.properties,
                        delivery.routing_key.as_str(),
                        target,
                    ),
                    body: delivery.data.clone(),
                    properties: retry::replay_properties(&delivery.properties, target),
                    message_id: delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map_or_else(String::new, |m| m.as_str().to_owned()),
                };
                chunk.originals.push(delivery);
                chunk.copies.push(copy);
                if chunk.originals.len() >= REPLAY_CHUNK || id.is_some() {
                    report.replayed += self.replay_chunk(&mut chunk).await?;
                }
                if id.is_some() {
                    break;
                }
            }
            report.replayed += self.replay_chunk(&mut chunk).await?;
            Ok::<_, Error>(())
        }
        .await;
        scan.close().await;
        result.map(|()| report)
    }

    /// Publishes the copies, and only once they are confirmed acks the originals.
    async fn replay_chunk(&self, chunk: &mut Chunk) -> Result<usize, Error> {
        if chunk.originals.is_empty() {
            return Ok(0);
        }
        self.publisher.send(&self.ctx, &chunk.copies).await?;
        let what = || "removing a replayed message from the DLQ".to_owned();
        for original in &chunk.originals {
            within(what, self.ctx.config.confirm_timeout, async {
                original
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|e| broker(what(), &e))
            })
            .await?;
        }
        let n = chunk.originals.len();
        chunk.originals.clear();
        chunk.copies.clear();
        Ok(n)
    }

    pub(super) async fn dlq_purge_queue(&self, queue: &str) -> Result<u32, Error> {
        // Fails cleanly if the queue does not exist.
        self.queue_state(queue).await?;
        let channel = self.side_channel().await?;
        let timeout = self.ctx.config.confirm_timeout;
        let what = || format!("purging `{queue}`");
        let purged = within(what, timeout, async {
            channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await
                .map_err(|e| broker(what(), &e))
        })
        .await;
        let _ = tokio::time::timeout(timeout, channel.close(200, "done".into())).await;
        purged
    }
}

/// DLQ messages taken for replay and their copies.
#[derive(Default)]
struct Chunk {
    originals: Vec<Delivery>,
    copies: Vec<Outgoing>,
}
